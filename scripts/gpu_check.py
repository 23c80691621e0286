"""The device part of ``scripts/gpu_check.sh``: mixed precision on the device, and a short
fine-tune through the recipes' data loader.

1. Explanations of a converted ResNet-50 (random weights, BatchNorm statistics calibrated on a
   batch so the logits depend on the input) under bf16 and fp16 autocast on the device: the
   pixel completeness error (target ≤ 1e-2 under bf16) and the agreement with float32.
2. ``bcosify.finetune`` with ``recipes/tiny-cpu.yaml`` on an image folder written from the
   packaged photos (4 classes), under ``train.mixed_precision`` (bf16 by default), through the
   recipes' own loader (worker processes included): steps per second and whether the loss stayed
   finite.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``.

    python scripts/gpu_check.py --device cuda --out benchmarks/gpu
    python scripts/gpu_check.py --device cpu --quick --out /tmp/gpu-dry-run   # the CI dry run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402  (scripts/benchmark.py: model building and calibration)

import bcosify  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision(device: torch.device, arch: str, batch: int, size: int) -> dict:
    """Completeness and agreement with float32 of explanations under autocast on ``device``."""
    model = benchmark.prepare(arch, "bcosify_default", size, device)
    x = benchmark.make_input("bcosify", batch, size, device, seed=5)
    full = bcosify.explain(model, x)
    out: dict = {
        "arch": arch,
        "batch": batch,
        "size": size,
        "float32_pixel_completeness": float(full.pixel_completeness_error.max()),
    }
    for name, dtype in DTYPES.items():
        with torch.autocast(device.type, dtype=dtype):
            e = bcosify.explain(model, x, target=full.target)
        logit_err = (e.explained_logit - full.explained_logit).abs().max()
        contrib_err = (e.contributions - full.contributions).abs().max()
        out[name] = {
            "pixel_completeness": float(e.pixel_completeness_error.max()),
            "logit_rel_error": float(logit_err / full.explained_logit.abs().max()),
            "contribution_rel_error": float(contrib_err / full.contributions.abs().max()),
            "finite": bool(torch.isfinite(e.contributions).all()),
        }
    out["bf16_target_met"] = out["bf16"]["pixel_completeness"] <= 1e-2
    return out


def image_folder(root: Path, size: int, per_class: int) -> Path:
    """4 classes of crops of the packaged photos, train/ and val/."""
    from bcosify.sources import demo_photos

    rng = random.Random(0)
    for name, image in demo_photos()[:4]:
        for split, count in (("train", per_class), ("val", max(2, per_class // 4))):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                w, h = image.size
                s = min(w, h) // 2
                x, y = rng.randint(0, w - s), rng.randint(0, h - s)
                image.crop((x, y, x + s, y + s)).resize((size, size)).save(
                    root / split / name / f"{k}.png"
                )
    return root


def short_finetune(device: torch.device, out: Path, quick: bool, precision: str) -> dict:
    """A few epochs of ``recipes/tiny-cpu.yaml`` on the packaged photos, through its loader."""
    from bcosify.train import finetune

    size = 64 if quick else 128
    data = image_folder(out / "images", size, 8 if quick else 64)
    steps = 4 if quick else 60
    overrides = [
        f"data.root={data}",
        f"output={out / 'finetune'}",
        f"data.image_size={size}",
        f"data.eval_resize={size + size // 8}",
        f"data.batch_size={4 if quick else 32}",
        f"data.num_workers={0 if quick else 4}",
        f"data.pin_memory={str(device.type == 'cuda').lower()}",
        f"train.mixed_precision={precision}",
        f"train.cpu={str(device.type == 'cpu').lower()}",
        f"train.max_steps={steps}",
        "train.epochs=100",
        "train.checkpoint_every_steps=null",
        "log.trackers=[csv]",
        "log.progress_bar=false",
        "log.explain_images=0",
    ]
    start = time.perf_counter()
    result = finetune(ROOT / "recipes" / "tiny-cpu.yaml", overrides, overwrite=True)
    seconds = time.perf_counter() - start
    losses = []
    with open(result.output_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                losses.append(float(row["train/loss"]))
    return {
        "recipe": "recipes/tiny-cpu.yaml",
        "overrides": overrides,
        "steps": result.global_step,
        "seconds": seconds,
        "steps_per_s": result.global_step / seconds,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "loss_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "device": str(next(result.model.parameters()).device),
    }


def markdown(res: dict) -> str:
    mp = res["mixed_precision"]
    ft = res["finetune"]
    lines = [
        f"Command: `{res['command']}`  ",
        f"Device: {res['device_name']}; torch {torch.__version__}.",
        "",
        f"#### Explanations under autocast ({mp['arch']}, batch {mp['batch']}, {mp['size']} px)",
        "",
        "| precision | pixel completeness | logit vs float32 | contributions vs float32 |",
        "| --- | --- | --- | --- |",
        f"| float32 | {mp['float32_pixel_completeness']:.1e} | – | – |",
    ]
    for name in DTYPES:
        r = mp[name]
        lines.append(
            f"| {name} autocast | {r['pixel_completeness']:.1e} | {r['logit_rel_error']:.1e} | "
            f"{r['contribution_rel_error']:.1e} |"
        )
    lines += [
        "",
        f"bf16 completeness ≤ 1e-2: {'yes' if mp['bf16_target_met'] else '**no**'}.",
        "",
        f"#### Short fine-tune ({ft['recipe']}, {res['precision']}, the recipes' loader)",
        "",
        f"{ft['steps']} steps in {ft['seconds']:.1f} s ({ft['steps_per_s']:.2f} steps/s) on "
        f"{ft['device']}; loss {ft['first_loss']:.3f} → {ft['last_loss']:.3f}; finite: "
        f"{'yes' if ft['loss_finite'] else '**no**'}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run)")
    p.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    args.out.mkdir(parents=True, exist_ok=True)
    arch, batch, size = ("resnet18", 2, 64) if args.quick else ("resnet50", 16, 224)
    res = {
        "command": "python scripts/gpu_check.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "mixed_precision": mixed_precision(device, arch, batch, size),
        "finetune": short_finetune(device, args.out, args.quick, args.precision),
    }
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out / "gpu_check.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
