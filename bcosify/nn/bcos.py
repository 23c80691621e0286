"""B-cos units: convolution and linear layers with the cosine non-linearity.

``BcosConv2d``/``BcosLinear`` subclass ``nn.Conv2d``/``nn.Linear`` so that state-dict keys stay
``<name>.weight`` and pretrained weights map one to one. The output of a unit is

    |cos(x, w)|^(B-1) * (w . x)

with ``w`` normalised to unit norm when ``normalize_weights`` is set (the B-cos v2 unit) and used as
it is otherwise (the B-cosification default, which equals the original layer at B=1). The patch norm
``||x||`` of a convolution runs over channels (per group) and the kernel window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mode import DetachableModule, add_constant

__all__ = ["BcosConv2d", "BcosLinear"]

_EPS_NORM = 1e-6
_EPS_COS = 1e-6


def _dynamic_scale(out: Tensor, norm: Tensor, b: float, detach: bool) -> Tensor:
    if detach:
        out, norm = out.detach(), norm.detach()
    if b == 2:
        return out.abs() / norm
    return ((out / norm).abs() + _EPS_COS).pow(b - 1)


class BcosConv2d(DetachableModule, nn.Conv2d):
    """A B-cos convolution (any stride, padding, dilation and groups, depthwise included).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode:
            as in ``nn.Conv2d``. With ``max_out > 1`` the weight holds ``out_channels * max_out``
            filters and the output is the maximum over each group of ``max_out``.
        bias: keep an additive bias (reported as a constant term in explanations).
        b: the exponent B (1: linear).
        max_out: number of max-out units per output channel.
        normalize_weights: use unit-norm filters.

    Example:
        >>> conv = BcosConv2d(6, 8, 3, padding=1, b=2)
        >>> conv(torch.rand(1, 6, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        b: float = 2.0,
        max_out: int = 1,
        normalize_weights: bool = False,
    ):
        if max_out < 1:
            raise ValueError(f"max_out must be >= 1, got {max_out}")
        if bias and max_out > 1:
            raise ValueError("a bias cannot be combined with max_out > 1")
        super().__init__(
            in_channels,
            out_channels * max_out,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        if (out_channels * max_out) % groups:
            raise ValueError("out_channels * max_out must be divisible by groups")
        self.b = float(b)
        self.max_out = int(max_out)
        self.normalize_weights = bool(normalize_weights)

    @classmethod
    def from_conv2d(
        cls,
        conv: nn.Conv2d,
        *,
        b: float = 2.0,
        keep_bias: bool = False,
        normalize_weights: bool = False,
        weight: Tensor | None = None,
    ) -> BcosConv2d:
        """Build a B-cos unit that shares ``conv``'s weight (or uses ``weight``)."""
        w = conv.weight if weight is None else weight
        new = cls(
            w.shape[1] * conv.groups,
            w.shape[0],
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            keep_bias and conv.bias is not None,
            conv.padding_mode,
            device="meta",
            b=b,
            normalize_weights=normalize_weights,
        )
        new.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w.detach().clone())
        if new.bias is not None:
            new.bias = conv.bias
        new.train(conv.training)
        return new

    def _weight(self) -> Tensor:
        w = self.weight
        if self.normalize_weights:
            w = w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)
        return w

    def patch_norms(self, x: Tensor) -> Tensor:
        """L2 norm of every input patch (per group), shape N x G x H' x W'."""
        sq = x * x
        g = self.groups
        sq = sq.sum(1, keepdim=True) if g == 1 else sq.unflatten(1, (g, -1)).sum(2)
        padding = self.padding
        if self.padding_mode != "zeros":
            sq = F.pad(sq, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        kh, kw = self.kernel_size
        if (
            self.dilation == (1, 1)
            and not isinstance(padding, str)
            and padding[0] <= kh // 2
            and padding[1] <= kw // 2
        ):
            sums = F.avg_pool2d(sq, self.kernel_size, self.stride, padding) * (kh * kw)
        else:
            ones = sq.new_ones(g, 1, kh, kw)
            sums = F.conv2d(sq, ones, None, self.stride, padding, self.dilation, g)
        return (sums + _EPS_NORM).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        out = self._conv_forward(x, self._weight(), None)
        if self.max_out > 1:
            out = out.unflatten(1, (-1, self.max_out)).amax(2)
        if self.b != 1:
            norm = self.patch_norms(x)
            g = self.groups
            if g == 1 or out.shape[1] == g:
                out = out * _dynamic_scale(out, norm, self.b, self.explanation_mode)
            else:
                grouped = out.unflatten(1, (g, -1))
                scale = _dynamic_scale(grouped, norm.unsqueeze(2), self.b, self.explanation_mode)
                out = (grouped * scale).flatten(1, 2)
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias.view(1, -1, 1, 1))
        return out

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", b={self.b:g}"
        if self.max_out > 1:
            s += f", max_out={self.max_out}"
        if self.normalize_weights:
            s += ", normalize_weights=True"
        return s


class BcosLinear(DetachableModule, nn.Linear):
    """A B-cos linear layer; the input norm runs over the last dimension.

    Example:
        >>> lin = BcosLinear(16, 4, b=2)
        >>> lin(torch.rand(3, 16)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device=None,
        dtype=None,
        *,
        b: float = 2.0,
        max_out: int = 1,
        normalize_weights: bool = False,
    ):
        if max_out < 1:
            raise ValueError(f"max_out must be >= 1, got {max_out}")
        if bias and max_out > 1:
            raise ValueError("a bias cannot be combined with max_out > 1")
        super().__init__(in_features, out_features * max_out, bias, device, dtype)
        self.b = float(b)
        self.max_out = int(max_out)
        self.normalize_weights = bool(normalize_weights)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        b: float = 2.0,
        keep_bias: bool = False,
        normalize_weights: bool = False,
    ) -> BcosLinear:
        """Build a B-cos unit that shares ``linear``'s weight."""
        new = cls(
            linear.in_features,
            linear.out_features,
            keep_bias and linear.bias is not None,
            device="meta",
            b=b,
            normalize_weights=normalize_weights,
        )
        new.weight = linear.weight
        if new.bias is not None:
            new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.normalize_weights:
            w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
        out = F.linear(x, w)
        if self.max_out > 1:
            out = out.unflatten(-1, (-1, self.max_out)).amax(-1)
        if self.b != 1:
            norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) + 1e-12
            out = out * _dynamic_scale(out, norm, self.b, self.explanation_mode)
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias)
        return out

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", b={self.b:g}"
        if self.max_out > 1:
            s += f", max_out={self.max_out}"
        if self.normalize_weights:
            s += ", normalize_weights=True"
        return s
