"""Gated activations, gates, input encoding and the logit layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mode import DetachableModule, add_constant

__all__ = [
    "GatedActivation",
    "DetachableGate",
    "InputEncoding",
    "EncodedNormalize",
    "LogitLayer",
]


def _gelu_gate(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_tanh_gate(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _tanh_gate(x: Tensor) -> Tensor:
    # tanh(x) = x * (tanh(x) / x): an odd function through 0 is a gated identity, exactly
    small = x.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 - x * x / 3.0, torch.tanh(safe) / safe)


def _sigmoid_gate(x: Tensor) -> Tensor:
    # sigmoid(x) = 0.5 + x * (sigmoid(x) - 0.5) / x, and (sigmoid(x) - 0.5) / x = tanh(x/2) / 2x
    return 0.25 * _tanh_gate(0.5 * x)


def _hardsigmoid_gate(x: Tensor) -> Tensor:
    # hardsigmoid(x) = 0.5 + clamp(x / 6, -0.5, 0.5) = 0.5 + x * gate
    return torch.where(x.abs() <= 3.0, torch.full_like(x, 1.0 / 6.0), 0.5 / x.abs().clamp_min(3.0))


_GATES = {
    "silu": torch.sigmoid,
    "gelu": _gelu_gate,
    "gelu_tanh": _gelu_tanh_gate,
    "quick_gelu": lambda x: torch.sigmoid(1.702 * x),
    "hardswish": F.hardsigmoid,
    "mish": lambda x: torch.tanh(F.softplus(x)),
    "tanh": _tanh_gate,
    "sigmoid": _sigmoid_gate,
    "hardsigmoid": _hardsigmoid_gate,
}
# kinds that are a gated identity plus a constant (reported in explanations)
_OFFSETS = {"sigmoid": 0.5, "hardsigmoid": 0.5}


class GatedActivation(DetachableModule, nn.Module):
    """``x * g(x)`` with the gate ``g(x)`` detached in explanation mode.

    Args:
        kind: one of ``silu``, ``gelu``, ``gelu_tanh``, ``quick_gelu``, ``hardswish``, ``mish``,
            ``tanh`` (``tanh(x) = x * tanh(x) / x``), ``sigmoid`` and ``hardsigmoid``
            (``0.5 + x * (s(x) - 0.5) / x``, the constant 0.5 reported in explanations).

    Example:
        >>> act = GatedActivation("silu")
        >>> torch.allclose(act(torch.randn(4)), torch.zeros(4)) is False
        True
    """

    KINDS = tuple(_GATES)

    def __init__(self, kind: str):
        super().__init__()
        if kind not in _GATES:
            raise ValueError(f"unknown gated activation {kind!r}; known: {', '.join(_GATES)}")
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        gate = _GATES[self.kind](x)
        if self.explanation_mode:
            gate = gate.detach()
        out = x * gate
        offset = _OFFSETS.get(self.kind)
        if offset is not None:
            out = add_constant(self, "offset", out, out.new_tensor(offset))
        return out

    def extra_repr(self) -> str:
        return self.kind


class DetachableGate(DetachableModule, nn.Module):
    """Identity on a gate tensor (e.g. a squeeze-excitation scale) that is detached in
    explanation mode, so ``x * gate`` stays linear in ``x``."""

    def forward(self, gate: Tensor) -> Tensor:
        return gate.detach() if self.explanation_mode else gate


class DetachableNormalize(DetachableModule, nn.Module):
    """``F.normalize``: ``x / max(||x||_p, eps)`` along ``dim``, with the norm detached in
    explanation mode (a dynamic weight), so the output stays linear in ``x``.

    Example:
        >>> x = torch.randn(2, 5)
        >>> torch.allclose(DetachableNormalize(2.0, 1)(x), torch.nn.functional.normalize(x))
        True
    """

    def __init__(self, p: float = 2.0, dim: int = 1, eps: float = 1e-12):
        super().__init__()
        self.p, self.dim, self.eps = float(p), dim, float(eps)

    def forward(self, x: Tensor) -> Tensor:
        norm = x.norm(self.p, self.dim, keepdim=True).clamp_min(self.eps)
        if self.explanation_mode:
            norm = norm.detach()
        return x / norm.expand_as(x)

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}, eps={self.eps}"


class DetachablePower(DetachableModule, nn.Module):
    """``x ** p`` (``p >= 1``) as ``x * x ** (p - 1)``, the second factor detached in
    explanation mode: a product of ``x`` with itself, one occurrence a dynamic weight.

    Example:
        >>> x = torch.randn(6)
        >>> torch.equal(DetachablePower(2)(x), x**2)
        True
    """

    def __init__(self, p: float):
        super().__init__()
        if not p >= 1:
            raise ValueError(f"DetachablePower needs p >= 1, got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.explanation_mode:
            return x**self.p
        return x * (x ** (self.p - 1)).detach()

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConstantPad(nn.Module):
    """Padding with a non-zero constant ``value``: zero padding (linear) plus a constant tensor
    that holds ``value`` in the padded border, recorded as a constant of explanations.

    Example:
        >>> ConstantPad((0, 0, 0, 1), 1.0)(torch.zeros(1, 2, 2))[0]
        tensor([[0., 0.],
                [0., 0.],
                [1., 1.]])
    """

    def __init__(self, pad: Sequence[int], value: float):
        super().__init__()
        self.pad = tuple(int(p) for p in pad)
        self.value = float(value)

    def forward(self, x: Tensor) -> Tensor:
        border = F.pad(x.new_zeros((1, *x.shape[1:])), self.pad, value=self.value)
        return add_constant(self, "value", F.pad(x, self.pad), border)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, value={self.value:g}"


class MaxAsMean(nn.Module):
    """A max over dimensions (``amax``, ``max(dim)``) replaced by the mean over them, as
    ``BcosConfig(maxpool="avg")`` replaces max pooling; ``max(dim)``'s ``(values, indices)``
    keep their form (the indices of the maxima).

    Example:
        >>> x = torch.randn(2, 3, 4)
        >>> torch.equal(MaxAsMean(1, keepdim=True)(x), x.mean(1, keepdim=True))
        True
        >>> MaxAsMean(2, indices=True)(x).indices.shape
        torch.Size([2, 3])
    """

    def __init__(self, dim, keepdim: bool = False, indices: bool = False):
        super().__init__()
        self.dim = tuple(dim) if isinstance(dim, (list, tuple)) else dim
        self.keepdim, self.indices = bool(keepdim), bool(indices)

    def forward(self, x: Tensor):
        dim = self.dim if self.dim != () else tuple(range(x.dim()))
        values = x.mean(dim, keepdim=self.keepdim)
        if not self.indices:
            return values
        return torch.return_types.max((values, x.argmax(dim, keepdim=self.keepdim)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}, indices={self.indices}"


class InputEncoding(nn.Module):
    """Encodes an image ``x`` in [0, 1] as ``[x, 1 - x]`` (doubling the channels).

    Example:
        >>> InputEncoding(3)(torch.rand(1, 3, 4, 4)).shape
        torch.Size([1, 6, 4, 4])
    """

    def __init__(self, in_channels: int = 3, size: tuple[int, int] | None = None):
        super().__init__()
        self.in_channels = int(in_channels)
        # the image size the model was traced at, when parts of it were specialised to it
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images with {self.in_channels} channels in dimension 1 "
                f"(N x {self.in_channels} x H x W, values in [0, 1]), got shape {tuple(x.shape)}"
            )
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            from bcosify.errors import BcosifyError

            h, w = self.size
            raise BcosifyError(
                f"this converted model takes {h}x{w} images only, got {tuple(x.shape)}: parts of "
                "it branch on the input size and were traced at that size (see its conversion "
                "report, 'specialized'); resize the images, or convert the model for another "
                "size (its preprocessing's input_size)"
            )
        return torch.cat([x, 1.0 - x], dim=1)

    def extra_repr(self) -> str:
        size = "" if self.size is None else f", size={self.size}"
        return f"in_channels={self.in_channels}{size}"


class EncodedNormalize(nn.Module):
    """Maps the encoding ``[x, 1 - x]`` back to ``(x - mean) / std`` without a bias.

    ``(x - mu) / s = x (1 - mu) / s - (1 - x) mu / s``: linear in the encoding, so the model stays
    bias-free. Used when the first layer cannot absorb the normalisation.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        # computed in float64, rounded once to the model's dtype
        mean_t = torch.as_tensor(mean, dtype=torch.float64)
        std_t = torch.as_tensor(std, dtype=torch.float64)
        self.register_buffer("a", ((1 - mean_t) / std_t).to(dtype).view(1, -1, 1, 1))
        self.register_buffer("c", (-mean_t / std_t).to(dtype).view(1, -1, 1, 1))

    def forward(self, x6: Tensor) -> Tensor:
        x, inv = x6.chunk(2, dim=1)
        return x * self.a + inv * self.c


class LogitLayer(nn.Module):
    """Adds a constant logit bias (``-log(C - 1)`` makes ``sigmoid`` of a zero logit ``1/C``).

    Explanations report the bias as the constant term ``logit_bias``.

    Example:
        >>> LogitLayer(-math.log(999))(torch.zeros(1, 1000))[0, 0].item() < -6.9
        True
    """

    def __init__(self, bias: float):
        super().__init__()
        self.register_buffer("logit_bias", torch.tensor(float(bias)))

    def forward(self, x: Tensor) -> Tensor:
        return add_constant(self, "logit_bias", x, self.logit_bias.reshape((1,) * x.dim()))

    def extra_repr(self) -> str:
        return f"bias={self.logit_bias.item():.4f}"
