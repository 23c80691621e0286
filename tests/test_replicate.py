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

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("replicate", ROOT / "scripts" / "replicate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["replicate"] = module
    spec.loader.exec_module(module)
    return module


rep = _load_script()


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fake_fashion_mnist(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Ten easy classes: class c is a 28x28 image of grey level 20 + 23c with noise."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = 20.0 + 23.0 * labels[:, None, None] + rng.normal(0, 6, (n, 28, 28))
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write_idx(tmp_path / "x-ubyte.gz", a)
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
    # from scratch reaches its final 90 at epoch 4 (first time), B-cosified at epoch 2
    s = rep.speedup([85.0, 90.5, 91.0], [60.0, 80.0, 88.0, 90.0, 89.0, 90.0])
    assert s["target_top1"] == 90.0
    assert s["scratch_epochs_to_target"] == 4
    assert s["bcosified_epochs_to_target"] == 2
    assert s["speedup"] == 2.0
    never = rep.speedup([50.0, 60.0], [70.0, 80.0])
    assert never["bcosified_epochs_to_target"] is None and never["speedup"] is None


def test_stratified_subset_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 30)
    idx = rep.stratified_subset(labels, 47, seed=3)
    assert len(set(idx.tolist())) == 47
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.min() >= 4 and counts.max() <= 5
    np.testing.assert_array_equal(idx, rep.stratified_subset(labels, 47, seed=3))


def test_quick_run_on_fake_data(tmp_path):
    data = _fake_fashion_mnist(tmp_path / "data")
    out = tmp_path / "out"
    published = tmp_path / "pub"
    argv = ["--quick", "--threads", "1", "--data-dir", str(data), "--out", str(out)]
    argv += ["--json", str(published / "r.json"), "--plot", str(published / "r.png")]
    assert rep.main(argv) == 0
    results = json.loads((published / "r.json").read_text())
    acc, s = results["accuracy"], results["settings"]
    assert len(acc["standard"]) == s["std_epochs"]
    assert len(acc["bcosified"]) == s["epochs"]
    assert len(acc["scratch"]) == s["scratch_epochs"]
    assert all(0.0 <= a <= 100.0 for curve in acc.values() for a in curve)
    # the easy fake classes are being learnt: far above chance (10 %) after a few dozen steps
    assert min(acc["standard"][-1], acc["bcosified"][-1], acc["scratch"][-1]) > 30.0
    # the speed-up is recomputed from the curves in the file
    assert results["speedup"] == rep.speedup(acc["bcosified"], acc["scratch"])
    # the curves come from finetune's own metrics files
    metrics = json.loads((out / "bcosified" / "metrics.json").read_text())
    assert [m["val/top1"] for m in metrics] == acc["bcosified"]
    g = results["gridpg"]
    assert "skipped" not in g, g.get("skipped")
    assert g["n_grids"] >= 1
    names = set(g["summary"])
    assert {"B-cos (B-cosified)", "B-cos (from scratch)", "Grad-CAM", "uniform"} <= names
    assert (
        g["grid_size"] == 2
    )  # --quick: 2x2 grids (its barely trained models agree on few classes)
    assert g["summary"]["uniform"]["mean"] == pytest.approx(1 / 4)
    for st in g["summary"].values():
        assert 0.0 <= st["q1"] <= st["median"] <= st["q3"] <= 1.0
    assert (published / "r.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| epoch | standard (CE) | B-cosified | B-cos from scratch |" in md
    assert "Grid pointing game" in md
    assert "Mean score per explained class" in md
    # --rerender rebuilds the same tables from the saved run without training
    (out / "results.md").unlink()
    assert rep.main(["--rerender", "--out", str(out)]) == 0
    assert (out / "results.md").read_text() == md
    with pytest.raises(SystemExit):
        rep.main(["--train-size", "-1"])
