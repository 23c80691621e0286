"""Accuracy evaluation, class-folder mapping and the ``bcosify evaluate`` command end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import bcosify
from bcosify.cli import main
from bcosify.errors import BcosifyError
from bcosify.evaluate import (
    AccuracyResult,
    class_index_map,
    evaluate_accuracy,
    image_folder,
    model_categories,
)
from bcosify.sources import build_model
from tests.helpers import calibrate

# Logits of 8 images over 6 classes, looked up by image id; labels chosen so that the answers
# are known: top-1 right for images 0, 1, 2; label among the 5 highest for 0-5; 6, 7 are ranked
# last.
LOGITS = torch.tensor(
    [
        [9.0, 1, 2, 3, 4, 5],
        [1.0, 9, 2, 3, 4, 5],
        [1.0, 2, 9, 3, 4, 5],
        [1.0, 2, 3, 4, 5, 9],  # label 1: 5th
        [5.0, 4, 3, 2, 1, 0],  # label 1: 2nd
        [0.0, 1, 2, 3, 4, 5],  # label 2: 4th
        [0.0, 1, 2, 3, 4, 5],  # label 0: 6th
        [5.0, 1, 2, 3, 4, 0],  # label 5: 6th
    ]
)
LABELS = [0, 1, 2, 1, 1, 2, 0, 5]


class Lookup(nn.Module):
    """Returns the logits of ``LOGITS`` row ``image[0, 0, 0]`` (an image id)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("logits", LOGITS.clone())

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].round().long()]


def _lookup_data():
    return [(torch.full((3, 2, 2), float(i)), c) for i, c in enumerate(LABELS)]


def test_accuracy_known_answer():
    r = evaluate_accuracy(Lookup(), _lookup_data(), batch_size=3, normalize=None, progress=False)
    assert (r.n, r.correct1, r.correct5, r.k5) == (8, 3, 6, 5)
    assert r.top1 == 3 / 8 and r.top5 == 6 / 8
    assert r.to_dict()["top5"] == 0.75
    halves = [
        evaluate_accuracy(Lookup(), d, normalize=None, progress=False)
        for d in (_lookup_data()[:5], _lookup_data()[5:])
    ]
    assert halves[0] + halves[1] == r  # counts add up across shards


def test_accuracy_with_class_map_normalize_and_dataloader():
    # dataset labels are a permutation of the model's classes: map them back
    perm = [3, 0, 5, 1, 2, 4]  # model class of dataset label l is perm[l]
    inverse = {m: d for d, m in enumerate(perm)}
    data = [(im, inverse[c]) for im, c in _lookup_data()]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    r = evaluate_accuracy(Lookup(), loader, class_map=perm, normalize=None, progress=False)
    assert (r.correct1, r.correct5) == (3, 6)
    # the normalisation is applied before the model: ids 0..7 become 2 * id - 1 -> shifted rows
    shifted = evaluate_accuracy(
        Lookup(), _lookup_data()[1:5], normalize=lambda x: 2 * x - 1, progress=False
    )
    assert shifted.correct1 == 1  # image 1 seen as row 1: label 1 matches, the others not
    model = Lookup().train()
    evaluate_accuracy(model, data, class_map=perm, normalize=None, progress=False)
    assert model.training  # the mode is restored


def test_accuracy_bad_input_is_clear():
    with pytest.raises(BcosifyError, match="class_map"):
        evaluate_accuracy(Lookup(), [(torch.zeros(3, 2, 2), 7)], normalize=None, progress=False)
    with pytest.raises(BcosifyError, match="ToTensor"):
        evaluate_accuracy(Lookup(), [(Image.new("RGB", (2, 2)), 0)], progress=False)
    with pytest.raises(BcosifyError, match="batch_size"):
        evaluate_accuracy(Lookup(), _lookup_data(), batch_size=0, progress=False)


def test_class_index_map_by_name_position_or_clear_error():
    assert class_index_map(["b", "a", "c"], 3) == [0, 1, 2]
    cats = model_categories(build_model("resnet18", weights="none"), 1000)
    assert set(cats) == {"categories", "synsets", "descriptions"}
    assert class_index_map(["n01443537", "n01440764"], 1000, cats) == [1, 0]  # WordNet ids
    assert class_index_map(["goldfish", "Great_White_Shark"], 1000, cats) == [1, 2]
    with pytest.raises(BcosifyError) as info:
        class_index_map(["cat", "dog"], 1000, cats)
    msg = str(info.value)
    assert "2 class folders" in msg and "1000 folders" in msg and "name every folder" in msg
    assert model_categories(build_model("resnet18", weights="none", num_classes=4), 4) == {}


# ---------------------------------------------------------------------------- the command
SIZE = 32


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved converted ResNet-18 (4 classes, random weights, calibrated) and an image folder
    labelled with its own predictions, one image put in a wrong folder."""
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    model = bcosify.convert(build_model("resnet18", weights="none", num_classes=4))
    calibrate(model, torch.rand(8, 3, SIZE, SIZE))
    model_dir = bcosify.save(model, root / "r18-bcos")

    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for i in range(32):
        kind = i % 4
        if kind == 0:
            a = rng.random((SIZE, SIZE, 3))
        elif kind == 1:
            a = np.ones((SIZE, SIZE, 3)) * rng.random(3)
        elif kind == 2:
            a = np.linspace(0, 1, SIZE)[None, :, None] * rng.random(3)
            a = a + 0.2 * rng.random((SIZE, SIZE, 3))
        else:
            a = rng.random((4, 4, 3)).repeat(SIZE // 4, 0).repeat(SIZE // 4, 1)
        Image.fromarray((np.clip(a, 0, 1) * 255).astype("uint8")).save(raw / f"{i:02d}.png")
    # the same preprocessing as `--image-size 32`: resize 32 * 256 / 224 = 37, crop 32
    pre = dataclasses.replace(model.bcosify_preprocessing, input_size=SIZE, resize_size=37)
    transform = pre.transform()
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in sorted(raw.iterdir())])
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    assert len(set(pred)) == 4, pred
    data = root / "data"
    for c in range(4):
        (data / f"class{c}").mkdir(parents=True)
    for i, (p, c) in enumerate(zip(sorted(raw.iterdir()), pred)):
        wrong = i == 0
        (data / f"class{(c + 1) % 4 if wrong else c}" / p.name).write_bytes(p.read_bytes())
    return {"model": model_dir, "data": data, "n": len(pred), "root": root}


def test_cli_accuracy_known_answer_and_original(saved, capsys):
    out = saved["root"] / "acc"
    argv = ["evaluate", str(saved["model"]), "--data", str(saved["data"]), "--image-size"]
    argv += [str(SIZE), "--batch-size", "8", "--out", str(out)]
    assert main(argv + ["--original", "resnet18", "--original-weights", "none"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "accuracy.json").read_text())
    conv, orig = result["results"]
    assert conv["kind"] == "converted" and orig["kind"] == "original"
    n = saved["n"]
    assert conv["n"] == orig["n"] == n
    assert conv["correct1"] == n - 1  # labelled by its own predictions, one image misfiled
    assert conv["k5"] == 4 and conv["correct5"] == n
    assert f"{100 * (n - 1) / n:.2f}%" in printed and "resnet18" in printed
    # existing results are kept unless --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--max-images", "5"]) == 0
    assert json.loads((out / "accuracy.json").read_text())["results"][0]["n"] == 5


def test_cli_gridpg_with_baselines_writes_consistent_results(saved, capsys):
    out = saved["root"] / "gridpg"
    argv = ["evaluate", str(saved["model"]), "--data", str(saved["data"]), "--gridpg"]
    argv += ["--image-size", str(SIZE), "--grid-size", "2", "--n-grids", "2", "--threshold", "0"]
    argv += ["--baselines", "ixg,gradcam", "--original", "resnet18", "--original-weights", "none"]
    argv += ["--batch-size", "8", "--figure-grids", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("result.json", "gridpg.md", "grids.png", "boxplot.png"):
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "result.json").read_text())
    summary = result["summary"]
    assert list(summary) == ["B-cos", "Input×Gradient", "Grad-CAM", "uniform", "oracle"]
    assert result["n_grids"] == len(result["grids"]) == 2
    assert result["pool"]["images"] == saved["n"] and result["pool"]["correct"] == saved["n"] - 1
    for name, s in summary.items():
        cells = np.array([g["scores"][name] for g in result["grids"]]).ravel()
        assert s["n"] == cells.size == 8
        assert s["mean"] == pytest.approx(cells.mean())
        assert s["median"] == pytest.approx(np.median(cells))
        assert np.all((cells >= 0) & (cells <= 1))
        assert f"| {name} | {s['mean']:.3f} | {s['q1']:.3f} |" in printed
    assert summary["uniform"]["mean"] == pytest.approx(0.25)
    assert summary["oracle"]["mean"] == 1.0
    for g in result["grids"]:
        assert len(set(g["classes"])) == 4
    md = (out / "gridpg.md").read_text()
    assert md in printed and "| method | mean | q1 | median | q3 | n |" in md
    assert result["settings"]["original"]["name"] == "resnet18"


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--data", "/nonexistent-dir"], "no such directory"),
        (["--data", "DATA", "--original", "resnet5"], "resnet5"),
        (["--data", "DATA", "--gridpg", "--baselines", "lime"], "ixg, ig, gradcam"),
        (["--data", "DATA", "--gridpg", "--grid-size", "3"], "grid needs 9 distinct"),
        (["--data", "DATA", "--window", "big", "--gridpg", "--threshold", "0"], "--window"),
    ],
)
def test_cli_bad_input_is_one_clean_error(saved, extra, match, capsys):
    extra = [str(saved["data"]) if a == "DATA" else a for a in extra]
    argv = ["evaluate", str(saved["model"]), "--image-size", str(SIZE), *extra]
    assert main(argv + ["--out", str(saved["root"] / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bcosify: error:") and match in err and "Traceback" not in err


def test_cli_folders_that_do_not_match_the_classes(saved, tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / name / "0.png")
    assert image_folder(tmp_path).classes == ["cat", "dog"]  # DIR/val is found
    argv = ["evaluate", str(saved["model"]), "--data", str(tmp_path), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "cannot map the 2 class folders" in capsys.readouterr().err


def test_cli_accuracy_of_an_original_model(saved, capsys):
    out = saved["root"] / "orig"
    argv = ["evaluate", "resnet18", "--weights", "none", "--num-classes", "4", "--data"]
    argv += [str(saved["data"]), "--image-size", str(SIZE), "--max-images", "6", "--out", str(out)]
    assert main(argv) == 0
    (row,) = json.loads((out / "accuracy.json").read_text())["results"]
    assert row["kind"] == "original" and row["n"] == 6 and row["k5"] == 4
    assert "resnet18" in capsys.readouterr().out
    assert AccuracyResult(0, 0, 0).top1 == 0.0


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--gridpg" in out and "--baselines" in out
