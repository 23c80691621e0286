"""The miniature's speed-up, repeated over seeds.

``scripts/replicate.py`` measures the speed-up of a B-cosified model over B-cos from scratch with
one seed. That number is the ratio of two "first epoch at or above the from-scratch final"
crossings, and both ends are noisy: the from-scratch final moves by a few tenths of a point from
one seed to the next, and a B-cosified curve that ends close to it crosses it early or late. Three
runs of the same setting gave 9.3x, 5.1x and 3.6x.

This script keeps what a user has fixed (the data, and the standard model: one checkpoint, trained
once with the default seed, as ``replicate.py`` trains it) and repeats what varies between two
people's runs: the from-scratch model (its initialisation, data order and augmentation) and the
B-cosified fine-tuning (data order and augmentation), once per seed. It reports

- the speed-up of each seed's B-cosified run against the same seed's from-scratch run;
- the speed-up over every pair (any B-cosified seed against any from-scratch seed): min, median,
  max;
- the speed-up of the seed-averaged curves (the mean test top-1 at each evaluation), which is the
  number the target is judged on: averaging takes most of the evaluation noise out of both
  crossings.

Usage::

    python scripts/replicate_seeds.py --publish               # 3 seeds, about 50 min on 2 cores
    python scripts/replicate_seeds.py --quick --out /tmp/qs   # a smoke run of about a minute

``--publish`` writes ``benchmarks/replication-seeds.json``, ``docs/replication-seeds.png`` and
``docs/replication-seeds.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from bcosify.errors import BcosifyError


def _load_replicate():
    """``scripts/replicate.py`` as a module (scripts/ is not a package)."""
    name = "replicate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("replicate.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rep = _load_replicate()


def mean_curve(curves: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The pointwise mean of curves evaluated at the same epochs.

    Example:
        >>> mean_curve([[(1.0, 80.0), (2.0, 90.0)], [(1.0, 82.0), (2.0, 88.0)]])
        [(1.0, 81.0), (2.0, 89.0)]

    Raises:
        ReplicationError: if the curves were not evaluated at the same epochs.
    """
    if not curves:
        raise rep.ReplicationError("no curves to average")
    epochs = [e for e, _ in curves[0]]
    for c in curves[1:]:
        if [e for e, _ in c] != epochs:
            raise rep.ReplicationError(
                "the seeds' curves were evaluated at different epochs; run every seed with the "
                "same settings"
            )
    return [(e, statistics.fmean(c[i][1] for c in curves)) for i, e in enumerate(epochs)]


def seed_speedups(bcosified: dict, scratch: dict) -> dict:
    """Speed-ups of B-cosified over from-scratch curves keyed by seed: matched seeds, every pair
    and the seed-averaged curves (see the module docstring).

    A pair counts only at equal final accuracy (the claim): one whose B-cosified run never
    reaches the from-scratch final, or ends below it, counts as 0 in the pair statistics.

    Example:
        >>> scratch = {0: [(1, 80.0), (2, 88.0), (3, 90.0)], 1: [(1, 80.0), (2, 90.0), (3, 90.0)]}
        >>> bcos = {0: [(0.5, 89.0), (1.0, 90.5)], 1: [(0.5, 90.0), (1.0, 91.0)]}
        >>> r = seed_speedups(bcos, scratch)
        >>> [p["speedup"] for p in r["matched"]], r["mean"]["speedup"]
        ([3.0, 4.0], 3.0)
        >>> r["pairs"]["min"], r["pairs"]["median"], r["pairs"]["max"], r["pairs"]["equal_final"]
        (2.0, 3.5, 6.0, 4)
        >>> seed_speedups({0: [(1.0, 89.0)]}, {0: [(1, 80.0), (2, 90.0)]})["pairs"]["median"]
        0.0
    """
    matched = [
        {"seed": k, **rep.speedup(bcosified[k], scratch[k])} for k in bcosified if k in scratch
    ]
    pairs = [rep.speedup(b, c) for b, c in itertools.product(bcosified.values(), scratch.values())]
    values = [(p["speedup"] or 0.0) if p["equal_final"] else 0.0 for p in pairs]
    return {
        "matched": matched,
        "pairs": {
            "n": len(pairs),
            "equal_final": sum(v > 0 for v in values),
            "min": min(values),
            "median": statistics.median(values),
            "max": max(values),
            "all": values,
        },
        "mean": rep.speedup(
            mean_curve(list(bcosified.values())), mean_curve(list(scratch.values()))
        ),
        "mean_curves": {
            "bcosified": mean_curve(list(bcosified.values())),
            "scratch": mean_curve(list(scratch.values())),
        },
    }


def run(s, seeds: Sequence[int], run_name: str, data_dir: str | None, out: Path, log=print) -> dict:
    """Train the standard model once, then a from-scratch and a B-cosified run per seed."""
    if run_name not in rep.RUNS:
        raise rep.ReplicationError(f"unknown run {run_name!r}; choose from {', '.join(rep.RUNS)}")
    spec = rep.RUNS[run_name]
    activation = spec.config.get("activation", "remove")
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    start = time.perf_counter()
    env_start = rep.environment(torch.get_num_threads())
    out.mkdir(parents=True, exist_ok=True)
    data = rep.load_fashion_mnist(data_dir)
    train_pil, test_pil, test_t, mean, std = rep.resnet_data(data, s, log)
    log(f"seeds {list(seeds)}")
    # the standard model exactly as replicate.py trains it: one checkpoint for every seed
    standard, hist, std_seconds = rep.train_resnet_source(s, train_pil, test_t, mean, std, log)
    per_seed: dict[str, dict] = {}
    for k in seeds:
        res, _, _ = rep.experiment(
            f"seed{k}",
            make_source=rep.resnet_factory(s),
            standard=standard,
            std_history=hist,
            std_seconds=std_seconds,
            mean=mean,
            std=std,
            size=rep.IMAGE_SIZE,
            train_pil=train_pil,
            test_pil=test_pil,
            test_t=test_t,
            runs=(run_name,),
            scratch_activations=(activation,),
            epochs=s.epochs,
            scratch_epochs=s.scratch_epochs,
            evals_per_epoch=s.evals_per_epoch,
            s=replace(s, seed=k),
            out=out,
            log=log,
        )
        per_seed[str(k)] = {
            "scratch": res["scratch"][activation],
            "bcosified": res["bcosified"][run_name],
        }
    results = {
        "claim": "the miniature's speed-up (scripts/replicate.py), repeated over seeds",
        "command": " ".join(["python scripts/replicate_seeds.py", *sys.argv[1:]]),
        "data": {"source": data.source},
        "settings": rep._settings_dict(s),
        "run": run_name,
        "label": spec.label,
        "scratch_label": f"B-cos from scratch (labels), ReLU {rep._KEPT[activation]}",
        "seeds": [int(k) for k in seeds],
        "standard": {"top1": hist[-1]["top1"], "curve": hist, "seconds": std_seconds},
        "per_seed": per_seed,
    }
    analyse(results)
    results["timing_s"] = time.perf_counter() - start
    results["environment"] = {
        "start": env_start,
        "end": rep.environment(torch.get_num_threads()),
    }
    write_outputs(results, out)
    log(markdown(results))
    log(f"total {results['timing_s'] / 60:.1f} min; results in {out}")
    return results


def analyse(results: dict) -> dict:
    """(Re)compute the speed-ups and the target from the stored curves."""
    per_seed = results["per_seed"]
    bcos = {k: rep._points(v["bcosified"]["curve"]) for k, v in per_seed.items()}
    scratch = {k: rep._points(v["scratch"]["curve"]) for k, v in per_seed.items()}
    sp = seed_speedups(bcos, scratch)
    results["speedups"] = sp
    m = sp["mean"]
    results["target"] = {
        "target": (
            f"speed-up >= {rep.TARGET_SPEEDUP}x at equal final accuracy (seed-averaged curves)"
        ),
        "value": m["speedup"],
        "to_stay": m["speedup_to_stay"],
        "met": bool(m["speedup"] and m["speedup"] >= rep.TARGET_SPEEDUP and m["equal_final"]),
    }
    return results


def _fmt(x, spec: str = ".1f", suffix: str = "x") -> str:
    return "not reached" if not x else f"{x:{spec}}{suffix}"


def _speedup_cell(p: dict, bold: bool = False) -> str:
    cell = _fmt(p["speedup"])
    cell = f"**{cell}**" if bold else cell
    return cell if p["equal_final"] else f"{cell}, ends below it"


def markdown(results: dict) -> str:
    """The per-seed table, the pair statistics and the target, as markdown."""
    sp = results["speedups"]
    lines = [
        f"Standard model: test top-1 **{results['standard']['top1']:.2f}%** (one checkpoint for "
        f"every seed). B-cosified run: **{results['label']}**, against "
        f"{results['scratch_label']}.",
        "",
        "| seed | scratch final top-1 (%) | scratch reaches it at (epoch) | B-cosified final top-1 "
        "(%) | B-cosified reaches it at (epoch) | speed-up | speed-up (stays) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in sp["matched"]:
        lines.append(
            f"| {p['seed']} | {p['target_top1']:.2f} | {p['scratch_epochs_to_target']:g} | "
            f"{p['bcosified_final_top1']:.2f} | "
            f"{_fmt(p['bcosified_epochs_to_target'], '.2f', '')} | {_speedup_cell(p)} | "
            f"{_fmt(p['speedup_to_stay'])} |"
        )
    m = sp["mean"]
    lines += [
        f"| mean curve | {m['target_top1']:.2f} | {m['scratch_epochs_to_target']:g} | "
        f"{m['bcosified_final_top1']:.2f} | {_fmt(m['bcosified_epochs_to_target'], '.2f', '')} | "
        f"{_speedup_cell(m, bold=True)} | {_fmt(m['speedup_to_stay'])} |",
        "",
    ]
    pairs = sp["pairs"]
    lines += [
        f"Every pair (each B-cosified seed against each from-scratch seed, {pairs['n']} pairs, "
        f"{pairs['equal_final']} reach the from-scratch final and end at or above it; the others "
        f"count as not reached): min {_fmt(pairs['min'])}, median "
        f"{_fmt(pairs['median'])}, max {_fmt(pairs['max'])}.",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    t = results["target"]
    lines += [
        f"| {t['target']} | {_fmt(t['value'])} ({_fmt(t['to_stay'])} to stay at or above it) | "
        f"{'yes' if t['met'] else 'missed'} |",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Every seed's curve (thin) and the seed-averaged curves (thick), with the mean target."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.subplots()
    for v in results["per_seed"].values():
        ax.plot(*zip(*rep._points(v["scratch"]["curve"])), c="tab:orange", lw=0.6, alpha=0.6)
        ax.plot(*zip(*rep._points(v["bcosified"]["curve"])), c="tab:purple", lw=0.6, alpha=0.6)
    mc = results["speedups"]["mean_curves"]
    ax.plot(
        *zip(*mc["scratch"]),
        c="tab:orange",
        lw=2,
        marker="^",
        ms=3,
        label=f"{results['scratch_label']} (mean of {len(results['seeds'])} seeds)",
    )
    ax.plot(
        *zip(*mc["bcosified"]),
        c="tab:purple",
        lw=2,
        marker="o",
        ms=3,
        label=f"B-cosified, {results['label']} (mean)",
    )
    ax.axhline(mc["scratch"][-1][1], c="tab:orange", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("epochs of the model's own training (log); thin lines: single seeds")
    ax.set_ylabel("test top-1 (%)")
    final = mc["scratch"][-1][1]
    ax.set_ylim(final - 12, min(100.0, final + 4))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("speed-up over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "seeds.png")


def docs_page(results: dict, png: str) -> str:
    env, env_end = results["environment"]["start"], results["environment"]["end"]
    s = results["settings"]
    doc = (__doc__ or "").split("Usage::")[0].strip().splitlines()
    return "\n".join(
        [
            "# The miniature's speed-up over seeds",
            "",
            *doc[2:],  # the module docstring's explanation, without its title line
            "",
            "Everything else (data, SmallResNet, recipe, evaluation four times per epoch) is the "
            "miniature's: [replication.md](replication.md). This page is written by the script "
            "(`--publish`).",
            "",
            "## Results",
            "",
            f"Command: `{results['command']}` ({results['timing_s'] / 60:.0f} min, "
            f"{env['torch_threads']} torch threads on {env['cpu_count']} cores, load average at "
            f"the start {env['load_average_1_5_15'][0]}, at the end "
            f"{env_end['load_average_1_5_15'][0]}; torch {env['torch']}). "
            f"{s['train_size']} training images; B-cosified runs {s['epochs']} epochs, from "
            f"scratch {s['scratch_epochs']}.",
            "",
            f"![curves per seed]({png})",
            "",
            markdown(results),
        ]
    )


def publish(results: dict, out: Path, root: Path) -> list[Path]:
    bench, docs = root / "benchmarks", root / "docs"
    bench.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "results.json", bench / "replication-seeds.json")
    shutil.copyfile(out / "seeds.png", docs / "replication-seeds.png")
    page = docs / "replication-seeds.md"
    page.write_text(docs_page(results, "replication-seeds.png"), encoding="utf-8")
    return [bench / "replication-seeds.json", docs / "replication-seeds.png", page]


def rerender(out: Path, log=print) -> dict:
    path = out / "results.json"
    if not path.is_file():
        raise rep.ReplicationError(f"--rerender: {path} not found; give the --out folder of a run")
    results = analyse(json.loads(path.read_text(encoding="utf-8")))
    write_outputs(results, out)
    log(markdown(results))
    return results


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two different seeds")
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The miniature's speed-up, repeated over seeds.")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated (0,1,2)")
    p.add_argument("--run", default="align-relu", help="the B-cosified run (align-relu)")
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--out", default="replication-seeds-run", help="output folder")
    p.add_argument("--publish", action="store_true", help="write the benchmark, plot and page")
    p.add_argument("--rerender", action="store_true", help="only rebuild the outputs of --out")
    p.add_argument(
        "--root", default=str(Path(__file__).resolve().parents[1]), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    values = dict(rep.QUICK) if args.quick else {}
    if args.threads:
        values["threads"] = args.threads
    settings = rep.Settings(**values)
    out = Path(args.out)
    try:
        if args.rerender:
            results = rerender(out)
        else:
            results = run(settings, args.seeds, args.run, args.data_dir, out)
    except BcosifyError as e:
        print(f"replicate_seeds.py: error: {e}", file=sys.stderr)
        return 2
    if args.publish:
        for path in publish(results, out, Path(args.root)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
