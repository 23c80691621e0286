"""The verification of one converted architecture, shared by ``tests/test_models.py`` (the
CI-verified models) and ``scripts/support_matrix.py`` (every torchvision classifier and the
timm families): the same source preparation, the same equivalence and completeness checks."""

from __future__ import annotations

import math

import torch
import torchvision

import bcosify
from bcosify import BcosConfig
from tests.helpers import (
    MEAN,
    STD,
    calibrate,
    calibrate_batchnorm,
    input_dependence,
    pixel_completeness,
    randomize_norms,
    rel_err,
)

EQUIVALENCE = BcosConfig(b=1, keep_bias=True, activation="exact", maxpool="keep")
"""The exact-start configuration: B=1, biases, activations and max pool kept (the rewrite itself
must then equal the source)."""
TOL = 1e-4
MIN_DEPENDENCE = 1e-2


def normalize(x: torch.Tensor) -> torch.Tensor:
    return torchvision.transforms.functional.normalize(x, MEAN, STD)


@torch.no_grad()
def reinit_zero_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Layers initialised to zero (ViT heads) would give all-zero logits: give them random
    weights."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and w is not None and not w.any():
            w.copy_(torch.randn(w.shape, generator=g) / math.sqrt(w[0].numel()))
    return model


def prepare_source(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """A random-weight source as a trained one looks to the checks: norms with non-trivial
    parameters, no all-zero layers, BatchNorm statistics from a batch (random ones make a deep
    network nearly blind to its input, and an equivalence check on it proves little)."""
    reinit_zero_weights(randomize_norms(model)).eval()
    batch = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(size + 4))
    return calibrate_batchnorm(model, normalize(batch))


def equivalence(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(the source's input dependence on ``x``, the relative error of its exact-start
    conversion): the error means something only when the dependence is >= MIN_DEPENDENCE."""
    dependence = input_dependence(model, normalize(x))
    size = int(x.shape[-1])
    converted = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD, input_size=size).eval()
    with torch.no_grad():
        expected = model(normalize(x))
        out = converted(x)
    if out.shape != expected.shape:
        raise AssertionError(f"output shape {tuple(out.shape)} != {tuple(expected.shape)}")
    return dependence, rel_err(out, expected)


def completeness(converted: torch.nn.Module, x: torch.Tensor):
    """(the explanation of the default conversion on ``x``, its pixel-part completeness error),
    with every B-cos unit's output brought to unit RMS first (so the logits do not vanish)."""
    calibrate(converted, x)
    expl = bcosify.explain(converted, x)
    return expl, pixel_completeness(expl)
