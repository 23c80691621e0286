"""Helpers shared by the rules for torchvision's and timm's layers (``rules_torchvision``,
``rules_timm``), which :func:`bcosify.fx.registry.load_library_rules` loads on demand."""

from __future__ import annotations

from torch import nn

from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.fx import registry
from bcosify.fx.registry import KEEP, REMOVE


def _convert_submodule(module: nn.Module, config: BcosConfig) -> nn.Module | None:
    """Apply the module rules to a child (e.g. the activation inside a norm-act layer); None
    when the child is not supported (then neither is its parent)."""
    rule = registry.get_module_rule(type(module))
    if rule is None:
        return None
    result = rule(module, config)
    if result is None:
        return None
    if result is REMOVE:
        return nn.Identity()
    return module if result is KEEP else result


def _layernorm2d(module: nn.LayerNorm, config: BcosConfig):
    return bnn.DetachableLayerNorm2d.from_layernorm(module, keep_bias=config.keep_bias)


def _retype(module: nn.Module, cls: type) -> nn.Module:
    """A shallow copy of ``module`` as an instance of ``cls`` (a subclass that overrides forward),
    sharing its parameters, buffers and submodules, so state-dict keys stay the same."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


def _plain(linear: nn.Linear, config: BcosConfig) -> bnn.PlainLinear:
    return bnn.PlainLinear.from_linear(linear, keep_bias=config.keep_bias)


def _bcos(linear: nn.Linear, config: BcosConfig) -> bnn.BcosLinear:
    return bnn.BcosLinear.from_linear(
        linear, b=config.b, keep_bias=config.keep_bias, normalize_weights=config.normalize_weights
    )
