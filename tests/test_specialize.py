"""Modules that branch on their input's size are traced at the model's input size, batch-free,
and only where the traced graph computes what the module computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bcosify
from bcosify import BcosConfig, BcosifyError, UnsupportedLayerError
from tests.helpers import MEAN, STD, calibrate, calibrate_batchnorm, normalized, rel_err

timm_layers = pytest.importorskip("timm.layers")

EXACT = BcosConfig(b=1.0, keep_bias=True, activation="exact", maxpool="keep")


@timm_layers.register_notrace_module
class Windowed(nn.Module):
    """Pads to a multiple of its window when needed, pools windows, and mixes them: a branch on
    the size, and the batch size read from the input."""

    def __init__(self, channels: int, window: int = 4):
        super().__init__()
        self.window = window
        self.mix = nn.Linear(channels, channels)

    def forward(self, x):
        B, C, H, W = x.shape
        pad_h, pad_w = (-H) % self.window, (-W) % self.window
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        n_h, n_w = x.shape[2] // self.window, x.shape[3] // self.window
        x = x.view(B, C, n_h, self.window, n_w, self.window).mean((3, 5))
        x = self.mix(x.flatten(2).transpose(1, 2)).transpose(1, 2)
        return x.reshape(B, C, n_h, n_w)


@timm_layers.register_notrace_module
class ValueBranch(nn.Module):
    def forward(self, x):
        return x if x.mean() > 0 else -x


@timm_layers.register_notrace_module
class BatchBranch(nn.Module):
    def forward(self, x):
        return x if x.shape[0] > 1 else 2 * x


class Net(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = block
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.block(self.conv(x)).mean((2, 3)))


def test_a_module_that_branches_on_its_size_is_traced_at_that_size_for_any_batch():
    torch.manual_seed(0)
    model = Net(Windowed(4)).eval()
    converted = bcosify.convert(model, EXACT, mean=MEAN, std=STD, input_size=6)
    entry = next(e for e in converted.conversion_report.entries if e.name == "block")
    assert entry.action == "specialized" and "6x6" in entry.what
    assert f"specialized {entry.what}" in str(converted.conversion_report)  # printed, too
    for batch in (1, 3, 7):  # traced at batch sizes 2 and 5: the batch stays free
        x = torch.rand(batch, 3, 6, 6)
        torch.testing.assert_close(converted(x), model(normalized(x)), rtol=1e-4, atol=1e-5)
    assert model(normalized(torch.rand(2, 3, 6, 6))).std(0).max() > 1e-3
    with pytest.raises(BcosifyError, match="takes 6x6 images only"):
        converted(torch.rand(1, 3, 8, 8))
    # at a size that needs no padding the other branch is traced
    at8 = bcosify.convert(model, EXACT, mean=MEAN, std=STD, input_size=8)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(at8(x), model(normalized(x)), rtol=1e-4, atol=1e-5)


def test_explanations_of_a_specialized_model_are_complete():
    torch.manual_seed(0)
    model = Net(Windowed(4)).eval()
    converted = bcosify.convert(model, mean=MEAN, std=STD, input_size=6)
    x = torch.rand(3, 3, 6, 6)
    calibrate(converted, x)
    e = bcosify.explain(converted, x)
    pixels = e.contributions.flatten(1).sum(1)
    assert pixels.abs().min() > 1e-3
    err = (pixels + e.constant_total - e.explained_logit).abs() / pixels.abs()
    assert err.max() < 1e-4


@pytest.mark.parametrize(
    "block, why", [(ValueBranch(), "tensor values"), (BatchBranch(), "batch size")]
)
def test_a_branch_on_values_or_on_the_batch_size_is_reported_not_specialized(block, why):
    model = Net(block).eval()
    report = bcosify.analyze(model, EXACT, mean=MEAN, std=STD, input_size=6)
    kept = [e for e in report.entries if e.action == "kept whole"]
    assert [e.name for e in kept] == ["block"] and why in kept[0].what
    assert [u[0] for u in report.unsupported] == ["block"]
    with pytest.raises(UnsupportedLayerError, match="block"):
        bcosify.convert(model, EXACT, mean=MEAN, std=STD, input_size=6)


def test_input_size_is_validated():
    with pytest.raises(BcosifyError, match="input_size must be a positive int"):
        bcosify.convert(Net(Windowed(4)).eval(), mean=MEAN, std=STD, input_size=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convit_tiny", "efficientvit_m0"])
def test_timm_models_with_shape_dependent_blocks_convert_exactly(name):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    calibrate_batchnorm(model, normalized(torch.rand(4, 3, size, size)))
    converted = bcosify.convert(model, EXACT)
    specialized = [e for e in converted.conversion_report.entries if e.action == "specialized"]
    assert specialized  # GPSA, LocalWindowAttention
    with torch.no_grad():
        ref = model(normalized(x))
        assert rel_err(ref[0], ref[1]) > 1e-3  # the source depends on its input
        assert rel_err(converted(x), ref) < 1e-4
