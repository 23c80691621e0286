"""Smoke test of scripts/benchmark.py: its quick path runs end to end on a tiny model."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("bcosify_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_results(benchmark, tmp_path):
    argv = ["--quick", "--no-memory", "--size", "32", "--out", str(tmp_path)]
    results = benchmark.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["command"] == "python scripts/benchmark.py " + " ".join(argv)
    forward = saved["architectures"]["resnet18"]["forward"]
    assert set(forward) == {"1", "2"}
    for kind in benchmark.KINDS:
        assert forward["2"][kind]["median_s"] > 0
    explain = saved["architectures"]["resnet18"]["explain"]
    assert explain["completeness_error_max"] < 1e-3  # calibrated norms: the logits are not ~0
    assert explain["reference_explain_loop"]["median_s"] > 0
    assert saved["conversion"]["resnet18"]["median_s"] > 0
    table = (tmp_path / "results.md").read_text()
    # forward per batch, explain (3), the training step, import
    assert len(saved["targets"]) == 2 * 2 + 3 + 1 + 2
    train = saved["architectures"]["resnet18"]["train"]
    assert train["loss_finite"] and train["amp"] == "none"
    assert all(train[kind]["median_s"] > 0 for kind in benchmark.KINDS)
    assert "one training step (batch 2, 64 px)" in table
    assert explain["bcosify_explain_top5"]["median_s"] > 0  # five targets per image
    assert "5 targets per image" in table
    imp = saved["import"]
    assert imp["libraries_loaded_by_import"] == []  # the library rules load on demand
    assert imp["median_s"]["import bcosify"] > 0 and "import time" in table.lower()
    assert "bcosify (reference config)" in table and "| resnet18 |" in table
    assert results["machine"]["torch_threads"] == 1


def test_failed_conversion_is_recorded(benchmark):
    result = benchmark.bench_conversion(["no_such_model"], repeats=1)
    assert result["no_such_model"]["unsupported"].startswith("ModelSourceError")


def test_memory_is_measured_in_a_subprocess(benchmark):
    out = benchmark.bench_memory("resnet18", ["bcosify"], [1, 8], 8, size=64, threads=1)["bcosify"]
    assert out["params_mib"] > 40  # resnet18: 11.7M float32 parameters
    # 8 images at 64 px: the stem's output alone is 8 x 64 x 32 x 32 floats = 2 MiB
    assert out["forward_8_peak_mib"] > 2
    assert out["explain_8_peak_mib"] > out["forward_8_peak_mib"]


def test_gpu_check_dry_run(tmp_path):
    """scripts/gpu_check.sh on the CPU with small sizes (the GPU check's dry run): the
    benchmark with its bf16 training step, explanations under bf16/fp16 autocast, and a short
    bf16 fine-tune through the recipes' loader, all written to the output directory."""
    root = SCRIPT.parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    cmd = ["bash", str(root / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bench = json.loads((tmp_path / "benchmark" / "results.json").read_text())
    train = bench["architectures"]["resnet18"]["train"]
    assert train["amp"] == "bf16" and train["loss_finite"]
    check = json.loads((tmp_path / "gpu_check.json").read_text())
    assert check["mixed_precision"]["bf16"]["pixel_completeness"] <= 1e-2
    assert check["mixed_precision"]["bf16"]["finite"] and check["mixed_precision"]["fp16"]["finite"]
    assert check["finetune"]["loss_finite"] and check["finetune"]["steps"] == 4
    assert "bf16 completeness ≤ 1e-2: yes" in (tmp_path / "gpu_check.md").read_text()
