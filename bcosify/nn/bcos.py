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
# Largest temporary (in bytes) the inference path allocates at once: elementwise work on big
# activations runs in batch chunks of about this size, so temporaries stay in cache and below the
# allocator's mmap threshold (every fresh mmap costs one page fault per 4 KiB page).
_CHUNK_BYTES = 4 * 2**20

# How a forward pass runs (see ``_path``).
_PLAIN, _EXPLAIN, _INFERENCE = "plain", "explain", "inference"


def _path(module: DetachableModule, x: Tensor, weight: Tensor) -> str:
    """Which implementation a forward pass uses; all three compute the same values.

    * ``plain``: differentiable ops throughout: autograd records a graph through the dynamic
      scale (training), or the module is being scripted, symbolically traced, compiled or
      exported (in-place work on batch chunks would not survive those).
    * ``explain``: explanation mode with a graph: the dynamic scale is a constant, computed
      outside the graph, and multiplies the output in place.
    * ``inference``: no graph (``torch.no_grad``, or nothing requires grad): the scale is
      computed and applied in place, in batch chunks, and unit-norm weights are folded into the
      output instead of being materialised.
    """
    if torch.jit.is_scripting() or isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling():
        return _PLAIN  # (torch.compile and torch.export trace the differentiable formula)
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return _INFERENCE
    return _EXPLAIN if module.explanation_mode else _PLAIN


_REDUCED = (torch.float16, torch.bfloat16)


def _scaled(unit: nn.Module, x: Tensor, out: Tensor, path: str, fold: bool) -> Tensor:
    """``unit._bcos_scale(x, out, ...)``, in float32 when ``out`` or ``x`` is in half precision
    or autocast is on: the patch norm (a sum of squares, which overflows float16 and keeps 3
    significant digits in bfloat16) and the dynamic scale are computed in float32 with autocast
    off, as autocast does for norms and reductions. Under autocast the result stays float32
    (the next layer casts it); with half-precision weights it is cast back to their dtype."""
    if torch.jit.is_scripting() or isinstance(out, torch.fx.Proxy):
        return unit._bcos_scale(x, out, path, fold)
    device = out.device.type
    autocast = torch.is_autocast_enabled(device)
    if not autocast and out.dtype not in _REDUCED and x.dtype not in _REDUCED:
        return unit._bcos_scale(x, out, path, fold)
    with torch.autocast(device, enabled=False):
        scaled = unit._bcos_scale(x.float(), out.float(), path, fold)
    return scaled if autocast else scaled.to(out.dtype)


def _dynamic_scale(out: Tensor, norm: Tensor, b: float, detach: bool) -> Tensor:
    """``|cos|^(B-1)`` with ``cos = out / norm``, differentiable (the plain path)."""
    if detach:
        out, norm = out.detach(), norm.detach()
    if b == 2:
        return out.abs() / norm
    return ((out / norm).abs() + _EPS_COS).pow(b - 1)


def _pooled_window_sums(sq: Tensor, kernel, stride, padding) -> Tensor:
    """Sum of ``sq`` over every kernel window (zero padding), as an average pooling that does
    not divide. (ONNX's AveragePool has no divisor override: an exported graph averages over
    the window, zeros of the padding included, and multiplies by the window's size.)"""
    if torch.compiler.is_exporting():
        k = kernel if isinstance(kernel, (tuple, list)) else (kernel, kernel)
        return F.avg_pool2d(sq, kernel, stride, padding, count_include_pad=True) * (k[0] * k[1])
    return F.avg_pool2d(sq, kernel, stride, padding, divisor_override=1)


class _CosScale2(torch.autograd.Function):
    """The training path of a B=2 convolution's scale, ``y = out * |out| / ||x_patch||``, as
    one autograd node: the patch norm ``sqrt(S + eps)`` with ``S`` the windowed sum of the
    channels' squares (``avg_pool2d`` with ``divisor_override=1``). Autograd's composition of
    the same (square, sum, window sum, sqrt, abs, division, product) records about twice as
    many passes over the activations; the values are the same.

    Backward, with ``r = 1 / sqrt(S + eps)``: ``d out = 2 g |out| r``; ``d r = sum_c g out
    |out|``; ``d S = -r^3 d r / 2``; ``d x = 2 x W^T(d S)``, ``W^T`` the transposed window sum.
    """

    @staticmethod
    def forward(ctx, out: Tensor, x: Tensor, kernel, stride, padding):
        sq = x.square().sum(1, keepdim=True)
        s = _pooled_window_sums(sq, kernel, stride, padding)
        inv = s.add_(_EPS_NORM).rsqrt_()
        ctx.save_for_backward(out, x, inv)
        ctx.window = (kernel, stride, padding)
        return out * out.abs().mul_(inv)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        out, x, inv = ctx.saved_tensors
        kernel, stride, padding = ctx.window
        gt = g * out.abs()
        d_out = gt * (2 * inv) if ctx.needs_input_grad[0] else None
        d_x = None
        if ctx.needs_input_grad[1]:
            d_s = gt.mul_(out).sum(1, keepdim=True).mul_(inv.pow(3)).mul_(-0.5)
            d_sq = torch.ops.aten.avg_pool2d_backward(
                d_s, x[:, :1], kernel, stride, padding, False, True, 1
            )
            d_x = x * d_sq.mul_(2)
        return d_out, d_x, None, None, None


def _batch_chunks(t: Tensor) -> list[slice]:
    """Batch slices of ``t`` of at most about ``_CHUNK_BYTES`` each (one slice when ``t`` is
    small or has no batch dimension)."""
    n = t.shape[0] if t.dim() > 1 else 0
    step = max(1, _CHUNK_BYTES // max(t.numel() // n * t.element_size(), 1)) if n else 1
    if n <= step:
        return [slice(None)]
    return [slice(i, i + step) for i in range(0, n, step)]


def _cos_scale_(s: Tensor, inv_norm: Tensor, b: float) -> Tensor:
    """In place on ``s = |out|``: ``|cos| = s * inv_norm``, raised to ``B - 1``."""
    s.mul_(inv_norm)
    if b != 2:
        s.add_(_EPS_COS).pow_(b - 1)
    return s


@torch.no_grad()
def _scale_inplace(
    out: Tensor, inv_norm: Tensor, b: float, inv_wnorm: Tensor | None = None
) -> Tensor:
    """``out = (out * inv_wnorm) * |cos|^(B-1)`` in place, in batch chunks (no graph).

    ``inv_norm`` (1 / input norm) has ``out``'s batch size and broadcasts against it;
    ``inv_wnorm`` (1 / weight norm, per output unit) broadcasts against ``out``.
    """
    for part in _batch_chunks(out):
        chunk = out[part]
        if inv_wnorm is not None:
            chunk.mul_(inv_wnorm)
        chunk.mul_(_cos_scale_(chunk.abs(), inv_norm[part], b))
    return out


@torch.no_grad()
def _detached_scale(
    out: Tensor, inv_norm: Tensor, b: float, inv_wnorm: Tensor | None = None
) -> Tensor:
    """The factor ``s`` with ``out * s = (out * inv_wnorm) * |cos|^(B-1)``, as a new tensor
    outside the autograd graph (explanation mode)."""
    s = out.detach().abs()
    if inv_wnorm is None:
        return _cos_scale_(s, inv_norm, b)
    return _cos_scale_(s.mul_(inv_wnorm), inv_norm, b).mul_(inv_wnorm)


def _fold_weight_norm(module: nn.Module, path: str) -> bool:
    """Whether unit-norm weights are applied to the output (a per-unit factor inside the scaling
    pass) instead of normalising the weight: outside the plain path, when no gradient flows to
    the weight."""
    return (
        module.normalize_weights
        and module.max_out == 1
        and module.b != 1
        and path != _PLAIN
        and not (torch.is_grad_enabled() and module.weight.requires_grad)
    )


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
        self.register_buffer("norm_shift", None, persistent=False)
        self.register_buffer("norm_scale", None, persistent=False)

    def set_norm_input(self, shift: Tensor, scale: Tensor) -> None:
        """Take the patch norm of ``(x - shift) / scale`` (per input channel) instead of ``x``.

        The first layer of a conversion sees the encoding ``[x, 1 - x]`` with the input
        normalisation folded into its weight; with this set, its patch norm is that of the
        normalised encoding, as in the published B-cosification code. Only the norm changes
        (it is detached in explanation mode), so explanations stay exact and bias-free.
        """
        shift = torch.as_tensor(shift, dtype=self.weight.dtype).reshape(1, -1, 1, 1)
        scale = torch.as_tensor(scale, dtype=self.weight.dtype).reshape(1, -1, 1, 1)
        if shift.shape[1] != self.in_channels or scale.shape != shift.shape:
            raise ValueError(f"shift and scale need {self.in_channels} values each")
        self.register_buffer("norm_shift", shift, persistent=False)
        self.register_buffer("norm_scale", scale, persistent=False)

    def _norm_input(self, x: Tensor) -> Tensor:
        if self.norm_shift is None:
            return x
        return (x - self.norm_shift.to(x)) / self.norm_scale.to(x)

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

    def _window_is_pooling(self, padding) -> bool:
        """Whether the window sums with ``padding`` (zeros) are an average pooling that does not
        divide: no dilation, and padding at most half the kernel (as pooling requires)."""
        kh, kw = self.kernel_size
        return (
            self.dilation == (1, 1)
            and not isinstance(padding, str)
            and padding[0] <= kh // 2
            and padding[1] <= kw // 2
        )

    def _window_sums(self, sq: Tensor) -> Tensor:
        """Sum of ``sq`` (N x G x H x W) over every kernel window, N x G x H' x W'."""
        padding = self.padding
        if self.padding_mode != "zeros":
            sq = F.pad(sq, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        kh, kw = self.kernel_size
        if self._window_is_pooling(padding):
            return _pooled_window_sums(sq, self.kernel_size, self.stride, padding)
        ones = sq.new_ones(sq.shape[1], 1, kh, kw)
        return F.conv2d(sq, ones, None, self.stride, padding, self.dilation, sq.shape[1])

    def patch_norms(self, x: Tensor) -> Tensor:
        """L2 norm of every input patch (per group), shape N x G x H' x W'.

        Example:
            >>> BcosConv2d(6, 8, 3, padding=1).patch_norms(torch.ones(1, 6, 4, 4))[0, 0, 1, 1]
            tensor(7.3485)
        """
        sq = x * x
        g = self.groups
        sq = sq.sum(1, keepdim=True) if g == 1 else sq.unflatten(1, (g, -1)).sum(2)
        return (self._window_sums(sq) + _EPS_NORM).sqrt()

    @torch.no_grad()
    def _inv_patch_norms(self, x: Tensor) -> Tensor:
        """``1 / patch_norms(x)`` outside the autograd graph, with small temporaries.

        A 1x1 kernel without padding needs no window sum (a stride just subsamples the input);
        a channels-last input is reduced over its contiguous channel dimension in one pass;
        otherwise the squares are summed in batch chunks.
        """
        x = x.detach()
        g = self.groups
        pointwise = self.kernel_size == (1, 1) and self.padding in ((0, 0), "valid")
        if pointwise and self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        if g == 1 and x.is_contiguous(memory_format=torch.channels_last):
            sums = torch.linalg.vector_norm(x, dim=1, keepdim=True).square_()
        else:
            parts = _batch_chunks(x)
            sums = None if len(parts) == 1 else x.new_empty((x.shape[0], g, *x.shape[2:]))
            for part in parts:
                xc = x[part]
                sq = xc * xc
                sq = sq.sum(1, keepdim=True) if g == 1 else sq.unflatten(1, (g, -1)).sum(2)
                if sums is None:
                    sums = sq
                else:
                    sums[part] = sq
        if not pointwise:
            sums = self._window_sums(sums)
        return sums.add_(_EPS_NORM).rsqrt_()

    def forward(self, x: Tensor) -> Tensor:
        path = _path(self, x, self.weight)
        # unit-norm weights without a weight gradient: convolve with the raw weight and fold
        # 1/||w|| into the scaling pass (no normalised copy of the weight per call)
        fold = _fold_weight_norm(self, path)
        out = self._conv_forward(x, self.weight if fold else self._weight(), None)
        if self.max_out > 1:
            out = out.unflatten(1, (-1, self.max_out)).amax(2)
        if self.b != 1:
            out = _scaled(self, x, out, path, fold)
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias.view(1, -1, 1, 1))
        return out

    def _fused_scale(self, x: Tensor, groups: int) -> bool:
        """Whether the plain (training) path can use :class:`_CosScale2`: B=2 outside
        explanation mode, one group, zero padding whose window sum is an average pooling."""
        return (
            self.b == 2
            and groups == 1
            and not self.explanation_mode
            and self.padding_mode == "zeros"
            and self._window_is_pooling(self.padding)
            and not isinstance(x, torch.fx.Proxy)
            and not torch.jit.is_scripting()
        )

    def _bcos_scale(self, x: Tensor, out: Tensor, path: str, fold: bool) -> Tensor:
        g = self.groups
        grouped = g > 1 and out.shape[1] != g
        x = self._norm_input(x)
        if path == _PLAIN:
            if self._fused_scale(x, g):
                return _CosScale2.apply(out, x, self.kernel_size, self.stride, self.padding)
            norm = self.patch_norms(x)
            if not grouped:
                return out * _dynamic_scale(out, norm, self.b, self.explanation_mode)
            out = out.unflatten(1, (g, -1))
            scale = _dynamic_scale(out, norm.unsqueeze(2), self.b, self.explanation_mode)
            return (out * scale).flatten(1, 2)
        inv = self._inv_patch_norms(x)
        view, inv = (out.unflatten(1, (g, -1)), inv.unsqueeze(2)) if grouped else (out, inv)
        inv_w = None
        if fold:
            with torch.no_grad():
                wn = torch.linalg.vector_norm(self.weight, dim=(1, 2, 3))
            inv_w = wn.reciprocal_().view((g, -1, 1, 1) if grouped else (-1, 1, 1))
        if path == _INFERENCE:
            _scale_inplace(view, inv, self.b, inv_w)
            return out
        # explanation mode with a graph: the scale is a constant; the fresh convolution output
        # is multiplied in place (its backward does not need it; max-out's does)
        scale = _detached_scale(view, inv, self.b, inv_w)
        if not grouped and self.max_out == 1:
            return out.mul_(scale)
        return (view * scale).flatten(1, 2) if grouped else out * scale

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
        path = _path(self, x, self.weight)
        fold = _fold_weight_norm(self, path)
        w = self.weight
        if self.normalize_weights and not fold:
            w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
        out = F.linear(x, w)
        if self.max_out > 1:
            out = out.unflatten(-1, (-1, self.max_out)).amax(-1)
        if self.b != 1:
            out = _scaled(self, x, out, path, fold)
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias)
        return out

    def _bcos_scale(self, x: Tensor, out: Tensor, path: str, fold: bool) -> Tensor:
        if path == _PLAIN:
            norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) + 1e-12
            return out * _dynamic_scale(out, norm, self.b, self.explanation_mode)
        with torch.no_grad():
            inv = (torch.linalg.vector_norm(x.detach(), dim=-1, keepdim=True) + 1e-12).reciprocal_()
            inv_w = torch.linalg.vector_norm(self.weight, dim=1).reciprocal_() if fold else None
        if path == _INFERENCE:
            return _scale_inplace(out, inv, self.b, inv_w)
        scale = _detached_scale(out, inv, self.b, inv_w)
        return out.mul_(scale) if self.max_out == 1 else out * scale

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", b={self.b:g}"
        if self.max_out > 1:
            s += f", max_out={self.max_out}"
        if self.normalize_weights:
            s += ", normalize_weights=True"
        return s
