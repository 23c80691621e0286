"""Tests of bcosify.preprocessing (no network, no pretrained weights)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision
from PIL import Image

from bcosify.errors import BcosifyError
from bcosify.preprocessing import IMAGENET_DEFAULT, Preprocessing


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(*args, **kwargs):
        raise AssertionError("preprocessing must not download anything")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_imagenet_default():
    assert IMAGENET_DEFAULT.mean == (0.485, 0.456, 0.406)
    assert IMAGENET_DEFAULT.std == (0.229, 0.224, 0.225)
    assert (IMAGENET_DEFAULT.input_size, IMAGENET_DEFAULT.resize_size) == (224, 256)
    assert IMAGENET_DEFAULT.interpolation == "bilinear"


def test_dict_round_trip_through_json():
    p = Preprocessing([0.5, 0.4, 0.3], [0.2, 0.25, 0.3], 160, 182, "BICUBIC")
    assert p.mean == (0.5, 0.4, 0.3) and isinstance(p.mean, tuple)
    assert p.interpolation == "bicubic"
    d = json.loads(json.dumps(p.to_dict()))
    assert Preprocessing.from_dict(d) == p
    assert hash(Preprocessing.from_dict(d)) == hash(p)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        IMAGENET_DEFAULT.input_size = 10  # type: ignore[misc]


def test_from_dict_rejects_unknown_and_missing_keys():
    d = IMAGENET_DEFAULT.to_dict()
    with pytest.raises(BcosifyError, match="unknown Preprocessing key.*crop_pct"):
        Preprocessing.from_dict({**d, "crop_pct": 0.9})
    del d["std"]
    with pytest.raises(BcosifyError, match="missing Preprocessing key.*std"):
        Preprocessing.from_dict(d)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
        ({"std": (0.2, 0.2)}, "same length"),
        ({"mean": "abc"}, "sequence of numbers"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"input_size": 0}, "input_size"),
        ({"input_size": 224.0}, "input_size"),
        ({"resize_size": 200}, "resize_size"),
    ],
)
def test_invalid_values(kwargs, message):
    fields = {**IMAGENET_DEFAULT.to_dict(), **kwargs}
    with pytest.raises(BcosifyError, match=message):
        Preprocessing(**fields)


def test_transform_on_pil_image_has_no_normalisation():
    p = Preprocessing((0.5,) * 3, (0.5,) * 3, 32, 40, "bicubic")
    image = Image.new("RGB", (90, 50), color=(255, 128, 0))
    x = p.transform()(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = torch.tensor([1.0, 128 / 255, 0.0]).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    ops = p.transform().transforms
    assert [type(t).__name__ for t in ops] == ["Resize", "CenterCrop", "ToTensor"]
    assert ops[0].size == 40 and ops[0].interpolation.value == "bicubic"


def test_transform_resizes_shorter_side_then_crops_center():
    p = Preprocessing((0.5,) * 3, (0.5,) * 3, 4, 8, "nearest")
    image = Image.new("RGB", (16, 8))  # left half black, right half white
    image.paste((255, 255, 255), (8, 0, 16, 8))
    x = p.transform()(image)  # resized to 16x8 (unchanged), center crop columns 6..9
    assert x.shape == (3, 4, 4)
    assert torch.all(x[:, :, :2] == 0) and torch.all(x[:, :, 2:] == 1)


def test_normalize():
    p = Preprocessing((0.5, 0.25, 0.0), (0.5, 0.25, 2.0), 8, 8)
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    y = p.normalize(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y[:, 0], (x[:, 0] - 0.5) / 0.5)
    torch.testing.assert_close(y[:, 1], (x[:, 1] - 0.25) / 0.25)
    torch.testing.assert_close(y[:, 2], x[:, 2] / 2.0)
    torch.testing.assert_close(p.normalize(x[0]), y[0])


def test_normalize_rejects_bad_input():
    with pytest.raises(BcosifyError, match="C=3"):
        IMAGENET_DEFAULT.normalize(torch.rand(1, 4, 2, 2))
    with pytest.raises(BcosifyError, match="floating"):
        IMAGENET_DEFAULT.normalize(torch.zeros(3, 2, 2, dtype=torch.uint8))


@pytest.mark.parametrize(
    "weights, expected",
    [
        (torchvision.models.ResNet50_Weights.IMAGENET1K_V1, (224, 256, "bilinear")),
        (torchvision.models.ResNet50_Weights.IMAGENET1K_V2, (224, 232, "bilinear")),
        (torchvision.models.EfficientNet_B3_Weights.DEFAULT, (300, 320, "bicubic")),
        (torchvision.models.Inception_V3_Weights.DEFAULT, (299, 342, "bilinear")),
    ],
)
def test_from_torchvision_weights(weights, expected):
    p = Preprocessing.from_torchvision_weights(weights)
    assert (p.input_size, p.resize_size, p.interpolation) == expected
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)


def test_from_torchvision_weights_rejects_other_objects():
    with pytest.raises(BcosifyError, match="weights enum"):
        Preprocessing.from_torchvision_weights("IMAGENET1K_V1")


def test_from_timm_cfg_dict_and_object():
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg("resnet18.a1_in1k")  # a PretrainedCfg: crop_pct 0.95, bicubic
    p = Preprocessing.from_timm_cfg(cfg)
    assert (p.input_size, p.resize_size, p.interpolation) == (224, 235, "bicubic")
    assert p.mean == tuple(cfg.mean) and p.std == tuple(cfg.std)
    d = {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "input_size": (3, 380, 380),
        "crop_pct": 0.922,
        "interpolation": "bilinear",
    }
    p = Preprocessing.from_timm_cfg(d)
    assert (p.input_size, p.resize_size, p.interpolation) == (380, 412, "bilinear")
    assert p.mean == (0.5, 0.5, 0.5)


def test_from_timm_cfg_errors():
    with pytest.raises(BcosifyError, match="mean/std"):
        Preprocessing.from_timm_cfg({"input_size": (3, 224, 224)})
    with pytest.raises(BcosifyError, match="square"):
        Preprocessing.from_timm_cfg(
            {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 8, 9)}
        )


def test_from_model():
    model = torch.nn.Conv2d(3, 4, 1)
    assert Preprocessing.from_model(model) is None
    model.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0), "crop_pct": 1.0}
    p = Preprocessing.from_model(model)
    assert p is not None and p.mean == (0.1, 0.2, 0.3) and p.resize_size == p.input_size == 224
    model.bcosify_preprocessing = IMAGENET_DEFAULT  # takes precedence
    assert Preprocessing.from_model(model) is IMAGENET_DEFAULT


def test_from_model_timm():
    import timm

    model = timm.create_model("resnet18.a1_in1k", pretrained=False, num_classes=2)
    assert Preprocessing.from_model(model) == Preprocessing.from_timm_cfg(model.pretrained_cfg)
