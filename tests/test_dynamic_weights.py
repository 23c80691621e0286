"""The dynamic weights W(x) of whole converted models, checked against an independent computation.

``bcosify.explain`` takes W(x) as the input gradient in explanation mode, where every dynamic module
detaches its data-dependent factor. Completeness cannot check that: a network without biases and
ReLUs is homogeneous of degree 1 in its input, so ``sum(x * grad f(x)) = f(x)`` holds whether or
not a factor is detached (Euler's theorem). A unit that forgets to detach gives a wrong
explanation that is still complete.

Here W(x) is computed a second way, without explanation mode: a forward hook replaces the output
of every dynamic module by its linear part applied to the live input, times a factor computed by
this file's own formulas (METHOD.md) from the module's input at x and held constant; the gradient
of that network w.r.t. the encoding ``[x, 1 - x]`` is W(x) by construction. The attention matrix
comes from torch's own ``nn.MultiheadAttention``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import bcosify
from bcosify import nn as bnn
from bcosify.nn.mode import DetachableModule
from tests.helpers import (
    calibrate,
    calibrate_batchnorm,
    pixel_completeness,
    rel_err,
    small_vit,
)

HALF = dict(mean=(0.5,) * 3, std=(0.5,) * 3)


def _conv(m: bnn.BcosConv2d, x_at: tuple, live: tuple, kw: dict) -> torch.Tensor:
    (a_x,), (a,) = x_at, live
    assert m.max_out == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    w = m.weight
    if m.normalize_weights:
        w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    out = F.conv2d(a, w, None, m.stride, m.padding, m.dilation, m.groups)
    if m.b != 1:
        with torch.no_grad():
            src = a_x if m.norm_shift is None else (a_x - m.norm_shift) / m.norm_scale
            # the patch norm per group, from the unfolded patches (not from a window sum)
            sq = F.unfold(src.pow(2), m.kernel_size, m.dilation, m.padding, m.stride)
            norm = (sq.unflatten(1, (m.groups, -1)).sum(2) + 1e-6).sqrt()
            lin = F.conv2d(a_x, w, None, m.stride, m.padding, m.dilation, m.groups)
            cos = lin.unflatten(1, (m.groups, -1)) / norm.view(*norm.shape[:2], 1, *lin.shape[2:])
            factor = (cos.abs() if m.b == 2 else (cos.abs() + 1e-6).pow(m.b - 1)).flatten(1, 2)
        out = out * factor
    return out if m.bias is None else out + m.bias.view(1, -1, 1, 1)


def _linear(m: bnn.BcosLinear, x_at: tuple, live: tuple, kw: dict) -> torch.Tensor:
    (a_x,), (a,) = x_at, live
    assert m.max_out == 1
    w = m.weight
    if m.normalize_weights:
        w = w / w.norm(dim=1, keepdim=True)
    out = F.linear(a, w)
    if m.b != 1:
        with torch.no_grad():
            cos = F.linear(a_x, w) / (a_x.norm(dim=-1, keepdim=True) + 1e-12)
            factor = cos.abs() if m.b == 2 else (cos.abs() + 1e-6).pow(m.b - 1)
        out = out * factor
    return out if m.bias is None else out + m.bias


def _batchnorm(m: bnn.UncenteredBatchNorm2d, x_at: tuple, live: tuple, kw: dict) -> torch.Tensor:
    (a,) = live
    assert not m.training, "the check runs in eval mode (running statistics)"
    out = a / (m.running_var + m.eps).sqrt().view(1, -1, 1, 1)
    if m.weight is not None:
        out = out * m.weight.view(1, -1, 1, 1)
    return out if m.bias is None else out + m.bias.view(1, -1, 1, 1)


def _layernorm(m: bnn.DetachableLayerNorm, x_at: tuple, live: tuple, kw: dict) -> torch.Tensor:
    (a_x,), (a,) = x_at, live
    if isinstance(m, bnn.DetachableLayerNorm2d):
        dims, shape = (1,), (-1,) + (1,) * (a.dim() - 2)
    else:
        dims = tuple(range(a.dim() - len(m.normalized_shape), a.dim()))
        shape = tuple(m.normalized_shape)
    with torch.no_grad():
        std = (a_x.var(dim=dims, unbiased=False, keepdim=True) + m.eps).sqrt()
    out = (a - a.mean(dim=dims, keepdim=True)) / std
    if m.weight is not None:
        out = out * m.weight.view(shape)
    return out if m.bias is None else out + m.bias.view(shape)


_GATES = {
    "gelu": lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2))),
    "silu": torch.sigmoid,
}


def _gated(m: bnn.GatedActivation, x_at: tuple, live: tuple, kw: dict) -> torch.Tensor:
    (a_x,), (a,) = x_at, live
    with torch.no_grad():
        gate = _GATES[m.kind](a_x)
    return a * gate


def _attention(m: bnn.BcosMultiheadAttention, x_at: tuple, live: tuple, kw: dict):
    assert m.batch_first and kw.get("attn_mask") is None and kw.get("key_padding_mask") is None
    with torch.no_grad():  # torch's own attention weights at x, per head: N x h x L x S
        _, attn = nn.MultiheadAttention.forward(
            m, *x_at[:3], need_weights=True, average_attn_weights=False
        )
    value = live[2]
    e, h = m.embed_dim, m.num_heads
    wv = m.in_proj_weight[2 * e :] if m._qkv_same_embed_dim else m.v_proj_weight
    v = F.linear(value, wv, None if m.in_proj_bias is None else m.in_proj_bias[2 * e :])
    n, s = v.shape[:2]
    v = v.view(n, s, h, e // h).transpose(1, 2)
    out = (attn @ v).transpose(1, 2).reshape(n, -1, e)
    return m.out_proj(out), None  # out_proj's own hook freezes its factor


REFERENCE = {
    bnn.BcosConv2d: _conv,
    bnn.BcosLinear: _linear,
    bnn.UncenteredBatchNorm2d: _batchnorm,
    bnn.DetachableLayerNorm: _layernorm,
    bnn.GatedActivation: _gated,
    bnn.BcosMultiheadAttention: _attention,
}


def independent_dynamic_weights(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, W(x)) of ``model`` with every dynamic factor frozen by the formulas above.

    W(x) is the gradient of each sample's ``target`` logit w.r.t. the encoding ``[x, 1 - x]``,
    as ``Explanation.dynamic_weights``. Raises if the model holds a dynamic module without a
    formula here, so a new kind of module cannot pass unchecked.
    """
    model.eval()
    dynamic = [m for m in model.modules() if isinstance(m, DetachableModule)]
    unknown = {type(m).__name__ for m in dynamic if type(m) not in REFERENCE}
    assert not unknown, f"no reference formula for {sorted(unknown)}"
    bnn.set_explanation_mode(model, False)
    recorded: dict[nn.Module, tuple] = {}

    def record(module, args, kwargs, output):
        assert module not in recorded, f"{type(module).__name__} runs twice in one forward"
        recorded[module] = tuple(a.detach() if torch.is_tensor(a) else a for a in args)

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in dynamic]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    assert set(recorded) == set(dynamic), "a dynamic module did not run"

    encoders = [m for m in model.modules() if isinstance(m, bnn.InputEncoding)]
    assert len(encoders) == 1
    leaf: dict[str, torch.Tensor] = {}

    def encoding_leaf(module, args, output):
        leaf["z"] = output.detach().clone().requires_grad_(True)
        return leaf["z"]

    def frozen(module, args, kwargs, output):
        return REFERENCE[type(module)](module, recorded[module], args, kwargs)

    handles = [encoders[0].register_forward_hook(encoding_leaf)]
    handles += [m.register_forward_hook(frozen, with_kwargs=True) for m in dynamic]
    try:
        logits = model(images)
        (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), leaf["z"])
    finally:
        for handle in handles:
            handle.remove()
    return logits.detach(), grad


class SmallCNN(nn.Module):
    """Conv, BatchNorm, ReLU, a depthwise conv, GELU, max pool and a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),
            nn.BatchNorm2d(16),
            nn.GELU(),
            nn.Conv2d(16, 24, 1),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _source(arch: str) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    if arch == "small_cnn":
        return SmallCNN(), 32
    if arch == "resnet18":
        return torchvision.models.resnet18(num_classes=10), 64
    return small_vit(num_layers=2), 32


def _converted(arch: str, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    """A float64 B=2 conversion whose outputs depend on the input (BatchNorm statistics from a
    batch, every B-cos unit's output at unit RMS)."""
    source, size = _source(arch)
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    source = calibrate_batchnorm(source.double(), (x.double() - 0.5) / 0.5)
    model = bcosify.convert(source, **HALF, **kwargs).double().eval()
    return calibrate(model, x.double()), x.double()


ARCHS = ["small_cnn", "resnet18", "vit"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("activation", ["remove", "keep"])
def test_dynamic_weights_equal_an_independent_computation(arch, activation):
    model, x = _converted(arch, config=bcosify.BcosConfig(activation=activation))
    expl = bcosify.explain(model, x)
    logits, weights = independent_dynamic_weights(model, x, expl.target)
    # the formulas reproduce the model (otherwise the check below would compare nonsense)
    assert rel_err(logits, expl.logits) < 1e-10
    assert rel_err(logits[1], logits[0]) > 1e-2, "the model must see its input"
    assert rel_err(expl.dynamic_weights, weights) < 1e-9
    assert rel_err(weights[1], weights[0]) > 1e-2


def _stays_plain(module: nn.Module) -> nn.Module:
    """Plant a bug: ``module`` ignores explanation mode and keeps its factor in the graph."""
    module.set_explanation_mode = lambda on=True: None
    return module


@pytest.mark.parametrize(
    "arch, planted",
    [
        ("resnet18", "layer2.0.conv1"),
        ("resnet18", "layer4.1.conv2"),
        ("vit", "encoder.layers.encoder_layer_0.self_attention"),
        ("vit", "encoder.layers.encoder_layer_1.ln_2"),
        ("small_cnn", "features.5"),
    ],
)
def test_the_check_sees_a_unit_that_does_not_detach(arch, planted):
    model, x = _converted(arch)
    _stays_plain(model.get_submodule(planted))
    expl = bcosify.explain(model, x)
    _, weights = independent_dynamic_weights(model, x, expl.target)
    assert rel_err(expl.dynamic_weights, weights) > 1e-3


def test_completeness_cannot_see_it():
    """Why the check above is needed: with one B-cos unit not detached, the ResNet's
    explanation is wrong and still complete (the network is homogeneous in its input)."""
    model, x = _converted("resnet18")
    _stays_plain(model.get_submodule("layer2.0.conv1"))
    expl = bcosify.explain(model, x)
    assert pixel_completeness(expl) < 1e-9
    _, weights = independent_dynamic_weights(model, x, expl.target)
    assert rel_err(expl.dynamic_weights, weights) > 1e-3
