"""The ``bcosify`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bcosify.errors import BcosifyError

_EPILOGS = {
    "convert": """examples:
  bcosify convert resnet50 --out resnet50-bcos                 # torchvision DEFAULT weights
  bcosify convert timm/tf_efficientnet_lite0 --weights packaged --out lite0-bcos
  bcosify convert resnet18 --weights ./resnet18.pth --b 2 --out r18-bcos
  bcosify convert resnet18 --weights none --b 1 --activation keep --maxpool keep --out r18-b1
  bcosify convert bcos-v2/resnet50 --out r50-bcos-v2           # a published B-cos model""",
    "inspect": """examples:
  bcosify inspect resnet50
  bcosify inspect timm/tf_efficientnet_lite0 --activation keep""",
    "evaluate": "",  # bcosify.cli.evaluate.EPILOG
    "explain": """examples:
  bcosify explain lite0-bcos cat.jpg dog.png --out explanations
  bcosify explain lite0-bcos cat.jpg --target 281 --out explanations
  bcosify explain lite0-bcos cat.jpg --top-k 3 --out explanations   # the 3 highest classes
  bcosify explain hf-hub:org/resnet50-bcos cat.jpg --out explanations""",
    "push": """examples:
  bcosify push r50-bcos org/resnet50-bcos              # after `hf auth login`
  bcosify push runs/r50/model org/resnet50-bcos-ft --private""",
    "export": """examples:
  bcosify export r50-bcos r50-bcos.onnx              # logits checked in onnxruntime
  bcosify export hf-hub:org/resnet50-bcos model.onnx --input-size 224

explanations stay in PyTorch (bcosify.explain): the ONNX graph computes the logits only.""",
    "serve": """examples:
  bcosify serve r50-bcos                      # http://127.0.0.1:7860
  bcosify serve hf-hub:org/resnet50-bcos --port 8080""",
    "models": """examples:
  bcosify models          # the architectures verified to convert
  bcosify models --zoo    # the published B-cos v2 models bcosify loads""",
    "finetune": """examples:
  bcosify finetune recipes/tiny-cpu.yaml --data.root ./my-images --output runs/tiny
  bcosify finetune recipes/imagenet-resnet50.yaml --data.root /data/imagenet
  accelerate launch --num_processes 4 -m bcosify finetune recipes/imagenet-resnet50.yaml \\
      --data.root /data/imagenet --output runs/r50
  torchrun --nproc_per_node 4 -m bcosify finetune recipes/imagenet-vit-s.yaml --data.root /data/in1k
  bcosify finetune recipes/imagenet-resnet50.yaml --output runs/r50 --resume

every recipe key can be overridden: --section.key VALUE (or --section.key=VALUE); values are
YAML (3, 1e-4, null, true, "[0.5, 1.0]"). The resolved recipe is saved in the output directory.""",
    "demo": """examples:
  bcosify demo                       # writes figures to ./bcosify-demo
  bcosify demo --out /tmp/demo --overwrite
  bcosify demo --finetune-epochs 0  # conversion and explanations only""",
}


def _add_conversion_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="torchvision name (resnet50), timm/<name>, or bcos-v2/<name> (a published B-cos "
        "model, already converted: `bcosify models --zoo`)",
    )
    p.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT (pretrained, from the local cache or a download), none (random), "
        "packaged (EfficientNet-Lite0 only) or a path to a .pth/.safetensors file",
    )
    p.add_argument("--b", type=float, default=2.0, help="the B of the B-cos units (default 2)")
    p.add_argument("--activation", choices=["remove", "keep", "exact"], default="remove")
    p.add_argument("--maxpool", choices=["avg", "keep"], default="avg")
    p.add_argument("--keep-bias", action="store_true", help="keep biases (for checks only)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="the image side the model is used at (default: its preprocessing); modules that "
        "branch on the input size are traced at it",
    )


def _add_evaluate_options(p: argparse.ArgumentParser) -> None:
    from bcosify.cli.evaluate import EPILOG, add_arguments

    p.epilog = EPILOG
    add_arguments(p)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bcosify",
        description="Turn image classifiers into B-cos networks with exact explanations.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `bcosify COMMAND --help` for the examples of each command",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=_EPILOGS[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("convert", "convert a model and write a bcosify model directory")
    _add_conversion_options(p)
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")

    p = add("inspect", "print the conversion report without writing anything")
    _add_conversion_options(p)

    p = add("evaluate", "top-1/top-5 or the grid pointing game of a model on an image folder")
    _add_evaluate_options(p)

    p = add("explain", "explain images with a converted model; one figure per image")
    p.add_argument("model_dir", help="a directory written by `bcosify convert`, or hf-hub:org/name")
    p.add_argument(
        "images",
        nargs="+",
        help="image files; a video (.mp4, .gif, ...) or a folder of frames gives "
        "<name>_explained.gif (each frame beside its explanation) and a per-frame .json",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--target", type=int, default=None, help="class to explain (default: top-1)")
    which.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="explain the K highest classes of each image (one forward and batched backward "
        "passes); one figure per image and class, <image>_class<C>.png",
    )
    p.add_argument("--out", required=True, help="output directory for the figures")
    p.add_argument("--overwrite", action="store_true", help="replace existing figures")
    p.add_argument(
        "--video-target",
        choices=["fixed", "per-frame"],
        default="fixed",
        help="videos: one class for the clip (the top class of its mean logits; default) or each "
        "frame's own top class (--target sets a class)",
    )
    p.add_argument("--video-format", choices=["gif", "mp4"], default="gif")
    p.add_argument("--max-frames", type=int, default=None, help="videos: at most this many frames")

    p = add("push", "upload a model directory to the Hugging Face Hub, with a model card")
    p.add_argument("model_dir", help="a directory written by `bcosify convert` or finetune")
    p.add_argument("repo_id", help="org/name on the Hugging Face Hub")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--metrics", default=None, help="a JSON file of metrics for the card")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead")

    p = add("export", "export a converted model's forward pass to ONNX (checked in onnxruntime)")
    p.add_argument("model_dir", help="a directory written by `bcosify convert`, or hf-hub:org/name")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--input-size", type=int, default=None, help="image side (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")

    p = add("serve", "a local web page: upload an image, see the top-5 explanations (Gradio)")
    p.add_argument("model_dir", help="a directory written by `bcosify convert`, or hf-hub:org/name")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: local)")
    p.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")

    p = add("models", "list the architectures verified to convert, or the published B-cos models")
    p.add_argument(
        "--zoo",
        action="store_true",
        help="list the published B-cos models (bcos-v2/<name>, bcosification/<name>) with their "
        "published top-1",
    )

    p = add("finetune", "fine-tune a B-cos model with a recipe (one device or many)")
    p.add_argument("recipe", help="a YAML recipe (see recipes/)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    p = add("demo", "convert the packaged EfficientNet-Lite0 and explain the packaged photos")
    p.add_argument("--out", default="bcosify-demo", help="output directory (default bcosify-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace existing figures")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=4,
        help="epochs of each recovery run on the digits (default 4, about 4 minutes in all on 2 "
        "CPU cores; 0 skips the recovery)",
    )
    return parser


def _config(args):
    from bcosify.config import BcosConfig

    return BcosConfig(
        b=args.b, activation=args.activation, maxpool=args.maxpool, keep_bias=args.keep_bias
    )


def _build_and_convert(args):
    from tqdm import tqdm

    from bcosify.config import BcosConfig
    from bcosify.convert import convert
    from bcosify.sources import BCOSIFICATION_PREFIX, ZOO_PREFIX, build_model, zoo_entry

    config = _config(args)
    published = args.model.startswith((ZOO_PREFIX, BCOSIFICATION_PREFIX))
    if published and zoo_entry(args.model).bcos:
        # a published B-cos model: built converted (a standard ViT is a source, converted below)
        if config != BcosConfig() or args.input_size is not None:
            raise BcosifyError(
                f"{args.model} is a published B-cos model, built already converted: the "
                "conversion options (--b, --activation, --maxpool, --keep-bias, --input-size) "
                "do not apply to it; leave them out"
            )
        model = build_model(args.model, args.weights, num_classes=args.num_classes)
        return model, model
    with tqdm(total=2, desc="convert", unit="step", leave=False, disable=None) as bar:
        bar.set_postfix_str(f"building {args.model}")
        source = build_model(args.model, args.weights, num_classes=args.num_classes)
        bar.update()
        bar.set_postfix_str("tracing and rewriting")
        model = convert(source, config, input_size=args.input_size)
        bar.update()
    return source, model


def _cmd_convert(args) -> int:
    from bcosify.io import save

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise BcosifyError(f"{out} exists and is not empty; pass --overwrite to replace it")
    _, model = _build_and_convert(args)
    print(model.conversion_report)
    path = save(model, out, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def _cmd_inspect(args) -> int:
    from bcosify.convert import analyze
    from bcosify.sources import build_model

    source = build_model(args.model, args.weights, num_classes=args.num_classes)
    report = analyze(source, _config(args), input_size=args.input_size)
    print(report)
    return 0 if report.ok else 1


def _cmd_evaluate(args) -> int:
    from bcosify.cli.evaluate import run

    return run(args)


def _class_names(num_classes: int) -> list[str] | None:
    from bcosify.evaluate.data import imagenet_names

    return imagenet_names(num_classes)


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise BcosifyError(f"image not found: {path}")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise BcosifyError(f"{path} is not an image PIL can read ({exc})") from exc


def _top5(logits, names) -> str:
    values, idx = logits.topk(min(5, logits.numel()))
    parts = []
    for v, i in zip(values.tolist(), idx.tolist()):
        label = names[i] if names else str(i)
        parts.append(f"{label} ({i}): {v:.2f}")
    return "; ".join(parts)


def _cmd_explain(args) -> int:
    from tqdm import tqdm

    from bcosify.explain import explain
    from bcosify.io import load
    from bcosify.video import explain_video, is_video

    videos = [p for p in args.images if is_video(p)]
    paths = [p for p in args.images if not is_video(p)]
    if args.top_k is not None and videos:
        raise BcosifyError("--top-k explains images; for videos use --target or --video-target")
    images = [_open_image(p) for p in paths]
    out = Path(args.out)
    stems = [Path(p).stem for p in paths]
    model = load(args.model_dir)
    n_classes = model.bcosify_num_classes
    if args.target is not None and not 0 <= args.target < n_classes:
        raise BcosifyError(f"--target must lie in [0, {n_classes - 1}], got {args.target}")
    for video in videos:
        target = args.target if args.target is not None else args.video_target
        written = explain_video(
            model,
            video,
            out,
            target=target,
            fmt=args.video_format,
            max_frames=args.max_frames,
            overwrite=args.overwrite,
        )
        print(f"{video}: wrote {written} and {written.with_suffix('.json')}")
    if args.top_k is not None and not 1 <= args.top_k <= n_classes:
        raise BcosifyError(f"--top-k must lie in [1, {n_classes}], got {args.top_k}")
    if args.top_k is None:  # the top-k figures' names are known only after the forward pass
        existing = [out / f"{s}.png" for s in stems if (out / f"{s}.png").exists()]
        if existing and not args.overwrite:
            raise BcosifyError(f"{existing[0]} exists; pass --overwrite to replace it")
    names = _class_names(n_classes)
    target = args.target if args.top_k is None else f"topk:{args.top_k}"
    for stem, image in tqdm(list(zip(stems, images)), desc="explain", unit="image", disable=None):
        x = model.transform(image).unsqueeze(0)
        e = explain(model, x, target=target)
        if args.top_k is not None and not args.overwrite:
            taken = [out / f"{stem}_class{int(t)}.png" for t in e.target[0]]
            if any(p.exists() for p in taken):
                raise BcosifyError(
                    f"{next(p for p in taken if p.exists())} exists; pass --overwrite to replace it"
                )
        paths = e.save_figures(out, names=[stem], class_names=names)
        tqdm.write(f"{stem}: top-5 {_top5(e.logits[0], names)}")
        classes = e.target[0].tolist() if e.multi_target else [int(e.target[0])]
        tqdm.write(f"  explained class(es) {classes}, figure(s) {', '.join(map(str, paths))}")
    return 0


def _cmd_export(args) -> int:
    from bcosify.integrations.onnx import TOLERANCE, export_onnx
    from bcosify.io import load

    model = load(args.model_dir)
    path = export_onnx(
        model,
        args.out,
        input_size=args.input_size,
        overwrite=args.overwrite,
        check=not args.no_check,
    )
    checked = "not checked" if args.no_check else f"logits equal torch's within {TOLERANCE:g}"
    print(f"wrote {path} ({checked}); explanations stay in PyTorch: bcosify.explain")
    return 0


def _cmd_serve(args) -> int:
    from bcosify.app import serve

    serve(args.model_dir, host=args.host, port=args.port)
    return 0


def _cmd_models(args) -> int:
    if args.zoo:
        return _print_zoo()
    from bcosify.support import VERIFIED_MODELS, support_matrix

    rows = support_matrix()
    if not rows:  # the support matrix was never generated: the CI-verified table
        print(f"{'model':<32} {'library':<12} family")
        for name, info in VERIFIED_MODELS.items():
            print(f"{name:<32} {info['library']:<12} {info['family']}")
        return 0

    def err(v) -> str:
        return "" if v is None else f"{v:.1e}"

    print(
        f"{'model':<40} {'library':<12} {'status':<12} {'dependence':>10} {'equivalence':>11} "
        f"{'completeness':>12}"
    )
    for r in rows:
        print(
            f"{r['model']:<40} {r['library']:<12} {r['status']:<12} "
            f"{err(r.get('input_dependence')):>10} {err(r.get('equivalence')):>11} "
            f"{err(r.get('completeness')):>12}"
        )
    print("details: docs/support.md (scripts/support_matrix.py)")
    return 0


def _cmd_push(args) -> int:
    from bcosify.hub import push_to_hub, read_metrics

    url = push_to_hub(
        args.model_dir,
        args.repo_id,
        private=True if args.private else None,
        create_pr=args.create_pr,
        metrics=read_metrics(args.metrics) if args.metrics else None,
    )
    print(f"pushed to {url}; load it with bcosify.load('hf-hub:{args.repo_id}')")
    return 0


def _print_zoo() -> int:
    from bcosify.sources import list_zoo

    verdicts = {True: "yes", False: "FAILED", None: "not run"}
    print(f"{'model':<44} {'kind':<9} {'top-1':>7}  {'verified':<9} made as")
    for r in list_zoo():
        top1 = "–" if r["top1"] is None else f"{r['top1']:.2f}%"
        print(f"{r['name']:<44} {r['kind']:<9} {top1:>7}  {verdicts[r['verified']]:<9} {r['how']}")
    print(
        "top-1: published with the weights (ImageNet val; – not published with them). verified: "
        "same function as the published code's model on random weights (docs/zoo.md, "
        "scripts/zoo.py)"
    )
    return 0


def _overrides(extra: Sequence[str]) -> list[str]:
    """``--a.b 3 --c=x`` -> ``["a.b=3", "c=x"]``."""
    out: list[str] = []
    items = list(extra)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) < 3:
            raise BcosifyError(
                f"unexpected argument {item!r}; recipe overrides look like --train.epochs 3"
            )
        if "=" in item:
            out.append(item[2:])
            i += 1
            continue
        if i + 1 >= len(items) or items[i + 1].startswith("--"):
            raise BcosifyError(f"{item} needs a value (e.g. {item} 3 or {item}=3)")
        out.append(f"{item[2:]}={items[i + 1]}")
        i += 2
    return out


def _cmd_finetune(args, extra: Sequence[str]) -> int:
    try:
        from bcosify.train import finetune
    except ImportError as e:
        raise BcosifyError(
            f'finetune needs the training extra: pip install "bcosify[train]" ({e})'
        ) from e
    result = finetune(args.recipe, _overrides(extra), resume=args.resume, overwrite=args.overwrite)
    print(f"fine-tuned model written to {result.model_dir} (load it with bcosify.load)")
    return 0


def _cmd_demo(args) -> int:
    from bcosify.demo import run_demo

    if args.finetune_epochs < 0:
        raise BcosifyError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    run_demo(Path(args.out), overwrite=args.overwrite, finetune_epochs=args.finetune_epochs)
    return 0


_COMMANDS = {
    "convert": _cmd_convert,
    "inspect": _cmd_inspect,
    "evaluate": _cmd_evaluate,
    "explain": _cmd_explain,
    "models": _cmd_models,
    "export": _cmd_export,
    "serve": _cmd_serve,
    "push": _cmd_push,
    "demo": _cmd_demo,
    "finetune": _cmd_finetune,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bcosify`` command; returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "finetune":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        if args.command == "finetune":
            return _cmd_finetune(args, extra)
        return _COMMANDS[args.command](args)
    except BcosifyError as exc:
        first, *rest = str(exc).splitlines() or [""]
        print(f"bcosify: error: {first}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bcosify: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bcosify models | head`: the reader left, which is no error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
