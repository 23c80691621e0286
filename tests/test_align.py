"""The node map of a conversion and label-free feature alignment at matched nodes."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torchvision

import bcosify
from bcosify.train.align import (
    AlignmentLoss,
    AlignNode,
    FeatureTaps,
    TeacherFeatures,
    align_nodes,
    feature_distance,
)
from tests.helpers import calibrate_batchnorm, small_vit

EXACT = bcosify.BcosConfig(b=1, keep_bias=True, activation="exact", maxpool="keep")
HALF = dict(mean=(0.5,) * 3, std=(0.5,) * 3)


def _calibrated(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Random BatchNorm statistics make outputs almost input-blind; set them from a batch."""
    return calibrate_batchnorm(model, (x - 0.5) / 0.5)


def _distances(source, student, nodes, x):
    teacher = TeacherFeatures(source, student, nodes)
    taps = FeatureTaps(student, nodes)
    try:
        with taps.capture() as s_feats:
            logits = student(x)
        t_logits, t_feats = teacher((x - 0.5) / 0.5)
        loss, parts = AlignmentLoss(nodes)(logits, s_feats, t_logits, t_feats)
    finally:
        taps.remove()
    return loss.detach(), {n.name: float(parts[f"node/{n.name}"]) for n in nodes}


# ---------------------------------------------------------------------------- node map
def test_node_map_of_a_resnet():
    torch.manual_seed(0)
    model = bcosify.convert(torchvision.models.resnet18(), **HALF)
    nm = bcosify.node_map(model)
    assert nm.blocks == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    # the block output is the ReLU after the residual add; the ReLU is removed, so its value
    # is taken by the add
    assert nm.outputs["layer1.0"] == "layer1_0_relu_1"
    assert nm.nodes["layer1_0_relu_1"] == "add"
    assert nm.features == "layer4_1_relu_1"  # what fed the global pooling
    names = {n.name for n in model.graph.nodes}
    assert set(nm.nodes.values()) <= names
    # the head moved before pooling has no counterpart; the pooled chain carries the logits
    assert nm.nodes["fc"] in names
    assert "avgpool" not in nm.nodes


def test_node_map_survives_copy_and_save_load(tmp_path):
    from bcosify.sources import build_model

    model = bcosify.convert(build_model("resnet18", weights="none", num_classes=5))
    nm = bcosify.node_map(model)
    assert bcosify.node_map(copy.deepcopy(model)) == nm
    bcosify.save(model, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert bcosify.NodeMap.from_dict(saved["node_map"]) == nm
    assert bcosify.node_map(bcosify.load(tmp_path / "m")) == nm


def test_node_map_of_transformers_and_channels_last_blocks():
    vit = bcosify.convert(small_vit(), **HALF)
    nm = bcosify.node_map(vit)
    assert nm.blocks == [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    assert nm.features is not None  # the class token the head reads
    assert nm.channel_dim(nm.blocks[0], 3) == -1  # tokens: (N, T, D)
    swin = bcosify.convert(torchvision.models.swin_t(), **HALF)
    nm = bcosify.node_map(swin)
    assert "features.1.0" in nm.channels_last  # Swin blocks keep (N, H, W, C)
    assert "features.0" not in nm.blocks  # the patch embedding is a Sequential of layers
    assert nm.channel_dim("features.1.0", 4) == -1 and nm.channel_dim(nm.features, 4) == 1


def test_node_map_needs_a_converted_model():
    with pytest.raises(bcosify.BcosifyError, match="no node map"):
        bcosify.node_map(torchvision.models.resnet18())


# ---------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("arch", ["resnet18", "vit", "swin_t"])
def test_exact_start_has_zero_loss_and_a_perturbation_is_seen_downstream_only(arch):
    torch.manual_seed(0)
    size = 32 if arch != "resnet18" else 64
    x = torch.rand(4, 3, size, size)
    if arch == "vit":
        source = small_vit()
    else:
        source = _calibrated(getattr(torchvision.models, arch)(), x)
    with torch.no_grad():  # the source must see its input
        out = source((x - 0.5) / 0.5)
        assert (out[0] - out[1]).abs().max() > 1e-2 * out.abs().max()
    student = bcosify.convert(source, EXACT, **HALF).eval()
    nodes = align_nodes(student)
    loss, parts = _distances(source, student, nodes, x)
    assert float(loss) < 1e-5, parts
    # perturb one layer in the middle: the blocks before it stay aligned, those after do not
    middle = len(nodes) // 2
    block = nodes[middle].name
    layer = next(
        m
        for n, m in student.named_modules()
        if n.startswith(block + ".") and isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    )
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) * layer.weight.std())
    _, parts = _distances(source, student, nodes, x)
    before = [parts[n.name] for n in nodes[:middle]]
    after = [parts[n.name] for n in nodes[middle:]]
    assert max(before) < 1e-6, parts
    assert min(after) > max(3e-5, 100 * max(before)), parts


def test_default_config_student_is_not_aligned_yet():
    """After a real conversion (B=2, no bias, no ReLU) the features have moved: the loss must
    see it (a loss stuck at 0 would make alignment a no-op)."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64)
    source = _calibrated(torchvision.models.resnet18(), x)
    student = bcosify.convert(source, **HALF).eval()
    nodes = align_nodes(student)
    _, parts = _distances(source, student, nodes, x)
    assert min(parts.values()) > 1e-3


def test_feature_distance_is_scale_invariant_and_sees_direction():
    torch.manual_seed(0)
    t = torch.randn(2, 8, 5, 5)
    for metric in ("cosine", "nmse"):
        assert float(feature_distance(7.0 * t, t, metric)) < 1e-6
        assert float(feature_distance(-t, t, metric)) > 1.9
        assert float(feature_distance(torch.randn_like(t), t, metric)) > 0.5
    tokens = torch.randn(2, 5, 8)  # (N, T, D): channels are the last axis
    scaled = tokens * torch.rand(1, 5, 1) * 10  # each token rescaled on its own
    assert float(feature_distance(scaled, tokens, "cosine", dim=1)) < 1e-6


def test_node_names_weights_and_errors():
    model = bcosify.convert(torchvision.models.resnet18(), **HALF)
    nodes = align_nodes(model, ["layer2", "layer4_1_relu_1"], {"layer2": 2.0})
    assert [(n.name, n.source, n.weight) for n in nodes] == [
        ("layer2", "layer2_1_relu_1", 2.0),
        ("layer4_1_relu_1", "layer4_1_relu_1", 1.0),
    ]
    with pytest.raises(bcosify.BcosifyError, match="layer3"):  # a suggestion
        align_nodes(model, ["layer33"])
    with pytest.raises(bcosify.BcosifyError, match="not aligned nodes"):
        align_nodes(model, ["layer2"], {"layer3": 1.0})
    with pytest.raises(bcosify.BcosifyError, match=">= 0"):
        align_nodes(model, ["layer2"], {"layer2": -1.0})


def test_weights_change_the_mix():
    s = {"a": torch.randn(2, 4, 3, 3), "b": torch.randn(2, 4, 3, 3)}
    t = {"a": s["a"].clone(), "b": torch.randn(2, 4, 3, 3)}
    logits = torch.zeros(2, 3)
    nodes = [AlignNode("a", "a", "a", 3.0), AlignNode("b", "b", "b", 1.0)]
    loss, parts = AlignmentLoss(nodes, logit_weight=0.0)(logits, s, logits, t)
    torch.testing.assert_close(loss, parts["node/b"] / 4)


def test_a_mismatched_pair_or_teacher_is_an_error():
    model = bcosify.convert(torchvision.models.resnet18(), **HALF).eval()
    nm = bcosify.node_map(model)
    wrong = AlignNode("layer1.0", nm.outputs["layer1.0"], nm.nodes[nm.outputs["layer2.0"]])
    with pytest.raises(bcosify.BcosifyError, match="cannot align at 'layer1.0'"):
        _distances(torchvision.models.resnet18().eval(), model, [wrong], torch.rand(2, 3, 64, 64))
    with pytest.raises(bcosify.BcosifyError, match="own source"):
        TeacherFeatures(torchvision.models.vgg11(), model, align_nodes(model))


def test_taps_change_nothing_and_leave_no_trace():
    torch.manual_seed(0)
    model = bcosify.convert(torchvision.models.resnet18(), **HALF).eval()
    x = torch.rand(2, 3, 64, 64)
    code, keys = model.code, list(model.state_dict())
    y = model(x)
    taps = FeatureTaps(model, align_nodes(model))
    with taps.capture() as feats:
        torch.testing.assert_close(model(x), y, rtol=0, atol=0)
    assert len(feats) == 8 and list(model.state_dict()) == keys
    assert not feats or model(x) is not None  # outside capture nothing is kept
    e = bcosify.explain(model, x)  # explanations work with the taps in
    assert float(e.completeness_error.max()) < 1e-4
    taps.remove()
    assert model.code == code


def test_feature_distance_of_tiny_and_zero_features():
    """B-cos features can be tiny (1e-13 deep in a fresh conversion): the distance still ignores
    the scale, and two zero maps are at distance 0."""
    t = torch.randn(2, 8, 3, 3)
    for metric in ("cosine", "nmse"):
        assert float(feature_distance(1e-15 * t, 1e-15 * t, metric)) < 1e-5
        assert float(feature_distance(1e-15 * t, t, metric)) < 1e-5
        assert float(feature_distance(torch.zeros_like(t), torch.zeros_like(t), metric)) < 1e-6


def test_teacher_features_are_not_overwritten_by_in_place_ops():
    """``layer1.0.bn1`` is followed by ``ReLU(inplace=True)`` in torchvision's ResNet: the
    teacher's captured features must be the BatchNorm output, and the caller's modules keep
    their in-place flag."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    source = _calibrated(torchvision.models.resnet18(), x)
    student = bcosify.convert(source, EXACT, **HALF).eval()
    nodes = align_nodes(student, ["layer1.0.bn1", "layer1.0"])
    loss, parts = _distances(source, student, nodes, x)
    assert max(parts.values()) < 1e-5, parts
    assert source.layer1[0].relu.inplace is True


def test_non_numeric_align_weight_is_a_recipe_error():
    from bcosify.train import Recipe, RecipeError

    with pytest.raises(RecipeError, match="must be a number"):
        Recipe.from_dict({"train": {"loss": "align", "align": {"weights": {"layer4": "high"}}}})


def test_models_saved_with_the_old_keep_load_as_exact(tmp_path):
    """Before this version ``activation="keep"`` kept ReLU6; such a saved model (no node map in
    its config.json) loads with its ReLU6, as it was trained."""
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v2(num_classes=4).eval()
    model = bcosify.convert(source, bcosify.BcosConfig(activation="exact"), **HALF)
    bcosify.save(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["activation"] = "keep"
    del meta["node_map"]
    path.write_text(json.dumps(meta))
    loaded = bcosify.load(tmp_path / "m", model=torchvision.models.mobilenet_v2(num_classes=4))
    assert loaded.bcosify_config.activation == "exact"
    assert any(isinstance(m, torch.nn.ReLU6) for m in loaded.modules())
