"""Mixed precision: under bf16 and fp16 autocast (and with half-precision weights) the B-cos units
compute their patch norm and dynamic scale in float32, so explanations stay complete and training
stays finite. CPU autocast here; ``scripts/gpu_check.sh`` runs the same on a GPU."""

from __future__ import annotations

import pytest
import torch

import bcosify
from bcosify import nn as bnn
from tests.helpers import calibrate, randomize_norms

HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    source = randomize_norms(bcosify.build_model("resnet18", weights="none"))
    model = bcosify.convert(source)
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    return calibrate(model, x), x


@pytest.mark.parametrize("dtype", HALF)
def test_explanations_under_autocast_are_complete(resnet18, dtype):
    """Completeness on the pixel part, under CPU autocast: within 1e-2 (bf16) is the target;
    measured 1.7e-3 (bf16) and 1.9e-4 (fp16) with the scale in float32, against 1.1e-2 and
    1.2e-3 when the explanation pass rounds the scaled output to the autocast dtype."""
    model, x = resnet18
    reference = bcosify.explain(model, x)
    with torch.autocast("cpu", dtype=dtype):
        e = bcosify.explain(model, x, target=reference.target)
    assert e.contributions.dtype == torch.float32
    assert torch.isfinite(e.contributions).all()
    bound = 5e-3 if dtype == torch.bfloat16 else 5e-4
    assert e.pixel_completeness_error.max() < bound
    # the explanation is of the same logits, to the precision of the dtype
    rel = (e.explained_logit - reference.explained_logit).abs().max()
    assert rel / reference.explained_logit.abs().max() < 5e-2


@pytest.mark.parametrize("dtype", HALF)
def test_the_scale_is_computed_in_float32(dtype):
    """A patch of 54 values of 200 has a squared norm of 2.2e6: beyond float16 (6.6e4), and kept
    to 3 digits by bfloat16. Half-precision weights and inputs still give the float32 result
    (to the dtype's rounding of the output), in the layer's dtype."""
    torch.manual_seed(0)
    conv = bnn.BcosConv2d(6, 8, 3, padding=1)
    linear = bnn.BcosLinear(54, 8)
    x = 200 * torch.rand(2, 6, 6, 6) + 100
    for unit, inp in ((conv, x), (linear, x[:, :, :3, :3].flatten(1))):
        want = unit(inp)
        got = unit.to(dtype)(inp.to(dtype))
        unit.float()
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert ((got.float() - want).abs().max() / want.abs().max()) < 2e-2
        with torch.autocast("cpu", dtype=dtype):  # float32 weights and input under autocast
            out = unit(inp)
        assert ((out.float() - want).abs().max() / want.abs().max()) < 2e-2


@pytest.mark.parametrize("dtype", HALF)
def test_training_under_autocast_stays_finite(dtype):
    """A few AdamW steps of a converted ResNet-18 under autocast (fp16 with a gradient scaler,
    as torch.amp prescribes): the loss and every gradient stay finite and the loss falls."""
    torch.manual_seed(0)
    source = bcosify.build_model("resnet18", weights="none", num_classes=4)
    model = bcosify.convert(source).train()
    x = torch.rand(8, 3, 64, 64)
    y = torch.randint(0, 4, (8,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach().item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
