"""Equivalence and completeness for every architecture bcosify claims to support."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import bcosify
from bcosify.support import VERIFIED_MODELS
from tests.helpers import MEAN, STD
from tests.verification import MIN_DEPENDENCE, TOL, completeness, equivalence, prepare_source


def build(name: str) -> torch.nn.Module:
    kwargs = dict(VERIFIED_MODELS[name].get("test_kwargs", {}))
    if name.startswith("timm/"):
        return timm.create_model(name[5:], pretrained=False, **kwargs)
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = False
    return torchvision.models.get_model(name, weights=None, **kwargs)


def size_of(name: str) -> int:
    return VERIFIED_MODELS[name]["test_size"]


@pytest.fixture(scope="module", params=sorted(VERIFIED_MODELS))
def source(request):
    torch.manual_seed(0)
    return request.param, prepare_source(build(request.param), size_of(request.param))


def test_equivalence(source):
    """B=1, biases, ReLU and max pool kept: the rewrite itself equals the original model."""
    name, model = source
    x = torch.rand(2, 3, size_of(name), size_of(name))
    dependence, error = equivalence(model, x)
    # first, the comparison can see something: the original's output depends on its input
    assert dependence > MIN_DEPENDENCE
    assert error <= TOL


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
    x = torch.rand(3, 3, s, s, generator=torch.Generator().manual_seed(s))  # not the RNG state
    converted = bcosify.convert(model, mean=MEAN, std=STD)
    expl, pixel_error = completeness(converted, x)
    assert expl.contributions.shape == (3, 6, s, s)
    expected = {"bcosify_logit_layer.logit_bias", *VERIFIED_MODELS[name].get("constants", ())}
    assert set(expl.constant_contributions) == expected
    assert float(expl.completeness_error.max()) <= TOL
    # The input part alone, without the logit bias in the way: exact relative to its own size.
    pixels = expl.explained_logit - expl.constant_total
    assert float(pixels.abs().min()) > 1e-3, "calibration left a vanishing logit"
    assert pixel_error <= TOL
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
