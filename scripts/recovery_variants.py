"""Which start and which loss recover a B-cosified model best: measured on held-out digits.

The demo's recovery task (:mod:`bcosify.demo`): the packaged ImageNet EfficientNet-Lite0 is
fine-tuned on scikit-learn's digits as a standard network once, then every variant B-cosifies it
and fine-tunes it for the same number of steps. Each variant changes one thing against the demo's
setting (feature alignment, ReLU kept, logit term from step 40, patch norm of the first layer on
the raw encoding, BatchNorm statistics re-estimated, B fixed at 2):

- the ReLU removed (bcosify's conversion default) or kept (the published final configs);
- the first layer's patch norm on the normalised input (the published code);
- B ramped from 1 to 2 over the first 40 steps;
- BatchNorm statistics not re-estimated;
- the logit term from step 0;
- logit distillation alone (with ReLU kept and removed), and the labels (BCE) instead.

Every run reports held-out accuracy and top-1 agreement with the standard model.

Usage::

    python scripts/recovery_variants.py --json benchmarks/recovery_variants.json \\
        --markdown docs/recovery-variants.md
    python scripts/recovery_variants.py --epochs 1 --only demo,distill --out /tmp/rv  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (what changes, loss, BcosConfig options, recipe train options)
LOGIT_START = {"align": {"logit_start_step": 40}}
VARIANTS: dict[str, tuple[str, str, dict, dict]] = {
    "demo": ("the demo: alignment, ReLU kept, logit term from step 40", "align", {}, LOGIT_START),
    "relu-removed": ("ReLU removed", "align", {"activation": "remove"}, LOGIT_START),
    "first-norm-normalized": (
        "first layer's patch norm on the normalised input",
        "align",
        {"first_layer_norm": "normalized"},
        LOGIT_START,
    ),
    "b-ramp": (
        "B ramped from 1 to 2 over 40 steps",
        "align",
        {},
        {**LOGIT_START, "b_ramp_steps": 40},
    ),
    "no-bn-recalibration": (
        "BatchNorm statistics not re-estimated",
        "align",
        {},
        {**LOGIT_START, "bn_recalibration_batches": 0},
    ),
    "logit-from-0": ("logit term from step 0", "align", {}, {}),
    "distill": ("logit distillation alone (no features)", "distill", {}, {}),
    "distill-relu-removed": (
        "logit distillation alone, ReLU removed",
        "distill",
        {"activation": "remove"},
        {},
    ),
    "bce-labels": ("the labels (BCE) instead of the standard model", "bce", {}, {}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every run (default 4)")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--out", default="recovery-variants", help="run directory")
    parser.add_argument("--json", default=None, help="also copy results.json here")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--seeds", default="0,1", help="comma-separated train.seed values per variant (default 0,1)"
    )
    args = parser.parse_args(argv)

    import torch

    from bcosify.config import BcosConfig
    from bcosify.demo import RECOVERY_CONFIG, bcos_run, digits_task

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(v) for v in args.seeds.split(",")]
    out = Path(args.out)
    t0 = time.perf_counter()
    task = digits_task(args.epochs)
    results = {
        "settings": {
            "epochs": args.epochs,
            "steps": task.steps,
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "seeds": seeds,
            "command": "python scripts/recovery_variants.py " + " ".join(argv or sys.argv[1:]),
        },
        "standard": task.score(task.standard_pred, task.standard_minutes),
        "variants": {},
    }
    base = RECOVERY_CONFIG.to_dict()
    for name in names:
        what, loss, config, train = VARIANTS[name]
        runs = []
        for seed in seeds:
            print(f"\n== {name} (seed {seed}): {what}")
            scores, _ = bcos_run(
                task,
                out / f"{name}-seed{seed}",
                loss,
                BcosConfig.from_dict({**base, **config}),
                overwrite=True,
                seed=seed,
                **json.loads(json.dumps(train)),
            )
            runs.append({"seed": seed, **scores})
        acc = [r["accuracy"] for r in runs]
        agree = [r["agreement"] for r in runs]
        results["variants"][name] = {
            "what": what,
            "loss": loss,
            "accuracy": sum(acc) / len(acc),
            "agreement": sum(agree) / len(agree),
            "accuracy_range": [min(acc), max(acc)],
            "agreement_range": [min(agree), max(agree)],
            "minutes": sum(r["minutes"] for r in runs) / len(runs),
            "runs": runs,
        }
    results["settings"]["minutes"] = (time.perf_counter() - t0) / 60
    table = _table(results)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    (out / "results.json").write_text(text, encoding="utf-8")
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 0


def _table(results: dict) -> str:
    s = results["settings"]
    std = results["standard"]
    lines = [
        f"Held-out digits (450 images), {s['steps']} steps per run ({s['epochs']} epochs), mean "
        f"[min, max] over train.seed {s['seeds']}; standard model {std['accuracy']:.1f} %.",
        "",
        "| variant | what changes against the demo | held-out accuracy | agreement with standard "
        "| minutes per run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results["variants"].items():
        lines.append(
            f"| `{name}` | {r['what']} | {r['accuracy']:.1f} % [{r['accuracy_range'][0]:.1f}, "
            f"{r['accuracy_range'][1]:.1f}] | {r['agreement']:.1f} % [{r['agreement_range'][0]:.1f}"
            f", {r['agreement_range'][1]:.1f}] | {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
