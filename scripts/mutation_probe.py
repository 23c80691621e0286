"""Plant realistic bugs one at a time and check that the tests catch each of them.

Every mutation below is a small edit of bcosify's source that a developer could make by mistake
(a factor not detached, a sign flipped in the input fold, ``zero_grad`` dropped, ...). For each
one the script copies the repository's tracked files to a scratch folder, applies the edit there,
runs the tests named for it, and counts the mutation as caught when a test fails (pytest exit
code 1). A mutation whose tests still pass survived: the suite cannot see that bug. Collection
errors (exit codes other than 0 and 1) are reported as broken mutations, not as catches.

    python scripts/mutation_probe.py                      # all mutations, ~3 minutes on 2 cores
    python scripts/mutation_probe.py --only train         # those whose name starts with "train"
    python scripts/mutation_probe.py --check              # only check that every edit applies
    python scripts/mutation_probe.py --json benchmarks/mutation.json --markdown docs/mutation.md

Exit status: 0 when every mutation is caught (or, with ``--check``, applies), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str  # "<area>: what goes wrong"
    path: str  # file inside the repository
    edits: tuple[tuple[str, str], ...]  # (old, new); each old occurs exactly once
    tests: tuple[str, ...]  # pytest arguments (files, node ids, -k expressions)
    area: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "area", self.name.split(":", 1)[0])


def _m(name: str, path: str, edits, *tests: str) -> Mutation:
    if isinstance(edits[0], str):
        edits = (edits,)
    return Mutation(name, path, tuple(tuple(e) for e in edits), tests)


DW = "tests/test_dynamic_weights.py"
MATHS = "tests/test_train_maths.py"

MUTATIONS: list[Mutation] = [
    # --- nn: the B-cos units and dynamic modules
    _m(
        "nn: a B-cos unit keeps its |cos| scale in the graph in explanation mode",
        "bcosify/nn/bcos.py",
        (
            ("    return _EXPLAIN if module.explanation_mode else _PLAIN", "    return _PLAIN"),
            ("    if detach:\n        out, norm = out.detach(), norm.detach()", "    pass"),
        ),
        DW,
    ),
    _m(
        "nn: LayerNorm does not detach its standard deviation",
        "bcosify/nn/norms.py",
        (
            "        if self.explanation_mode:\n            std = std.detach()\n"
            "        out = centered",
            "        out = centered",
        ),
        DW,
    ),
    _m(
        "nn: attention does not detach its attention matrix",
        "bcosify/nn/attention.py",
        (
            "            detach=self.explanation_mode,\n            logits=logits,",
            "            detach=False,\n            logits=logits,",
        ),
        DW,
    ),
    _m(
        "nn: a gated activation (GELU, SiLU) does not detach its gate",
        "bcosify/nn/layers.py",
        (
            "        gate = _GATES[self.kind](x)\n        if self.explanation_mode:\n"
            "            gate = gate.detach()",
            "        gate = _GATES[self.kind](x)",
        ),
        DW,
    ),
    _m(
        "nn: the patch norm averages over the kernel window instead of summing",
        "bcosify/nn/bcos.py",
        ("padding, divisor_override=1)", "padding)"),
        "tests/test_nn.py",
    ),
    _m(
        "nn: the training path's fused B=2 scale drops the factor 2 of the input gradient",
        "bcosify/nn/bcos.py",
        ("            d_x = x * d_sq.mul_(2)\n", "            d_x = x * d_sq\n"),
        "tests/test_nn_fast.py",
    ),
    _m(
        "nn: training BatchNorm's fused backward forgets the mean in the variance's gradient",
        "bcosify/nn/norms.py",
        (".addcmul_(x, b).sub_(mean.view(shape) * b)", ".addcmul_(x, b)"),
        "tests/test_nn_fast.py",
    ),
    _m(
        "nn: uncentered BatchNorm divides by the variance, not the standard deviation",
        "bcosify/nn/norms.py",
        ("        std = (var + self.eps).sqrt()\n", "        std = var + self.eps\n"),
        "tests/test_convert.py",
    ),
    # --- fx: conversion passes and rules
    _m(
        "fx: the product policy detaches every occurrence of a factor (x * x fully detached)",
        "bcosify/fx/passes.py",
        (
            "        args[index] = detached\n        node.args = tuple(args)\n",
            "        node.replace_input_with(operand, detached)\n",
        ),
        "tests/test_products.py",
    ),
    _m(
        "fx: a gate also used on the explained path is left unconverted",
        "bcosify/fx/graph.py",
        (
            "    return all(nodemap.is_metadata(u) or scales(u)",
            "    return True or all(nodemap.is_metadata(u) or scales(u)",
        ),
        "tests/test_products.py",
    ),
    _m(
        "fx: a sigmoid scaled only by a constant counts as a gate (left raw on the explained path)",
        "bcosify/fx/graph.py",
        (
            "        return len(operands) == 2 and len(others) == 1 and others[0] in an.dependent",
            "        return True",
        ),
        "tests/test_op_table.py",
    ),
    _m(
        "fx: the in-place pass ignores views and other names of the mutated tensor",
        "bcosify/fx/passes.py",
        (
            "        aliases = _aliases(target, gm, order[node], order) - {target}",
            "        aliases = set()",
        ),
        "tests/test_convert.py",
    ),
    _m(
        "fx: a factor whose saturating op is already a gate's counts as the one to detach",
        "bcosify/fx/graph.py",
        ("n not in branch and registry.is_gate", "n not in gates and registry.is_gate"),
        "tests/test_products.py",
    ),
    _m(
        "nn: F.normalize's norm is not detached",
        "bcosify/nn/layers.py",
        ("        if self.explanation_mode:\n            norm = norm.detach()\n", ""),
        "tests/test_products.py",
    ),
    _m(
        "fx: the head-before-pool pass skips AdaptiveAvgPool2d((1, 1))",
        "bcosify/fx/passes.py",
        ("m.output_size in (1, (1, 1))", "m.output_size in (1,)"),
        "tests/test_convert.py",
    ),
    _m(
        "fx: the input fold has the wrong sign on the 1 - x channels",
        "bcosify/fx/passes.py",
        ("c = (-mean_t / std_t).to(w)", "c = (mean_t / std_t).to(w)"),
        "tests/test_convert.py",
    ),
    _m(
        "fx: activation='keep' keeps ReLU6, whose cap no explanation accounts for",
        "bcosify/fx/rules_torch.py",
        (
            '    if config.activation == "keep" and isinstance(module, nn.Hardtanh):',
            "    if False:",
        ),
        "tests/test_convert.py",
    ),
    _m(
        "fx: activation='remove' keeps ReLU modules",
        "bcosify/fx/rules_torch.py",
        (
            '    if config.activation == "remove":\n        return REMOVE\n    if config.activation'
            ' == "keep" and isinstance(module, nn.Hardtanh)',
            '    if config.activation == "keep" and isinstance(module, nn.Hardtanh)',
        ),
        "tests/test_convert.py",
    ),
    _m(
        "fx: a subclass that overrides forward() inherits its base class's rule",
        "bcosify/fx/registry.py",
        (
            'if "forward" in cls.__dict__ and cls not in _SAFE_SUBCLASSES and cls is not '
            "nn.Module:",
            "if False:",
        ),
        "tests/test_rule_registry.py",
    ),
    _m(
        "fx: an in-place spelling of an op is missing from the op table (torch.sigmoid_)",
        "bcosify/fx/ops.py",
        ("[torch.sigmoid, torch.sigmoid_, F.sigmoid]", "[torch.sigmoid, F.sigmoid]"),
        "tests/test_op_table.py",
    ),
    _m(
        "fx: one spelling of an op is converted differently (F.hardtanh_ keeps its cap)",
        "bcosify/fx/rules_torch.py",
        ("    F.hardtanh_: F.hardtanh,\n", ""),
        "tests/test_op_table.py",
    ),
    _m(
        "fx: shape-specialised tracing bakes the batch size into the graph",
        "bcosify/fx/specialize.py",
        (
            "d if all(s[j] == d for s in each) else self._batch_size(base, j)",
            "d if True else self._batch_size(base, j)",
        ),
        "tests/test_specialize.py",
    ),
    _m(
        "fx: a model traced at one input size accepts another without a word",
        "bcosify/nn/layers.py",
        ("if self.size is not None and tuple(x.shape[-2:]) != self.size:", "if False:"),
        "tests/test_specialize.py",
    ),
    _m(
        "fx: timm's norm-act layer keeps an activation it has no rule for",
        "bcosify/fx/rules_libs.py",
        (
            "    if rule is None:\n        return None\n",
            "    if rule is None:\n        return module\n",
        ),
        "tests/test_rule_registry.py",
    ),
    _m(
        "io: a model rebuilt by its recognised name is not compared with the saved architecture",
        "bcosify/io.py",
        (
            "        model is None\n        and saved_print\n",
            "        False\n        and saved_print\n",
        ),
        "tests/test_io.py",
    ),
    # --- zoo and hub
    _m(
        "zoo: the B-cos v2 models are built without unit-norm weights",
        "bcosify/sources/_zoo.py",
        ("BcosConfig(normalize_weights=True)", "BcosConfig()"),
        "tests/test_zoo.py::test_same_function_as_the_published_code",
    ),
    _m(
        "zoo: a cached weight file with another hash is used",
        "bcosify/sources/_zoo.py",
        ("        if not digest.startswith(entry.hash_prefix):\n", "        if False:\n"),
        "tests/test_zoo.py",
    ),
    _m(
        "zoo: a B-cosification first layer is folded from its first half only",
        "bcosify/sources/_zoo.py",
        ("    d = w[:, :3] - w[:, 3:]\n", "    d = w[:, :3] * 2\n"),
        "tests/test_zoo.py::test_same_function_as_the_published_code",
    ),
    _m(
        "zoo: the B-cos ConvNeXt block drops its layer scale",
        "bcosify/sources/_bcos_v2_arch.py",
        ("return self.layer_scale * self.block(x) + x\n", "return self.block(x) + x\n"),
        "tests/test_zoo.py::test_same_function_as_the_published_code",
    ),
    _m(
        "hub: a repository that is not a bcosify model is loaded as one",
        "bcosify/hub.py",
        ("    _check_bcosify_repo(repo_id, folder)\n    return folder\n", "    return folder\n"),
        "tests/test_hub.py",
    ),
    # --- explain
    _m(
        "explain: with several targets, every target's backward pass starts from the first",
        "bcosify/explain.py",
        ("                y[:, start].sum(), inputs,", "                y[:, 0].sum(), inputs,"),
        "tests/test_explain.py",
    ),
    _m(
        "explain: constant contributions are averaged instead of summed per sample",
        "bcosify/explain.py",
        (
            "value = (leaf.detach() * g).reshape(n, -1).sum(1)",
            "value = (leaf.detach() * g).reshape(n, -1).mean(1)",
        ),
        "tests/test_explain.py",
        "tests/test_convert.py",
    ),
    _m(
        "explain: contributions are the dynamic weights, not weights times the encoding",
        "bcosify/explain.py",
        (
            "contributions=(encoding * weights).detach(),",
            "contributions=weights.detach(),",
        ),
        "tests/test_explain.py",
    ),
    _m(
        "explain: the model is left in explanation mode",
        "bcosify/explain.py",
        ("            m.set_explanation_mode(state)\n", "            pass\n"),
        "tests/test_explain.py",
    ),
    _m(
        "explain: the model's training flag is not restored",
        "bcosify/explain.py",
        (
            "        handle.remove()\n        model.train(was_training)\n",
            "        handle.remove()\n",
        ),
        "tests/test_explain.py",
    ),
    # --- io
    _m(
        "io: load does not compare the saved weights with the architecture",
        "bcosify/io.py",
        (
            "    if missing or unexpected or mismatched:\n        parts = []",
            "    if False:\n        parts = []",
        ),
        "tests/test_io.py",
    ),
    _m(
        "io: save overwrites a saved model without being asked",
        "bcosify/io.py",
        ("    if existing and not overwrite:", "    if False:"),
        "tests/test_io.py",
    ),
    # --- train
    _m(
        "train: optimizer.zero_grad() removed",
        "bcosify/train/loop.py",
        ("            optimizer.zero_grad(set_to_none=True)\n", ""),
        "tests/test_train.py::test_three_steps_equal_hand_written_adamw",
    ),
    _m(
        "train: adaptive gradient clipping never applied",
        "bcosify/train/loop.py",
        (
            "if acc.sync_gradients and agc is not None:",
            "if False:",
        ),
        MATHS,
    ),
    _m(
        "train: gradient accumulation steps not passed to Accelerate",
        "bcosify/train/loop.py",
        ("gradient_accumulation_steps=r.train.grad_accum_steps", "gradient_accumulation_steps=1"),
        MATHS,
    ),
    _m(
        "train: the accumulated loss is not averaged over the micro-batches",
        "bcosify/train/loop.py",
        ("acc.backward(loss)", "acc.backward(loss * r.train.grad_accum_steps)"),
        MATHS,
    ),
    _m(
        "train: mixup mixes the images but the loss gets the hard labels",
        "bcosify/train/loop.py",
        (
            "images, labels = self.mixup(images, labels)",
            "images, _ = self.mixup(images, labels)",
        ),
        MATHS,
    ),
    _m(
        "train: mixed precision not passed to Accelerate",
        "bcosify/train/loop.py",
        ("mixed_precision=r.train.mixed_precision,", 'mixed_precision="no",'),
        MATHS,
    ),
    _m(
        "train: the EMA is updated without its step (no copy on the first update)",
        "bcosify/train/loop.py",
        (
            "ema.update(acc.unwrap_model(model), step=state.global_step)",
            "ema.update(acc.unwrap_model(model))",
        ),
        MATHS,
    ),
    _m(
        "train: BCE targets lose their 1/C floor",
        "bcosify/train/losses.py",
        (
            "t = to_soft_targets(target, self.num_classes).clamp_min(self.off_value)",
            "t = to_soft_targets(target, self.num_classes)",
        ),
        "tests/test_train.py::test_bce_uses_off_targets_one_over_c",
    ),
    _m(
        "train: the alignment cosine is a mean over channels, not a sum of normalised products",
        "bcosify/train/align.py",
        ("    cos = (sn * tn).sum(d)\n", "    cos = (sn * tn).mean(d)\n"),
        "tests/test_align.py",
    ),
]


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def _copy_repo(dest: Path) -> None:
    for rel in _tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def _apply(text: str, mutation: Mutation) -> str:
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            raise ValueError(
                f"{mutation.name}: the text to replace occurs {count} times in {mutation.path} "
                f"(must be once): {old!r}"
            )
        text = text.replace(old, new)
    return text


def check(mutations: list[Mutation]) -> list[str]:
    """The mutations whose edits do not apply to today's source, with why."""
    problems = []
    for m in mutations:
        try:
            _apply((ROOT / m.path).read_text(), m)
        except (ValueError, OSError) as e:
            problems.append(str(e))
        for t in m.tests:
            if not t.startswith("-") and not (ROOT / t.split("::")[0]).exists():
                problems.append(f"{m.name}: no test file {t}")
    return problems


def _pytest(scratch: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, float, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", PYTHONPATH=str(scratch))
    env.setdefault("OMP_NUM_THREADS", "2")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    cmd += ["-o", "addopts=", "-W", "ignore"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout
        )
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, f"timed out after {timeout} s"
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return rc, time.perf_counter() - t0, lines[-1] if lines else ""


def run(mutations: list[Mutation], timeout: int) -> dict:
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bcosify-mutation-") as tmp:
        scratch = Path(tmp)
        _copy_repo(scratch)
        probe = subprocess.run(
            [sys.executable, "-c", "import bcosify; print(bcosify.__file__)"],
            cwd=scratch,
            env=dict(os.environ, PYTHONPATH=str(scratch)),
            capture_output=True,
            text=True,
        )
        if not probe.stdout.strip().startswith(str(scratch)):
            raise SystemExit(f"the scratch copy is not the bcosify that is imported: {probe}")
        tests = sorted({t for m in mutations for t in m.tests})
        rc, seconds, last = _pytest(scratch, tuple(tests), timeout * 4)
        print(f"unmutated: {last} ({seconds:.0f} s)", flush=True)
        if rc != 0:
            raise SystemExit("the tests fail without any mutation; fix them first")
        for i, m in enumerate(mutations, 1):
            original = (scratch / m.path).read_text()  # the snapshot taken at the start
            (scratch / m.path).write_text(_apply(original, m))
            try:
                rc, seconds, last = _pytest(scratch, m.tests, timeout)
            finally:
                (scratch / m.path).write_text(original)
            status = {0: "survived", 1: "caught"}.get(rc, "broken")
            results.append(
                {
                    "name": m.name,
                    "area": m.area,
                    "file": m.path,
                    "tests": list(m.tests),
                    "status": status,
                    "pytest": last,
                    "seconds": round(seconds, 1),
                }
            )
            print(f"[{i}/{len(mutations)}] {status:8s} {m.name}  ({last}; {seconds:.0f} s)")
    caught = sum(r["status"] == "caught" for r in results)
    return {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "caught": caught,
        "total": len(results),
        "seconds": round(time.perf_counter() - start, 1),
        "results": results,
        "environment": {"python": platform.python_version(), "machine": platform.machine()},
    }


def markdown(report: dict) -> str:
    lines = [
        "# Mutation probe: does the suite see the bugs it exists for?",
        "",
        "`scripts/mutation_probe.py` plants one realistic bug at a time in a scratch copy of the",
        "repository, runs the tests named for it and counts the bug as caught when a test fails.",
        "A bug that survives is a bug the suite cannot see. Generated by",
        f"`{report['command']}`.",
        "",
        f"**{report['caught']} of {report['total']} planted bugs caught** "
        f"({report['seconds'] / 60:.1f} minutes on {os.cpu_count()} cores).",
        "",
        "| area | planted bug | tests run | result |",
        "| --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        what = r["name"].split(": ", 1)[1].replace("|", "\\|")
        tests = ", ".join(f"`{t}`" for t in r["tests"])
        lines.append(f"| {r['area']} | {what} | {tests} | {r['status']} ({r['pytest']}) |")
    lines += [
        "",
        "Each bug is applied alone; `pytest -x` stops at the first failing test, so the time per",
        "bug is short when it is caught. The list lives in `MUTATIONS` in the script; a test",
        "(`tests/test_bench_smoke.py`) checks that every edit still applies to today's source.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="run the mutations whose name starts with this (an area)")
    p.add_argument("--check", action="store_true", help="only check that every edit applies")
    p.add_argument("--timeout", type=int, default=600, help="seconds per mutation (600)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", help="write the results page here")
    args = p.parse_args(argv)
    mutations = [m for m in MUTATIONS if not args.only or m.name.startswith(args.only)]
    if not mutations:
        p.error(f"no mutation starts with {args.only!r}")
    problems = check(mutations)
    if problems or args.check:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(mutations) - len(problems)} of {len(mutations)} mutations apply")
        return 1 if problems else 0
    report = run(mutations, args.timeout)
    print(f"caught {report['caught']} of {report['total']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))
    return 0 if report["caught"] == report["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
