"""The offline demo: convert the packaged EfficientNet-Lite0 and explain the packaged photos."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from bcosify.config import BcosConfig
from bcosify.convert import convert
from bcosify.errors import BcosifyError
from bcosify.explain import explain

__all__ = ["run_demo"]

EQUIVALENCE = BcosConfig(b=1, keep_bias=True, activation="keep", maxpool="keep")


def run_demo(out: Path, *, overwrite: bool = False) -> dict:
    """Convert the packaged EfficientNet-Lite0, compare predictions, write explanation figures.

    Prints, per photo, the original model's top-1 class and that of the converted model at B=1
    with biases kept (an exact rewrite: the two must agree), then explains the original's class
    with the B=2 conversion (not fine-tuned yet) and writes one figure per photo to ``out``.

    Returns:
        A summary dict (agreement, completeness errors, figure paths).
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
    return {"agreement": agree, "total": len(photos), "completeness": errors, "figures": paths}
