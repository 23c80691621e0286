"""Convert every torchvision classifier and a list of timm models; measure; write the matrix.

For each model, with random weights at the smallest input it accepts, its BatchNorm running
statistics set from a batch of images (as a trained network has them; random statistics leave a
deep random network nearly blind to its input) and zero-initialised layers given random weights:

* input dependence: the source's logits must change between two images (relative change
  ``max|f(a) - f(b)| / max|f(b)|`` at least 1e-2), or no comparison on it could see a wrong
  conversion;
* equivalence: the conversion at B=1 with biases, ReLU and max pool kept must equal the source model
  (relative error ``max|a - b| / max|b|`` of the logits); where a deep network amplifies float32
  rounding above the tolerance, the check is repeated in float64 (the float64 source converted),
  and a source that moves as much under a 1e-15 input perturbation is "not judged";
* completeness: with the default config (B=2, no biases), after rescaling every B-cos unit to unit
  output RMS so the logits do not underflow, the contributions must equal the pixel part of the
  explained logit (the logit minus the reported constants), relative to that part (worst of 2);
* conversion time of ``bcosify.convert`` (default config), excluding model construction.

Writes ``docs/support.md`` and the data file ``bcosify/support_matrix.json`` (read by
``bcosify.support.support_matrix`` and ``bcosify models``; it holds no timings, so a rerun that
measures the same changes nothing in it).

Usage (from the repository root):
    python scripts/support_matrix.py                      # torchvision + named timm models
    python scripts/support_matrix.py --timm-families      # + one timm model per family
    python scripts/support_matrix.py --only resnet50 timm/vit_small_patch16_224 --no-write
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torchvision  # noqa: E402

import bcosify  # noqa: E402
from bcosify.support import VERIFIED_MODELS  # noqa: E402
from tests.helpers import (  # noqa: E402
    MEAN,
    STD,
    calibrate_batchnorm,
    input_dependence,
    pixel_completeness,
    randomize_norms,
    rel_err,
)
from tests.verification import (  # noqa: E402
    EQUIVALENCE,
    MIN_DEPENDENCE,
    TOL,
    completeness,
    reinit_zero_weights,
)
from tests.verification import normalize as _normalize  # noqa: E402

TOL64 = 1e-9  # float64 equivalence, where float32 rounding is amplified above TOL

# The timm models the project names explicitly.
TIMM_NAMED = [
    "resnet50",
    "resnetv2_50",
    "resnext50_32x4d",
    "seresnext50_32x4d",
    "densenet121",
    "efficientnet_b0",
    "tf_efficientnet_lite0",
    "mobilenetv3_large_100",
    "regnety_008",
    "convnext_tiny",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
]

# torchvision models at a reduced size: the architecture is the same, the input smaller.
_TV_KWARGS = {
    "vit_b_16": {"image_size": 32},
    "vit_b_32": {"image_size": 64},
    "vit_l_16": {"image_size": 32},
    "vit_l_32": {"image_size": 64},
    "vit_h_14": {"image_size": 28},
    "googlenet": {"init_weights": False},
    "inception_v3": {"init_weights": False},
}
_TV_SIZE = {"inception_v3": 80, "maxvit_t": 224}


def timm_family(name: str) -> str:
    """The timm module that defines a model (timm's own grouping into families)."""
    return timm.models.get_pretrained_cfg(name) and timm.models._registry._model_to_module[name]


def timm_family_representatives() -> list[str]:
    """One model per timm family: the first listed name with the fewest parameters is not known
    without building it, so take the alphabetically first that has a pretrained config."""
    from timm.models._registry import _module_to_models

    reps = []
    for module in sorted(_module_to_models):
        models = sorted(_module_to_models[module])
        if models:
            reps.append(_smallest_name(models))
    return reps


_SIZE_WORDS = ("atto", "femto", "pico", "nano", "tiny", "small", "xxs", "xs", "s", "mini", "_t")


def _smallest_name(models: list[str]) -> str:
    def key(name: str):
        for i, w in enumerate(_SIZE_WORDS):
            if w in name.split("_") or f"_{w}" in name or name.endswith(w):
                return (i, len(name), name)
        return (len(_SIZE_WORDS), len(name), name)

    return min(models, key=key)


def build(name: str, size: int | None = None) -> tuple[torch.nn.Module, int]:
    """The source model (random weights) and the input size it is checked at."""
    if name.startswith("timm/"):
        tname = name[5:]
        cfg = timm.models.get_pretrained_cfg(tname)
        default = int(cfg.input_size[-1]) if cfg is not None else 224
        for s in ([size] if size else []) + [64, 96, 128, 160, 192, 224, default]:
            if s > default and s != size:
                continue
            for kwargs in ({"img_size": s, "num_classes": 1000}, {"num_classes": 1000}):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model = timm.create_model(tname, pretrained=False, **kwargs).eval()
                        with torch.no_grad():
                            model(torch.rand(1, 3, s, s))
                    return model, s
                except Exception:
                    continue
        raise RuntimeError(f"{tname}: no input size from 64 to {default} works")
    model = torchvision.models.get_model(name, weights=None, **_TV_KWARGS.get(name, {}))
    s = size or _TV_SIZE.get(name) or _TV_KWARGS.get(name, {}).get("image_size", 64)
    return model.eval(), s


def check(name: str) -> dict:
    torch.manual_seed(0)
    row: dict = {"model": name, "library": "timm" if name.startswith("timm/") else "torchvision"}
    try:
        model, size = build(name)
    except Exception as exc:
        row.update(status="error", reason=f"cannot build: {type(exc).__name__}: {exc}"[:300])
        return row
    row["size"] = size
    row["params"] = sum(p.numel() for p in model.parameters())
    randomize_norms(model)  # affine parameters away from 1 and 0
    reinit_zero_weights(model)
    g = torch.Generator().manual_seed(size)
    x = torch.rand(2, 3, size, size, generator=g)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calibrate_batchnorm(model, _normalize(torch.rand(4, 3, size, size, generator=g)))
            row["input_dependence"] = input_dependence(model, _normalize(x))
    except Exception as exc:
        row.update(status="error", reason=_one_line(f"source forward: {type(exc).__name__}: {exc}"))
        return row
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            converted = bcosify.convert(model, mean=MEAN, std=STD, input_size=size)
            row["convert_s"] = time.perf_counter() - t0
            equivalent = bcosify.convert(
                model, EQUIVALENCE, mean=MEAN, std=STD, input_size=size
            ).eval()
    except bcosify.BcosifyError as exc:
        row.update(status="unsupported", reason=_one_line(str(exc)))
        return row
    except Exception as exc:  # a bug in a rule: report, do not stop the matrix
        row.update(status="error", reason=_one_line(f"{type(exc).__name__}: {exc}"))
        traceback.print_exc()
        return row
    try:
        with torch.no_grad():
            expected = model(_normalize(x))
            row["equivalence"] = rel_err(equivalent(x), expected)
        del equivalent
        expl, row["completeness"] = completeness(converted, x)
        row["constants"] = sorted(expl.constant_contributions)
        pixels = expl.explained_logit - expl.constant_total
        if float(pixels.abs().min()) <= 1e-6:
            row.update(status="error", reason="the pixel part of the logit vanishes")
            return row
    except Exception as exc:
        row.update(status="error", reason=_one_line(f"{type(exc).__name__}: {exc}"))
        traceback.print_exc()
        return row
    eq_ok = math.isfinite(row["equivalence"]) and row["equivalence"] <= TOL
    if not eq_ok and math.isfinite(row["equivalence"]):
        # a deep random network with calibrated statistics amplifies float32 rounding (the
        # source itself moves between float32 and float64): judge the conversion in float64
        try:
            _float64_equivalence(model, x, row)
        except Exception as exc:  # pragma: no cover - reported, not raised
            row["reason"] = _one_line(f"float64 check failed: {type(exc).__name__}: {exc}")
        eq_ok = row.get("equivalence_float64", 1.0) <= TOL64
    co_ok = math.isfinite(row["completeness"]) and row["completeness"] <= TOL
    if eq_ok and not co_ok and math.isfinite(row["completeness"]):
        # deep models cancel large contributions: is the float32 error rounding? check in float64
        try:
            expl64 = bcosify.explain(converted.double(), x.double())
            row["completeness_float64"] = pixel_completeness(expl64)
        except Exception as exc:  # pragma: no cover - reported, not raised
            row["reason"] = _one_line(f"float64 check failed: {type(exc).__name__}: {exc}")
        co_ok = row.get("completeness_float64", 1.0) <= 1e-10
        if co_ok:
            row["reason"] = (
                f"float32 rounding: the float64 completeness error is "
                f"{row['completeness_float64']:.1e}"
            )
    if row["input_dependence"] < MIN_DEPENDENCE:
        row.update(
            status="input-blind",
            reason=f"the source's logits change by {row['input_dependence']:.1e} between two "
            "images even with calibrated statistics: the equivalence check cannot judge it",
        )
    elif (
        co_ok
        and not eq_ok
        and row.get("equivalence_float64", math.inf) <= 10 * row.get("source_float64_noise", 0)
    ):
        row.update(
            status="not judged",
            reason=f"the source amplifies rounding: a 1e-15 relative input perturbation moves "
            f"its float64 logits by {row['source_float64_noise']:.1e} (float32 against float64: "
            f"{row['source_float32_error']:.1e}); the float64 equivalence error "
            f"{row['equivalence_float64']:.1e} is of that order, so the check cannot judge it",
        )
    elif eq_ok and co_ok:
        row["status"] = "pass"
        if "equivalence_float64" in row:
            note = (
                f"float32 rounding: the source's own float32 logits differ by "
                f"{row['source_float32_error']:.1e} from float64; the float64 equivalence error "
                f"is {row['equivalence_float64']:.1e}"
            )
            row["reason"] = "; ".join(filter(None, [row.get("reason", ""), note]))
    elif co_ok:
        row.update(status="complete, not equivalent", reason="B=1 conversion differs (see error)")
    else:
        row.update(status="fail", reason="completeness error above tolerance")
    return row


def _float64_equivalence(model: torch.nn.Module, x: torch.Tensor, row: dict) -> None:
    """The equivalence check again in float64, converting the float64 source, and the source's
    own float32 error (its float32 logits against its float64 ones), which says how strongly the
    network amplifies rounding."""
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        size = int(x.shape[-1])
        equivalent = bcosify.convert(
            model64, EQUIVALENCE, mean=MEAN, std=STD, input_size=size
        ).eval()
        expected64 = model64(_normalize(x64))
        row["source_float32_error"] = rel_err(model(_normalize(x)), expected64)
        row["equivalence_float64"] = rel_err(equivalent(x64), expected64)
        if row["equivalence_float64"] > TOL64:
            # how far the float64 source moves under a rounding-sized input perturbation
            g = torch.Generator().manual_seed(3)
            noise = 1 + 1e-15 * torch.randn(x64.shape, generator=g, dtype=torch.float64)
            row["source_float64_noise"] = rel_err(model64(_normalize(x64 * noise)), expected64)


def _one_line(text: str) -> str:
    lines = [t.strip() for t in text.splitlines() if t.strip()]
    return " ".join(lines)[:400]


def _fmt_err(v) -> str:
    return "" if v is None else f"{v:.1e}"


def markdown(rows: list[dict]) -> str:
    passed = [r for r in rows if r.get("status") == "pass"]
    tv = [r for r in rows if r["library"] == "torchvision"]
    tm = [r for r in rows if r["library"] == "timm"]
    lines = [
        "# Support matrix",
        "",
        "Generated by `python scripts/support_matrix.py` "
        "(options: `--timm-families` adds one timm model per family). Every model is built with "
        "random weights, its BatchNorm running statistics set from a batch of 4 images (as a "
        "trained network has them) and zero-initialised layers re-initialised, and checked at "
        "the smallest input it accepts:",
        "",
        "- **dependence**: how much the source's logits change between two images "
        "(`max|f(a)-f(b)| / max|f(b)|`); below "
        f"{MIN_DEPENDENCE:g} the model is *input-blind* and the equivalence check cannot judge "
        "it;",
        "- **equivalence**: the conversion at B=1 with biases, ReLU and max pool kept, against the "
        "source model (relative error of the logits, `max|a-b| / max|b|`);",
        "- **completeness**: default config (B=2, no biases): the contributions against the pixel "
        "part of the explained logit (the logit minus the reported constant terms), relative to "
        "that part, worst of 2 samples;",
        f"- **pass**: both at most {TOL:g}. A deep random network with calibrated statistics "
        "can amplify float32 rounding beyond that (the source's own float32 logits then differ "
        "from its float64 ones by as much): the equivalence check is then repeated in float64, "
        f"converting the float64 source, and must be at most {TOL64:g}; where it is not, but a "
        "1e-15 relative input perturbation moves the float64 source's own logits by at least a "
        "tenth of that error, the source is too chaotic for the check and is *not judged*; "
        "where the completeness check fails on rounding, it is repeated in float64 and must be "
        "at most 1e-10. The reason column gives those errors. Conversion time is for "
        "`bcosify.convert` alone (default config, excluding model construction) on the "
        "machine that ran the script (a 2-core machine shared with other jobs: times are upper "
        "bounds).",
        "",
        f"Passing: {len(passed)} of {len(rows)} "
        f"(torchvision {sum(r.get('status') == 'pass' for r in tv)} of {len(tv)}, "
        f"timm {sum(r.get('status') == 'pass' for r in tm)} of {len(tm)}).",
        "",
        "| model | library | status | input | dependence | equivalence | completeness | "
        "convert (s) | params (M) | reason |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        size = r.get("size")
        params = r.get("params")
        secs = r.get("convert_s")
        lines.append(
            f"| `{r['model']}` | {r['library']} | {r.get('status')} | "
            f"{f'{size}×{size}' if size else ''} | {_fmt_err(r.get('input_dependence'))} | "
            f"{_fmt_err(r.get('equivalence'))} | "
            f"{_fmt_err(r.get('completeness'))} | "
            f"{'' if secs is None else f'{secs:.2f}'} | "
            f"{'' if params is None else f'{params / 1e6:.1f}'} | "
            f"{r.get('reason', '').replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


DATA_KEYS = ("model", "library", "status", "size", "input_dependence", "equivalence")


def data_file(rows: list[dict]) -> str:
    """The rows as the JSON data file: measured values, no timings (a rerun that measures the
    same writes the same file)."""
    keep = (*DATA_KEYS, "equivalence_float64", "completeness", "reason")
    data = [{k: r.get(k, "" if k == "reason" else None) for k in keep} for r in rows]
    return json.dumps(data, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", help="check these models only (timm ones as timm/<name>)")
    p.add_argument("--timm-families", action="store_true", help="add one timm model per family")
    p.add_argument("--no-torchvision", action="store_true")
    p.add_argument("--no-write", action="store_true", help="print, do not write the files")
    p.add_argument("--json", help="also write the raw rows to this JSON file")
    p.add_argument(
        "--from-json",
        nargs="+",
        metavar="FILE",
        help="write the files from rows saved with --json (several runs are merged; models of the "
        "planned list that no run measured are listed as 'not run')",
    )
    args = p.parse_args(argv)
    if args.from_json:
        rows = _merge_saved(args.from_json, _planned(args))
        _write(rows)
        return 0
    names = _planned(args)
    torch.set_grad_enabled(True)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        row = check(name)
        gc.collect()
        rows.append(row)
        print(
            f"{name:40s} {row.get('status'):10s} eq={_fmt_err(row.get('equivalence')):8s} "
            f"compl={_fmt_err(row.get('completeness')):8s} "
            f"convert={row.get('convert_s', float('nan')):.2f}s "
            f"total={time.perf_counter() - t0:.0f}s "
            f"{row.get('reason', '')[:160]}",
            flush=True,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    if not args.no_write:
        _write(rows)
    return 0


def _planned(args) -> list[str]:
    if args.only:
        return list(args.only)
    names = [] if args.no_torchvision else list(torchvision.models.list_models(torchvision.models))
    names += [f"timm/{n}" for n in TIMM_NAMED]
    names += [n for n in VERIFIED_MODELS if n.startswith("timm/") and n not in names]
    if args.timm_families:
        names += [f"timm/{n}" for n in timm_family_representatives() if f"timm/{n}" not in names]
    return names


def _merge_saved(files: list[str], planned: list[str]) -> list[dict]:
    measured: dict[str, dict] = {}
    for f in files:
        for row in json.loads(Path(f).read_text()):
            measured[row["model"]] = row
    rows = []
    for name in planned + [n for n in measured if n not in planned]:
        rows.append(
            measured.get(name)
            or {
                "model": name,
                "library": "timm" if name.startswith("timm/") else "torchvision",
                "status": "not run",
                "reason": "not measured in the last run of the script",
            }
        )
    return rows


def _write(rows: list[dict]) -> None:
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "support.md").write_text(markdown(rows))
    (ROOT / "bcosify" / "support_matrix.json").write_text(data_file(rows))


if __name__ == "__main__":
    raise SystemExit(main())
