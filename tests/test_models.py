"""Equivalence and completeness for every architecture bcosify claims to support."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import bcosify
from bcosify import BcosConfig
from bcosify.support import VERIFIED_MODELS
from tests.helpers import (
    MEAN,
    STD,
    calibrate,
    calibrate_batchnorm,
    input_dependence,
    randomize_norms,
    rel_err,
)

EQUIVALENCE = BcosConfig(b=1, keep_bias=True, activation="exact", maxpool="keep")


def build(name: str) -> torch.nn.Module:
    kwargs = dict(VERIFIED_MODELS[name].get("test_kwargs", {}))
    if name.startswith("timm/"):
        return timm.create_model(name[5:], pretrained=False, **kwargs)
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = False
    return torchvision.models.get_model(name, weights=None, **kwargs)


@torch.no_grad()
def reinit_zero_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised layers (ViT heads) would make every logit 0: give them random weights."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and w is not None and not w.any():
            w.copy_(torch.randn(w.shape, generator=g) / w[0].numel() ** 0.5)
    return model


def size_of(name: str) -> int:
    return VERIFIED_MODELS[name]["test_size"]


@pytest.fixture(scope="module", params=sorted(VERIFIED_MODELS))
def source(request):
    torch.manual_seed(0)
    model = reinit_zero_weights(randomize_norms(build(request.param))).eval()
    # running statistics from a batch, as a trained network has them: with random ones a deep
    # network is nearly blind to its input and an equivalence check on it proves little
    s = size_of(request.param)
    calibrate_batchnorm(model, torchvision.transforms.functional.normalize(_batch(4, s), MEAN, STD))
    return request.param, model


def _batch(n: int, size: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(size + n))


def test_equivalence(source):
    """B=1, biases, ReLU and max pool kept: the rewrite itself equals the original model."""
    name, model = source
    x = torch.rand(2, 3, size_of(name), size_of(name))
    normalized = torchvision.transforms.functional.normalize(x, MEAN, STD)
    # first, the comparison can see something: the original's output depends on its input
    assert input_dependence(model, normalized) > 1e-2
    converted = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD).eval()
    with torch.no_grad():
        expected = model(normalized)
        out = converted(x)
    assert out.shape == expected.shape
    assert rel_err(out, expected) <= 1e-4


def test_conversion_report(source):
    """What the report says happened, per verified model: the normalisation folded into the first
    layer once, the head moved in front of the global pooling once (or the model's entry says why
    it has no such pooling), nothing unsupported."""
    name, model = source
    report = bcosify.convert(model, mean=MEAN, std=STD).conversion_report
    actions = [e.action for e in report.entries]
    assert report.ok and not report.unsupported
    assert actions.count("folded") == 1
    assert actions.count("moved") == (0 if "head" in VERIFIED_MODELS[name] else 1), VERIFIED_MODELS[
        name
    ].get("head")
    assert actions.count("inserted") >= 2  # the [x, 1-x] encoding and the logit layer


def test_completeness(source):
    """Default config: contributions plus constants equal the logit, per sample."""
    name, model = source
    s = size_of(name)
    x = torch.rand(3, 3, s, s)
    converted = bcosify.convert(model, mean=MEAN, std=STD)
    calibrate(converted, x)
    expl = bcosify.explain(converted, x)
    assert expl.contributions.shape == (3, 6, s, s)
    expected = {"bcosify_logit_layer.logit_bias", *VERIFIED_MODELS[name].get("constants", ())}
    assert set(expl.constant_contributions) == expected
    assert float(expl.completeness_error.max()) <= 1e-4
    # The input part alone, without the logit bias in the way: exact relative to its own size.
    logit = expl.explained_logit - expl.constant_total
    assert float(logit.abs().min()) > 1e-3, "calibration left a vanishing logit"
    total = expl.contributions.flatten(1).sum(1)
    assert float(((total - logit).abs() / logit.abs()).max()) <= 1e-4
    # Biases and ReLUs outside gate branches are gone.
    counts = converted.conversion_report.counts()
    relus = sum(
        n
        for (action, what), n in counts.items()
        if action == "removed" or (action == "replaced" and "ReLU6) -> " in what)
    )
    # "relu": False for models with GELU/SiLU only (ReLUs inside SE gates are left as they are)
    assert (relus > 0) == VERIFIED_MODELS[name].get("relu", True)
    for m in converted.modules():
        if isinstance(m, (bcosify.nn.BcosConv2d, bcosify.nn.BcosLinear)):
            assert m.bias is None


def test_support_matrix_is_package_data():
    """The matrix ships as JSON (read with importlib.resources), measured by
    scripts/support_matrix.py: every row has the measured fields, and every CI-verified model
    passes in it."""
    from bcosify.support import list_supported_models, support_matrix

    rows = support_matrix()
    assert rows, "bcosify/support_matrix.json is missing: run scripts/support_matrix.py"
    fields = {"model", "library", "status", "input_dependence", "equivalence", "completeness"}
    assert all(fields <= row.keys() for row in rows)
    supported = set(list_supported_models())
    missing = [name for name in VERIFIED_MODELS if name not in supported]
    assert not missing, f"verified in CI but not passing in the matrix: {missing}"


def test_old_module_name_still_imports_with_a_warning():
    import importlib
    import sys

    import bcosify.support

    sys.modules.pop("bcosify.models", None)
    with pytest.warns(FutureWarning, match="bcosify.support"):
        old = importlib.import_module("bcosify.models")
    assert old.VERIFIED_MODELS is bcosify.support.VERIFIED_MODELS
    assert old.support_matrix is bcosify.support.support_matrix
