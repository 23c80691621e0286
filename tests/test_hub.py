"""Sharing through the Hugging Face Hub, tested offline (``HF_HUB_OFFLINE=1``) against
repositories laid out in a local Hugging Face cache, as ``huggingface_hub`` lays them out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import bcosify
from bcosify import hub
from bcosify.cli import main
from bcosify.errors import BcosifyError
from bcosify.sources import build_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return bcosify.convert(build_model("resnet18", weights="none", num_classes=10)).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline."""
    path = tmp_path / "hf-cache"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return path


def _cache_repo(cache: Path, repo_id: str, files: dict[str, Path | str]) -> Path:
    """Lay ``files`` (name -> file or text) out as huggingface_hub caches a repository."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, snapshot / name)
        else:
            (snapshot / name).write_text(content)
    return snapshot


def test_load_from_the_cache_offline(model, cache, tmp_path):
    folder = hub.write_hub_folder(model, tmp_path / "upload", "org/r18-bcos")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    _cache_repo(cache, "org/r18-bcos", {p.name: p for p in folder.iterdir()})
    loaded = bcosify.load("hf-hub:org/r18-bcos")
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded(x), model(x))
    assert loaded.bcosify_source["hf_hub"] == "org/r18-bcos"
    # a model loaded from the hub names it as its base model when pushed again
    card = hub.model_card(
        json.loads((folder / "config.json").read_text()) | {"source": loaded.bcosify_source}
    )
    assert card.data.base_model == "org/r18-bcos"
    assert card.data.to_dict()["base_model_relation"] == "finetune"


def test_the_card_parses_and_says_what_the_model_is(model, tmp_path):
    folder = hub.write_hub_folder(model, tmp_path / "upload", "org/r18-bcos")
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "bcosify"
    assert data["pipeline_tag"] == "image-classification"
    assert "b-cos" in data["tags"]
    assert "license" not in data  # random weights: the licence of no source weights applies
    text = card.text
    assert "`resnet18`, converted from random weights" in text
    assert 'bcosify.load("hf-hub:org/r18-bcos")' in text
    assert '"normalize_weights": false' in text  # the conversion options
    assert '"input_size": 224' in text  # the preprocessing
    assert "10 classes" in text
    assert "## Metrics" not in text


@pytest.mark.parametrize(
    ("source", "license", "base"),
    [
        (
            {"name": "timm/resnet50.a1_in1k", "weights": "DEFAULT"},
            "apache-2.0",
            "timm/resnet50.a1_in1k",
        ),
        ({"name": "resnet50", "weights": "DEFAULT"}, "other", None),
        ({"name": "resnet18", "weights": "file", "zoo": "bcos-v2/resnet18"}, "apache-2.0", None),
        ({"name": None, "weights": None}, None, None),
        # a conversion of B-cos v2's standard ViT: the release's licence
        ({"name": "bcos-v2/standard_vitc_s_patch1_14", "weights": "DEFAULT"}, "apache-2.0", None),
    ],
)
def test_card_licence_and_base_model(source, license, base):
    meta = {"source": source, "num_classes": 1000, "config": {}, "preprocessing": {}}
    card = ModelCard(str(hub.model_card(meta, "org/x")))  # through its text, as the Hub reads it
    data = card.data.to_dict()
    assert data.get("license") == license
    assert data.get("base_model") == base
    assert ("base_model_relation" in data) == (base is not None)
    if license == "other":
        assert data["license_link"].startswith("https://github.com/pytorch/vision")
    if source["name"] == "resnet50":
        assert "1000 classes in the ImageNet-1k order: tench, goldfish" in card.text


def test_metrics_of_a_finetuning_run_go_into_the_card(model, tmp_path):
    run = tmp_path / "run"
    bcosify.save(model, run / "model")
    history = [
        {"epoch": 1, "step": 10, "lr": 0.1},
        {"epoch": 2, "step": 20, "val_top1": 0.75, "val_loss": 0.5, "lr": 0.01},
    ]
    (run / "metrics.json").write_text(json.dumps(history))
    folder = hub.write_hub_folder(run / "model", tmp_path / "upload", "org/ft")
    text = (folder / "README.md").read_text()
    assert "| val_top1 | 0.75 |" in text


def test_a_repository_that_is_not_a_bcosify_model(cache, tmp_path):
    _cache_repo(
        cache, "timm/resnet18.a1_in1k", {"config.json": json.dumps({"architecture": "resnet18"})}
    )
    with pytest.raises(BcosifyError, match=r"not a bcosify model: it looks like a timm model"):
        bcosify.load("hf-hub:timm/resnet18.a1_in1k")
    _cache_repo(cache, "org/bert", {"config.json": json.dumps({"model_type": "bert"})})
    with pytest.raises(BcosifyError, match="transformers model"):
        bcosify.load("hf-hub:org/bert")
    _cache_repo(cache, "org/empty", {"README.md": "hello"})
    with pytest.raises(BcosifyError, match="has no config.json"):
        bcosify.load("hf-hub:org/empty")


def test_offline_and_not_cached(cache):
    with pytest.raises(BcosifyError, match=r"hf-hub:org/nothing is not in the Hugging Face cache"):
        bcosify.load("hf-hub:org/nothing")


def test_bad_repository_names():
    with pytest.raises(BcosifyError, match="not a Hugging Face repository name"):
        bcosify.load("hf-hub:not a/valid//name")


def test_push_offline_says_so(model, cache):
    with pytest.raises(BcosifyError, match="offline mode is on"):
        bcosify.push_to_hub(model, "org/r18-bcos")


def test_cli_explains_a_hub_model_and_push_fails_cleanly(model, cache, tmp_path, capsys):
    from PIL import Image

    folder = hub.write_hub_folder(model, tmp_path / "upload", "org/r18-bcos")
    _cache_repo(cache, "org/r18-bcos", {p.name: p for p in folder.iterdir()})
    image = tmp_path / "img.png"
    Image.new("RGB", (80, 64), (200, 30, 30)).save(image)
    out = tmp_path / "figures"
    assert main(["explain", "hf-hub:org/r18-bcos", str(image), "--out", str(out)]) == 0
    assert any(out.iterdir())
    assert main(["push", str(tmp_path / "upload"), "org/r18-bcos"]) == 2
    assert "offline mode is on" in capsys.readouterr().err


def test_read_metrics(tmp_path):
    run = tmp_path / "metrics.json"
    run.write_text(json.dumps([{"epoch": 1, "step": 5, "val_top1": 0.5}, {"epoch": 2, "lr": 0.1}]))
    assert hub.read_metrics(run) == {"epoch": 1, "step": 5, "val_top1": 0.5}
    run.write_text(json.dumps([{"epoch": 1, "step": 5, "lr": 0.1}]))
    with pytest.raises(BcosifyError, match="must hold a JSON object"):
        hub.read_metrics(run)
    with pytest.raises(BcosifyError, match="not a readable JSON file"):
        hub.read_metrics(tmp_path / "missing.json")
