"""Rules for layers defined by timm; loaded when timm is imported and a model is converted
(:func:`bcosify.fx.registry.load_library_rules`). timm's activation classes are spellings of
torch's ops in the op table; its composite layers are ops of their own."""

from __future__ import annotations

import timm.layers as tl
import torch
from timm.layers import activations as tla
from timm.layers.pool2d_same import MaxPool2dSame as _MaxPool2dSame
from torch import Tensor, nn

from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.fx import ops, registry
from bcosify.fx.registry import KEEP, add_op, extend_op, register_module_rule
from bcosify.fx.rules_libs import _convert_submodule, _layernorm2d
from bcosify.fx.rules_torch import _pass

registry.begin_builtin_rules(__name__)

_K = ops.Kind
register_module_rule(tl.LayerNorm2d, _layernorm2d)
extend_op("dropout", modules=[tl.DropPath])
# timm subclasses whose forward() is their base's function (a fast path, fp32 compute, the
# first group): the base's rule holds
registry.declare_safe_subclass(
    *[
        getattr(tl, n)
        for n in ("Linear", "GroupNorm", "GroupNorm1", "LayerNorm", "LayerNormFp32")
        if hasattr(tl, n)
    ]
)
try:
    from timm.layers.split_batchnorm import SplitBatchNorm2d  # eval: its main BatchNorm

    registry.declare_safe_subclass(SplitBatchNorm2d)
except ImportError:  # pragma: no cover - older timm
    pass
# LayerNorm over the channels of NCHW maps (permute, layer_norm, permute back): LayerNorm2d
for _n in ("LayerNorm2dFp32", "LayerNormExp2d"):
    if hasattr(tl.norm, _n):
        register_module_rule(getattr(tl.norm, _n), _layernorm2d)
# 'same' zero padding, then an average: linear, exact as it is
try:
    from timm.layers.pool2d_same import AvgPool2dSame as _AvgPool2dSame

    extend_op("avg_pool", modules=[_AvgPool2dSame])
except ImportError:  # pragma: no cover - older timm
    pass


_ACT_DECLINED = "its activation has no conversion rule or is not supported on its own"


@register_module_rule(tl.BatchNormAct2d)
def _bn_act(module: tl.BatchNormAct2d, config: BcosConfig):
    act = _convert_submodule(module.act, config)
    if act is None:
        return None
    return bnn.UncenteredBatchNormAct2d.from_batchnorm_act(
        module, act, module.drop, keep_bias=config.keep_bias
    )


_bn_act.declined = _ACT_DECLINED


def _norm_act_rule(act_cls: type, build):
    """timm's ``*NormAct`` layers subclass the plain norm but add dropout and an activation in
    their ``forward``: the plain norm's rule alone would drop the activation."""

    def rule(module: nn.Module, config: BcosConfig) -> nn.Module | None:
        act = _convert_submodule(module.act, config)
        if act is None:
            return None
        new = build(module, config)
        new.__class__ = act_cls
        new.drop = module.drop
        new.act = act
        return new

    rule.declined = _ACT_DECLINED
    return rule


def _rule_of(cls: type):
    def build(module: nn.Module, config: BcosConfig) -> nn.Module:
        return registry.get_module_rule(cls)(module, config)

    return build


def _plain_layernorm(module: nn.LayerNorm, config: BcosConfig):
    return bnn.DetachableLayerNorm.from_layernorm(module, keep_bias=config.keep_bias)


def _plain_groupnorm(module: nn.GroupNorm, config: BcosConfig):
    return bnn.DetachableGroupNorm.from_groupnorm(module, keep_bias=config.keep_bias)


_NORM_ACT = [
    ("LayerNormAct", bnn.DetachableLayerNormAct, _plain_layernorm),
    ("LayerNormActFp32", bnn.DetachableLayerNormAct, _plain_layernorm),
    ("LayerNormAct2d", bnn.DetachableLayerNormAct2d, _layernorm2d),
    ("LayerNormAct2dFp32", bnn.DetachableLayerNormAct2d, _layernorm2d),
    ("GroupNormAct", bnn.DetachableGroupNormAct, _plain_groupnorm),
    ("GroupNorm1Act", bnn.DetachableGroupNormAct, _plain_groupnorm),
    ("RmsNormAct", bnn.DetachableRmsNormAct, _rule_of(getattr(tl, "RmsNorm", None))),
    ("RmsNormActFp32", bnn.DetachableRmsNormAct, _rule_of(getattr(tl, "RmsNorm", None))),
    ("RmsNormAct2d", bnn.DetachableRmsNormAct, _rule_of(getattr(tl, "RmsNorm2d", None))),
    ("RmsNormAct2dFp32", bnn.DetachableRmsNormAct, _rule_of(getattr(tl, "RmsNorm2d", None))),
]
for _name, _cls, _build in _NORM_ACT:
    if hasattr(tl, _name):
        register_module_rule(getattr(tl, _name), _norm_act_rule(_cls, _build))


class BcosConv2dSame(bnn.BcosConv2d):
    """B-cos version of timm's ``Conv2dSame`` (TensorFlow 'SAME' padding computed per input)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(tl.pad_same(x, self.kernel_size, self.stride, self.dilation))


@register_module_rule(tl.Conv2dSame)
def _conv_same(module: tl.Conv2dSame, config: BcosConfig):
    return BcosConv2dSame.from_conv2d(
        module, b=config.b, keep_bias=config.keep_bias, normalize_weights=config.normalize_weights
    )


# timm's activation modules: spellings of torch's ops (GELUTanh is nn.GELU(approximate="tanh"))
extend_op("gelu", modules=[tla.GELU])
extend_op("silu", modules=[tla.Swish])
extend_op("hardswish", modules=[tla.HardSwish])
extend_op("mish", modules=[tla.Mish])
extend_op("prelu", modules=[tla.PReLU])
extend_op("sigmoid", modules=[tla.Sigmoid])
extend_op("hardsigmoid", modules=[tla.HardSigmoid])
extend_op("tanh", modules=[tla.Tanh])
add_op(
    ops.Op("gelu_tanh", _K.GATED_ACTIVATION, (tla.GELUTanh,), library="timm"),
    lambda module, config: bnn.GatedActivation("gelu_tanh"),
)
add_op(
    ops.Op("quick_gelu", _K.GATED_ACTIVATION, (tla.QuickGELU,), library="timm"),
    lambda module, config: bnn.GatedActivation("quick_gelu"),
)

# Window/grid partition inverses and block reshapes: permutations of the tokens, linear.
_TOKEN_PERMUTATIONS = []
for _module_name, _fn_name in (
    ("timm.models.swin_transformer", "window_reverse"),
    ("timm.models.swin_transformer_v2", "window_reverse"),
    ("timm.models.swin_transformer_v2_cr", "window_reverse"),
    ("timm.models.davit", "window_reverse"),
    ("timm.models.gcvit", "window_reverse"),
    ("timm.models.maxxvit", "window_reverse"),
    ("timm.models.maxxvit", "window_reverse_nchw"),
    ("timm.models.maxxvit", "grid_reverse"),
    ("timm.models.maxxvit", "grid_reverse_nchw"),
    ("timm.models.nest", "deblockify"),
    ("timm.models.mvitv2", "reshape_pre_pool"),
    ("timm.models.mvitv2", "reshape_post_pool"),
):
    try:
        _mod = __import__(_module_name, fromlist=[_fn_name])
        _TOKEN_PERMUTATIONS.append(getattr(_mod, _fn_name))
    except (ImportError, AttributeError):  # pragma: no cover - depends on the timm version
        pass
try:  # crossvit rescales the image for its second branch: an interpolation, linear
    from timm.models.crossvit import scale_image as _scale_image

    _TOKEN_PERMUTATIONS.append(_scale_image)
except ImportError:  # pragma: no cover
    pass
add_op(
    ops.Op(
        "timm_token_layout",
        _K.STRUCTURAL,
        functions=tuple(_TOKEN_PERMUTATIONS),
        note="window/grid partition inverses, block reshapes, image rescaling: linear",
        library="timm",
    ),
    function_rule=_pass,
)


@register_module_rule(_MaxPool2dSame)
def _max_pool_same(module: _MaxPool2dSame, config: BcosConfig):
    if config.maxpool == "keep":
        return KEEP
    return tl.AvgPool2dSame(module.kernel_size, module.stride, ceil_mode=module.ceil_mode)


class BcosStdConv2d(BcosConv2dSame):
    """B-cos version of timm's weight-standardised convolutions (``StdConv2d``,
    ``ScaledStdConv2d`` and their 'SAME'-padding variants): the filter is standardised (and, for
    the scaled variant, multiplied by ``gain * scale``) before the B-cos unit uses it. The
    standardisation depends on the weight only, so the unit stays dynamic linear in its input."""

    same_pad: bool = False
    standardize: bool = True
    std_eps: float = 1e-6
    scale: float | None = None

    @classmethod
    def from_conv2d(cls, conv, **kwargs):
        new = super().from_conv2d(conv, **kwargs)
        new.same_pad = bool(getattr(conv, "same_pad", isinstance(conv, tl.StdConv2dSame)))
        new.standardize = bool(getattr(conv, "standardize", True))
        new.std_eps = float(getattr(conv, "eps", getattr(conv, "std_eps", 1e-6)))
        new.scale = getattr(conv, "scale", None)
        gain = getattr(conv, "gain", None)
        if gain is not None:
            new.gain = gain
        return new

    def _weight(self) -> Tensor:
        w = self.weight
        if self.standardize:
            flat = w.reshape(w.shape[0], -1)
            mean = flat.mean(1, keepdim=True)
            var = flat.var(1, unbiased=False, keepdim=True)
            flat = (flat - mean) / torch.sqrt(var + self.std_eps)
            if getattr(self, "gain", None) is not None:
                flat = flat * (self.gain.reshape(-1, 1) * self.scale)
            w = flat.reshape_as(w)
        if self.normalize_weights:
            w = w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)
        return w

    def forward(self, x: Tensor) -> Tensor:
        if self.same_pad:
            return super().forward(x)
        return bnn.BcosConv2d.forward(self, x)


def _std_conv(module, config: BcosConfig):
    return BcosStdConv2d.from_conv2d(
        module, b=config.b, keep_bias=config.keep_bias, normalize_weights=config.normalize_weights
    )


for _t in (tl.StdConv2d, tl.StdConv2dSame, tl.ScaledStdConv2d, tl.ScaledStdConv2dSame):
    register_module_rule(_t, _std_conv)

# timm's RMS norms (module, fp32 and 2d variants): detachable rms, no centering
for _name, _dim in (
    ("RmsNorm", None),
    ("RmsNormFp32", None),
    ("RmsNorm2d", 1),
    ("RmsNorm2dFp32", 1),
):
    _cls = getattr(tl, _name, None)
    if _cls is not None:
        register_module_rule(
            _cls, lambda m, c, _d=_dim: bnn.DetachableRmsNorm.from_rmsnorm(m, channel_dim=_d)
        )

registry.end_builtin_rules(__name__)
