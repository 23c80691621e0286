"""scripts/replicate_seeds.py: the seed-averaged speed-up and a smoke run on fake data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.helpers import fake_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "replicate_seeds", ROOT / "scripts" / "replicate_seeds.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["replicate_seeds"] = module
    spec.loader.exec_module(module)
    return module


seeds = _load_script()
rep = seeds.rep


def test_mean_curve_needs_the_same_evaluations():
    assert seeds.mean_curve([[(1.0, 70.0)], [(1.0, 80.0)], [(1.0, 90.0)]]) == [(1.0, 80.0)]
    with pytest.raises(rep.ReplicationError, match="different epochs"):
        seeds.mean_curve([[(1.0, 80.0), (2.0, 90.0)], [(1.0, 80.0), (2.5, 90.0)]])


def test_the_target_is_judged_on_the_mean_curves_not_on_a_lucky_seed():
    # seed 1's from-scratch run ends low (87): against it alone the B-cosified run of seed 1 is
    # 28x; averaged over the seeds the from-scratch final is 88, first reached at epoch 29, and
    # the B-cosified mean reaches it at epoch 2: 14.5x
    scratch = {
        "0": [(e, 80.0 + e * 0.25) for e in range(1, 29)] + [(29, 89.0)],
        "1": [(e, 80.0 + e * 0.25) for e in range(1, 29)] + [(29, 87.0)],
    }
    bcos = {
        "0": [(1.0, 86.0), (2.0, 88.5), (3.0, 88.8)],
        "1": [(1.0, 87.0), (2.0, 87.5), (3.0, 87.5)],
    }
    results = {"per_seed": {k: _entry(scratch[k], bcos[k]) for k in scratch}}
    seeds.analyse(results)
    sp = results["speedups"]
    matched = {p["seed"]: p for p in sp["matched"]}
    assert matched["1"]["speedup"] == pytest.approx(28 / 1.0)  # 87 first reached at epoch 28
    assert matched["0"]["speedup"] is None  # seed 0's B-cosified run never reaches 89
    assert sp["mean"]["target_top1"] == pytest.approx(88.0)
    assert sp["mean"]["bcosified_epochs_to_target"] == pytest.approx(2.0)
    assert sp["mean"]["scratch_epochs_to_target"] == pytest.approx(29.0)
    assert results["target"]["value"] == pytest.approx(14.5) and results["target"]["met"]
    # a B-cosified mean that ends below the from-scratch mean is missed, however early it crosses
    results["per_seed"]["0"]["bcosified"]["curve"][-1]["top1"] = 86.0
    seeds.analyse(results)
    assert not results["target"]["met"]
    assert results["speedups"]["pairs"]["equal_final"] == 1  # only seed 1 vs seed 1
    assert "ends below it" in seeds.markdown({**results, **_labels()})


def _entry(scratch, bcos) -> dict:
    return {
        "scratch": {"curve": [{"epoch": float(e), "top1": v} for e, v in scratch]},
        "bcosified": {"curve": [{"epoch": float(e), "top1": v} for e, v in bcos]},
    }


def _labels() -> dict:
    return {"standard": {"top1": 90.0}, "label": "alignment", "scratch_label": "scratch"}


def test_quick_run_on_fake_data(tmp_path):
    data = fake_fashion_mnist(tmp_path / "data", classes=4)
    out, root = tmp_path / "out", tmp_path / "root"
    argv = ["--quick", "--threads", "1", "--seeds", "0,1", "--data-dir", str(data)]
    assert seeds.main([*argv, "--out", str(out), "--publish", "--root", str(root)]) == 0
    results = json.loads((root / "benchmarks" / "replication-seeds.json").read_text())
    assert results["seeds"] == [0, 1] and set(results["per_seed"]) == {"0", "1"}
    s0, s1 = results["per_seed"]["0"], results["per_seed"]["1"]
    # one standard model for every seed; the seed reaches the from-scratch initialisation and
    # the fine-tuning's data order: both runs differ between seeds
    for run in ("scratch-keep", "align-relu"):  # the easy fake classes saturate top-1: losses
        losses = [
            [
                m["val/loss"]
                for m in json.loads((out / f"seed{k}-{run}" / "metrics.json").read_text())
            ]
            for k in (0, 1)
        ]
        assert losses[0] != losses[1], run
    assert s0["bcosified"]["recipe"]["train"]["seed"] == 0
    assert s1["bcosified"]["recipe"]["train"]["seed"] == 1
    assert s1["bcosified"]["recipe"]["train"]["loss"] == "align"
    assert (out / "seed1-align-relu").is_dir() and (out / "seed0-scratch-keep").is_dir()
    # the speed-ups are those of the stored curves
    mean_s = seeds.mean_curve([rep._points(v["scratch"]["curve"]) for v in (s0, s1)])
    mean_b = seeds.mean_curve([rep._points(v["bcosified"]["curve"]) for v in (s0, s1)])
    assert results["speedups"]["mean"] == json.loads(json.dumps(rep.speedup(mean_b, mean_s)))
    assert results["speedups"]["pairs"]["n"] == 4
    page = (root / "docs" / "replication-seeds.md").read_text()
    md = (out / "results.md").read_text()
    assert md in page and "![curves per seed](replication-seeds.png)" in page
    assert "| mean curve |" in md and "| target | measured | met |" in md
    assert (root / "docs" / "replication-seeds.png").stat().st_size > 1000
    # --rerender rebuilds the same tables without training
    (out / "results.md").unlink()
    assert seeds.main(["--rerender", "--out", str(out)]) == 0
    assert (out / "results.md").read_text() == md


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        seeds.main(["--seeds", "3"])  # one seed is no repetition
    with pytest.raises(SystemExit):
        seeds.main(["--seeds", "1,1"])
    assert "at least two different seeds" in capsys.readouterr().err
    data = fake_fashion_mnist(tmp_path / "data", n_train=20, n_test=10)
    assert seeds.main(["--run", "nope", "--data-dir", str(data), "--out", str(tmp_path)]) == 2
    assert "unknown run 'nope'" in capsys.readouterr().err
    assert seeds.main(["--rerender", "--out", str(tmp_path / "none")]) == 2
