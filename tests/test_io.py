"""Saving and loading converted models: bcosify.io."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil

import pytest
import torch
from torch import nn

import bcosify
from bcosify import BcosConfig, BcosifyError, io, sources
from bcosify.preprocessing import Preprocessing
from bcosify.sources._helpers import sha256_file
from tests.helpers import MEAN, STD, calibrate, pixel_completeness, randomize_norms

SIZE = 48


def images(n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def fine_tune_step(model: nn.Module, x: torch.Tensor) -> None:
    """One training step: changes the weights and the BatchNorm running statistics."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    opt.zero_grad()
    model(x).logsumexp(1).sum().backward()
    opt.step()
    model.eval()


def converted_source(name: str, config: BcosConfig | None = None) -> nn.Module:
    source = randomize_norms(sources.build_model(name, weights="none", num_classes=10))
    model = bcosify.convert(source, config)
    x = images()
    calibrate(model, x)
    fine_tune_step(model, x)
    return model.eval()


def tiny_cnn(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def assert_same_model(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    assert not b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        out_a, out_b = a.eval()(x), b(x)
    assert out_a.abs().max() > 1e-3  # a non-degenerate output: equality is meaningful
    assert torch.equal(out_a, out_b)


@pytest.fixture(scope="module")
def saved_resnet18(tmp_path_factory):
    torch.manual_seed(0)
    model = converted_source("resnet18")
    return model, io.save(model, tmp_path_factory.mktemp("saved") / "resnet18")


@pytest.fixture
def saved_copy(saved_resnet18, tmp_path):
    _, directory = saved_resnet18
    return shutil.copytree(directory, tmp_path / "copy")


# ---------------------------------------------------------------------------- round trips
def test_round_trip_torchvision(saved_resnet18):
    model, directory = saved_resnet18
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((directory / "config.json").read_text())
    assert meta["bcosify_format"] == 1
    fingerprint = meta["source"].pop("architecture_sha256")
    assert meta["source"] == {"name": "resnet18", "num_classes": 10, "weights": "none"}
    assert fingerprint == bcosify.metadata.architecture_fingerprint(model)
    assert meta["num_classes"] == 10
    assert set(meta["versions"]) >= {"bcosify", "torch", "torchvision", "timm"}
    assert len(meta["sha256"]) == 64

    loaded = io.load(directory)
    assert isinstance(loaded, torch.fx.GraphModule)
    assert_same_model(model, loaded, images())
    assert loaded.bcosify_config == model.bcosify_config
    assert loaded.bcosify_preprocessing == model.bcosify_preprocessing
    assert loaded.bcosify_num_classes == 10
    assert loaded.bcosify_source == model.bcosify_source
    assert loaded.transform is not None
    # buffers are saved too: BatchNorm statistics and the logit bias
    keys = set(loaded.state_dict())
    assert any(k.endswith("running_var") for k in keys)
    assert any(k.endswith("logit_bias") for k in keys)


def test_round_trip_timm(tmp_path):
    model = converted_source("timm/resnet10t")
    loaded = io.load(io.save(model, tmp_path / "m"), map_location=torch.device("cpu"))
    assert_same_model(model, loaded, images())
    assert loaded.bcosify_source["name"] == "timm/resnet10t"


def test_non_default_config_and_preprocessing(tmp_path):
    config = BcosConfig(
        b=1.5,
        keep_bias=True,
        activation="keep",
        maxpool="keep",
        normalize_weights=True,
        logit_bias=-0.75,
        head_before_pool=False,
    )
    model = converted_source("resnet18", config)
    model.bcosify_preprocessing = dataclasses.replace(
        model.bcosify_preprocessing, input_size=40, resize_size=44, interpolation="bicubic"
    )
    loaded = io.load(io.save(model, tmp_path / "m"))
    assert loaded.bcosify_config == config
    assert loaded.bcosify_preprocessing == model.bcosify_preprocessing
    assert loaded.transform.transforms[1].size == (40, 40)
    assert_same_model(model, loaded, images())


def test_custom_model(tmp_path):
    model = bcosify.convert(randomize_norms(tiny_cnn()), mean=MEAN, std=STD)
    fine_tune_step(model, images())
    directory = io.save(model, tmp_path / "custom")
    meta = json.loads((directory / "config.json").read_text())
    assert meta["source"]["name"] is None and set(meta["source"]) == {"name", "architecture_sha256"}
    assert meta["num_classes"] == 5

    with pytest.raises(BcosifyError, match="model=") as info:
        io.load(directory)
    assert "config.json" in str(info.value)

    loaded = io.load(directory, model=tiny_cnn())
    assert_same_model(model, loaded, images())
    assert loaded.bcosify_preprocessing == model.bcosify_preprocessing

    with pytest.raises(BcosifyError, match="model.safetensors do not match") as info:
        io.load(directory, model=tiny_cnn(width=16))
    assert "shape mismatches" in str(info.value)


def test_tied_weights(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)
            self.b.weight = self.a.weight
            self.head = nn.Linear(3, 4)

        def forward(self, x):
            return self.head(self.b(self.a(x)).mean((2, 3)))

    model = bcosify.convert(Tied(), mean=MEAN, std=STD).eval()
    loaded = io.load(io.save(model, tmp_path / "tied"), model=Tied())
    x = images()
    assert torch.equal(model(x), loaded(x))


def test_loaded_model_explains_exactly(saved_resnet18):
    _, directory = saved_resnet18
    loaded = io.load(directory)
    expl = bcosify.explain(loaded, images(2))
    pixels = expl.explained_logit - expl.constant_total  # judged without the logit bias
    assert float(pixels.abs().min()) > 1e-3
    assert pixel_completeness(expl) < 1e-4


def test_load_never_unpickles(saved_resnet18, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is forbidden")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    model, directory = saved_resnet18
    loaded = io.load(directory)
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# ---------------------------------------------------------------------------- save errors
def test_save_needs_converted_model(tmp_path):
    with pytest.raises(BcosifyError, match="convert"):
        io.save(tiny_cnn(), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_overwrite(tmp_path):
    first = bcosify.convert(tiny_cnn(), mean=MEAN, std=STD).eval()
    second = bcosify.convert(tiny_cnn(), mean=MEAN, std=STD).eval()
    directory = io.save(first, tmp_path / "m")
    with pytest.raises(BcosifyError, match="overwrite=True") as info:
        io.save(second, directory)
    assert str(directory) in str(info.value)
    x = images()
    assert torch.equal(io.load(directory, model=tiny_cnn())(x), first(x))

    assert io.save(second, directory, overwrite=True) == directory
    assert torch.equal(io.load(directory, model=tiny_cnn())(x), second(x))
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]


def test_save_into_existing_empty_directory(tmp_path):
    model = bcosify.convert(tiny_cnn(), mean=MEAN, std=STD)
    (tmp_path / "notes.txt").write_text("kept")
    io.save(model, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "kept"


# ---------------------------------------------------------------------------- load errors
def test_truncated_weights(saved_copy):
    path = saved_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BcosifyError, match="model.safetensors is corrupted or truncated"):
        io.load(saved_copy)


def test_flipped_byte(saved_copy):
    path = saved_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BcosifyError, match="model.safetensors is corrupted or truncated"):
        io.load(saved_copy)


def test_damaged_header_with_matching_sha(saved_copy):
    """Even if the recorded sha256 matches, an unreadable file is a BcosifyError."""
    path = saved_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    config = saved_copy / "config.json"
    meta = json.loads(config.read_text())
    meta["sha256"] = sha256_file(path)
    config.write_text(json.dumps(meta))
    with pytest.raises(BcosifyError, match="model.safetensors"):
        io.load(saved_copy)


def test_missing_weights(saved_copy):
    (saved_copy / "model.safetensors").unlink()
    with pytest.raises(BcosifyError, match="model.safetensors"):
        io.load(saved_copy)


def test_missing_config(saved_copy):
    (saved_copy / "config.json").unlink()
    with pytest.raises(BcosifyError, match="config.json"):
        io.load(saved_copy)


def test_invalid_json(saved_copy):
    (saved_copy / "config.json").write_text("{not json")
    with pytest.raises(BcosifyError, match="config.json is not valid JSON"):
        io.load(saved_copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("preprocessing"), r"config.json is missing the key\(s\) \['preproc"),
        (lambda m: m.update(bcosify_format=99), "config.json has format version 99"),
        (lambda m: m.update(num_classes="ten"), "config.json: 'num_classes'"),
        (lambda m: m["config"].update(b=0.5), "config.json: invalid conversion settings"),
        (lambda m: m["source"].update(name="no_such_net"), "config.json: cannot rebuild"),
    ],
)
def test_bad_config(saved_copy, change, message):
    config = saved_copy / "config.json"
    meta = json.loads(config.read_text())
    change(meta)
    config.write_text(json.dumps(meta))
    with pytest.raises(BcosifyError, match=message):
        io.load(saved_copy)


def test_weights_of_another_architecture(saved_copy):
    config = saved_copy / "config.json"
    meta = json.loads(config.read_text())
    meta["source"]["name"] = "resnet34"
    config.write_text(json.dumps(meta))
    with pytest.raises(BcosifyError, match="model.safetensors do not match") as info:
        io.load(saved_copy)
    assert "missing keys: layer1.2." in str(info.value)


def test_load_missing_directory(tmp_path):
    with pytest.raises(BcosifyError, match="no such directory"):
        io.load(tmp_path / "nothing")


def test_preprocessing_dict_round_trip():
    pre = Preprocessing(MEAN, STD, 40, 44, "bicubic")
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "pickle+deepcopy"])
def test_metadata_survives_copies_and_the_copy_saves(tmp_path, how):
    import copy

    import torchvision

    from bcosify import metadata

    torch.manual_seed(0)
    model = bcosify.convert(torchvision.models.resnet18(num_classes=5), mean=MEAN, std=STD)
    if how == "deepcopy":
        other = copy.deepcopy(model)
    elif how == "pickle":  # DataLoader workers, multiprocessing
        other = pickle.loads(pickle.dumps(model))
    else:
        other = copy.deepcopy(pickle.loads(pickle.dumps(model)))
    for name in metadata.ATTRIBUTES:
        mine, theirs = getattr(model, name), getattr(other, name)
        assert repr(theirs) == repr(mine), name
    assert bcosify.node_map(other) == bcosify.node_map(model)
    with pytest.raises(BcosifyError, match="already"):
        bcosify.convert(other)
    bcosify.save(other, tmp_path / "m")  # said "convert it first" before
    x = torch.rand(2, 3, 32, 32)
    loaded = bcosify.load(tmp_path / "m", model=torchvision.models.resnet18(num_classes=5))
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_metadata_names_are_checked():
    from bcosify import metadata

    with pytest.raises(BcosifyError, match="unknown metadata"):
        metadata.attach(nn.Linear(2, 2), bcosify_confg=None)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: __import__("torchvision").models.resnet18(num_classes=7), "resnet18"),
        (lambda: __import__("timm").create_model("resnet10t", num_classes=7), "timm/resnet10t"),
    ],
    ids=["torchvision", "timm"],
)
def test_a_torchvision_or_timm_model_round_trips_without_model(tmp_path, make, name):
    # built outside bcosify: the converter recognises the architecture and stores its name
    torch.manual_seed(0)
    model = bcosify.convert(randomize_norms(make().eval()), mean=MEAN, std=STD)
    assert model.bcosify_source["name"] == name and model.bcosify_source["recognised"]
    fine_tune_step(model, images())
    loaded = io.load(io.save(model, tmp_path / "m"))
    assert_same_model(model, loaded, images())


def test_a_recognised_name_with_other_settings_is_refused_at_load(tmp_path):
    # same weights' shapes as timm/resnet10t, another activation: rebuilding by name would be
    # silently another model
    timm = pytest.importorskip("timm")
    model = bcosify.convert(
        timm.create_model("resnet10t", act_layer="gelu").eval(), mean=MEAN, std=STD
    )
    assert model.bcosify_source["name"] == "timm/resnet10t"
    directory = io.save(model, tmp_path / "m")
    with pytest.raises(BcosifyError, match="is not the one that was saved"):
        io.load(directory)
    loaded = io.load(directory, model=timm.create_model("resnet10t", act_layer="gelu"))
    assert_same_model(model, loaded, images())
