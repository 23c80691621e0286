"""Published B-cos models (``bcos-v2/`` and ``bcosification/`` names): equality with the
published code, the published weight files (torch.hub cache, hash check, offline), checkpoints,
save/load, explanations, fine-tuning, evaluation and the CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch

import bcosify
from bcosify.cli import main
from bcosify.errors import ModelSourceError
from bcosify.sources import _zoo, list_zoo, zoo_entry

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("zoo_script", ROOT / "scripts" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.fixture(scope="module")
def published_r18(tmp_path_factory, script):
    """A file laid out as the published resnet_18 weights (bcos's own state dict, random
    weights with calibrated statistics), and the bcos model it came from."""
    ref = script.reference("bcos-v2/resnet18")
    path = tmp_path_factory.mktemp("published") / "resnet_18.pth"
    torch.save(ref.state_dict(), path)
    return path, ref


@pytest.mark.parametrize("name", _script().ONE_PER_FAMILY)
def test_same_function_as_the_published_code(script, name):
    """One entry per family: a B-cos v2 entry has the logits (pixel part) and the dynamic
    weights of bcos's explain(), a standard ViT the logits of bcos's, a B-cosification entry
    the logits of its published procedure, to 1e-5 in float64, random weights with calibrated
    statistics; bcosify converts a standard ViT completely."""
    result = script.verify(name)
    assert result["logits_rel_error"] < 1e-5, result
    assert result["pixel_completeness_error"] < 1e-6, result
    if result["dynamic_weights_rel_error"] is not None:
        assert result["dynamic_weights_rel_error"] < 1e-5, result
        assert result["logit_bias_rel_error"] < 1e-6, result
    assert result["passed"]


def test_the_reference_depends_on_the_input(script):
    """The check would be empty if bcos's random model were input-blind."""
    ref = script.reference("bcos-v2/resnet18").double()
    x = torch.rand(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        out = ref(torch.cat([x, 1 - x], 1))
    pixels = out + math.log(999)  # the logit minus bcos's logit bias
    assert (pixels[0] - pixels[1]).abs().max() > 0.1 * pixels.abs().max()


def test_a_published_file_loads_and_explains_completely(published_r18):
    path, ref = published_r18
    model = bcosify.build_model("bcos-v2/resnet18", weights=path)
    assert model.bcosify_source["zoo"] == "bcos-v2/resnet18"
    # the torchvision source had no weights; the published ones are the zoo entry's
    assert model.bcosify_source["weights"] == "none"
    assert model.bcosify_source["zoo_weights"] == "file"
    pre = model.bcosify_preprocessing
    assert (pre.mean, pre.std) == ((0.0,) * 3, (1.0,) * 3)
    assert (pre.input_size, pre.resize_size) == (224, 256)
    x = torch.rand(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(torch.cat([x, 1 - x], 1)), rtol=0, atol=1e-5)
    e = bcosify.explain(model.double(), x.double())
    assert e.pixel_completeness_error.max() < 1e-8


def test_save_and_load_round_trip(published_r18, tmp_path):
    path, _ = published_r18
    model = bcosify.build_model("bcos-v2/resnet18", weights=path)
    again = bcosify.load(bcosify.save(model, tmp_path / "m"))
    assert again.bcosify_source["zoo"] == "bcos-v2/resnet18"
    assert again.bcosify_preprocessing == model.bcosify_preprocessing
    x = torch.rand(2, 3, 224, 224)
    assert torch.equal(again(x), model(x))


def test_a_bcosify_state_dict_loads_too(published_r18, tmp_path):
    path, _ = published_r18
    model = bcosify.build_model("bcos-v2/resnet18", weights=path)
    own = tmp_path / "own.pth"
    torch.save(model.state_dict(), own)
    again = bcosify.build_model("bcos-v2/resnet18", weights=own)
    x = torch.rand(1, 3, 224, 224)
    assert torch.equal(again(x), model(x))


def test_a_file_of_another_model_is_refused(published_r18):
    path, _ = published_r18
    with pytest.raises(ModelSourceError, match=r"resnet_18\.pth.*do not match.*bcos-v2/resnet34"):
        bcosify.build_model("bcos-v2/resnet34", weights=path)


def test_unknown_names_get_close_matches():
    with pytest.raises(ModelSourceError, match=r"Did you mean: bcos-v2/resnet50"):
        bcosify.build_model("bcos-v2/resnet5")
    with pytest.raises(ModelSourceError, match="models --zoo"):
        zoo_entry("bcos-v2/alexnet")
    assert zoo_entry("densenet121_long").resize_size == 232


def test_a_built_bcos_model_round_trips_and_explains(tmp_path):
    """VGG, ConvNeXt and the ViTs are built by bcosify, not converted: they still save, load
    (rebuilt by their zoo name), explain completely and report how they were made."""
    model = bcosify.build_model("bcos-v2/vitc_ti_patch1_14", weights="none")
    assert bcosify.is_converted(model) and model.bcosify_source["name"] is None
    assert "built by bcosify" in str(model.conversion_report)
    again = bcosify.load(bcosify.save(model, tmp_path / "m"))
    x = torch.rand(2, 3, 224, 224)
    assert torch.equal(again(x), model(x))
    e = bcosify.explain(model.double(), x.double())
    assert e.pixel_completeness_error.max() < 1e-8
    assert "position_embedding" in e.constant_contributions
    with pytest.raises(bcosify.BcosifyError, match="builds this published B-cos model itself"):
        bcosify.node_map(model)


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [("bcos-v2/vitc_ti_patch1_14", 1e-10), ("bcosification/simple_vit_ti_patch16_224", 1e-7)],
)
def test_a_bcos_vit_takes_other_sizes_as_bcos_does(script, tmp_path, name, tolerance):
    """The position embedding is computed for the grid of the input, as in bcos (and in
    B-cosification, whose ViTs keep bcos's embedding): at 112 px (a 7 x 7 grid) the model still
    equals the reference and explains completely. (B-cosification's input normalisation has
    float32 constants, computed in another order: its tolerance is that rounding.)"""
    ref = script.reference(name)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = bcosify.build_model(name, weights=tmp_path / "w.pth").double()
    x = torch.rand(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        want = ref.double()(torch.cat([x, 1 - x], 1)) + math.log(999)
        got = model(x) - float(model.bcosify_logit_layer.logit_bias)
    assert ((got - want).abs().max() / want.abs().max()) < tolerance
    assert bcosify.explain(model, x).pixel_completeness_error.max() < 1e-8


def test_a_standard_vit_is_a_source_model():
    source = bcosify.build_model("bcos-v2/standard_simple_vit_ti_patch16_224", weights="none")
    assert not bcosify.is_converted(source)
    assert source.bcosify_preprocessing.mean == (0.485, 0.456, 0.406)
    model = bcosify.convert(source)
    assert model.bcosify_source["name"] == "bcos-v2/standard_simple_vit_ti_patch16_224"
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_the_table():
    rows = list_zoo()
    assert len(rows) == 46
    assert sum(r["kind"] == "B-cos" for r in rows) == 38
    hows = {r["name"]: r["how"] for r in rows}
    assert hows["bcos-v2/resnet50_long"] == "converted from torchvision resnet50"
    assert hows["bcos-v2/convnext_base_bnu"] == "built by bcosify"
    assert hows["bcos-v2/standard_vitc_b_patch1_14"] == "source model"
    assert hows["bcosification/vitc_b_patch1_14"] == "built by bcosify"
    assert hows["bcosification/densenet121"] == "converted from torchvision densenet121"
    for entry in _zoo.ENTRIES.values():
        if entry.release == "bcos-v2":
            assert len(entry.hash_prefix) == 10
            assert entry.url.endswith("/" + entry.file)
        else:  # no published file names: local files only
            assert entry.url is None and entry.top1 is None


# ---------------------------------------------------------------- published weights (DEFAULT)
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return Path(torch.hub.get_dir()) / "checkpoints"


def test_offline_and_not_cached(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = hub / "resnet_18-68b4160fff.pth"
    with pytest.raises(ModelSourceError, match="offline") as info:
        bcosify.build_model("bcos-v2/resnet18")
    assert str(cached) in str(info.value) and "weights=" in str(info.value)


def test_a_cached_file_with_another_hash_is_refused_and_removed(hub):
    hub.mkdir(parents=True)
    cached = hub / "resnet_18-68b4160fff.pth"
    cached.write_bytes(b"not the published file")
    digest = hashlib.sha256(b"not the published file").hexdigest()
    with pytest.raises(ModelSourceError) as info:
        bcosify.build_model("bcos-v2/resnet18")
    message = str(info.value)
    assert str(cached) in message and digest in message and "68b4160fff" in message
    assert not cached.exists()


def _mirror(tmp_path, monkeypatch, content: Path, prefix: str | None = None) -> Path:
    """Serve ``content`` as the published resnet18 file from a file:// release directory, the
    entry's hash prefix being that of ``content`` (or ``prefix``)."""
    data = content.read_bytes()
    prefix = prefix or hashlib.sha256(data).hexdigest()[:10]
    release = tmp_path / "release"
    release.mkdir()
    name = f"resnet_18-{prefix}.pth"
    (release / name).write_bytes(data)
    monkeypatch.setattr(_zoo, "_RELEASE", release.as_uri())
    entry = _zoo.ENTRIES["bcos-v2/resnet18"]
    monkeypatch.setitem(_zoo.ENTRIES, entry.name, _zoo.ZooEntry(**{**entry.__dict__, "file": name}))
    return release / name


def test_default_weights_download_into_the_hub_cache(hub, tmp_path, monkeypatch, published_r18):
    path, ref = published_r18
    served = _mirror(tmp_path, monkeypatch, path)
    model = bcosify.build_model("bcos-v2/resnet18")
    assert (hub / served.name).is_file()
    assert model.bcosify_source["zoo_weights"] == "DEFAULT"
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(torch.cat([x, 1 - x], 1)), rtol=0, atol=1e-5)
    # a new head for fine-tuning: everything else pretrained
    ten = bcosify.build_model("bcos-v2/resnet18", num_classes=10)
    assert ten(x).shape == (1, 10)
    assert torch.equal(ten.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"])


def test_a_download_with_another_hash_is_not_kept(hub, tmp_path, monkeypatch, published_r18):
    path, _ = published_r18
    served = _mirror(tmp_path, monkeypatch, path, prefix="0123456789")
    with pytest.raises(ModelSourceError, match="0123456789") as info:
        bcosify.build_model("bcos-v2/resnet18")
    assert hashlib.sha256(served.read_bytes()).hexdigest() in str(info.value)
    assert not (hub / served.name).exists()
    assert not any(hub.iterdir()) if hub.exists() else True


# ---------------------------------------------------------------- command line
def test_cli_lists_the_zoo(capsys):
    assert main(["models", "--zoo"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("bcos-v2/")]
    assert len(lines) == 34
    assert sum(line.startswith("bcosification/") for line in out.splitlines()) == 12
    assert any(line.startswith("bcos-v2/resnet50 ") and "75.88%" in line for line in lines)
    vgg = next(line for line in lines if line.startswith("bcos-v2/vgg11_bnu"))
    assert "built by bcosify" in vgg


def test_cli_converts_a_zoo_model(published_r18, tmp_path, capsys):
    path, _ = published_r18
    out = tmp_path / "r18"
    assert main(["convert", "bcos-v2/resnet18", "--weights", str(path), "--out", str(out)]) == 0
    assert bcosify.load(out).bcosify_source["zoo"] == "bcos-v2/resnet18"
    assert main(["convert", "bcos-v2/resnet18", "--b", "1", "--out", str(tmp_path / "x")]) == 2
    assert "do not apply" in capsys.readouterr().err
    # a standard ViT is a source: converted with the options given
    vit = tmp_path / "vit"
    name = "bcos-v2/standard_simple_vit_ti_patch16_224"
    assert main(["convert", name, "--weights", "none", "--b", "1.5", "--out", str(vit)]) == 0
    assert bcosify.load(vit).bcosify_config.b == 1.5
    # a B-cosification entry is built converted too, whatever its release
    bvit = tmp_path / "bvit"
    name = "bcosification/vitc_ti_patch1_14"
    assert main(["convert", name, "--weights", "none", "--out", str(bvit)]) == 0
    assert bcosify.load(bvit).bcosify_source["zoo"] == name
    assert main(["convert", name, "--b", "1", "--out", str(tmp_path / "y")]) == 2
    assert "do not apply" in capsys.readouterr().err


def test_evaluate_takes_a_zoo_model_as_converted_and_wants_an_explicit_original(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    for k, name in enumerate(("n01440764", "n01443537")):
        (data / name).mkdir(parents=True)
        Image.new("RGB", (64, 64), (40 * k, 90, 200)).save(data / name / "a.png")
    argv = ["evaluate", "bcos-v2/resnet18", "--weights", "none", "--data", str(data)]
    assert main([*argv, "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "converted" in out
    assert main([*argv, "--out", str(tmp_path / "ev2"), "--baselines"]) == 2
    assert "has no original" in capsys.readouterr().err


def test_the_card_of_a_zoo_model(published_r18, tmp_path):
    from bcosify import hub

    path, _ = published_r18
    model = bcosify.build_model("bcos-v2/resnet18", weights=path)
    folder = hub.write_hub_folder(model, tmp_path / "up", "org/r18")
    text = (folder / "README.md").read_text()
    assert "`bcos-v2/resnet18`, the published B-cos model, with a local copy of its" in text
    assert "license: apache-2.0" in text
    assert "1000 classes in the ImageNet-1k order: tench" in text


# ---------------------------------------------------------------- B-cosification checkpoints
def test_a_lightning_checkpoint_of_bcosification_loads(script, tmp_path):
    """Its checkpoints are Lightning files: the state dict under "state_dict", keys under the
    module's and the wrapper's "model." prefixes, the trained 6-channel first layer."""
    ref = script.reference("bcosification/resnet18")
    keys = list(ref.state_dict())
    assert keys[0] == "model.model.conv1.linear.weight"
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3, "global_step": 30}, path)
    model = bcosify.build_model("bcosification/resnet18", weights=path)
    assert model.bcosify_config.first_layer_norm == "normalized"
    assert model.bcosify_config.activation == "keep"
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        want = ref(torch.cat([x, 1 - x], 1)) + math.log(999)
        got = model(x) + math.log(999)
    assert ((got - want).abs().max() / want.abs().max()) < 1e-4
    e = bcosify.explain(model.double(), x.double())
    assert e.pixel_completeness_error.max() < 1e-8


def test_a_bcosified_vit_checkpoint_loads_round_trips_and_explains(script, tmp_path):
    """A B-cosified ViT keeps its trained six-channel patch embedding (1536 inputs for 16 x 16
    patches of [h, -h]) as published; it loads from a Lightning file, equals the published
    procedure, saves and loads (rebuilt by its name), and explains completely with the position
    embedding as a reported constant."""
    name = "bcosification/simple_vit_ti_patch16_224"
    ref = script.reference(name)
    state = ref.state_dict()
    assert state["model.model.to_patch_embedding.linear.linear.weight"].shape == (192, 1536)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 90}, path)
    model = bcosify.build_model(name, weights=path)
    assert model.bcosify_source["zoo"] == name and model.bcosify_source["weights"] == "none"
    assert "B-cosification simple_vit architecture, built by bcosify" in str(
        model.conversion_report
    )
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        want = ref(torch.cat([x, 1 - x], 1)) + math.log(999)
        got = model(x) + math.log(999)
    assert ((got - want).abs().max() / want.abs().max()) < 1e-4
    again = bcosify.load(bcosify.save(model, tmp_path / "m"))
    assert torch.equal(again(x), model(x))
    e = bcosify.explain(model.double(), x.double())
    assert e.pixel_completeness_error.max() < 1e-8
    assert "position_embedding" in e.constant_contributions
    head = bcosify.build_model(name, weights="none", num_classes=10)
    assert head(x).shape == (2, 10)


def test_bcosification_has_no_published_file_to_download(hub):
    with pytest.raises(ModelSourceError, match="weights='path/to/file'") as info:
        bcosify.build_model("bcosification/resnet50")
    assert "shrebox/B-cosification" in str(info.value)
