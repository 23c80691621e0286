"""Normalisation layers for B-cos networks.

* :class:`UncenteredBatchNorm2d` divides by the standard deviation without subtracting the mean
  (the running mean is folded into the bias at conversion); the batch statistics are detached in
  explanation mode.
* :class:`DetachableLayerNorm`, :class:`DetachableLayerNorm2d` and :class:`DetachableGroupNorm` keep
  the centering (a linear map) and detach the standard deviation in explanation mode.

Every bias is added through :func:`add_constant`, so explanations report it as a constant term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mode import DetachableModule, add_constant

__all__ = [
    "UncenteredBatchNorm2d",
    "UncenteredBatchNorm1d",
    "DetachableLayerNorm",
    "DetachableLayerNorm2d",
    "DetachableGroupNorm",
    "UncenteredBatchNormAct2d",
    "DetachableRmsNorm",
    "DetachableLayerNormAct",
    "DetachableLayerNormAct2d",
    "DetachableGroupNormAct",
    "DetachableRmsNormAct",
]


class _BatchScale(torch.autograd.Function):
    """Training-mode uncentered BatchNorm without bias, ``y = x * w / sqrt(var_B(x) + eps)``
    with ``var_B`` the biased variance over every dimension but the channels, in one forward
    pass (two per-channel sums) and three backward passes over ``x``; autograd's composition
    of ``var``, a division and a broadcast product makes about four times as many. Returns
    ``y`` and the batch variance (for the running statistics; no gradient).

    Backward, with ``a = w / std``, ``S = sum(g * x)`` per channel and ``n`` the elements per
    channel: ``dx = g * a - (w / std^3) * S * (x - mean) / n``, ``dw = S / std``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, eps: float, dims: list[int], shape):
        n = x.numel() // x.shape[1]
        if x.device.type == "cpu":
            # two sums: on a CPU ~10x faster than ``var`` (a Welford pass); the exact two-pass
            # variance where the mean is so large that E[x^2] - mean^2 would cancel
            mean = x.sum(dims) / n
            var = x.square().sum(dims) / n - mean.square()
            if bool((mean.square() > 1e3 * var.abs()).any()):
                var = (x - mean.view(shape)).square().sum(dims) / n
            var = var.clamp_min_(0)
        else:
            var, mean = torch.var_mean(x, dims, unbiased=False)
        invstd = (var + eps).rsqrt()
        scale = invstd if weight is None else weight * invstd
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.dims, ctx.shape, ctx.n = dims, shape, n
        return x * scale.view(shape), var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor, _var_grad):
        x, weight, mean, invstd = ctx.saved_tensors
        shape, n = ctx.shape, ctx.n
        s = (g * x).sum(ctx.dims)
        w = torch.ones_like(invstd) if weight is None else weight
        a = (w * invstd).view(shape)
        b = (-w * invstd.pow(3) * s / n).view(shape)
        dx = (g * a).addcmul_(x, b).sub_(mean.view(shape) * b)
        dw = None if weight is None or not ctx.needs_input_grad[1] else s * invstd
        return dx, dw, None, None, None


class _UncenteredBatchNorm(DetachableModule):
    """``y = weight * x / sqrt(var + eps) + bias``; no mean is subtracted."""

    _channel_dim = 1

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, *, keep_bias: bool = False):
        """Convert ``bn``: fold its running mean into the bias, then drop the bias unless kept.

        In eval mode at ``keep_bias=True`` the result equals ``bn`` exactly.
        """
        new = cls(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            device="meta",
        )
        ref = bn.weight if bn.affine else bn.running_var
        new.to_empty(device=ref.device if ref is not None else "cpu")
        if ref is not None:
            new.to(ref.dtype)
        with torch.no_grad():
            if bn.track_running_stats:
                new.running_var.copy_(bn.running_var)
                new.running_mean.zero_()
                new.num_batches_tracked.copy_(bn.num_batches_tracked)
        if bn.affine:
            new.weight = bn.weight
        if keep_bias:
            with torch.no_grad():
                if bn.track_running_stats:
                    scale = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
                    folded = -bn.running_mean * scale
                else:
                    folded = torch.zeros_like(bn.weight if bn.affine else bn.running_var)
                if bn.affine:
                    folded = folded + bn.bias
            new.bias = nn.Parameter(folded.detach().clone(), requires_grad=bn.affine)
        else:
            new.bias = None
        new.train(bn.training)
        return new

    @torch.no_grad()
    def _update_running_var(self, x: Tensor, var: Tensor) -> None:
        if not (self.training and self.track_running_stats and self.running_var is not None):
            return
        self.num_batches_tracked.add_(1)
        n = x.numel() / x.shape[self._channel_dim]
        unbiased = var * (n / max(n - 1, 1))
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_var.mul_(1 - momentum).add_(momentum * unbiased)

    def _shape(self, x: Tensor) -> list[int]:
        shape = [1] * x.dim()
        shape[self._channel_dim] = -1
        return shape

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        dims = [d for d in range(x.dim()) if d != self._channel_dim]
        use_batch = self.training or self.running_var is None
        fused = (
            use_batch
            and not self.explanation_mode
            and self.bias is None
            and x.dim() > 2
            and torch.is_grad_enabled()
            and not isinstance(x, torch.fx.Proxy)
            and not torch.jit.is_scripting()
        )
        if fused:
            out, var = _BatchScale.apply(x, self.weight, self.eps, dims, self._shape(x))
            self._update_running_var(x, var.detach())
            return out
        if use_batch:
            var = x.var(dim=dims, unbiased=False)
            self._update_running_var(x, var)
        else:
            var = self.running_var
        std = (var + self.eps).sqrt()
        if self.explanation_mode:
            std = std.detach()
        shape = self._shape(x)
        scale = 1.0 / std if self.weight is None else self.weight / std
        out = x * scale.view(shape)
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias.view(shape))
        return out


class UncenteredBatchNorm2d(_UncenteredBatchNorm, nn.BatchNorm2d):
    """Uncentered BatchNorm over N×C×H×W input (see :class:`_UncenteredBatchNorm`).

    Example:
        >>> bn = UncenteredBatchNorm2d.from_batchnorm(nn.BatchNorm2d(4).eval())
        >>> bn(torch.rand(2, 4, 3, 3)).shape
        torch.Size([2, 4, 3, 3])
    """


class UncenteredBatchNorm1d(_UncenteredBatchNorm, nn.BatchNorm1d):
    """Uncentered BatchNorm over N×C or N×C×L input."""


class DetachableLayerNorm(DetachableModule, nn.LayerNorm):
    """LayerNorm over the trailing ``normalized_shape`` dims with a detachable std.

    Example:
        >>> ln = DetachableLayerNorm.from_layernorm(nn.LayerNorm(8))
        >>> ln(torch.rand(2, 8)).shape
        torch.Size([2, 8])
    """

    @classmethod
    def from_layernorm(cls, ln: nn.LayerNorm, *, keep_bias: bool = False):
        new = cls(ln.normalized_shape, ln.eps, elementwise_affine=False, device="meta")
        new.elementwise_affine = ln.elementwise_affine
        new.weight = ln.weight
        new.bias = ln.bias if keep_bias else None
        new.train(ln.training)
        return new

    def _norm_dims(self, x: Tensor) -> tuple[int, ...]:
        return tuple(range(x.dim() - len(self.normalized_shape), x.dim()))

    def _affine_shape(self, x: Tensor) -> tuple[int, ...]:
        return tuple(self.normalized_shape)

    _native = True  # normalises the trailing dims: torch's layer_norm kernel outside explanations

    def forward(self, x: Tensor) -> Tensor:
        if self._native and not self.explanation_mode:
            # the same function, torch's fused kernel (and its backward): faster to train
            out = F.layer_norm(x, self.normalized_shape, self.weight, None, self.eps)
            if self.bias is not None:
                out = add_constant(self, "bias", out, self.bias.view(self._affine_shape(x)))
            return out
        dims = self._norm_dims(x)
        centered = x - x.mean(dim=dims, keepdim=True)
        std = (centered.pow(2).mean(dim=dims, keepdim=True) + self.eps).sqrt()
        if self.explanation_mode:
            std = std.detach()
        out = centered / std
        if self.weight is not None:
            out = out * self.weight.view(self._affine_shape(x))
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias.view(self._affine_shape(x)))
        return out


class DetachableLayerNorm2d(DetachableLayerNorm):
    """LayerNorm over the channels of N×C×H×W input (torchvision/timm ``LayerNorm2d``)."""

    _native = False

    def _norm_dims(self, x: Tensor) -> tuple[int, ...]:
        return (1,)

    def _affine_shape(self, x: Tensor) -> tuple[int, ...]:
        return (-1,) + (1,) * (x.dim() - 2)


class DetachableGroupNorm(DetachableModule, nn.GroupNorm):
    """GroupNorm with a detachable std and an optional (constant) bias."""

    @classmethod
    def from_groupnorm(cls, gn: nn.GroupNorm, *, keep_bias: bool = False):
        new = cls(gn.num_groups, gn.num_channels, gn.eps, affine=False, device="meta")
        new.affine = gn.affine
        new.weight = gn.weight
        new.bias = gn.bias if keep_bias else None
        new.train(gn.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if not self.explanation_mode:  # the same function, torch's fused kernel
            out = F.group_norm(x, self.num_groups, self.weight, None, self.eps)
            if self.bias is not None:
                out = add_constant(self, "bias", out, self.bias.view(shape))
            return out
        n, c = x.shape[:2]
        grouped = x.reshape(n, self.num_groups, -1)
        centered = grouped - grouped.mean(-1, keepdim=True)
        std = (centered.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        if self.explanation_mode:
            std = std.detach()
        out = (centered / std).reshape(x.shape)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias.view(shape))
        return out


class UncenteredBatchNormAct2d(UncenteredBatchNorm2d):
    """Uncentered BatchNorm followed by dropout and an activation (timm's ``BatchNormAct2d``).

    ``drop`` and ``act`` are submodules, so state-dict keys match the source layer.
    """

    @classmethod
    def from_batchnorm_act(
        cls, bn: nn.BatchNorm2d, act: nn.Module, drop: nn.Module, *, keep_bias: bool = False
    ):
        new = cls.from_batchnorm(bn, keep_bias=keep_bias)
        new.drop = drop
        new.act = act
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


class DetachableRmsNorm(DetachableModule, nn.Module):
    """RMS normalisation ``x / rms(x) * weight`` with the rms detached in explanation mode (no
    centering, so nothing else to do); ``channel_dim=1`` normalises the channels of N×C×H×W.

    Example:
        >>> DetachableRmsNorm(8)(torch.rand(2, 8)).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None = 1e-6,
        weight: nn.Parameter | None = None,
        channel_dim: int | None = None,
    ):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(shape)
        self.eps = eps
        self.channel_dim = channel_dim
        self.weight = weight

    @classmethod
    def from_rmsnorm(cls, norm: nn.Module, channel_dim: int | None = None):
        eps = getattr(norm, "eps", None)
        return cls(norm.normalized_shape, eps, getattr(norm, "weight", None), channel_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_dim is None:
            dims = tuple(range(x.dim() - len(self.normalized_shape), x.dim()))
            shape = self.normalized_shape
        else:
            dims = (self.channel_dim,)
            shape = (-1,) + (1,) * (x.dim() - self.channel_dim - 1)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        rms = (x.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt()
        if self.explanation_mode:
            rms = rms.detach()
        out = x / rms
        if self.weight is not None:
            out = out * self.weight.view(shape)
        return out

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, channel_dim={self.channel_dim}"


class _ActAfter:
    """Dropout and an activation after the norm, as in timm's ``*NormAct`` layers; ``drop`` and
    ``act`` are submodules, so state-dict keys match the source layer."""

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


class DetachableLayerNormAct(_ActAfter, DetachableLayerNorm):
    """:class:`DetachableLayerNorm` + dropout + activation (timm's ``LayerNormAct``)."""


class DetachableLayerNormAct2d(_ActAfter, DetachableLayerNorm2d):
    """:class:`DetachableLayerNorm2d` + dropout + activation (timm's ``LayerNormAct2d``)."""


class DetachableGroupNormAct(_ActAfter, DetachableGroupNorm):
    """:class:`DetachableGroupNorm` + dropout + activation (timm's ``GroupNormAct``)."""


class DetachableRmsNormAct(_ActAfter, DetachableRmsNorm):
    """:class:`DetachableRmsNorm` + dropout + activation (timm's ``RmsNormAct*``)."""
