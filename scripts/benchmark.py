"""Speed and memory of bcosify-converted models, side by side with the originals and the
reference B-cos package (``bcos``, Böhle et al., TPAMI 2024).

For every architecture (default: resnet50 and densenet121 at 224 px, B=2) it measures

* forward latency and throughput at each batch size (default 1 and 16) of the original
  torchvision model, the bcosify-converted model (in the reference's configuration and in
  bcosify's default one) and the reference package's own B-cos model of the same architecture;
* the peak memory of each forward pass, and of the explanations, in a fresh subprocess per model;
* the explanation latency: ``bcosify.explain`` on one batch vs the reference ``model.explain``
  called once per image;
* one training step (forward, cross-entropy, backward, AdamW step; ``--train-batch`` images at
  ``--train-size`` px, under ``--amp`` autocast if given) of each contender, with its peak
  memory on a GPU;

and the conversion time of resnet50 and vit_b_16. Timings are interleaved: every round runs each
contender once (in a rotating order), so ratios are taken between runs that saw the same machine
load; the reported ratio is the median over rounds of the per-round ratio.

Usage (from the repository root; results go to ``benchmarks/``)::

    python scripts/benchmark.py --update-docs      # the full run (about 10 minutes on 2 cores)
    python scripts/benchmark.py --quick --out /tmp/bench   # smoke run: resnet18 at 64 px

Random weights (no download): with random weights a deep B=2 network shrinks its activations
towards zero, which would make the timings depend on denormal arithmetic. Every model's
normalisation statistics are therefore calibrated on a batch first (running mean/variance set to
the batch statistics, layer by layer), as a trained network's would be.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn

import bcosify
from bcosify import BcosConfig

ROOT = Path(__file__).resolve().parents[1]
BCOSIFY_ROOT = Path(bcosify.__file__).resolve().parents[1]  # the bcosify being measured
DOCS_START, DOCS_END = "<!-- benchmark-results:start -->", "<!-- benchmark-results:end -->"

# The reference package's ImageNet models (bcos.models.pretrained, "bcos_final" configs) use B=2,
# max-out 1, unit-norm weights, uncentered BatchNorm without bias, no ReLU, average pooling in
# the stem, the classifier as a 1x1 B-cos conv before global pooling and a logit bias
# -log(C - 1). bcosify's equivalent configuration:
REFERENCE_CONFIG = BcosConfig(b=2, normalize_weights=True, activation="remove", maxpool="avg")
DEFAULT_CONFIG = BcosConfig()

KINDS = ("original", "bcosify", "bcosify_default", "reference")
KIND_LABELS = {
    "original": "original (torchvision)",
    "bcosify": "bcosify (reference config)",
    "bcosify_default": "bcosify (default config)",
    "reference": "reference `bcos` model",
}


# --------------------------------------------------------------------------------- models
def build(arch: str, kind: str, num_classes: int = 1000) -> nn.Module:
    """One contender, in eval mode, with random weights."""
    if kind == "reference":
        import bcos.models.pretrained as ref_models

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = getattr(ref_models, arch)(pretrained=False, num_classes=num_classes)
        return model.eval()
    source = bcosify.build_model(arch, weights="none", num_classes=num_classes)
    torch.manual_seed(0)
    for m in source.modules():  # torchvision starts some heads at zero (ViT): no signal, and
        if isinstance(m, nn.Linear) and not m.weight.any():  # unit-norm weights of 0 are NaN
            nn.init.normal_(m.weight, std=0.02)
    if kind == "original":
        return source
    config = REFERENCE_CONFIG if kind == "bcosify" else DEFAULT_CONFIG
    return bcosify.convert(source, config).eval()


def _has_reference(arch: str) -> bool:
    import bcos.models.pretrained as ref_models

    return hasattr(ref_models, arch)


def make_input(kind: str, batch: int, size: int, device: torch.device, seed: int = 0):
    """The contender's natural input: a normalised image for the original, an image in [0, 1]
    for bcosify (it encodes ``[x, 1 - x]`` itself), the 6-channel ``[x, 1 - x]`` for the
    reference model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g)
    if kind == "original":
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = (x - mean) / std
    elif kind == "reference":
        x = torch.cat([x, 1 - x], dim=1)
    return x.to(device)


@torch.no_grad()
def calibrate_norms(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of its input on ``x``, layer by layer
    (uncentered BatchNorms: running variance = mean square), so activations keep unit scale."""

    def pre_hook(module, args):
        inp = args[0]
        dims = [d for d in range(inp.dim()) if d != 1]
        if "Uncentered" in type(module).__name__:
            module.running_var.copy_(inp.pow(2).mean(dims))
        else:
            module.running_mean.copy_(inp.mean(dims))
            module.running_var.copy_(inp.var(dims))

    handles = [
        m.register_forward_pre_hook(pre_hook)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return model


def prepare(arch: str, kind: str, size: int, device: torch.device) -> nn.Module:
    model = build(arch, kind).to(device)
    calibrate_norms(model, make_input(kind, 2, size, device, seed=1))
    return model


def reference_explain_loop(model: nn.Module, x6: torch.Tensor) -> list:
    """The reference package's ``explain`` (batch size 1 only), once per image."""
    out = []
    for i in range(x6.shape[0]):
        img = x6[i : i + 1].clone().requires_grad_(True)
        out.append(model.explain(img))
    return out


# --------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int, device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Run every function ``warmup`` times, then ``rounds`` rounds of one call each (the order
    rotates every round). Returns wall-clock and process CPU seconds per call."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
            sync(device)
    times = {name: {"wall_s": [], "cpu_s": []} for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            times[name]["wall_s"].append(time.perf_counter() - w0)
            times[name]["cpu_s"].append(time.process_time() - c0)
    return times


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]."""
    return statistics.median(x / y for x, y in zip(a, b))


def summary(samples: dict[str, list[float]], items: int) -> dict:
    wall = statistics.median(samples["wall_s"])
    return {
        "median_s": wall,
        "min_s": min(samples["wall_s"]),
        "median_cpu_s": statistics.median(samples["cpu_s"]),
        "throughput_per_s": items / wall,
        "samples_s": samples["wall_s"],
        "samples_cpu_s": samples["cpu_s"],
    }


def ratios(times: dict, a: str, b: str) -> dict:
    return {
        "wall": paired_ratio(times[a]["wall_s"], times[b]["wall_s"]),
        "cpu": paired_ratio(times[a]["cpu_s"], times[b]["cpu_s"]),
    }


def bench_forward(arch, models, batches, size, rounds, warmup, device) -> dict:
    result = {}
    for batch in batches:
        inputs = {k: make_input(k, batch, size, device) for k in models}

        with torch.no_grad():
            fns = {k: partial(models[k], inputs[k]) for k in models}
            times = interleaved(fns, rounds, warmup, device)
        entry = {k: summary(times[k], batch) for k in models}
        entry["ratios"] = {
            "bcosify/original": ratios(times, "bcosify", "original"),
            "bcosify/reference": ratios(times, "bcosify", "reference"),
            "reference/original": ratios(times, "reference", "original"),
            "bcosify_default/original": ratios(times, "bcosify_default", "original"),
        }
        result[str(batch)] = entry
        print(f"  forward {arch} batch {batch}: " + _fmt_ratios(entry["ratios"]), flush=True)
    return result


def bench_explain(arch, models, batch, size, rounds, warmup, device) -> dict:
    x = make_input("bcosify", batch, size, device)
    x6 = make_input("reference", batch, size, device)
    ours, ref = models["bcosify"], models["reference"]
    holder: dict = {"classes": ours.bcosify_num_classes}

    def ours_explain():
        holder["e"] = bcosify.explain(ours, x)

    def ours_explain_top5():  # five targets per image: one forward, batched backward passes
        holder["e5"] = bcosify.explain(ours, x, target=f"topk:{min(5, holder['classes'])}")

    def ours_rgba():
        return holder["e"].to_rgba()

    def ours_forward():
        with torch.no_grad():
            return ours(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference warns about train mode / grads
        times = interleaved(
            {
                "bcosify_explain": ours_explain,
                "bcosify_explain_top5": ours_explain_top5,
                "bcosify_to_rgba": ours_rgba,
                "bcosify_forward": ours_forward,
                "reference_explain_loop": lambda: reference_explain_loop(ref, x6),
            },
            rounds,
            warmup,
            device,
        )
    # bcosify's explain plus its colour image, the same output as the reference's explain()
    times["bcosify_explain_rgba"] = {
        key: [a + b for a, b in zip(times["bcosify_explain"][key], times["bcosify_to_rgba"][key])]
        for key in ("wall_s", "cpu_s")
    }
    entry = {k: summary(v, batch) for k, v in times.items()}
    entry["batch"] = batch
    entry["completeness_error_max"] = float(holder["e"].completeness_error.max())
    entry["ratios"] = {
        "explain/forward": ratios(times, "bcosify_explain", "bcosify_forward"),
        "explain top-5/explain": ratios(times, "bcosify_explain_top5", "bcosify_explain"),
        "throughput bcosify_explain/reference_loop": _inv(
            ratios(times, "bcosify_explain", "reference_explain_loop")
        ),
        "throughput bcosify_explain_rgba/reference_loop": _inv(
            ratios(times, "bcosify_explain_rgba", "reference_explain_loop")
        ),
    }
    print(f"  explain {arch} batch {batch}: " + _fmt_ratios(entry["ratios"]), flush=True)
    return entry


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def train_step_fn(model: nn.Module, kind: str, batch: int, size: int, device, amp: str):
    """One optimiser step of ``model`` (train mode, AdamW, cross-entropy on random labels),
    under autocast when ``amp`` is ``bf16`` or ``fp16`` (fp16 with a gradient scaler)."""
    model.train()
    x = make_input(kind, batch, size, device, seed=3)
    classes = model.bcosify_num_classes if hasattr(model, "bcosify_num_classes") else 1000
    y = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(4))
    y = y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    return step


def bench_train(arch, models, batch, size, rounds, warmup, device, amp, compile_=False) -> dict:
    """Training steps of every contender, interleaved; on a GPU also their peak memory. With
    ``compile_``, also the original and bcosify's default model under ``torch.compile``
    (inductor; compiled during the warm-up)."""
    fns = {k: train_step_fn(models[k], k, batch, size, device, amp) for k in models}
    if compile_:
        for k in ("original", "bcosify_default"):
            compiled = torch.compile(models[k])
            fns[f"{k}_compiled"] = train_step_fn(compiled, k, batch, size, device, amp)
        warmup = max(warmup, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved(fns, rounds, warmup, device)
        entry = {k: summary(times[k], batch) for k in fns}
        if device.type == "cuda":
            for k, fn in fns.items():
                torch.cuda.synchronize(device)
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                fn()
                torch.cuda.synchronize(device)
                peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                entry[k]["peak_mib"] = peak
    losses = {k: float(fn()) for k, fn in fns.items()}
    entry.update(
        batch=batch, size=size, amp=amp, loss_finite=all(map(math.isfinite, losses.values()))
    )
    entry["ratios"] = {
        **(
            {
                "compiled bcosify_default/original": ratios(
                    times, "bcosify_default_compiled", "original_compiled"
                ),
                "bcosify_default compiled/eager": ratios(
                    times, "bcosify_default_compiled", "bcosify_default"
                ),
                "original compiled/eager": ratios(times, "original_compiled", "original"),
            }
            if compile_
            else {}
        ),
        **{
            f"{a}/{b}": ratios(times, a, b)
            for a, b in (
                ("bcosify_default", "original"),
                ("bcosify", "original"),
                ("bcosify", "reference"),
                ("reference", "original"),
            )
            if a in times and b in times
        },
    }
    for model in models.values():
        model.eval()
    print(f"  train step {arch} batch {batch}: " + _fmt_ratios(entry["ratios"]), flush=True)
    return entry


def _inv(r: dict) -> dict:
    return {k: 1.0 / v for k, v in r.items()}


def _fmt_ratios(r: dict) -> str:
    return ", ".join(f"{k} {v['wall']:.2f}" for k, v in r.items())


def bench_conversion(archs: list[str], repeats: int) -> dict:
    result = {}
    for arch in archs:
        try:
            source = bcosify.build_model(arch, weights="none")
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                bcosify.convert(source)
                times.append(time.perf_counter() - t0)
            result[arch] = {"median_s": statistics.median(times), "samples_s": times}
            print(f"  convert {arch}: {result[arch]['median_s']:.2f} s", flush=True)
        except Exception as exc:  # noqa: BLE001 - any failure is recorded, not raised
            message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            reason = f"{type(exc).__name__}: {message}"
            reason = reason if len(reason) <= 300 else reason[:297] + "..."
            result[arch] = {"unsupported": reason}
            print(f"  convert {arch}: unsupported: {reason}", flush=True)
    return result


# --------------------------------------------------------------------------------- import
IMPORT_COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import bcosify": [sys.executable, "-c", "import bcosify"],
    "bcosify --help": [sys.executable, "-m", "bcosify", "--help"],
}


def bench_import(repeats: int = 5) -> dict:
    """Wall time of a fresh interpreter importing torch, importing bcosify and printing the CLI
    help, interleaved ``repeats`` times (medians), and which libraries ``import bcosify`` loads."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1")
    samples: dict[str, list[float]] = {k: [] for k in IMPORT_COMMANDS}
    for _ in range(repeats):
        for name, cmd in IMPORT_COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
            samples[name].append(time.perf_counter() - t0)
    probe = (
        "import sys, bcosify; "
        "print(','.join(m for m in ('timm', 'torchvision') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "median_s": med,
        "samples_s": samples,
        "bcosify_over_torch_s": med["import bcosify"] - med["import torch"],
        "libraries_loaded_by_import": [m for m in loaded.split(",") if m],
    }
    print(
        f"  import bcosify: {result['bcosify_over_torch_s']:+.2f} s over import torch "
        f"({med['import torch']:.2f} s); bcosify --help {med['bcosify --help']:.2f} s",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, flags=re.M).group(1))


def _peak_rss_delta_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory above the current level while ``fn`` runs (Linux: the high-water
    mark VmHWM is reset through /proc/self/clear_refs right before the call)."""
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def measure_memory(model, kind, batches, explain_batch, size, device, peak) -> dict:
    """Peak memory (``peak(fn)``, MiB) of ``model``'s forward passes and explanations."""
    out = {}
    for batch in batches:
        x = make_input(kind, batch, size, device)
        with torch.no_grad():
            model(x)  # warm-up: one-time buffers are not part of the pass
            out[f"forward_{batch}_peak_mib"] = peak(partial(model, x))
        del x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "bcosify":
            x = make_input(kind, explain_batch, size, device)
            bcosify.explain(model, x)
            out[f"explain_{explain_batch}_peak_mib"] = peak(partial(bcosify.explain, model, x))
            top5 = partial(bcosify.explain, model, x, target="topk:5")
            out[f"explain_{explain_batch}_top5_peak_mib"] = peak(top5)
            top10 = partial(bcosify.explain, model, x, target="topk:10")
            out[f"explain_{explain_batch}_top10_peak_mib"] = peak(top10)
            # what an explanation returns per target: dynamic weights and contributions
            per_target = 2 * x.shape[0] * 6 * x.shape[2] * x.shape[3] * x.element_size()
            out["explanation_mib_per_target"] = per_target / 2**20
        elif kind == "reference":
            x6 = make_input(kind, 1, size, device)
            reference_explain_loop(model, x6)
            out["explain_loop_peak_mib"] = peak(partial(reference_explain_loop, model, x6))
    return out


def memory_worker(arch: str, kind: str, batches: list[int], explain_batch: int, size: int):
    """Runs in a fresh process: the peak memory of ``kind``'s forward passes and explanations."""
    device = torch.device("cpu")
    rss_start = _status_kib("VmRSS")
    model = prepare(arch, kind, size, device)
    gc.collect()
    out = {
        "params_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "model_rss_mib": (_status_kib("VmRSS") - rss_start) / 1024,
    }
    out.update(
        measure_memory(model, kind, batches, explain_batch, size, device, _peak_rss_delta_mib)
    )
    return out


def bench_memory(arch, kinds, batches, explain_batch, size, threads) -> dict:
    """Peak memory per contender, each in a fresh subprocess. Large allocations are returned to
    the OS at once there (``MALLOC_MMAP_THRESHOLD_``) so resident memory follows live tensors."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(threads))
    # the worker imports the same bcosify as this process
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BCOSIFY_ROOT), env.get("PYTHONPATH")]))
    result = {}
    for kind in kinds:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--memory-worker",
            f"{arch}:{kind}",
            "--batches",
            ",".join(map(str, batches)),
            "--explain-batch",
            str(explain_batch),
            "--size",
            str(size),
            "--threads",
            str(threads),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker {arch}:{kind} failed:\n{proc.stderr[-3000:]}")
        result[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  memory {arch} {kind}: {result[kind]}", flush=True)
    return result


# --------------------------------------------------------------------------------- report
def machine_info(threads: int, device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": str(device),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    for pkg in ("timm", "bcos"):
        try:
            from importlib.metadata import version

            info["versions"][pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            info["versions"][pkg] = None
    info["versions"]["bcosify"] = bcosify.__version__
    info["bcosify_path"] = str(BCOSIFY_ROOT)
    try:
        commit = subprocess.run(
            ["git", "-C", str(BCOSIFY_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(BCOSIFY_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["bcosify_commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        info["bcosify_commit"] = None
    return info


def _ms(s: float) -> str:
    return f"{s * 1e3:,.0f}" if s >= 0.1 else f"{s * 1e3:.1f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    a = results["args"]
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores), {a['threads']} torch thread(s), "
        f"device {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}; load average "
        f"{results['load_average_start'][0]:.2f} at the start, "
        f"{results['load_average_end'][0]:.2f} at the end.  ",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f" (commit {m['bcosify_commit']}), Python {m['python']}.  ",
        f"Input {a['size']}×{a['size']}, {a['rounds']} interleaved rounds after {a['warmup']} "
        f"warm-up; latency = median wall-clock time; ratio = median over rounds of the "
        "per-round ratio (wall clock; process CPU time in parentheses).",
        "",
    ]
    for arch, res in results["architectures"].items():
        if "forward" in res:
            lines += [f"#### {arch}: forward", ""]
            batches = list(res["forward"])
            head = "| model | " + " | ".join(
                f"batch {b}: latency ms | img/s | peak MiB" for b in batches
            )
            lines += [head + " |", "| --- |" + " --- | --- | --- |" * len(batches)]
            mem = res.get("memory", {})
            for kind in KINDS:
                cells = []
                for b in batches:
                    f = res["forward"][b][kind]
                    peak = mem.get(kind, {}).get(f"forward_{b}_peak_mib")
                    cells += [
                        _ms(f["median_s"]),
                        f"{f['throughput_per_s']:.1f}",
                        f"{peak:,.0f}" if peak is not None else "–",
                    ]
                lines.append(f"| {KIND_LABELS[kind]} | " + " | ".join(cells) + " |")
            lines += ["", "| ratio | " + " | ".join(f"batch {b}" for b in batches) + " |"]
            lines.append("| --- |" + " --- |" * len(batches))
            for name in res["forward"][batches[0]]["ratios"]:
                cells = [
                    f"{res['forward'][b]['ratios'][name]['wall']:.2f} "
                    f"({res['forward'][b]['ratios'][name]['cpu']:.2f})"
                    for b in batches
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            e = res["explain"]
            n = e["batch"]
            ref_mem = mem.get("reference", {}).get("explain_loop_peak_mib")
            our_mem = mem.get("bcosify", {}).get(f"explain_{n}_peak_mib")
            top5_mem = mem.get("bcosify", {}).get(f"explain_{n}_top5_peak_mib")
            lines += [
                "",
                f"#### {arch}: explanations of {n} images",
                "",
                "| | latency ms | img/s | peak MiB |",
                "| --- | --- | --- | --- |",
                f"| bcosify `explain` (one batch of {n}) | "
                f"{_ms(e['bcosify_explain']['median_s'])} | "
                f"{e['bcosify_explain']['throughput_per_s']:.2f} | "
                f"{f'{our_mem:,.0f}' if our_mem is not None else '–'} |",
                f"| bcosify `explain`, 5 targets per image | "
                f"{_ms(e['bcosify_explain_top5']['median_s'])} | "
                f"{e['bcosify_explain_top5']['throughput_per_s']:.2f} | "
                f"{f'{top5_mem:,.0f}' if top5_mem is not None else '–'} |",
                f"| bcosify `explain` + `to_rgba` | {_ms(e['bcosify_explain_rgba']['median_s'])} | "
                f"{e['bcosify_explain_rgba']['throughput_per_s']:.2f} | |",
                f"| bcosify forward (same batch, no grad) | "
                f"{_ms(e['bcosify_forward']['median_s'])} | "
                f"{e['bcosify_forward']['throughput_per_s']:.2f} | |",
                f"| reference `model.explain()` × {n} (one image each) | "
                f"{_ms(e['reference_explain_loop']['median_s'])} | "
                f"{e['reference_explain_loop']['throughput_per_s']:.2f} | "
                f"{f'{ref_mem:,.0f}' if ref_mem is not None else '–'} (one image) |",
                "",
            ]
            for name, r in e["ratios"].items():
                lines.append(f"- {name}: {r['wall']:.2f} ({r['cpu']:.2f})")
            top10_mem = mem.get("bcosify", {}).get(f"explain_{n}_top10_peak_mib")
            if our_mem is not None and top10_mem is not None:
                size = mem["bcosify"]["explanation_mib_per_target"]
                lines.append(
                    f"- peak memory, 10 targets per image: {top10_mem:,.0f} MiB, "
                    f"{top10_mem - our_mem:+,.0f} over one target, where the explanation "
                    f"itself grows by {9 * size:,.0f} MiB (dynamic weights and contributions)"
                )
            lines.append("")
        t = res.get("train")
        if t:
            amp = "" if t["amp"] == "none" else f", {t['amp']} autocast"
            lines += [
                f"#### {arch}: one training step (batch {t['batch']}, {t['size']} px{amp})",
                "",
                "| model | latency ms | img/s | peak MiB |",
                "| --- | --- | --- | --- |",
            ]
            for kind in [k for k in t if k.startswith(KINDS) and isinstance(t[k], dict)]:
                peak = t[kind].get("peak_mib")
                label = KIND_LABELS.get(kind) or KIND_LABELS[kind[: -len("_compiled")]]
                label += ", torch.compile" if kind.endswith("_compiled") else ""
                lines.append(
                    f"| {label} | {_ms(t[kind]['median_s'])} | "
                    f"{t[kind]['throughput_per_s']:.1f} | "
                    f"{f'{peak:,.0f}' if peak is not None else '–'} |"
                )
            lines.append("")
            for name, r in t["ratios"].items():
                lines.append(f"- {name}: {r['wall']:.2f} ({r['cpu']:.2f})")
            lines.append(f"- loss finite: {'yes' if t['loss_finite'] else '**no**'}")
            lines.append("")
    if results.get("conversion"):
        lines += ["#### Conversion time (`bcosify.convert`, default config)", ""]
        lines += ["| model | time s |", "| --- | --- |"]
    for arch, c in results.get("conversion", {}).items():
        cell = f"{c['median_s']:.2f}" if "median_s" in c else f"unsupported: {c['unsupported']}"
        lines.append(f"| {arch} | {cell} |")
    imp = results.get("import")
    if imp:
        med = imp["median_s"]
        lines += [
            "",
            "#### Import time (fresh interpreter, median of "
            f"{len(imp['samples_s']['import torch'])})",
            "",
            "| command | wall s |",
            "| --- | --- |",
            *[f"| `{k}` | {v:.2f} |" for k, v in med.items()],
            "",
            f"`import bcosify` costs {imp['bcosify_over_torch_s']:+.2f} s over `import torch` and "
            "loads "
            + (", ".join(imp["libraries_loaded_by_import"]) or "neither timm nor torchvision")
            + ".",
        ]
    lines += ["", "#### Targets", ""]
    lines += [
        "| target | wall clock | holds | CPU time | holds |",
        "| --- | --- | --- | --- | --- |",
    ]
    yes = {True: "yes", False: "**no**"}
    for t in results["targets"]:
        cpu = f"{t['cpu']:.2f} | {yes[t['holds_cpu']]}" if "cpu" in t else "– | –"
        lines.append(f"| {t['target']} | {t['wall']:.2f} | {yes[t['holds_wall']]} | {cpu} |")
    return "\n".join(lines) + "\n"


def targets(results: dict) -> list[dict]:
    """The issue's targets, judged on the wall-clock and on the CPU-time ratios."""
    out = []

    def add(name, ratio, limit, at_most=True):
        entry = {"target": name, "limit": limit}
        for key in ("wall", "cpu"):
            value = ratio[key]
            entry[key] = value
            entry[f"holds_{key}"] = bool(value <= limit if at_most else value >= limit)
        out.append(entry)

    for arch, res in results["architectures"].items():
        if "forward" in res:
            for b, f in res["forward"].items():
                r = f["ratios"]
                add(f"{arch} b{b}: bcosify / reference forward ≤ 1.0", r["bcosify/reference"], 1)
                add(f"{arch} b{b}: bcosify / original forward ≤ 1.3", r["bcosify/original"], 1.3)
            e = res["explain"]["ratios"]
            n = res["explain"]["batch"]
            add(f"{arch}: explain / forward (batch {n}) ≤ 2.2", e["explain/forward"], 2.2)
            add(
                f"{arch}: explain 5 targets / 1 target (batch {n}) ≤ 2.5",
                e["explain top-5/explain"],
                2.5,
            )
        t = res.get("train")
        if t:
            add(
                f"{arch}: training step, bcosify (default) / original ≤ 1.2",
                t["ratios"]["bcosify_default/original"],
                1.2,
            )
        if "explain" in res:
            add(
                f"{arch}: explain + to_rgba throughput / reference loop ≥ 1.5",
                res["explain"]["ratios"]["throughput bcosify_explain_rgba/reference_loop"],
                1.5,
                at_most=False,
            )
    imp = results.get("import")
    if imp:
        for name, value, limit in (
            ("import bcosify, over import torch ≤ 0.5 s", imp["bcosify_over_torch_s"], 0.5),
            ("bcosify --help ≤ 1 s", imp["median_s"]["bcosify --help"], 1.0),
        ):
            out.append(
                {"target": name, "limit": limit, "wall": value, "holds_wall": value <= limit}
            )
    return out


def update_docs(md: str, docs: Path) -> None:
    text = docs.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        raise SystemExit(f"{docs} has no {DOCS_START} ... {DOCS_END} block to update")
    block = f"{DOCS_START}\n{md}{DOCS_END}"
    docs.write_text(
        re.sub(
            re.escape(DOCS_START) + ".*?" + re.escape(DOCS_END), lambda _: block, text, flags=re.S
        )
    )


# --------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--archs", default="resnet50,densenet121", help="comma-separated torchvision names"
    )
    p.add_argument("--batches", default="1,16", help="forward batch sizes")
    p.add_argument("--explain-batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--explain-rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=16, help="training step batch (0: skip)")
    p.add_argument("--train-size", type=int, default=160, help="training step image size")
    p.add_argument("--train-rounds", type=int, default=5)
    p.add_argument(
        "--amp", choices=sorted(AMP_DTYPES), default="none", help="training step autocast"
    )
    p.add_argument(
        "--train-compile", action="store_true", help="also time torch.compile'd training steps"
    )
    p.add_argument(
        "--train-only",
        action="store_true",
        help="only the training step (original and bcosify; the reference model where bcos has "
        "the architecture), e.g. for vit_b_16",
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--convert-archs", default="resnet50,vit_b_16")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--import-repeats", type=int, default=5, help="runs of each import timing")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="output directory")
    p.add_argument("--update-docs", action="store_true", help="rewrite docs/benchmarks.md's table")
    p.add_argument("--quick", action="store_true", help="smoke run: resnet18 at 64 px, 1 round")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # smaller defaults; options given explicitly still win
        quick = dict(
            archs="resnet18",
            batches="1,2",
            explain_batch=2,
            size=64,
            rounds=1,
            explain_rounds=1,
            train_batch=2,
            train_size=64,
            train_rounds=1,
            convert_archs="resnet18",
            import_repeats=1,
        )
        for key, value in quick.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    if args.threads < 1 or args.rounds < 1 or args.explain_rounds < 1 or args.size < 32:
        p.error("--threads, --rounds and --explain-rounds must be >= 1 and --size >= 32")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    if args.memory_worker:
        arch, kind = args.memory_worker.split(":")
        print(json.dumps(memory_worker(arch, kind, batches, args.explain_batch, args.size)))
        return None
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    t_start = time.perf_counter()
    results = {
        "command": " ".join(
            ["python scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(args.threads, device),
        "load_average_start": list(os.getloadavg()),
        "configs": {
            "bcosify": REFERENCE_CONFIG.to_dict(),
            "bcosify_default": DEFAULT_CONFIG.to_dict(),
        },
        "architectures": {},
    }

    def train(arch: str, models: dict) -> dict:
        return bench_train(
            arch,
            models,
            args.train_batch,
            args.train_size,
            args.train_rounds,
            args.warmup,
            device,
            args.amp,
            args.train_compile,
        )

    for arch in args.archs.split(","):
        print(f"{arch}:", flush=True)
        if args.train_only:
            kinds = [k for k in KINDS if k != "reference" or _has_reference(arch)]
            models = {kind: prepare(arch, kind, args.train_size, device) for kind in kinds}
            res = {"train": train(arch, models)}
            results["architectures"][arch] = res
            del models
            gc.collect()
            continue
        models = {kind: prepare(arch, kind, args.size, device) for kind in KINDS}
        res = {
            "forward": bench_forward(
                arch, models, batches, args.size, args.rounds, args.warmup, device
            ),
            "explain": bench_explain(
                arch,
                models,
                args.explain_batch,
                args.size,
                args.explain_rounds,
                args.warmup,
                device,
            ),
        }
        if args.train_batch:
            res["train"] = train(arch, models)
        del models
        gc.collect()
        if not args.no_memory:
            if device.type == "cpu":
                res["memory"] = bench_memory(
                    arch, KINDS, batches, args.explain_batch, args.size, args.threads
                )
            else:
                res["memory"] = cuda_memory(arch, batches, args.explain_batch, args.size, device)
        results["architectures"][arch] = res
    if not args.train_only:
        print("conversion:", flush=True)
        results["conversion"] = bench_conversion(args.convert_archs.split(","), repeats=3)
        print("import:", flush=True)
        results["import"] = bench_import(args.import_repeats)
    results["load_average_end"] = list(os.getloadavg())
    results["total_s"] = time.perf_counter() - t_start
    results["targets"] = targets(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results)
    (args.out / "results.md").write_text(md)
    if args.update_docs:
        update_docs(md, ROOT / "docs" / "benchmarks.md")
    print(md)
    print(f"total {results['total_s']:.0f} s; wrote {args.out / 'results.json'}")
    return results


def cuda_memory(arch, batches, explain_batch, size, device) -> dict:
    """Peak CUDA memory (``torch.cuda.max_memory_allocated``) above what is allocated before."""

    def peak(fn):
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20

    result = {}
    for kind in KINDS:
        model = prepare(arch, kind, size, device)
        params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        result[kind] = {"params_mib": params}
        result[kind].update(measure_memory(model, kind, batches, explain_batch, size, device, peak))
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    main()
