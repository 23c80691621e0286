"""A one-dimensional B-cos convolution (token mixing along a sequence)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mode import DetachableModule, add_constant

__all__ = ["BcosConv1d"]


class BcosConv1d(DetachableModule, nn.Conv1d):
    """``|cos(x, w)|^(B-1) * (w . x)`` over N×C×L input; the patch norm runs over the channels of
    each group and the kernel window (zero padding only).

    Example:
        >>> conv = BcosConv1d.from_conv1d(nn.Conv1d(4, 4, 3, padding=1))
        >>> conv(torch.rand(2, 4, 10)).shape
        torch.Size([2, 4, 10])
    """

    b: float = 2.0
    normalize_weights: bool = False

    @classmethod
    def from_conv1d(
        cls,
        conv: nn.Conv1d,
        *,
        b: float = 2.0,
        keep_bias: bool = False,
        normalize_weights: bool = False,
    ) -> BcosConv1d:
        if conv.padding_mode != "zeros":
            raise ValueError(f"Conv1d with padding_mode={conv.padding_mode!r} is not supported")
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=False,
            device="meta",
        )
        new.weight = conv.weight
        new.bias = conv.bias if keep_bias else None
        new.b = float(b)
        new.normalize_weights = bool(normalize_weights)
        new.train(conv.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.normalize_weights:
            w = w / torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
        out = self._conv_forward(x, w, None)
        if self.b != 1:
            g = self.groups
            sq = (x * x).unflatten(1, (g, -1)).sum(2)
            ones = sq.new_ones(g, 1, self.kernel_size[0])
            norm = (
                F.conv1d(sq, ones, None, self.stride, self.padding, self.dilation, g) + 1e-6
            ).sqrt()
            grouped = out.unflatten(1, (g, -1))
            dot, n = grouped, norm.unsqueeze(2)
            if self.explanation_mode:
                dot, n = dot.detach(), n.detach()
            scale = dot.abs() / n if self.b == 2 else ((dot / n).abs() + 1e-6).pow(self.b - 1)
            out = (grouped * scale).flatten(1, 2)
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias.view(1, -1, 1))
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", b={self.b:g}"
