from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcosify.cli import main
from bcosify.support import VERIFIED_MODELS


def test_help_has_examples(capsys):
    for cmd in ["convert", "inspect", "explain", "models", "push", "demo", "finetune"]:
        with pytest.raises(SystemExit) as info:
            main([cmd, "--help"])
        assert info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_models_lists_verified(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in VERIFIED_MODELS)


def test_inspect_prints_report(capsys):
    assert main(["inspect", "resnet18", "--weights", "none"]) == 0
    out = capsys.readouterr().out
    assert "Conv2d -> BcosConv2d" in out and "removed   ReLU" in out


def test_convert_explain_roundtrip(tmp_path, capsys):
    out = tmp_path / "r18"
    assert main(["convert", "resnet18", "--weights", "none", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "B-cos conversion of ResNet" in capsys.readouterr().out
    # existing output is refused
    assert main(["convert", "resnet18", "--weights", "none", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    img = tmp_path / "photo.png"
    Image.fromarray((np.random.rand(40, 50, 3) * 255).astype("uint8")).save(img)
    figs = tmp_path / "figs"
    assert main(["explain", str(out), str(img), "--out", str(figs)]) == 0
    printed = capsys.readouterr().out
    assert "top-5" in printed and (figs / "photo.png").is_file()
    # the 3 highest classes, one figure each, from one explain call
    assert main(["explain", str(out), str(img), "--top-k", "3", "--out", str(figs)]) == 0
    printed = capsys.readouterr().out
    written = sorted(p.name for p in figs.glob("photo_class*.png"))
    assert len(written) == 3 and "explained class(es) [" in printed
    assert main(["explain", str(out), str(img), "--top-k", "3", "--out", str(figs)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["explain", str(out), str(img), "--top-k", "0", "--out", str(figs)]) == 2


@pytest.mark.parametrize(
    "argv,match",
    [
        (["inspect", "resnet5", "--weights", "none"], "resnet5"),
        (["explain", "/nonexistent-dir", "/nonexistent.png", "--out", "x"], "not found"),
        (["convert", "resnet18", "--weights", "/nonexistent.pth", "--out", "x"], "nonexistent"),
    ],
)
def test_bad_input_is_one_clean_error(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bcosify: error:") and match in err and "Traceback" not in err


def test_not_an_image_and_corrupted_dir(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert main(["explain", str(tmp_path), str(text), "--out", str(tmp_path / "f")]) == 2
    assert "not an image" in capsys.readouterr().err
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    img = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype="uint8")).save(img)
    assert main(["explain", str(bad), str(img), "--out", str(tmp_path / "f")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "bcosify.cli", "models"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "resnet50" in proc.stdout


def test_demo_agrees_with_original(tmp_path, capsys):
    """Real ImageNet weights: the exact (B=1) conversion keeps the original's top-1 class."""
    from bcosify.demo import run_demo

    summary = run_demo(tmp_path / "demo", finetune_epochs=0)
    assert summary["total"] >= 5 and summary["agreement"] == summary["total"]
    assert len(summary["figures"]) == summary["total"]
    assert max(summary["completeness"]) <= 1e-6  # the pixel part (down to 1e-8), in float64
    assert "recovery" not in summary
    with pytest.raises(Exception, match="--overwrite"):
        run_demo(tmp_path / "demo", finetune_epochs=0)


def test_demo_recovery_on_held_out_digits(tmp_path):
    """One epoch of each run (the demo does 4): label-free alignment already recovers most of the
    standard model's held-out accuracy, far above the converted start and above the same B-cos
    network trained from scratch with labels; its explanations are complete on the pixels."""
    from bcosify.demo import recovery

    r = recovery(tmp_path / "rec", epochs=1, runs=("scratch",))
    standard = r["standard"]["accuracy"]
    before = r["converted, before fine-tuning"]
    aligned = r["B-cosified, feature alignment (no labels)"]
    scratch = r["B-cos from scratch (labels)"]
    assert standard > 80, r
    assert before["accuracy"] < 40, r  # the conversion alone is not a usable model
    assert aligned["accuracy"] > max(before["accuracy"] + 30, scratch["accuracy"] + 10), r
    assert aligned["agreement"] > before["agreement"] + 30, r
    assert aligned["completeness"] < 1e-3
    assert len(aligned["figures"]) == len(r["figures_before"]) == 6
    assert all(Path(p).is_file() for p in aligned["figures"] + [aligned["curves"]])
    assert (tmp_path / "rec" / "results.json").is_file()
