"""The B-cos v2 architectures that are not conversions of a torchvision model.

VGG-11-BNU has a convolutional classifier (a 7x7 B-cos convolution over the last feature map,
then two 1x1 ones, before the global pooling) where torchvision's VGG has linear layers; the
B-cos ConvNeXts have no GELU and position or batch norms where torchvision's have LayerNorm; the
B-cos SimpleViTs and ViT-Cs (Beyer et al. 2022, "Better plain ViT baselines for ImageNet-1k";
Xiao et al. 2021, "Early convolutions help transformers see better") have no torchvision
counterpart. bcosify builds these B-cos models directly from its own B-cos units, norms and
attention (written here from the architectures' descriptions), traces them with torch.fx and
gives them a converted model's metadata, so that they explain, save, load and fine-tune like
any converted model. Their state-dict keys are those of the published files, up to the
``.linear.weight`` -> ``.weight`` renaming of :func:`bcosify.sources._zoo.to_bcosify_keys`.

The ViTs B-cosified by B-cosification (Arya et al., NeurIPS 2024) are built here too
(:class:`BcosifiedSimpleViT`): their first layer takes the normalised six-channel encoding, which
no conversion of the 3-channel standard ViT reproduces exactly (its patch norm would lack the
factor sqrt(2) of the doubled channels), so the published first layer is kept as it was trained.

The 8 standard (non-B-cos) SimpleViTs and ViT-Cs of B-cos v2 are plain PyTorch source models
(:class:`SimpleViT`), which bcosify converts like any other. The B-cos ViTs compute their
position embedding for the grid they are given (any image size divisible by the patch size, as
in B-cos v2); the standard ones keep it for their image size (224) as a buffer, which bcosify's
conversion reports as a constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from bcosify import nn as bnn
from bcosify.nn.mode import add_constant

# ---------------------------------------------------------------------------- building blocks


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1):
    return bnn.BcosConv2d(
        cin, cout, k, stride, padding, groups=groups, b=2.0, normalize_weights=True
    )


def _linear(cin: int, cout: int) -> bnn.BcosLinear:
    return bnn.BcosLinear(cin, cout, b=2.0, normalize_weights=True)


def _raw_conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1):
    """B-cosification's convolution: B=2 on the raw (not unit-norm) weight."""
    return bnn.BcosConv2d(cin, cout, k, stride, padding, groups=groups, b=2.0)


def _raw_linear(cin: int, cout: int) -> bnn.BcosLinear:
    return bnn.BcosLinear(cin, cout, b=2.0)


def _gelu() -> nn.Module:
    return bnn.GatedActivation("gelu")


def _no_bias(norm: nn.Module) -> nn.Module:
    norm.bias = None
    return norm


def _batch_norm(c: int) -> nn.Module:
    return _no_bias(bnn.UncenteredBatchNorm2d(c))


def _position_norm(c: int) -> nn.Module:
    """A LayerNorm over the channels of each position (eps 1e-6, no bias)."""
    return _no_bias(bnn.DetachableLayerNorm2d(c, eps=1e-6))


def _layer_norm(d: int) -> nn.Module:
    return _no_bias(bnn.DetachableLayerNorm(d))


def _group_layer_norm(c: int) -> nn.Module:
    """A LayerNorm over channels and positions (a GroupNorm with one group, no bias)."""
    return _no_bias(bnn.DetachableGroupNorm(1, c))


class _BcosEnds:
    """The ends every B-cos model of bcosify has: the input encoding ``[x, 1 - x]`` (as
    ``bcosify_input_encoding``) and the logit bias ``-log(C - 1)`` (``bcosify_logit_layer``)."""

    def _add_ends(self, num_classes: int) -> None:
        from bcosify.config import BcosConfig

        self.bcosify_input_encoding = bnn.InputEncoding(3)
        bias = BcosConfig().resolved_logit_bias(num_classes)  # as a conversion adds it
        self.bcosify_logit_layer = bnn.LogitLayer(0.0 if bias is None else bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.bcosify_logit_layer(self._logits(self.bcosify_input_encoding(x)))


class _PooledHead(_BcosEnds, nn.Module):
    """The B-cos CNNs end in a per-position classifier, global average pooling, the logit
    bias."""

    def _logits(self, x: Tensor) -> Tensor:
        x = self.classifier(self.features(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class BcosVGG(_PooledHead):
    """B-cos VGG with batch norms (the ``_bnu`` models): configuration ``cfg`` of the VGG paper
    (``"M"``: 2x2 average pooling), a 7x7 / 1x1 / 1x1 convolutional classifier."""

    def __init__(self, cfg: list[int | str], num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        c = 6
        for v in cfg:
            if v == "M":
                layers.append(nn.AvgPool2d(2, 2))
            else:
                layers += [_conv(c, int(v), 3, padding=1), _batch_norm(int(v))]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            _conv(c, 4096, 7, padding=3), _conv(4096, 4096, 1), _conv(4096, num_classes, 1)
        )
        self._add_ends(num_classes)


class BcosConvNeXtBlock(nn.Module):
    """Depthwise 7x7, norm, 1x1 expansion by 4, 1x1 projection (no activation), scaled by a
    learnt per-channel factor and added to the input."""

    def __init__(self, dim: int, norm):
        super().__init__()
        self.block = nn.Sequential(
            _conv(dim, dim, 7, padding=3, groups=dim),
            norm(dim),
            _conv(dim, 4 * dim, 1),
            _conv(4 * dim, dim, 1),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_scale * self.block(x) + x


class BcosConvNeXt(_PooledHead):
    """B-cos ConvNeXt: a 4x4 stride-4 stem, four stages separated by a norm and a 2x2 stride-2
    convolution, a norm and a 1x1 classifier before the pooling."""

    def __init__(self, depths: list[int], dims: list[int], norm, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_conv(6, dims[0], 4, stride=4), norm(dims[0])]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layers.append(nn.Sequential(*(BcosConvNeXtBlock(dim, norm) for _ in range(depth))))
            if i + 1 < len(dims):
                layers.append(nn.Sequential(norm(dim), _conv(dim, dims[i + 1], 2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(norm(dims[-1]), _conv(dims[-1], num_classes, 1))
        self._add_ends(num_classes)


# ---------------------------------------------------------------------------- ViTs


def sincos_position_embedding(h: int, w: int, dim: int, temperature: float = 10_000.0) -> Tensor:
    """The fixed 2-D sine-cosine position embedding of the plain ViT (h*w x dim, float32):
    ``[sin(x w_i), cos(x w_i), sin(y w_i), cos(y w_i)]`` with ``w_i = T^(-i / (dim/4 - 1))``,
    x the column and y the row of a patch."""
    if dim % 4:
        raise ValueError(f"the embedding width must be a multiple of 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / (dim // 4 - 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)


class SinCosPosition(nn.Module):
    """Flattens the N x h x w x D patch grid to tokens and adds the sine-cosine embedding of
    that grid (computed for the grid it is given, so any image size divisible by the patch
    size works), reported as the constant ``position_embedding`` of explanations."""

    constant_label = "position_embedding"

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        pe = sincos_position_embedding(x.shape[1], x.shape[2], self.dim).to(x)
        return add_constant(self, "", x.flatten(1, 2), pe)


class _FixedPosition(nn.Module):
    """The standard ViT's position embedding, for the grid of its image size (a buffer that
    bcosify's conversion reports as a constant)."""

    def __init__(self, grid: int, dim: int):
        super().__init__()
        embedding = sincos_position_embedding(grid, grid, dim)
        self.register_buffer("embedding", embedding, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1, 2) + self.embedding


def _patches(x: Tensor, p: int) -> Tensor:
    """N x C x H x W -> N x H/p x W/p x (p p C), the patch pixels in row-major order."""
    x = x.unflatten(2, (-1, p)).unflatten(4, (-1, p))  # N C h p w p
    return x.permute(0, 2, 4, 3, 5, 1).flatten(3)


def _split_heads(t: Tensor, heads: int) -> Tensor:
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)  # N L (h d) -> N h L d


@dataclass(frozen=True)
class ViTConfig:
    """One SimpleViT: patch size, width, depth, heads, MLP width and (ViT-C) conv stem."""

    patch: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    conv_stem: tuple[int, ...] = ()
    image_size: int = 224


VIT_CONFIGS = {
    "simple_vit_ti_patch16_224": ViTConfig(16, 192, 12, 3, 768),
    "simple_vit_s_patch16_224": ViTConfig(16, 384, 12, 6, 1536),
    "simple_vit_b_patch16_224": ViTConfig(16, 768, 12, 12, 3072),
    "simple_vit_l_patch16_224": ViTConfig(16, 1024, 14, 16, 4096),
    "vitc_ti_patch1_14": ViTConfig(1, 192, 11, 3, 768, (24, 48, 96, 192)),
    "vitc_s_patch1_14": ViTConfig(1, 384, 11, 6, 1536, (48, 96, 192, 384)),
    "vitc_b_patch1_14": ViTConfig(1, 768, 11, 12, 3072, (64, 128, 128, 256, 256, 512)),
    "vitc_l_patch1_14": ViTConfig(1, 1024, 13, 16, 4096, (64, 128, 128, 256, 256, 512)),
}
"""The published SimpleViT and ViT-C sizes (ViT-C: one block fewer, for the conv stem)."""


class _Stem(nn.Sequential):
    """Conv stem of the ViT-Cs: 3x3 convolutions (stride 2 where the width grows), each
    followed by a norm and an activation."""

    def __init__(self, channels: int, widths: tuple[int, ...], conv, norm, act):
        layers: list[nn.Module] = []
        for c in widths:
            layers += [conv(channels, c, 3, 2 if c > channels else 1, 1), norm(c), act()]
            channels = c
        super().__init__(*layers)


class _PatchEmbedding(nn.Module):
    def __init__(self, cfg: ViTConfig, channels: int, linear, conv, norm2d, act):
        super().__init__()
        if cfg.conv_stem:
            self.conv_stem = _Stem(channels, cfg.conv_stem, conv, norm2d, act)
            channels = cfg.conv_stem[-1]
        self.patch = cfg.patch
        self.linear = linear(channels * cfg.patch**2, cfg.dim)
        strides = [m.stride[0] for m in self.modules() if isinstance(m, nn.Conv2d)]
        self.grid = cfg.image_size // (cfg.patch * math.prod(strides))

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv_stem"):
            x = self.conv_stem(x)
        return self.linear(_patches(x, self.patch))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, norm, out_linear, attend: nn.Module):
        super().__init__()
        self.heads = heads
        self.norm = norm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)  # plain in B-cos v2 too
        self.attend = attend
        self.to_out = out_linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        out = self.attend(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, norm, linear, act):
        super().__init__()
        self.net = nn.Sequential()
        self.net.add_module("norm", norm(dim))
        self.net.add_module("linear1", linear(dim, hidden))
        self.net.add_module("act", act())
        self.net.add_module("linear2", linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Encoder(nn.Module):
    def __init__(self, attn: nn.Module, ff: nn.Module):
        super().__init__()
        self.attn = attn
        self.ff = ff

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(x) + x
        return self.ff(x) + x


class _ViT(nn.Module):
    """The plain ViT of Beyer et al.: patch embedding, fixed sine-cosine position embedding,
    pre-norm encoder blocks, mean over tokens, norm, linear classifier."""

    def __init__(
        self, cfg: ViTConfig, num_classes: int, *, channels, linear, out_linear, conv, norm,
        norm2d, act, attend, position
    ):  # fmt: skip
        super().__init__()
        self.to_patch_embedding = _PatchEmbedding(cfg, channels, linear, conv, norm2d, act)
        self.position = position(self.to_patch_embedding.grid, cfg.dim)
        self.transformer = nn.Sequential()
        for i in range(cfg.depth):
            attn = _Attention(cfg.dim, cfg.heads, norm, out_linear, attend())
            ff = _FeedForward(cfg.dim, cfg.mlp_dim, norm, linear, act)
            self.transformer.add_module(f"encoder_{i}", _Encoder(attn, ff))
        self.linear_head = nn.Sequential()
        self.linear_head.add_module("norm", norm(cfg.dim))
        self.linear_head.add_module("linear", linear(cfg.dim, num_classes))

    def _logits(self, x: Tensor) -> Tensor:
        x = self.transformer(self.position(self.to_patch_embedding(x)))
        return self.linear_head(x.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self._logits(x)


def _bcos_vit_layers(linear, conv, act) -> dict:
    """The layers of a B-cos ViT (B-cos v2's or a B-cosified one), given its B-cos linear
    layers, convolutions and activation: 6 input channels, LayerNorms (GroupNorm(1) in the
    stem) without bias, detachable attention, the position embedding of the input's grid."""
    return dict(
        channels=6,
        linear=linear,
        out_linear=linear,
        conv=conv,
        norm=_layer_norm,
        norm2d=_group_layer_norm,
        act=act,
        attend=bnn.ScaledDotProductAttention,
        position=lambda grid, dim: SinCosPosition(dim),
    )


class BcosSimpleViT(_BcosEnds, _ViT):
    """A B-cos SimpleViT or ViT-C: B-cos linear layers and convolutions on ``[x, 1 - x]``, no
    activation, LayerNorms without bias, q/k/v projections kept linear and the attention matrix
    detached in explanation mode; the position embedding is a reported constant."""

    def __init__(self, cfg: ViTConfig, num_classes: int = 1000):
        super().__init__(cfg, num_classes, **_bcos_vit_layers(_linear, _conv, nn.Identity))
        self._add_ends(num_classes)


class SignedNormalize(nn.Module):
    """``[x, 1 - x]`` -> ``[h, -h]`` with ``h = (x - mean) / std``: B-cosification's input, the
    encoding normalised channel-wise by ``[mean, 1 - mean]`` and ``[std, std]``, computed
    without a bias (``h = x (1 - mean) / std - (1 - x) mean / std``), so that explanations of
    the encoding stay exact. The constants are computed in float64 and rounded once."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        self.register_buffer("a", ((1 - mean_t) / std_t).float(), persistent=False)
        self.register_buffer("c", (-mean_t / std_t).float(), persistent=False)

    def forward(self, x6: Tensor) -> Tensor:
        x, inv = x6.chunk(2, dim=1)
        h = x * self.a + inv * self.c
        return torch.cat([h, -h], dim=1)


class BcosifiedSimpleViT(_BcosEnds, _ViT):
    """A standard SimpleViT or ViT-C B-cosified as B-cosification publishes them (its
    ``bcosifyv2_<name>_0.001[_lrWarmup]_gapReorder`` experiments): B-cos units (B=2) with raw
    weights and no biases, the q/k/v projections kept linear, GELU kept as a gate detached in
    explanation mode, LayerNorms (and the stem's GroupNorms) without bias, the classifier (norm
    and B-cos linear) applied to every token before the mean over tokens, a logit bias of
    ``-log(C - 1)``. Its first layer (the patch embedding, or the stem's first convolution)
    takes the six channels ``[h, -h]`` of :class:`SignedNormalize`, as trained."""

    def __init__(
        self,
        cfg: ViTConfig,
        num_classes: int = 1000,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
    ):
        super().__init__(cfg, num_classes, **_bcos_vit_layers(_raw_linear, _raw_conv, _gelu))
        self.normalize = SignedNormalize(mean, std)
        self._add_ends(num_classes)

    def _logits(self, x: Tensor) -> Tensor:
        x = self.transformer(self.position(self.to_patch_embedding(self.normalize(x))))
        return self.linear_head(x).mean(dim=1)  # the classifier before the pooling


class _SDPA(nn.Module):
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class SimpleViT(_ViT):
    """A standard (non-B-cos) SimpleViT or ViT-C, the source architecture of the B-cos ones:
    linear layers with biases (the q/k/v and output projections without), LayerNorms, GELU,
    a conv stem with GroupNorm(1) (ViT-C). Takes ImageNet-normalised images."""

    def __init__(self, cfg: ViTConfig, num_classes: int = 1000):
        super().__init__(
            cfg,
            num_classes,
            channels=3,
            linear=nn.Linear,
            out_linear=lambda i, o: nn.Linear(i, o, bias=False),
            conv=nn.Conv2d,
            norm=nn.LayerNorm,
            norm2d=lambda c: nn.GroupNorm(1, c),
            act=nn.GELU,
            attend=_SDPA,
            position=_FixedPosition,
        )


# ---------------------------------------------------------------------------- building


_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
_CONVNEXT = {
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
}


def bcos_architecture(hub_name: str, num_classes: int, bcosified: bool = False) -> nn.Module:
    """The untraced B-cos module of a B-cos v2 entry (its torch.hub name) that is not a
    torchvision conversion; ``bcosified``: the B-cosification ViT of that name."""
    if bcosified:
        return BcosifiedSimpleViT(VIT_CONFIGS[hub_name], num_classes)
    if hub_name == "vgg11_bnu":
        return BcosVGG(_VGG11, num_classes)
    if hub_name.startswith("convnext_"):
        size = hub_name.split("_")[1]
        norm = _batch_norm if hub_name.endswith("_bnu") else _position_norm
        depths, dims = _CONVNEXT[size]
        return BcosConvNeXt(depths, dims, norm, num_classes)
    return BcosSimpleViT(VIT_CONFIGS[hub_name], num_classes)


class _NativeTracer(fx.Tracer):
    """Leaves: torch's own layers, bcosify's B-cos units, norms and attention, and the position
    embedding (computed from the size of its input)."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if type(m).__module__.startswith("bcosify.nn") or isinstance(m, SinCosPosition):
            return True
        return super().is_leaf_module(m, qualified_name)


def trace_native(module: nn.Module) -> fx.GraphModule:
    """A B-cos module of this file as a traced graph module (its keys unchanged)."""
    from bcosify.metadata import BcosGraphModule

    graph = _NativeTracer().trace(module)
    return BcosGraphModule(module, graph, type(module).__name__)
