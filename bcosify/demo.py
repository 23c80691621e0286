"""The offline demo: convert the packaged EfficientNet-Lite0 and explain the packaged photos."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from bcosify.config import BcosConfig
from bcosify.convert import convert
from bcosify.errors import BcosifyError
from bcosify.explain import explain

__all__ = ["run_demo"]

EQUIVALENCE = BcosConfig(b=1, keep_bias=True, activation="keep", maxpool="keep")


def run_demo(out: Path, *, overwrite: bool = False, finetune_steps: int = 80) -> dict:
    """Convert the packaged EfficientNet-Lite0, compare predictions, write explanation figures,
    then fine-tune the B=2 model by distillation and compare again.

    Prints, per photo, the original model's top-1 class and that of the converted model at B=1
    with biases kept (an exact rewrite: the two must agree), then explains the original's class
    with the B=2 conversion (not fine-tuned yet) and writes one figure per photo to ``out``.
    With ``finetune_steps > 0`` it then distils the original into the B=2 model on augmented views
    of photos and images shipped in packages (no labels needed) and reports the top-1 agreement
    with the original on views of held-out photos before and after (see :func:`_distill`).

    Returns:
        A summary dict (agreement, completeness errors, figure paths, and under ``"finetune"``
        the agreement before and after fine-tuning).
    """
    from torchvision.models import ResNet50_Weights

    from bcosify.sources import demo_photos, load_efficientnet_lite0_packaged

    out = Path(out)
    if out.exists() and any(out.glob("*.png")) and not overwrite:
        raise BcosifyError(f"{out} already holds figures; pass --overwrite to replace them")
    names = ResNet50_Weights.DEFAULT.meta["categories"]
    t0 = time.perf_counter()
    source = load_efficientnet_lite0_packaged()
    exact = convert(source, EQUIVALENCE)
    bcos = convert(source)
    print(f"converted EfficientNet-Lite0 in {time.perf_counter() - t0:.1f} s")
    print(bcos.conversion_report)
    pre = source.bcosify_preprocessing
    photos = demo_photos()
    x = torch.stack([pre.transform()(img) for _, img in photos])
    with torch.no_grad():
        original = source(pre.normalize(x)).argmax(1)
        converted = exact(x).argmax(1)
    print(f"\n{'photo':<14} {'original top-1':<28} {'converted (B=1, exact)':<28}")
    for (name, _), a, b in zip(photos, original.tolist(), converted.tolist()):
        mark = "" if a == b else "   <- differs"
        print(f"{name:<14} {names[a]:<28} {names[b]:<28}{mark}")
    agree = int((original == converted).sum())
    print(f"agreement: {agree}/{len(photos)}")
    paths, errors, lines = [], [], []
    for i, (name, _) in enumerate(tqdm(photos, desc="explain (B=2)", unit="photo", disable=None)):
        e = explain(bcos, x[i : i + 1], target=int(original[i]))
        errors.append(float(e.completeness_error[0]))
        paths += e.save_figures(out, names=[name], class_names=names)
        lines.append(
            f"{name:<14} logit {float(e.explained_logit[0]):+.6f} = pixels "
            f"{float(e.contributions[0].sum()):+.3e} + constants {float(e.constant_total[0]):+.4f}"
        )
    print("\nB=2 model before fine-tuning, explaining the original's class:")
    print("\n".join(lines))
    print(f"completeness error (max over photos): {max(errors):.2e}")
    print(
        "(before fine-tuning the pixels' share of a B=2 logit is tiny: every B-cos unit scales its "
        "output by |cos|; fine-tuning restores it)"
    )
    print(f"figures written to {out}/")
    summary = {"agreement": agree, "total": len(photos), "completeness": errors, "figures": paths}
    if finetune_steps > 0:
        summary["finetune"] = _distill(source, bcos, out, finetune_steps, overwrite)
    return summary


HELD_OUT = ("chelsea", "flower", "grace_hopper")
VIEWS_PER_PHOTO = 8


def _unlabelled_images() -> list[tuple[str, Image.Image]]:
    """More images shipped in scikit-image (photos, micrographs, textures, grey ones as RGB), for
    distillation, which needs no labels: the student learns to match the original on them."""
    try:
        import skimage.data as data
    except ImportError:
        return []
    out = []
    for name in (
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "colorwheel",
        "brick",
        "grass",
        "gravel",
        "camera",
        "coins",
        "moon",
        "clock",
        "page",
        "text",
        "cell",
        "logo",
    ):
        try:
            out.append((name, Image.fromarray(getattr(data, name)()).convert("RGB")))
        except Exception:  # an image that needs a download (pooch) is simply left out
            continue
    try:
        left, right, _ = data.stereo_motorcycle()
        out += [
            ("motorcycle_left", Image.fromarray(left)),
            ("motorcycle_right", Image.fromarray(right)),
        ]
    except Exception:
        pass
    return out


def _views(photos, pre, count: int, seed: int) -> torch.Tensor:
    """``count`` fixed views per photo in [0, 1]: the model's center crop, then random crops."""
    from torchvision import transforms as T

    g = torch.Generator().manual_seed(seed)
    size = pre.input_size
    center = pre.transform()
    crop = T.Compose([T.RandomResizedCrop(size, scale=(0.35, 1.0)), T.ToTensor()])
    out = []
    for _, image in photos:
        out.append(center(image))
        for _ in range(count - 1):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
                out.append(crop(image))
    return torch.stack(out)


@torch.no_grad()
def _compare(source, model, views: torch.Tensor, pre) -> dict:
    """Top-1 agreement with the original, mean KL(original || model) of the class distributions,
    and the pixels' share of the model's explained logit (median over views)."""
    from bcosify.explain import explain

    model.eval()
    t = source(pre.normalize(views))
    s = model(views)
    kl = torch.nn.functional.kl_div(
        s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean"
    )
    with torch.enable_grad():
        e = explain(model, views, target=t.argmax(1))
    pixels = e.contributions.flatten(1).sum(1).abs()
    share = pixels / (pixels + e.constant_total.abs()).clamp_min(1e-30)
    return {
        "agree": int((t.argmax(1) == s.argmax(1)).sum()),
        "n": len(views),
        "kl": float(kl),
        "pixel_share": float(share.median()),
    }


def _distill(source, bcos, out: Path, steps: int, overwrite: bool) -> dict:
    """Fine-tune the B=2 model by distillation from the original, on augmented views of the
    training photos; report agreement on fixed views of the held-out photos."""
    from bcosify.sources import demo_photos
    from bcosify.train import finetune

    photos = demo_photos()
    held_out = [(n, im) for n, im in photos if n in HELD_OUT]
    train_images = [(n, im) for n, im in photos if n not in HELD_OUT] + _unlabelled_images()
    pre = source.bcosify_preprocessing
    views = _views(held_out, pre, VIEWS_PER_PHOTO, seed=0)
    seen = _views(train_images[:4], pre, VIEWS_PER_PHOTO, seed=1)
    before = {"held-out": _compare(source, bcos, views, pre), "training": None}
    before["training"] = _compare(source, bcos, seen, pre)
    print(
        f"\nfine-tuning by distillation from the original: {steps} steps on augmented views of "
        f"{len(train_images)} images ({', '.join(n for n, _ in train_images)}); held out: "
        f"{', '.join(HELD_OUT)} ({VIEWS_PER_PHOTO} views each)"
    )
    repeats = max(1, -(-steps * _BATCH // len(train_images)))
    dataset = [(im, 0) for _, im in train_images] * repeats
    t0 = time.perf_counter()
    result = finetune(
        {
            "description": "bcosify demo: distil EfficientNet-Lite0 into its B-cos conversion",
            "data": {
                "image_size": pre.input_size,
                "eval_resize": pre.resize_size,
                "batch_size": _BATCH,
                "num_workers": 0,
                "pin_memory": False,
                "augment": {"scale": [0.25, 1.0], "interpolation": pre.interpolation},
            },
            "optim": {"name": "adamw", "lr": 5e-4, "schedule": "cosine", "schedule_unit": "step"},
            "train": {
                "epochs": 1,
                "max_steps": steps,
                "loss": "distill",
                "bn_recalibration_batches": 8,
                "checkpoint_every_steps": None,
                "seed": 0,
            },
            "log": {"trackers": ["csv"], "log_every_steps": 10, "explain_images": 0},
            "output": str(out / "finetune"),
        },
        model=bcos,
        teacher=source,
        train_dataset=dataset,
        overwrite=overwrite,
    )
    after = {
        "held-out": _compare(source, result.model, views, pre),
        "training": _compare(source, result.model, seen, pre),
    }
    minutes = (time.perf_counter() - t0) / 60
    print(f"after {steps} steps ({minutes:.1f} min), compared with the original model:")
    print(f"{'views':<34} {'top-1 agreement':<18} {'KL(orig || model)':<19} pixels' share")
    for split, label in (
        ("training", "of 4 training images"),
        ("held-out", "of the held-out photos"),
    ):
        for when, r in (("before", before[split]), ("after", after[split])):
            print(
                f"{label + ', ' + when:<34} {r['agree']:>3}/{r['n']:<14} {r['kl']:<19.3f} "
                f"{r['pixel_share']:.2e}"
            )
    print(
        "(pixels' share: |sum of pixel contributions| / (that + |constants|) of the explained "
        "logit, median over views)"
    )
    print(f"fine-tuned model: {result.model_dir} (bcosify.load), curves: {out / 'finetune'}")
    return {
        "steps": steps,
        "minutes": minutes,
        "before": before,
        "after": after,
        "model_dir": str(result.model_dir),
    }


_BATCH = 8
