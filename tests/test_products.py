"""The product policy (BcosConfig.products): a product of two input-dependent tensors that is not
a gate or an attention product gets one factor detached in explanation mode; the forward is
unchanged and explanations stay exact (docs/rules.md, "Products")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bcosify
from bcosify import BcosConfig, UnsupportedLayerError
from bcosify import nn as bnn
from tests.helpers import MEAN, STD, pixel_completeness, rel_err

EQUIVALENCE = BcosConfig(b=1, keep_bias=True, activation="exact", maxpool="keep")


class Star(nn.Module):
    """StarNet: ``act(a) * b``, neither a gate."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.f1, self.f2 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.act = nn.ReLU6()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.act(self.f1(x)) * self.f2(x)
        return self.head(x.mean((2, 3)))


class SplitAttention(nn.Module):
    """ResNeSt: a softmax reshaped before it scales the features, written on the left."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        attn = F.softmax(self.fc(x.mean((2, 3), keepdim=True)).flatten(1), dim=1)
        x = attn.view(-1, 8, 1, 1) * x
        return self.head(x.mean((2, 3)))


class LinearAttention(nn.Module):
    """EfficientViT-style ReLU linear attention: ``q @ (k^T @ v)``; the class token reads
    the image only through the values (CoaT's factorised attention)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # N x T x 8
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        kv = F.relu(k).transpose(1, 2) @ v
        t = t + F.relu(q) @ kv
        return self.head(t[:, 0])


class FactorisedAttention(LinearAttention):
    """CoaT: ``q @ (softmax(k)^T @ v)``; the keys' softmax is already the inner product's gate,
    so it does not make ``softmax(k)^T @ v`` the factor to detach."""

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        t = t + q @ (k.softmax(dim=1).transpose(1, 2) @ v)
        return self.head(t[:, 0])


class Normalisations(nn.Module):
    """``F.normalize`` written out, and an RMS norm from ``var``/``rsqrt``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
        x = self.mid(x)
        x = x * torch.rsqrt(x.var(dim=1, keepdim=True) + 1e-5)
        return self.head(x.mean((2, 3)))


class Square(nn.Module):
    """``x * x`` and a factor that is also used on the main path."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.f = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x * x
        b = self.f(x)
        return self.head((x * b + b).mean((2, 3)))


def _detached_inputs(model) -> list[str]:
    """The source node each DetachableGate of a converted model detaches."""
    out = []
    for node in model.graph.nodes:
        if node.op == "call_module" and isinstance(
            model.get_submodule(node.target), bnn.DetachableGate
        ):
            src = node.args[0]
            out.append(str(src.target) if src.op == "call_module" else src.name)
    return out


def _check(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Unchanged forward at the exact-start config; exact explanations of the default model."""
    model = model.double().eval()
    x = x.double()
    eq = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD)
    with torch.no_grad():
        ref = model(torch.stack([(x[:, c] - MEAN[c]) / STD[c] for c in range(3)], 1))
        assert rel_err(eq(x), ref) <= 1e-10
    conv = bcosify.convert(model, mean=MEAN, std=STD)
    expl = bcosify.explain(conv, x)
    assert pixel_completeness(expl) <= 1e-9
    # the explained path carries the image: a policy that detached every path from the pixels
    # would be "complete" with nothing to explain
    pixels = expl.explained_logit - expl.constant_total
    assert float(pixels.abs().min()) >= 1e-8 * float(expl.explained_logit.abs().max())
    return conv


@pytest.mark.parametrize(
    "cls, detached, why",
    [
        (Star, ["f2"], "the right-hand factor"),
        (SplitAttention, ["view"], "saturating non-linearity"),
        # queries and keys detached (k^T inside k^T @ v, q outside), the values explained
        (LinearAttention, ["transpose_1", "relu_1"], "the left-hand factor"),
        (FactorisedAttention, ["transpose_1", "getitem_1"], "the left-hand factor"),
        (Normalisations, ["clamp_min", "rsqrt"], "divisor"),
    ],
)
def test_the_policy_detaches_one_factor_and_explanations_stay_exact(cls, detached, why):
    torch.manual_seed(0)
    conv = _check(cls(), torch.rand(2, 3, 16, 16))
    assert _detached_inputs(conv) == detached
    entries = [e for e in conv.conversion_report.entries if "product policy" in e.what]
    assert entries and any(why in e.detail for e in entries)


def test_the_detached_branch_is_left_as_it_is():
    # the softmax and the linear map that feed only the detached factor are not converted
    conv = bcosify.convert(SplitAttention(), mean=MEAN, std=STD)
    assert type(conv.fc) is nn.Conv2d and conv.fc.bias is not None
    assert isinstance(conv.stem, bnn.BcosConv2d)
    # in Star the right-hand factor's convolution is only used there: kept, bias and all
    conv = bcosify.convert(Star(), mean=MEAN, std=STD)
    assert type(conv.f2) is nn.Conv2d and isinstance(conv.f1, bnn.BcosConv2d)


def test_a_square_and_a_shared_factor():
    torch.manual_seed(0)
    conv = _check(Square(), torch.rand(2, 3, 16, 16))
    # x * x: one occurrence detached; b = f(x) is also added on the main path, so it is
    # converted (a B-cos unit) and only its use as a factor is detached
    assert isinstance(conv.f, bnn.BcosConv2d)
    assert sorted(_detached_inputs(conv)) == ["f", "stem"]


def test_the_policy_is_needed_for_exact_explanations():
    # without the detached factor the explanation of a product counts it twice: the check above
    # would see it (the contributions of a degree-2 path sum to twice its part of the logit)
    torch.manual_seed(0)
    conv = bcosify.convert(Star().double().eval(), mean=MEAN, std=STD)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    gates = [m for m in conv.modules() if isinstance(m, bnn.DetachableGate)]
    assert gates
    for g in gates:
        g.forward = lambda t: t  # never detached
    assert pixel_completeness(bcosify.explain(conv, x)) > 1e-3


def test_products_error_reports_them():
    with pytest.raises(UnsupportedLayerError) as info:
        bcosify.convert(Star(), BcosConfig(products="error"), mean=MEAN, std=STD)
    assert "products='detach'" in str(info.value)
    report = bcosify.analyze(Normalisations(), BcosConfig(products="error"), mean=MEAN, std=STD)
    assert [kind for _, kind, _ in report.unsupported].count("div") == 1
    with pytest.raises(bcosify.BcosifyError, match="products must be one of"):
        BcosConfig(products="maybe")


def test_a_constant_divided_by_the_input_stays_unsupported():
    class Reciprocal(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return (1.0 / (self.c(x).abs() + 1)).mean((2, 3))

    report = bcosify.analyze(Reciprocal(), mean=MEAN, std=STD)
    assert not report.ok
    assert any("constant divided by" in hint for _, _, hint in report.unsupported)


class Written(nn.Module):
    """Ops that timm models write out: ``F.normalize`` (SwiftFormer), ``x ** 2`` and ``square``
    (StarReLU), a channel max (CSATv2), a token max (VOLO, Hiera), ``addcmul`` (ResMLP)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(9, 8, 1)
        self.alpha = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.beta = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.normalize(self.stem(x), dim=1)
        x = torch.addcmul(self.beta, self.alpha, x**2 + torch.square(x))
        x = self.mix(torch.cat([x, x.amax(dim=1, keepdim=True)], dim=1))
        t = x.flatten(2)  # N x C x T
        return self.head(t.max(dim=2)[0] + t.max(2).values)


def test_written_out_ops():
    torch.manual_seed(0)
    conv = _check(Written(), torch.rand(2, 3, 16, 16))
    kinds = {type(m).__name__ for m in conv.modules()}
    assert {"DetachableNormalize", "DetachablePower", "MaxAsMean", "AddConstant"} <= kinds
    counts = conv.conversion_report.counts()
    assert counts[("replaced", "max -> MaxAsMean")] == 2
    assert counts[("replaced", "addcmul -> input + t1 * t2")] == 1
    # maxpool="keep" keeps the maxima (piecewise linear: exact as they are)
    kept = bcosify.convert(Written(), BcosConfig(maxpool="keep"), mean=MEAN, std=STD)
    assert not any(isinstance(m, bnn.MaxAsMean) for m in kept.modules())
    assert kept.conversion_report.counts()[("kept", "max (piecewise linear)")] == 2


def test_written_out_ops_that_stay_unsupported():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.register_buffer("floor", torch.ones(1, 4, 1, 1))

        def forward(self, x):
            x = self.c(x)
            y = x**0.5 + torch.max(x, self.floor) + torch.div(x, 2.0, rounding_mode="floor")
            return (y + torch.addcmul(x, x, x)).mean((2, 3))

    report = bcosify.analyze(Bad(), mean=MEAN, std=STD)
    hints = " ".join(h for _, _, h in report.unsupported)
    assert "x ** 0.5" in hints and "a clamp" in hints and "two input-dependent" in hints
    assert "rounding_mode='floor'" in hints  # not linear, even by a constant
    report = bcosify.analyze(Written(), BcosConfig(products="error"), mean=MEAN, std=STD)
    assert {k for _, k, _ in report.unsupported} == {"F.normalize", "pow"}


class SharedGates(nn.Module):
    """A sigmoid and a GELU that scale a tensor and are also used on their own."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        g = F.gelu(self.a(x))
        x = g * self.b(x) + g
        return self.head(x.mean((2, 3)))


def test_a_gate_that_is_also_used_on_its_own_is_converted():
    # the GELU output also enters the sum: it is a GELU (converted, its gate detached), not the
    # gate of a GLU that could be left as it is
    torch.manual_seed(0)
    conv = _check(SharedGates(), torch.rand(2, 3, 16, 16))
    assert conv.conversion_report.counts()[("replaced", "gelu -> GatedActivation")] == 1

    class SigmoidToo(SharedGates):
        def forward(self, x):
            x = self.stem(x)
            s = torch.sigmoid(self.a(x))
            return self.head((x * s + s).mean((2, 3)))

    # the sigmoid is also added: on the explained path it is a gated identity plus a reported
    # constant, and the product x * s is a product of two input-dependent tensors (the policy)
    torch.manual_seed(0)
    conv = _check(SigmoidToo(), torch.rand(2, 3, 16, 16))
    assert conv.conversion_report.counts()[("replaced", "sigmoid -> GatedActivation")] == 1
