"""The ``bcosify evaluate`` command: accuracy, or the grid pointing game, on an image folder.

The command-line side of :mod:`bcosify.evaluate` (which holds the library functions):
:mod:`bcosify.cli` registers the subcommand with :func:`add_arguments` and calls :func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from bcosify.errors import BcosifyError

__all__ = ["EPILOG", "add_arguments", "run"]

EPILOG = """examples:
  bcosify evaluate r50-bcos --data /data/imagenet                 # top-1/top-5 of a saved model
  bcosify evaluate r50-bcos --data /data/imagenet --original resnet50   # ... and of the original
  bcosify evaluate resnet50 --data /data/imagenet --weights DEFAULT     # an original model only
  bcosify evaluate r50-bcos --data /data/imagenet --gridpg --out gridpg-r50
  bcosify evaluate r50-bcos --data /data/imagenet --gridpg --baselines --original resnet50
  bcosify evaluate vit-bcos --data /data/imagenet --gridpg --grid-size 2   # windows of 224

MODEL is a directory written by `bcosify convert` / bcosify.save (a converted model, fed images in
[0, 1]) or a source model name with --weights (an original model, fed normalised images).
DATA holds one sub-folder per class (or such a folder in DATA/val): folders are mapped to the
model's classes by name (WordNet ids such as n01440764, or class names) or, when there are as
many folders as classes, by sorted order. Results go to --out (accuracy.json, or result.json,
gridpg.md, grids.png and boxplot.png)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``bcosify evaluate`` to ``p``."""
    p.add_argument("model", help="a converted model directory, or a source model name")
    p.add_argument("--data", required=True, help="image folder: one sub-folder per class")
    p.add_argument(
        "--weights",
        default="DEFAULT",
        help="weights of a source MODEL name: DEFAULT, none or a .pth/.safetensors file",
    )
    p.add_argument("--num-classes", type=int, default=None, help="classes of a source MODEL")
    p.add_argument(
        "--original",
        default=None,
        help="the unconverted model to compare with: a source name (resnet50, timm/...) or a "
        "weight file for the converted model's architecture (default with --baselines: the "
        "converted model's source with --original-weights)",
    )
    p.add_argument("--original-weights", default="DEFAULT", help="weights of --original NAME")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument(
        "--image-size", type=int, default=None, help="crop size instead of the model's (e.g. 224)"
    )
    p.add_argument(
        "--max-images", type=int, default=None, help="evaluate a random subset of this many images"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and the grids")
    p.add_argument("--out", default="bcosify-eval", help="output directory (default bcosify-eval)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    g = p.add_argument_group("grid pointing game")
    g.add_argument("--gridpg", action="store_true", help="run the grid pointing game")
    g.add_argument("--grid-size", type=int, default=3, help="g of the g x g grids (default 3)")
    g.add_argument("--n-grids", type=int, default=500, help="number of grids (default 500)")
    g.add_argument("--threshold", type=float, default=0.5, help="min. confidence (default 0.5)")
    g.add_argument(
        "--confidence",
        choices=["auto", "sigmoid", "softmax"],
        default="auto",
        help="auto: sigmoid for converted models, softmax for original ones",
    )
    g.add_argument("--smooth", type=int, default=15, help="average-pool size (default 15, 0: none)")
    g.add_argument(
        "--window",
        default="auto",
        help="auto (sliding windows of the cell size if the model needs a fixed input size), "
        "none, or a window size in pixels",
    )
    g.add_argument("--stride", type=int, default=None, help="window stride (default: half)")
    g.add_argument(
        "--baselines",
        nargs="?",
        const="ixg,ig,gradcam",
        default=None,
        help="post-hoc baselines on the original model, comma-separated from ixg, ig, gradcam "
        "(without a value, or --original without --baselines: all)",
    )
    g.add_argument("--gradcam-layer", default=None, help="Grad-CAM layer (default: automatic)")
    g.add_argument("--ig-steps", type=int, default=20, help="Integrated Gradients steps (20)")
    g.add_argument("--figure-grids", type=int, default=3, help="grids shown in grids.png (3)")


def run(args: argparse.Namespace) -> int:
    """Run ``bcosify evaluate`` with parsed arguments; returns the exit status."""
    out = Path(args.out).expanduser()
    names = ("result.json", "gridpg.md", "grids.png", "boxplot.png") if args.gridpg else ()
    names = names or ("accuracy.json",)
    existing = [out / n for n in names if (out / n).exists()]
    if existing and not args.overwrite:
        raise BcosifyError(f"{existing[0]} exists; pass --overwrite to replace it")
    for flag in ("batch_size", "grid_size", "n_grids", "ig_steps"):
        if getattr(args, flag) < 1:
            raise BcosifyError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.workers < 0 or args.figure_grids < 0:
        raise BcosifyError("--workers and --figure-grids must be >= 0")
    wanted = _baseline_names(args.baselines)
    window = _window(args.window)
    device = _device(args.device)
    model, kind = _main_model(args, device)
    num_classes = _num_classes(model)
    pre = _preprocessing(model, args.image_size)
    data = _dataset(args, pre, args.max_images, args.seed)
    class_map = _class_map(model, num_classes, data)
    original = _original(args, model, kind, num_classes, device)
    if args.gridpg:
        return _run_gridpg(args, out, model, kind, original, data, class_map, pre, wanted, window)
    return _run_accuracy(args, out, model, kind, original, data, class_map)


# ---------------------------------------------------------------------------- models and data
def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise BcosifyError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, auto)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BcosifyError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def _main_model(args, device) -> tuple[Any, str]:
    from bcosify.hub import HF_PREFIX
    from bcosify.io import load
    from bcosify.sources import build_model

    if args.model.startswith(HF_PREFIX):
        return load(args.model, map_location=device), "converted"
    path = Path(args.model).expanduser()
    if path.is_dir():
        return load(path, map_location=device), "converted"
    from bcosify.convert import is_converted

    model = build_model(args.model, args.weights, num_classes=args.num_classes)
    # a published B-cos model (bcos-v2/NAME) is built converted
    return model.to(device), "converted" if is_converted(model) else "original"


def _num_classes(model) -> int:
    n = getattr(model, "bcosify_num_classes", None)
    if isinstance(n, int):
        return n
    return int((getattr(model, "bcosify_source", None) or {})["num_classes"])


def _preprocessing(model, image_size: int | None):
    pre = model.bcosify_preprocessing
    if image_size is None:
        return pre
    if image_size < 1:
        raise BcosifyError(f"--image-size must be >= 1, got {image_size}")
    resize = max(image_size, round(image_size * pre.resize_size / pre.input_size))
    return dataclasses.replace(pre, input_size=image_size, resize_size=resize)


def _dataset(args, pre, max_images: int | None, seed: int):
    import torch
    from torch.utils.data import Subset

    from bcosify.evaluate.data import image_folder

    data = image_folder(args.data, transform=pre.transform())
    if len(data) == 0:
        raise BcosifyError(f"{args.data} holds no images")
    if max_images is not None:
        if max_images < 1:
            raise BcosifyError(f"--max-images must be >= 1, got {max_images}")
        if max_images < len(data):
            g = torch.Generator().manual_seed(seed)
            keep = sorted(torch.randperm(len(data), generator=g)[:max_images].tolist())
            subset = Subset(data, keep)
            subset.classes = data.classes
            return subset
    return data


def _class_map(model, num_classes: int, data) -> list[int]:
    from bcosify.evaluate.data import class_index_map, model_categories

    return class_index_map(data.classes, num_classes, model_categories(model, num_classes))


def _original(args, model, kind: str, num_classes: int, device):
    from bcosify.sources import build_model

    if args.original is None and not (args.baselines and kind == "converted"):
        return None
    if kind == "original":
        raise BcosifyError(
            "--original compares a converted model with its original; MODEL is already an "
            "original model (give a converted model directory as MODEL)"
        )
    source_name = (getattr(model, "bcosify_source", None) or {}).get("name")
    spec = args.original
    zoo = (getattr(model, "bcosify_source", None) or {}).get("zoo")
    if spec is None and zoo:
        raise BcosifyError(
            f"{zoo} was trained as a B-cos model: it has no original to compare with or to run "
            "the baselines on; pass --original NAME (and --original-weights) for one"
        )
    if spec is None:
        if not source_name:
            raise BcosifyError(
                "--baselines need the original model: pass --original NAME (and --original-weights)"
            )
        spec, weights = source_name, args.original_weights
    elif Path(spec).expanduser().is_file():
        if not source_name:
            raise BcosifyError(
                f"--original {spec} is a weight file, but the converted model records no source "
                "architecture; pass --original NAME --original-weights FILE"
            )
        spec, weights = source_name, spec
    elif Path(spec).expanduser().is_dir():
        raise BcosifyError(
            f"--original {spec} is a directory; it must be the unconverted model: a source name "
            "(resnet50, timm/...) or a weight file"
        )
    else:
        weights = args.original_weights
    original = build_model(spec, weights, num_classes=num_classes)
    return original.to(device)


# ---------------------------------------------------------------------------- accuracy
def _run_accuracy(args, out: Path, model, kind, original, data, class_map) -> int:
    from bcosify.evaluate.accuracy import evaluate_accuracy

    rows = [(args.model, kind, model, data)]
    if original is not None:
        pre = _preprocessing(original, args.image_size)
        indices = getattr(data, "indices", None)
        data_o = _dataset(args, pre, None, args.seed)
        if indices is not None:
            from torch.utils.data import Subset

            data_o = Subset(data_o, indices)
        name = original.bcosify_source["name"]
        rows.append((name, "original", original, data_o))
    results = []
    for name, k, m, d in rows:
        r = evaluate_accuracy(
            m,
            d,
            batch_size=args.batch_size,
            num_workers=args.workers,
            class_map=class_map,
            desc=f"accuracy {name}",
        )
        results.append({"model": name, "kind": k, **r.to_dict()})
    k5 = results[0]["k5"]
    print(f"{'model':<36} {'kind':<10} {'top-1':>8} {f'top-{k5}':>8} {'images':>8}")
    for r in results:
        print(
            f"{r['model']:<36} {r['kind']:<10} {100 * r['top1']:7.2f}% {100 * r['top5']:7.2f}% "
            f"{r['n']:>8}"
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "accuracy.json"
    payload = {"data": str(args.data), "classes": len(data.classes), "results": results}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------- grid pointing game
def _window(value: str):
    if value == "auto":
        return "auto"
    if value == "none":
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise BcosifyError(f"--window must be auto, none or a size in pixels, got {value!r}")
    return size


def _baseline_names(value: str | None) -> list[str]:
    from bcosify.evaluate.baselines import BASELINES

    if value is None:
        return []
    wanted = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in BASELINES]
    if unknown or not wanted:
        raise BcosifyError(
            f"--baselines takes a comma-separated list of {', '.join(BASELINES)}, got {value!r}"
        )
    return list(dict.fromkeys(wanted))


def _baselines(args, wanted: list[str], original, pre) -> list:
    from bcosify.evaluate import baselines as B

    methods = []
    for key in wanted:
        if key == "ixg":
            methods.append(B.input_x_gradient(original))
        elif key == "ig":
            methods.append(
                B.integrated_gradients(
                    original, n_steps=args.ig_steps, internal_batch_size=args.batch_size
                )
            )
        else:
            methods.append(
                B.grad_cam(original, layer=args.gradcam_layer, image_size=pre.input_size)
            )
    return methods


def _run_gridpg(
    args, out: Path, model, kind, original, data, class_map, pre, wanted, window
) -> int:
    from bcosify.evaluate.baselines import BASELINES, bcos_explainer
    from bcosify.evaluate.data import model_categories
    from bcosify.evaluate.gridpg import grid_pointing_game

    if kind == "original":
        methods = _baselines(args, wanted or list(BASELINES), model, pre)
    else:
        if original is not None and not wanted:  # --original without --baselines: all of them
            wanted = list(BASELINES)
        methods = [bcos_explainer(model)] + _baselines(args, wanted, original, pre)
    result = grid_pointing_game(
        model,
        data,
        methods=methods,
        grid_size=args.grid_size,
        n_grids=args.n_grids,
        seed=args.seed,
        confidence=args.confidence,
        threshold=args.threshold,
        smooth=args.smooth,
        window=window,
        stride=args.stride,
        batch_size=args.batch_size,
        num_workers=args.workers,
        class_map=class_map,
        figure_grids=args.figure_grids,
    )
    n = _num_classes(model)
    cats = model_categories(model, n)
    names = cats.get("categories") or [d.split(",")[0] for d in cats.get("descriptions", [])]
    result.settings.update(
        {"model": args.model, "kind": kind, "data": str(args.data), "threshold": args.threshold}
    )
    if original is not None:
        result.settings["original"] = original.bcosify_source
    paths = result.save(out, overwrite=args.overwrite, class_names=names or None)
    pool = result.pool
    print(
        f"pool: {pool['confident']} of {pool['images']} images correct with {pool['confidence']} "
        f"confidence > {pool['threshold']} (top-1 {100 * pool['top1']:.2f}%), "
        f"{pool['classes_with_images']} classes"
    )
    if len(result.grids) < args.n_grids:
        print(f"note: the pool allowed {len(result.grids)} of the {args.n_grids} grids requested")
    print(result.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
