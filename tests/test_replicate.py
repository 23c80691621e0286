"""scripts/replicate.py: the IDX reader, the speed-up arithmetic, and a smoke run on fake data."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import fake_fashion_mnist, write_idx

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("replicate", ROOT / "scripts" / "replicate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["replicate"] = module
    spec.loader.exec_module(module)
    return module


rep = _load_script()


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    write_idx(tmp_path / "x-ubyte.gz", a)
    np.testing.assert_array_equal(rep.read_idx(tmp_path / "x-ubyte.gz"), a)
    bad = tmp_path / "bad-ubyte.gz"
    bad.write_bytes(gzip.compress(struct.pack(">HBB", 0, 0x0D, 1) + b"\0" * 8))
    with pytest.raises(rep.ReplicationError, match="unsigned-byte IDX"):
        rep.read_idx(bad)
    short = tmp_path / "short-ubyte.gz"
    short.write_bytes(gzip.compress(struct.pack(">HBBI", 0, 0x08, 1, 5) + b"\1\2"))
    with pytest.raises(rep.ReplicationError, match="truncated"):
        rep.read_idx(short)


def test_missing_data_names_the_debian_package(tmp_path, monkeypatch):
    with pytest.raises(rep.ReplicationError, match="apt-get install dataset-fashion-mnist"):
        rep.load_fashion_mnist(tmp_path)
    monkeypatch.setattr(rep, "DEFAULT_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(rep.ReplicationError, match="apt-get install dataset-fashion-mnist"):
        rep.load_fashion_mnist(None)
    assert rep.main(["--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_speedup_arithmetic():
    # from scratch first reaches its final 90 at epoch 4; B-cosified has 85 after half an epoch
    # and 90.5 after one: 4x
    s = rep.speedup(
        [(0.5, 85.0), (1.0, 90.5), (1.5, 91.0)],
        [(1, 60.0), (2, 80.0), (3, 88.0), (4, 90.0), (5, 89.0), (6, 90.0)],
    )
    assert s["target_top1"] == 90.0
    assert s["scratch_epochs_to_target"] == 4
    assert s["bcosified_epochs_to_target"] == 1.0
    assert s["speedup"] == 4.0 and s["equal_final"]
    # the scratch model dips below 90 at epoch 5: it stays at or above it from epoch 6 only
    assert s["scratch_epochs_to_stay"] == 6 and s["bcosified_epochs_to_stay"] == 1.0
    assert s["speedup_to_stay"] == 6.0
    never = rep.speedup([(1, 50.0), (2, 60.0)], [(1, 70.0), (2, 80.0)])
    assert never["bcosified_epochs_to_target"] is None and never["speedup"] is None
    # reaches the target early but ends below it: a speed-up, but not at equal final accuracy
    dips = rep.speedup([(0.5, 91.0), (1.0, 89.0)], [(1, 85.0), (2, 90.0)])
    assert dips["speedup"] == 4.0 and not dips["equal_final"]
    assert dips["bcosified_epochs_to_stay"] is None and dips["speedup_to_stay"] is None


def test_grid_classes_are_the_least_confused():
    # classes 0-2 confuse each other; 3, 4, 5 and 0 do not
    labels = torch.tensor([c for c in range(6) for _ in range(10)])
    pred = labels.clone()
    pred[1] = 1  # a class-0 image predicted 1
    pred[11:14] = 2  # class-1 images predicted 2
    pred[21] = 0
    conf = rep.confusion_matrix(pred, labels, 6)
    assert conf[1, 2] == pytest.approx(0.3) and conf.sum(1) == pytest.approx(np.ones(6))
    classes, worst = rep.least_confusable(conf, 4)
    assert classes == [0, 3, 4, 5] and worst == 0.0
    # five classes need two of 0, 1, 2: {0, 1} and {0, 2} tie at 0.1, {0, 2} is more accurate
    classes, worst = rep.least_confusable(conf, 5)
    assert classes == [0, 2, 3, 4, 5] and worst == pytest.approx(0.1)


def test_the_receptive_field_is_smaller_than_a_cell():
    assert rep.receptive_field(rep.SmallResNet()) == 25 < rep.IMAGE_SIZE
    assert rep.receptive_field(rep.SmallResNet((8, 16, 32, 64), (1, 1, 1, 1))) == 49
    assert rep.receptive_field(rep.SmallResNet((8, 16, 32), (2, 1, 1))) == 29


def test_stratified_subset_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 30)
    idx = rep.stratified_subset(labels, 47, seed=3)
    assert len(set(idx.tolist())) == 47
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.min() >= 4 and counts.max() <= 5
    np.testing.assert_array_equal(idx, rep.stratified_subset(labels, 47, seed=3))


def test_quick_run_on_fake_data(tmp_path):
    # four very different classes: a grid needs four that every barely trained model gets right
    data = fake_fashion_mnist(tmp_path / "data", classes=4)
    out, root = tmp_path / "out", tmp_path / "root"
    argv = ["--quick", "--threads", "1", "--data-dir", str(data), "--out", str(out)]
    assert rep.main([*argv, "--publish", "--root", str(root)]) == 0
    results = json.loads((root / "benchmarks" / "replication.json").read_text())
    s = results["settings"]
    resnet, lite0 = results["sources"]["resnet"], results["sources"]["lite0"]
    assert set(resnet["bcosified"]) == set(s["runs"]) and set(lite0["bcosified"]) == set(
        rep.LITE0_RUNS
    )
    assert set(resnet["scratch"]) == set(s["scratch_activations"]) and set(lite0["scratch"]) == {
        "keep"
    }
    assert len(resnet["standard"]["curve"]) == s["std_epochs"]
    # the easy fake classes are being learnt: far above chance (10 %) after a few dozen steps
    assert resnet["standard"]["top1"] > 30.0
    for src in (resnet, lite0):
        for name, r in src["bcosified"].items():
            metrics = json.loads(
                (
                    out / f"{'resnet' if src is resnet else 'lite0'}-{name}" / "metrics.json"
                ).read_text()
            )
            # the curve is read from the run's CSV log: its epoch ends are the loop's own
            ends = [p["top1"] for p in r["curve"] if p["epoch"] == int(p["epoch"])]
            assert ends == [m["val/top1"] for m in metrics]
            # and it has the evaluations within epochs too
            assert len(r["curve"]) >= len(metrics)
            assert r["speedup"] == rep.speedup(
                rep._points(r["curve"]),
                rep._points(src["scratch"][r["against"].split("-")[1]]["curve"]),
            )
            assert 0.0 <= r["agree"] <= 100.0
    quick = resnet["bcosified"]["align-relu"]["curve"]
    assert [p["epoch"] for p in quick] == pytest.approx([s / 25 for s in (12, 24, 25, 36, 48, 50)])
    assert all("agree" in p for p in quick)  # alignment has a teacher: agreement per evaluation
    g = results["gridpg"]
    assert "skipped" not in g, g.get("skipped")
    assert g["n_grids"] >= 1 and g["grid_size"] == 2 and len(g["classes"]) == 4
    methods = set(g["summary"])
    expected = {f"B-cos ({n})" for n in [*s["runs"], "scratch-keep"]}
    assert expected | {"Input×Gradient", "Integrated Gradients", "uniform"} <= methods
    assert any(m.startswith("Grad-CAM") for m in methods)
    assert g["summary"]["uniform"]["mean"] == pytest.approx(1 / 4)
    for m, st in g["summary"].items():
        assert 0.0 <= st["q1"] <= st["median"] <= st["q3"] <= 1.0
        assert len(g["scores"][m]) == st["n"]
    for png in ("replication-accuracy.png", "replication-gridpg.png"):
        assert (root / "docs" / png).stat().st_size > 1000
    page = (root / "docs" / "replication.md").read_text()
    md = (out / "results.md").read_text()
    assert md in page and "## Design, and why" in page and "What was cut" in page
    assert "![accuracy per epoch](replication-accuracy.png)" in page
    assert "| target | run | measured | met |" in md and "Grid pointing game:" in md
    # every target row says met or missed, and the speed-up rows follow the numbers
    for t in rep.targets(results):
        assert t["met"] in (True, False, None)  # None: the scratch run had not converged
    # --rerender rebuilds the same tables from the saved run without training
    (out / "results.md").unlink()
    assert rep.main(["--rerender", "--out", str(out)]) == 0
    assert (out / "results.md").read_text() == md
    # --scratch-from: a second run reuses the from-scratch curves instead of training them again
    again = tmp_path / "again"
    reuse = ["--scratch-from", str(out / "results.json"), "--no-lite0", "--runs", "labels-relu"]
    assert rep.main([*argv[:-1], str(again), *reuse]) == 0
    second = json.loads((again / "results.json").read_text())["sources"]["resnet"]
    kept = second["scratch"]["keep"]
    assert kept.pop("reused_from") == str(out / "results.json")
    assert kept == resnet["scratch"]["keep"]
    assert not (again / "resnet-scratch-keep").exists()  # not trained again
    r = second["bcosified"]["labels-relu"]
    assert r["speedup"] == rep.speedup(rep._points(r["curve"]), rep._points(kept["curve"]))
    assert "(curve of an earlier run)" in (again / "results.md").read_text()


def test_targets_follow_the_numbers():
    def src(speed, final_ok, agree_align, agree_distill):
        sp = {"speedup": speed, "equal_final": final_ok}
        flat = [{"epoch": float(e), "top1": 90.0} for e in range(1, 11)]  # converged
        return {
            "scratch": {"keep": {"curve": flat}},
            "bcosified": {
                "align-relu": {
                    "label": "a",
                    "against": "scratch-keep",
                    "speedup": sp,
                    "agree": agree_align,
                },
                "distill-relu": {
                    "label": "d",
                    "against": "scratch-keep",
                    "speedup": sp,
                    "agree": agree_distill,
                },
            },
        }

    def summary(align, scratch, cam):
        return {
            "B-cos (align-relu)": {"mean": align},
            "B-cos (distill-relu)": {"mean": align},
            "B-cos (scratch-keep)": {"mean": scratch},
            "Grad-CAM (layers)": {"mean": cam},
        }

    good = {
        "sources": {"resnet": src(5.0, True, 90.0, 80.0)},
        "gridpg": {"summary": summary(0.8, 0.81, 0.7)},
    }
    assert all(t["met"] for t in rep.targets(good))
    assert len(rep.targets(good)) == 2 + 2 + 1
    # a from-scratch run still climbing in its last fifth makes a speed-up not judged
    climbing = dict(good)
    climbing["sources"] = {"resnet": src(5.0, True, 90.0, 80.0)}
    climbing["sources"]["resnet"]["scratch"] = {
        "keep": {"curve": [{"epoch": e, "top1": 50.0 + e} for e in range(1, 11)]}
    }
    assert [t["met"] for t in rep.targets(climbing)][:2] == [None, None]
    slow = {
        "sources": {"resnet": src(4.6, True, 80.0, 90.0)},
        "gridpg": {"summary": summary(0.7, 0.8, 0.6)},
    }
    assert not any(t["met"] for t in rep.targets(slow))
    below = {
        "sources": {"resnet": src(9.0, False, 90.0, 80.0)},
        "gridpg": {"summary": summary(0.8, 0.8, 0.85)},
    }
    met = [t["met"] for t in rep.targets(below)]
    assert met == [False, False, False, False, True]


def test_scratch_from_refuses_other_settings(tmp_path):
    s = rep.Settings(scratch_from=str(tmp_path / "results.json"))
    with pytest.raises(rep.ReplicationError, match="not a results file"):
        rep.reusable_scratch(s, "here")
    earlier = {
        "data": {"source": "here"},
        "settings": rep._settings_dict(rep.Settings()),
        "sources": {"resnet": {"scratch": {"keep": {"top1": 1.0}, "remove": {"top1": 2.0}}}},
    }
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    assert rep.reusable_scratch(s, "here")["remove"] == {
        "top1": 2.0,
        "reused_from": str(tmp_path / "results.json"),
    }
    with pytest.raises(rep.ReplicationError, match="other settings \\(data source\\)"):
        rep.reusable_scratch(s, "elsewhere")
    other = rep.Settings(scratch_from=s.scratch_from, scratch_epochs=5, widths=(8, 8, 8))
    with pytest.raises(rep.ReplicationError, match="widths, scratch_epochs"):
        rep.reusable_scratch(other, "here")
    # settings a from-scratch run does not depend on may differ
    assert rep.reusable_scratch(rep.Settings(scratch_from=s.scratch_from, epochs=3), "here")
    del earlier["sources"]["resnet"]["scratch"]["keep"]
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    with pytest.raises(rep.ReplicationError, match="no from-scratch run with ReLU keep"):
        rep.reusable_scratch(s, "here")


def test_sources_can_run_alone(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rep.parse_args(["--no-resnet", "--no-lite0"])
    assert "leave nothing to run" in capsys.readouterr().err
    _, s = rep.parse_args(["--no-resnet", "--lite0-scratch-epochs", "40"])
    assert not s.resnet and s.lite0 and s.lite0_scratch_epochs == 40
    # the label recipe at every start point, as alignment has them
    for start in ("normalized", "b-ramp", "no-recal"):
        labels, align = rep.RUNS[f"labels-relu-{start}"], rep.RUNS[f"align-relu-{start}"]
        assert labels.loss == "bce" and (labels.config, labels.train) == (align.config, align.train)
    data = fake_fashion_mnist(tmp_path / "data", classes=4)
    argv = ["--quick", "--threads", "1", "--no-resnet", "--lite0-scratch-epochs", "2"]
    assert rep.main([*argv, "--data-dir", str(data), "--out", str(tmp_path / "o")]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert list(results["sources"]) == ["lite0"] and "gridpg" not in results
    assert len(results["sources"]["lite0"]["scratch"]["keep"]["curve"]) == 2
