"""Module rules for layers defined by torchvision and timm."""

from __future__ import annotations

from torch import Tensor, nn

from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.fx import rules
from bcosify.fx.rules import KEEP, REMOVE, register_module_rule


def _convert_submodule(module: nn.Module, config: BcosConfig) -> nn.Module:
    """Apply the module rules to a child (e.g. the activation inside a norm-act layer)."""
    rule = rules.get_module_rule(type(module))
    if rule is None:
        return module
    result = rule(module, config)
    if result is REMOVE:
        return nn.Identity()
    return module if result is KEEP else result


def _layernorm2d(module: nn.LayerNorm, config: BcosConfig):
    return bnn.DetachableLayerNorm2d.from_layernorm(module, keep_bias=config.keep_bias)


# ---------------------------------------------------------------------------- torchvision
from torchvision.models.convnext import LayerNorm2d as _TvLayerNorm2d  # noqa: E402
from torchvision.ops import StochasticDepth  # noqa: E402

register_module_rule(_TvLayerNorm2d, _layernorm2d)
register_module_rule(StochasticDepth, rules._keep)

# ----------------------------------------------------------------------------------- timm
import timm.layers as tl  # noqa: E402
from timm.layers import activations as tla  # noqa: E402

register_module_rule(tl.LayerNorm2d, _layernorm2d)
register_module_rule(tl.DropPath, rules._keep)


@register_module_rule(tl.BatchNormAct2d)
def _bn_act(module: tl.BatchNormAct2d, config: BcosConfig):
    return bnn.UncenteredBatchNormAct2d.from_batchnorm_act(
        module,
        _convert_submodule(module.act, config),
        module.drop,
        keep_bias=config.keep_bias,
    )


class BcosConv2dSame(bnn.BcosConv2d):
    """B-cos version of timm's ``Conv2dSame`` (TensorFlow 'SAME' padding computed per input)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(tl.pad_same(x, self.kernel_size, self.stride, self.dilation))


@register_module_rule(tl.Conv2dSame)
def _conv_same(module: tl.Conv2dSame, config: BcosConfig):
    return BcosConv2dSame.from_conv2d(
        module, b=config.b, keep_bias=config.keep_bias, normalize_weights=config.normalize_weights
    )


register_module_rule(tla.GELU, rules._gated("gelu"))
register_module_rule(tla.GELUTanh, rules._gated("gelu_tanh"))
register_module_rule(tla.QuickGELU, rules._gated("quick_gelu"))
register_module_rule(tla.Swish, rules._gated("silu"))
register_module_rule(tla.HardSwish, rules._gated("hardswish"))
register_module_rule(tla.Mish, rules._gated("mish"))
register_module_rule(tla.PReLU, rules._keep)
for _gate in (tla.Sigmoid, tla.HardSigmoid, tla.Tanh):
    register_module_rule(_gate, rules._keep)
rules.GATE_MODULES = rules.GATE_MODULES + (tla.Sigmoid, tla.HardSigmoid, tla.Tanh)
