"""Conversion rule tables.

A *module rule* maps a module type to a function ``rule(module, config)`` returning a replacement
module, :data:`KEEP` (leave it) or :data:`REMOVE` (the call becomes the identity on its first
input).
Lookup walks the type's MRO, most specific class first, so a rule for a subclass (timm's
``BatchNormAct2d``) wins over its base (``nn.BatchNorm2d``). Every type with a module rule is a leaf
for the tracer: its ``forward`` is not traced into.

A *function rule* handles a graph node calling a function (``F.relu``) or a tensor method
(``"relu_"``): ``rule(ctx, node)`` may rewrite the graph through the :class:`RewriteContext`.
Functions and methods that are linear or purely structural (``torch.cat``, ``view``) are
registered as neutral and pass through unchanged.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.errors import BcosifyError

if TYPE_CHECKING:
    from bcosify.fx.passes import RewriteContext

__all__ = [
    "KEEP",
    "REMOVE",
    "register_module_rule",
    "register_function_rule",
    "get_module_rule",
    "get_function_rule",
    "list_module_rules",
    "GATE_MODULES",
]


class _Action:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


KEEP = _Action("KEEP")
REMOVE = _Action("REMOVE")

ModuleRule = Callable[[nn.Module, BcosConfig], "nn.Module | _Action"]
FunctionRule = Callable[["RewriteContext", torch.fx.Node], None]

_MODULE_RULES: dict[type, ModuleRule] = {}
_FUNCTION_RULES: dict[Any, FunctionRule] = {}


def register_module_rule(module_type: type, rule: ModuleRule | None = None):
    """Register how modules of ``module_type`` (and its subclasses) are converted.

    Can be used as a decorator. The rule receives the module and the :class:`BcosConfig` and
    returns a replacement module, :data:`KEEP` or :data:`REMOVE`.

    Example:
        >>> class Scale(nn.Module):
        ...     def forward(self, x):
        ...         return 2 * x
        >>> register_module_rule(Scale, lambda module, config: KEEP)
        <function <lambda> at ...>
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise BcosifyError(f"register_module_rule needs an nn.Module subclass, got {module_type!r}")

    def _register(fn: ModuleRule) -> ModuleRule:
        if not callable(fn):
            raise BcosifyError(f"a module rule must be callable, got {fn!r}")
        _MODULE_RULES[module_type] = fn
        return fn

    return _register if rule is None else _register(rule)


def register_function_rule(target: Callable | str, rule: FunctionRule | None = None):
    """Register how graph nodes calling ``target`` (a function, or a method name) are handled."""

    def _register(fn: FunctionRule) -> FunctionRule:
        _FUNCTION_RULES[target] = fn
        return fn

    return _register if rule is None else _register(rule)


def get_module_rule(module_type: type) -> ModuleRule | None:
    """The rule for ``module_type``: the one registered for the most specific class in its MRO."""
    for cls in module_type.__mro__:
        rule = _MODULE_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def get_function_rule(target: Callable | str) -> FunctionRule | None:
    try:
        return _FUNCTION_RULES.get(target)
    except TypeError:  # unhashable target
        return None


def list_module_rules() -> dict[type, ModuleRule]:
    """A copy of the module rule table."""
    return dict(_MODULE_RULES)


# --------------------------------------------------------------------------- module rules


def _keep(module: nn.Module, config: BcosConfig):
    return KEEP


@register_module_rule(nn.Conv2d)
def _conv2d(module: nn.Conv2d, config: BcosConfig):
    return bnn.BcosConv2d.from_conv2d(
        module, b=config.b, keep_bias=config.keep_bias, normalize_weights=config.normalize_weights
    )


@register_module_rule(nn.Linear)
def _linear(module: nn.Linear, config: BcosConfig):
    return bnn.BcosLinear.from_linear(
        module, b=config.b, keep_bias=config.keep_bias, normalize_weights=config.normalize_weights
    )


@register_module_rule(nn.BatchNorm2d)
def _bn2d(module: nn.BatchNorm2d, config: BcosConfig):
    return bnn.UncenteredBatchNorm2d.from_batchnorm(module, keep_bias=config.keep_bias)


@register_module_rule(nn.BatchNorm1d)
def _bn1d(module: nn.BatchNorm1d, config: BcosConfig):
    return bnn.UncenteredBatchNorm1d.from_batchnorm(module, keep_bias=config.keep_bias)


@register_module_rule(nn.LayerNorm)
def _layernorm(module: nn.LayerNorm, config: BcosConfig):
    return bnn.DetachableLayerNorm.from_layernorm(module, keep_bias=config.keep_bias)


@register_module_rule(nn.GroupNorm)
def _groupnorm(module: nn.GroupNorm, config: BcosConfig):
    return bnn.DetachableGroupNorm.from_groupnorm(module, keep_bias=config.keep_bias)


def _relu(module: nn.Module, config: BcosConfig):
    if config.activation == "remove":
        return REMOVE
    if getattr(module, "inplace", False):
        module.inplace = False
    return KEEP


for _t in (nn.ReLU, nn.ReLU6):
    register_module_rule(_t, _relu)


def _gated(kind: str) -> ModuleRule:
    def rule(module: nn.Module, config: BcosConfig):
        return bnn.GatedActivation(kind)

    return rule


register_module_rule(nn.SiLU, _gated("silu"))
register_module_rule(nn.Hardswish, _gated("hardswish"))
register_module_rule(nn.Mish, _gated("mish"))


@register_module_rule(nn.GELU)
def _gelu(module: nn.GELU, config: BcosConfig):
    return bnn.GatedActivation("gelu_tanh" if module.approximate == "tanh" else "gelu")


def _maxpool(module: nn.Module, config: BcosConfig):
    if config.maxpool == "keep":
        return KEEP
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices or module.dilation not in (1, (1, 1)):
            return KEEP
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return KEEP if module.return_indices else nn.AdaptiveAvgPool2d(module.output_size)
    return KEEP


for _t in (nn.MaxPool2d, nn.AdaptiveMaxPool2d):
    register_module_rule(_t, _maxpool)

# Linear or structural modules, and piecewise-linear activations (exact without detaching).
for _t in (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.Flatten,
    nn.Unflatten,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.ZeroPad2d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.LeakyReLU,
    nn.PReLU,
    bnn.DetachableGate,
    bnn.InputEncoding,
    bnn.LogitLayer,
):
    register_module_rule(_t, _keep)

# Gates: kept as they are where they scale a tensor (the product is then detached), unsupported
# anywhere else. The converter checks the use.
GATE_MODULES: tuple[type, ...] = (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Softmax)
for _t in GATE_MODULES:
    register_module_rule(_t, _keep)

# --------------------------------------------------------------------------- function rules

GATE_FUNCTIONS = {
    torch.sigmoid,
    F.sigmoid,
    F.hardsigmoid,
    torch.tanh,
    F.tanh,
    torch.softmax,
    F.softmax,
    "sigmoid",
    "tanh",
    "softmax",
}

NEUTRAL_FUNCTIONS = {
    operator.getitem,
    getattr,
    operator.neg,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.flatten,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
    torch.chunk,
    torch.split,
    torch.narrow,
    torch.roll,
    torch.mean,
    torch.sum,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool1d,
    torch.nn.functional.avg_pool1d,
    torch.nn.functional.interpolate,
    torch.nn.functional.pixel_shuffle,
    torch.nn.functional.pixel_unshuffle,
    torch.channel_shuffle,
    torch.nn.functional.channel_shuffle,
    torch._assert,
    F.leaky_relu,
}
for _name in (
    "size",
    "dim",
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "chunk",
    "split",
    "narrow",
    "expand",
    "expand_as",
    "repeat",
    "mean",
    "sum",
    "roll",
    "clone",
    "float",
    "to",
    "type_as",
    "view_as",
    "reshape_as",
    "flip",
):
    NEUTRAL_FUNCTIONS.add(_name)

RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, "relu", "relu_"}


def _rule_relu(ctx: RewriteContext, node: torch.fx.Node) -> None:
    if ctx.config.activation == "remove":
        ctx.remove_node(node, "ReLU")
    else:
        if node.kwargs.get("inplace"):
            node.update_kwarg("inplace", False)
        if node.op == "call_method" and node.target == "relu_":
            node.target = "relu"
        if node.target in (torch.relu_, F.relu_):
            node.target = torch.relu
        ctx.record(node, "kept", "ReLU")


for _f in RELU_FUNCTIONS:
    register_function_rule(_f, _rule_relu)


@register_function_rule(F.hardtanh)
def _rule_hardtanh(ctx: RewriteContext, node: torch.fx.Node) -> None:
    lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
    if lo == 0.0:  # a capped ReLU (ReLU6 written as hardtanh): the cap is a constant
        _rule_relu(ctx, node)
    else:
        ctx.unsupported(node, "F.hardtanh", "a clipping non-linearity that is not a ReLU6")


def _rule_gated_function(kind: str) -> FunctionRule:
    def rule(ctx: RewriteContext, node: torch.fx.Node) -> None:
        if kind == "gelu" and node.kwargs.get("approximate", "none") == "tanh":
            ctx.replace_with_module(node, bnn.GatedActivation("gelu_tanh"), "GELU")
        else:
            ctx.replace_with_module(node, bnn.GatedActivation(kind), kind)

    return rule


for _f, _kind in (
    (F.silu, "silu"),
    ("silu", "silu"),
    (F.gelu, "gelu"),
    (F.hardswish, "hardswish"),
    (F.mish, "mish"),
):
    register_function_rule(_f, _rule_gated_function(_kind))


@register_function_rule(F.max_pool2d)
def _rule_max_pool2d(ctx: RewriteContext, node: torch.fx.Node) -> None:
    if ctx.config.maxpool == "keep":
        ctx.record(node, "kept", "max_pool2d")
        return
    names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    if args.get("return_indices") or args.get("dilation", 1) not in (1, (1, 1)):
        ctx.record(node, "kept", "max_pool2d")
        return
    pool = nn.AvgPool2d(
        args["kernel_size"],
        args.get("stride"),
        args.get("padding", 0),
        args.get("ceil_mode", False),
    )
    ctx.replace_with_module(node, pool, "max_pool2d", inputs=(args["input"],))


@register_function_rule(F.adaptive_max_pool2d)
def _rule_adaptive_max_pool2d(ctx: RewriteContext, node: torch.fx.Node) -> None:
    if ctx.config.maxpool == "keep":
        ctx.record(node, "kept", "adaptive_max_pool2d")
        return
    size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
    pool = nn.AdaptiveAvgPool2d(size)
    ctx.replace_with_module(node, pool, "adaptive_max_pool2d", inputs=(node.args[0],))


@register_function_rule(F.dropout)
def _rule_dropout(ctx: RewriteContext, node: torch.fx.Node) -> None:
    # ``training`` was baked in at trace time: make it a module that follows train()/eval().
    p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
    source = node.args[0] if node.args else node.kwargs["input"]
    ctx.replace_with_module(node, nn.Dropout(p), "dropout", inputs=(source,), quiet=True)


def _is_const(ctx: RewriteContext, a: Any) -> bool:
    return not (isinstance(a, torch.fx.Node) and a in ctx.dependent)


@register_function_rule(operator.mul)
@register_function_rule(torch.mul)
@register_function_rule("mul")
@register_function_rule(operator.imul)
@register_function_rule("mul_")
def _rule_mul(ctx: RewriteContext, node: torch.fx.Node) -> None:
    a, b = node.args[0], node.args[1]
    if _is_const(ctx, a) or _is_const(ctx, b):
        return  # scaling by a constant is linear
    for i, operand in ((1, b), (0, a)):
        if operand in ctx.gates:
            ctx.detach_gate(node, i)
            return
    ctx.unsupported(
        node,
        "mul",
        "a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/"
        "softmax scaling a tensor); register a rule that detaches one factor",
    )


@register_function_rule(operator.truediv)
@register_function_rule(torch.div)
@register_function_rule("div")
@register_function_rule("div_")
@register_function_rule(operator.itruediv)
def _rule_div(ctx: RewriteContext, node: torch.fx.Node) -> None:
    if _is_const(ctx, node.args[1]):
        return
    ctx.unsupported(node, "div", "division by an input-dependent tensor")


def _rule_add(ctx: RewriteContext, node: torch.fx.Node) -> None:
    a, b = node.args[0], node.args[1]
    const_a, const_b = _is_const(ctx, a), _is_const(ctx, b)
    if const_a == const_b:
        return  # sum of two input-dependent tensors (or of two constants): linear
    const = a if const_a else b
    if isinstance(const, (int, float)) and const == 0:
        return
    ctx.unsupported(
        node,
        "add",
        "an additive constant on an input-dependent tensor; explanations would miss it "
        "(register a rule that adds it with bcosify.nn.add_constant)",
    )


for _f in (operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, torch.sub, "sub"):
    register_function_rule(_f, _rule_add)


@register_function_rule(F.pad)
def _rule_pad(ctx: RewriteContext, node: torch.fx.Node) -> None:
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    if mode == "constant" and value not in (None, 0, 0.0):
        ctx.unsupported(node, "F.pad", f"padding with the constant {value} (only 0 is linear)")


def is_neutral(target: Any) -> bool:
    try:
        return target in NEUTRAL_FUNCTIONS
    except TypeError:
        return False


def is_gate_target(node: torch.fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        return isinstance(module, GATE_MODULES)
    try:
        return node.target in GATE_FUNCTIONS
    except TypeError:
        return False


def _rule_functional_layer(kind: str) -> FunctionRule:
    """``F.linear``/``F.conv2d`` whose weight is a parameter of the model: replaced by a B-cos
    module that shares the parameter; the bias (module or functional alike) follows keep_bias."""
    names = {
        "linear": ["input", "weight", "bias"],
        "conv2d": ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
    }[kind]

    def rule(ctx: RewriteContext, node: torch.fx.Node) -> None:
        args = dict(zip(names, node.args))
        args.update(node.kwargs)
        weight, bias = args.get("weight"), args.get("bias")
        params = [a for a in (weight, bias) if a is not None]
        if not all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in params):
            ctx.unsupported(
                node,
                f"F.{kind}",
                "a functional layer whose weight is computed at run time; register a rule",
            )
            return
        w = ctx.gm.get_parameter(weight.target)
        b = ctx.gm.get_parameter(bias.target) if bias is not None else None
        if kind == "linear":
            layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        else:
            groups = args.get("groups", 1)
            layer = nn.Conv2d(
                w.shape[1] * groups,
                w.shape[0],
                tuple(w.shape[2:]),
                args.get("stride", 1),
                args.get("padding", 0),
                args.get("dilation", 1),
                groups,
                bias=b is not None,
                device="meta",
            )
        layer.weight = w
        if b is not None:
            layer.bias = b
        converted = get_module_rule(type(layer))(layer, ctx.config)
        ctx.replace_with_module(node, converted, f"F.{kind}", inputs=(args["input"],))

    return rule


register_function_rule(F.linear, _rule_functional_layer("linear"))
register_function_rule(F.conv2d, _rule_functional_layer("conv2d"))
