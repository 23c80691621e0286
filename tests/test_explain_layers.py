"""Contributions at any layer: explain(model, x, layer=...) gives the layer's features times
their dynamic weights, whose sum plus the constants downstream of the layer is the logit."""

from __future__ import annotations

import pytest
import torch

import bcosify
from tests.helpers import calibrate, randomize_norms, small_vit


@pytest.fixture(scope="module")
def resnet():
    """keep_bias: every BatchNorm keeps a bias, so each layer has constants on both sides."""
    torch.manual_seed(0)
    source = randomize_norms(bcosify.build_model("resnet18", weights="none", num_classes=10))
    model = bcosify.convert(source, bcosify.BcosConfig(keep_bias=True))
    return calibrate(model, torch.rand(4, 3, 64, 64)).double()


@pytest.mark.parametrize("layer", ["layer1.0", "layer3", "layer4.1", "layer2_1_relu_1"])
def test_layer_contributions_are_complete(resnet, layer):
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    pixels = bcosify.explain(resnet, x, target=[3, 7])
    e = bcosify.explain(resnet, x, target=[3, 7], layer=layer)
    assert e.features.dim() == 4 and e.contributions.shape == e.features.shape
    assert torch.equal(e.logits, pixels.logits)
    assert e.completeness_error.max() < 1e-10
    total = e.contributions.flatten(1).sum(1) + e.constant_total
    assert torch.allclose(total, pixels.explained_logit, rtol=1e-10)
    # only the constants after the layer: those before it are inside its features
    upstream = "layer1.0.bn1.bias"
    assert upstream in pixels.constant_contributions and upstream not in e.constant_contributions
    assert "fc.bias" in e.constant_contributions
    assert e.contribution_map.shape == (2, *e.features.shape[2:])


def test_constants_upstream_would_break_completeness(resnet):
    """Adding the upstream constants (as a pixel explanation reports them) double-counts them:
    the check above can see that mistake."""
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    pixels = bcosify.explain(resnet, x)
    e = bcosify.explain(resnet, x, layer="layer3")
    wrong = e.contributions.flatten(1).sum(1) + pixels.constant_total
    assert ((wrong - e.explained_logit).abs() / e.explained_logit.abs()).max() > 1e-3


def test_tokens_of_a_vit():
    torch.manual_seed(0)
    model = bcosify.convert(small_vit(), mean=(0.5,) * 3, std=(0.5,) * 3).double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    e = bcosify.explain(model, x, layer="encoder.layers.encoder_layer_1")
    assert e.features.shape == (2, 17, 32) and e.channel_dim == -1
    assert e.contribution_map.shape == (2, 17)
    assert e.completeness_error.max() < 1e-10


def test_the_graph_is_restored(resnet):
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    before = [n.name for n in resnet.graph.nodes]
    keys = list(resnet.state_dict())
    with torch.no_grad():
        want = resnet(x)
    bcosify.explain(resnet, x, layer="layer2")
    with pytest.raises(bcosify.BcosifyError, match="one target per sample"):
        bcosify.explain(resnet, x, layer="layer2", target=[[1, 2]])
    assert [n.name for n in resnet.graph.nodes] == before
    assert list(resnet.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(resnet(x), want)


def test_unknown_layer_gets_close_matches(resnet):
    with pytest.raises(bcosify.BcosifyError, match="unknown layer 'layr3'.*Did you mean 'layer3'"):
        bcosify.explain(resnet, torch.rand(1, 3, 64, 64, dtype=torch.float64), layer="layr3")
