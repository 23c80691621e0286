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

import importlib
import operator
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.errors import BcosifyError
from bcosify.fx import nodemap
from bcosify.fx.graph import matmul_operands

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
    "load_library_rules",
    "resolve_module_rule",
    "scoped_rules",
    "declare_safe_subclass",
    "unregister_module_rule",
    "unregister_function_rule",
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
# keys the user registered (they win over built-in rules, gates included), and the built-in
# rules they shadow (restored by unregistering)
_USER_MODULE_TYPES: set[type] = set()
_USER_FUNCTION_TARGETS: set[Any] = set()
_SHADOWED: dict[tuple[str, Any], Callable] = {}
# subclasses that override forward() yet compute their base's function (the base's rule holds)
_SAFE_SUBCLASSES: set[type] = set()
_BUILTIN = [True]  # True while bcosify registers its own rules (this module, library rules)


def _key_name(key: Any) -> str:
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__}"
    return key if isinstance(key, str) else getattr(key, "__qualname__", repr(key))


def _set_rule(kind: str, key: Any, fn: Callable, override: bool) -> None:
    table = _MODULE_RULES if kind == "module" else _FUNCTION_RULES
    users = _USER_MODULE_TYPES if kind == "module" else _USER_FUNCTION_TARGETS
    if _BUILTIN[0]:
        table[key] = fn
        return
    if key in table and not override:
        owner = "you registered" if key in users else "bcosify has"
        raise BcosifyError(
            f"a {kind} rule for {_key_name(key)} already exists ({owner} "
            f"{getattr(table[key], '__qualname__', table[key])!r}); pass override=True to replace "
            f"it, or unregister_{kind}_rule({_key_name(key)}) first"
        )
    if key in table and key not in users:
        _SHADOWED[(kind, key)] = table[key]
    table[key] = fn
    users.add(key)


def register_module_rule(
    module_type: type, rule: ModuleRule | None = None, *, override: bool = False
):
    """Register how modules of ``module_type`` (and subclasses that do not override
    ``forward``) are converted.

    Can be used as a decorator. The rule receives the module and the :class:`BcosConfig` and
    returns a replacement module, :data:`KEEP`, :data:`REMOVE`, or ``None`` (this configuration
    is not supported: the module is reported). A rule registered here is consulted before
    bcosify's own handling, also for gates (``nn.Sigmoid`` and the like).

    Args:
        module_type: an ``nn.Module`` subclass.
        rule: the rule; omitted, the call returns a decorator.
        override: replace a rule that already exists for exactly this type (a built-in one is
            restored by :func:`unregister_module_rule`). Without it, that is an error.

    Raises:
        BcosifyError: for a type that is not an ``nn.Module`` subclass, a rule that is not
            callable, or a type that already has a rule (without ``override``).

    Example:
        >>> class Scale(nn.Module):
        ...     def forward(self, x):
        ...         return 2 * x
        >>> register_module_rule(Scale, lambda module, config: KEEP)
        <function <lambda> at ...>
        >>> _ = unregister_module_rule(Scale)
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise BcosifyError(f"register_module_rule needs an nn.Module subclass, got {module_type!r}")

    def _register(fn: ModuleRule) -> ModuleRule:
        if not callable(fn):
            raise BcosifyError(f"a module rule must be callable, got {fn!r}")
        _set_rule("module", module_type, fn, override)
        return fn

    return _register if rule is None else _register(rule)


def register_function_rule(
    target: Callable | str, rule: FunctionRule | None = None, *, override: bool = False
):
    """Register how graph nodes calling ``target`` (a function, or a method name) are handled.

    The rule receives the :class:`~bcosify.fx.passes.RewriteContext` and the node, and rewrites
    the graph through the context. Consulted before bcosify's own handling, gates included
    (``torch.sigmoid``, ``"sigmoid"``). ``override`` as in :func:`register_module_rule`.
    """

    def _register(fn: FunctionRule) -> FunctionRule:
        if not callable(fn):
            raise BcosifyError(f"a function rule must be callable, got {fn!r}")
        try:
            hash(target)
        except TypeError as e:
            raise BcosifyError(f"a function rule target must be hashable, got {target!r}") from e
        _set_rule("function", target, fn, override)
        return fn

    return _register if rule is None else _register(rule)


def _unregister(kind: str, key: Any) -> Callable:
    table = _MODULE_RULES if kind == "module" else _FUNCTION_RULES
    users = _USER_MODULE_TYPES if kind == "module" else _USER_FUNCTION_TARGETS
    if key not in users:
        raise BcosifyError(
            f"no {kind} rule of yours is registered for {_key_name(key)}; only rules registered "
            f"with register_{kind}_rule can be unregistered"
        )
    users.discard(key)
    fn = table.pop(key)
    builtin = _SHADOWED.pop((kind, key), None)
    if builtin is not None:
        table[key] = builtin
    return fn


def unregister_module_rule(module_type: type) -> ModuleRule:
    """Remove the rule you registered for ``module_type`` (a built-in rule it replaced comes
    back); returns it.

    Raises:
        BcosifyError: if no rule of yours is registered for exactly this type.
    """
    return _unregister("module", module_type)


def unregister_function_rule(target: Callable | str) -> FunctionRule:
    """Remove the rule you registered for ``target``; returns it (see
    :func:`unregister_module_rule`)."""
    return _unregister("function", target)


@contextmanager
def scoped_rules(rules: Mapping[Any, Callable] | None = None) -> Iterator[None]:
    """Rules that hold inside the ``with`` block only.

    ``rules`` maps module types to module rules and functions or method names to function
    rules; they replace existing rules for the same keys (``override=True``). On leaving the
    block every rule table is as it was, including rules registered inside the block.

    Example:
        >>> with scoped_rules({nn.ELU: lambda module, config: KEEP}):
        ...     get_module_rule(nn.ELU) is not None
        True
        >>> get_module_rule(nn.ELU) is None
        True
    """
    load_library_rules()
    saved_tables = {"module": dict(_MODULE_RULES), "function": dict(_FUNCTION_RULES)}
    saved_users = {"module": set(_USER_MODULE_TYPES), "function": set(_USER_FUNCTION_TARGETS)}
    saved_shadowed, saved_safe = dict(_SHADOWED), set(_SAFE_SUBCLASSES)
    try:
        for key, fn in (rules or {}).items():
            if isinstance(key, type) and issubclass(key, nn.Module):
                register_module_rule(key, fn, override=True)
            else:
                register_function_rule(key, fn, override=True)
        yield
    finally:
        for kind, table, users in (
            ("module", _MODULE_RULES, _USER_MODULE_TYPES),
            ("function", _FUNCTION_RULES, _USER_FUNCTION_TARGETS),
        ):
            before = saved_tables[kind]
            for key in list(table):
                if key in before:
                    table[key] = before[key]
                elif key in users:  # registered inside the block
                    builtin = _SHADOWED.get((kind, key))
                    if builtin is not None and (kind, key) not in saved_shadowed:
                        table[key] = builtin  # a library rule loaded inside the block
                    else:
                        del table[key]
                # else: a library's built-in rule loaded inside the block stays
            for key, fn in before.items():
                table.setdefault(key, fn)
            users.clear()
            users.update(saved_users[kind])
        for key in list(_SHADOWED):
            if key not in saved_shadowed and key[1] not in saved_users[key[0]]:
                del _SHADOWED[key]
        _SHADOWED.update(saved_shadowed)
        _SAFE_SUBCLASSES.clear()
        _SAFE_SUBCLASSES.update(saved_safe)


def declare_safe_subclass(*module_types: type) -> None:
    """Declare that these subclasses compute the same function as their base class although
    they override ``forward`` (a faster or more general implementation), so the base class's
    rule converts them.

    A subclass that overrides ``forward`` inherits no rule otherwise: its own computation may
    differ (a weight-standardised convolution is not a convolution), and converting it with
    the base's rule would be silently wrong. It is reported instead.

    Example:
        >>> class FastConv(nn.Conv2d):
        ...     def forward(self, x):
        ...         return super().forward(x)
        >>> get_module_rule(FastConv) is None
        True
        >>> declare_safe_subclass(FastConv)
        >>> get_module_rule(FastConv) is get_module_rule(nn.Conv2d)
        True
    """
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise BcosifyError(f"declare_safe_subclass needs nn.Module subclasses, got {t!r}")
        _SAFE_SUBCLASSES.add(t)


def is_user_rule(key: Any) -> bool:
    """Whether the user registered a rule for this module type (or one of its bases that
    applies to it) or function target."""
    if isinstance(key, type):
        rule, _ = resolve_module_rule(key)
        return rule is not None and any(
            _MODULE_RULES.get(c) is rule and c in _USER_MODULE_TYPES for c in key.__mro__
        )
    try:
        return key in _USER_FUNCTION_TARGETS
    except TypeError:
        return False


_LIBRARY_RULES = (
    ("torchvision", "bcosify.fx.rules_torchvision"),
    ("timm", "bcosify.fx.rules_timm"),
)
_LOADED_LIBRARY_RULES: set[str] = set()


def load_library_rules() -> list[str]:
    """Register the built-in rules for the layers of torchvision and timm, for each of the two
    that is imported (a model made of a library's layers cannot exist before the library is
    imported, so ``import bcosify`` need not import either). Conversion and the rule lookups
    call this; calling it again is cheap.

    A rule the user registered before for a library class stays: built-in rules never replace
    user rules.

    Returns:
        The rule modules loaded by this call.
    """
    loaded = []
    for library, module in _LIBRARY_RULES:
        if module in _LOADED_LIBRARY_RULES or library not in sys.modules:
            continue
        _LOADED_LIBRARY_RULES.add(module)
        before_modules, before_functions = dict(_MODULE_RULES), dict(_FUNCTION_RULES)
        was = _BUILTIN[0]
        _BUILTIN[0] = True
        try:
            importlib.import_module(module)
        except BaseException:
            _LOADED_LIBRARY_RULES.discard(module)
            raise
        finally:
            _BUILTIN[0] = was
        for kind, table, before in (
            ("module", _MODULE_RULES, before_modules),
            ("function", _FUNCTION_RULES, before_functions),
        ):
            for key, fn in before.items():
                if table.get(key) is not fn:  # the user's rule stays; the built-in waits behind it
                    _SHADOWED[(kind, key)] = table[key]
                    table[key] = fn
        loaded.append(module)
    return loaded


def resolve_module_rule(module_type: type) -> tuple[ModuleRule | None, str | None]:
    """The rule for ``module_type`` and, when it has none, why.

    The rule is the one registered for the most specific class in its MRO, unless a class on
    the way to it overrides ``forward`` without being declared safe
    (:func:`declare_safe_subclass`): then there is none, and the reason says so.
    """
    load_library_rules()
    mro = module_type.__mro__
    for i, cls in enumerate(mro):
        rule = _MODULE_RULES.get(cls)
        if rule is not None:
            return rule, None
        if "forward" in cls.__dict__ and cls not in _SAFE_SUBCLASSES and cls is not nn.Module:
            base = next((b for b in mro[i + 1 :] if b in _MODULE_RULES), None)
            if base is None:
                return None, None
            return None, (
                f"{cls.__qualname__} overrides forward() of {base.__qualname__}, so "
                f"{base.__qualname__}'s rule may not compute what it computes; register a "
                f"rule for {_key_name(module_type)} with bcosify.register_module_rule, or, if its "
                "forward computes the same function, bcosify.declare_safe_subclass("
                f"{module_type.__qualname__})"
            )
    return None, None


def get_module_rule(module_type: type) -> ModuleRule | None:
    """The rule for ``module_type`` (see :func:`resolve_module_rule`), or None."""
    return resolve_module_rule(module_type)[0]


def is_rule_leaf(module_type: type) -> bool:
    """Whether the tracer keeps modules of this type whole: some class in its MRO has a rule
    (when a subclass's override blocks it, the module is reported, not traced into)."""
    load_library_rules()
    return any(c in _MODULE_RULES for c in module_type.__mro__)


def get_function_rule(target: Callable | str) -> FunctionRule | None:
    load_library_rules()
    try:
        return _FUNCTION_RULES.get(target)
    except TypeError:  # unhashable target
        return None


def list_module_rules() -> dict[type, ModuleRule]:
    """A copy of the module rule table (with the rules of the imported libraries)."""
    load_library_rules()
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
    if config.activation == "keep" and isinstance(module, nn.Hardtanh):
        return nn.ReLU()  # the cap (ReLU6) is a constant no explanation accounts for
    if getattr(module, "inplace", False):
        module.inplace = False
    return KEEP


for _t in (nn.ReLU, nn.ReLU6):
    register_module_rule(_t, _relu)


@register_module_rule(nn.Hardtanh)
def _hardtanh(module: nn.Hardtanh, config: BcosConfig):
    """``nn.Hardtanh(0, c)`` is a capped ReLU, as ``F.hardtanh(x, 0, c)`` and ReLU6 are."""
    if module.min_val == 0.0:
        return _relu(module, config)
    return None


_hardtanh.declined = "a clipping non-linearity that is not a capped ReLU (min_val 0)"

# Unfold/fold and the padding modules only copy input values: linear, exact as they are (the
# functional spellings F.unfold, F.fold and F.pad are neutral functions)
for _t in (
    nn.Unfold,
    nn.Fold,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
    *[
        getattr(nn, n)
        for n in ("CircularPad1d", "CircularPad2d", "CircularPad3d")
        if hasattr(nn, n)
    ],
):
    register_module_rule(_t, _keep)


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
    # in-place spellings: the same gates
    torch.sigmoid_,
    torch.tanh_,
    "sigmoid_",
    "tanh_",
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
    torch.unbind,
    torch.swapaxes,
    torch.movedim,
}
for _name in (
    "unbind",
    "swapaxes",
    "swapdims",
    "movedim",
    "select",
    "tile",
    "repeat_interleave",
    "index_select",
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
        capped = node.target in (F.relu6, F.hardtanh)
        if capped and ctx.config.activation == "keep":  # the cap at 6 is a constant
            node.target = torch.relu
            node.args, node.kwargs = node.args[:1], {}
            ctx.record(node, "replaced", "capped ReLU (ReLU6) -> ReLU")
            return
        ctx.record(node, "kept", "ReLU6" if capped else "ReLU")


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
    if node in ctx.detach_policy:
        ctx.detach_operand(node, *ctx.detach_policy[node])
        return
    for i, operand in ((1, b), (0, a)):
        if operand in ctx.gates:
            ctx.detach_gate(node, i)
            return
    ctx.unsupported(
        node,
        "mul",
        "a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/"
        "softmax scaling a tensor); BcosConfig(products='detach') detaches one factor, or "
        "register a rule",
    )


DIV_TARGETS = {operator.truediv, torch.div, "div", "div_", operator.itruediv}
"""Every spelling of a division (the product policy detaches an input-dependent divisor)."""


def _rule_div(ctx: RewriteContext, node: torch.fx.Node) -> None:
    args = _call_args(node, ["input", "other"])
    if args.get("rounding_mode") is not None:
        ctx.unsupported(node, "div", f"a division with rounding_mode={args['rounding_mode']!r}")
        return
    if len(node.args) < 2:
        ctx.unsupported(node, "div", "a division written with keyword arguments")
        return
    if _is_const(ctx, node.args[1]):
        return
    if node in ctx.detach_policy:
        ctx.detach_operand(node, *ctx.detach_policy[node])
        return
    if _is_const(ctx, node.args[0]):
        ctx.unsupported(
            node, "div", "a constant divided by an input-dependent tensor (not linear in it)"
        )
        return
    ctx.unsupported(
        node,
        "div",
        "division by an input-dependent tensor; BcosConfig(products='detach') detaches the divisor",
    )


for _f in DIV_TARGETS:
    register_function_rule(_f, _rule_div)


def constant_label(ctx: RewriteContext, node: torch.fx.Node, const: Any) -> str:
    """A readable name for a constant: the parameters/buffers it is computed from, or the node."""
    if isinstance(const, torch.fx.Node):
        names, stack, seen = [], [const], set()
        while stack and len(seen) < 64:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "get_attr":
                names.append(str(n.target))
            stack.extend(a for a in n.all_input_nodes if a not in ctx.dependent)
        if names:
            return "+".join(sorted(set(names)))
    return f"{ctx.qualname(node)}.constant"


_SUB_TARGETS = {operator.sub, torch.sub, "sub", operator.isub, "sub_"}


def _rule_add(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``x + c`` / ``x - c`` / ``c - x`` with a constant ``c``: the constant is added through
    :class:`~bcosify.nn.AddConstant`, so explanations report its contribution."""
    a, b = node.args[0], node.args[1]
    const_a, const_b = _is_const(ctx, a), _is_const(ctx, b)
    if const_a == const_b:
        return  # sum of two input-dependent tensors (or of two constants): linear
    const = a if const_a else b
    if isinstance(const, (int, float)) and const == 0:
        return
    if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
        ctx.unsupported(node, "add", "an add/sub with alpha; write it as x + alpha * y")
        return
    if not isinstance(const, (int, float, torch.fx.Node)):
        ctx.unsupported(node, "add", f"an additive constant of type {type(const).__name__}")
        return
    subtract = _is_in(node.target, _SUB_TARGETS)
    x = b if const_a else a
    label = constant_label(ctx, node, const)
    if subtract and const_a:  # c - x = (-x) + c
        with ctx.graph.inserting_before(node):
            x = ctx.graph.call_function(operator.neg, (x,))
        ctx.dependent.add(x)
    negate = subtract and not const_a
    if isinstance(const, torch.fx.Node):
        module = bnn.AddConstant(label, negate=negate)
        inputs = (x, const)
    else:
        module = bnn.AddConstant(label, value=float(const), negate=negate)
        inputs = (x,)
    new = ctx.replace_with_module(node, module, "add constant", inputs=inputs, quiet=True)
    ctx.record(new, "inserted", "AddConstant (constant reported in explanations)", label)


for _f in (operator.add, operator.iadd, torch.add, "add", "add_", *_SUB_TARGETS):
    register_function_rule(_f, _rule_add)


def _is_in(target: Any, table: set) -> bool:
    try:
        return target in table
    except TypeError:
        return False


@register_function_rule(torch.cat)
@register_function_rule(torch.concat)
@register_function_rule(torch.stack)
def _rule_cat(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """Constant pieces of a concatenation (a class token) are recorded for explanations."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    if not isinstance(tensors, (list, tuple)):
        return
    like = next((t for t in tensors if not _is_const(ctx, t)), None)
    if like is None:
        return
    new_tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.fx.Node) or not _is_const(ctx, t):
            continue
        label = constant_label(ctx, node, t)
        name = ctx.add_submodule(f"{node.name}_constant", bnn.RecordConstant(label))
        with ctx.graph.inserting_before(node):
            rec = ctx.graph.call_module(name, (t, like))
        ctx.dependent.add(rec)
        new_tensors[i] = rec
        ctx.record(node, "inserted", "RecordConstant (concatenated constant)", label)
    if node.args:
        node.args = (type(tensors)(new_tensors),) + tuple(node.args[1:])
    else:
        node.update_kwarg("tensors", type(tensors)(new_tensors))


@register_function_rule(operator.matmul)
@register_function_rule(torch.matmul)
@register_function_rule("matmul")
@register_function_rule(torch.bmm)
@register_function_rule("bmm")
@register_function_rule(torch.einsum)
def _rule_matmul(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``attn @ v``: the attention matrix (a softmax) is detached in explanation mode; a product
    with a constant matrix is linear."""
    ops = matmul_operands(node)
    if len(ops) != 2 or any(_is_const(ctx, o) for o in ops):
        return
    if node in ctx.detach_policy:
        ctx.detach_operand(node, *ctx.detach_policy[node])
        return
    offset = 1 if node.target is torch.einsum else 0
    for i, operand in enumerate(ops):
        if operand in ctx.gates:
            if offset and isinstance(node.args[1], (list, tuple)):
                break  # einsum with a list of operands: not rewritten
            ctx.detach_gate(node, i + offset)
            return
    ctx.unsupported(
        node,
        getattr(node.target, "__name__", str(node.target)),
        "a product of two input-dependent tensors where neither is an attention matrix "
        "(a softmax); BcosConfig(products='detach') detaches one factor, or register a rule",
    )


def _call_args(node: torch.fx.Node, names: list[str]) -> dict[str, Any]:
    """A call's arguments by name (a method's ``self`` is the first name)."""
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return args


def _products_off(ctx: RewriteContext, node: torch.fx.Node, kind: str, what: str) -> bool:
    """Report ``node`` as unsupported when ``BcosConfig(products="error")``."""
    if ctx.config.products == "detach":
        return False
    ctx.unsupported(node, kind, f"{what}; BcosConfig(products='detach') makes it exact")
    return True


@register_function_rule(F.normalize)
def _rule_normalize(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``F.normalize``: the norm becomes a dynamic weight (the product policy's divisor)."""
    args = _call_args(node, ["input", "p", "dim", "eps", "out"])
    options = [args.get("p", 2.0), args.get("dim", 1), args.get("eps", 1e-12)]
    if args.get("out") is not None or any(isinstance(o, torch.fx.Node) for o in options):
        ctx.unsupported(node, "F.normalize", "with out= or options computed at run time")
        return
    if _products_off(ctx, node, "F.normalize", "a division by the input's norm"):
        return
    module = bnn.DetachableNormalize(*options)
    ctx.replace_with_module(node, module, "normalize", inputs=(args["input"],))


def _rule_pow(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``x ** p`` with a constant ``p >= 1``: ``x * x ** (p - 1)``, the second factor a dynamic
    weight (:class:`~bcosify.nn.DetachablePower`); ``square`` is ``p = 2``."""
    square = node.target in (torch.square, "square")
    args = _call_args(node, ["input"] if square else ["input", "exponent"])
    base, exponent = args["input"], 2 if square else args.get("exponent")
    if _is_const(ctx, base) or isinstance(exponent, torch.fx.Node):
        ctx.unsupported(node, "pow", "an input-dependent exponent (not a product)")
        return
    if not isinstance(exponent, (int, float)) or not exponent >= 1:
        ctx.unsupported(
            node, "pow", f"x ** {exponent!r}: only powers >= 1 are products of x with itself"
        )
        return
    if exponent == 1 or _products_off(ctx, node, "pow", f"x ** {exponent}"):
        return
    ctx.replace_with_module(node, bnn.DetachablePower(exponent), "pow", inputs=(base,))


for _f in (operator.pow, torch.pow, "pow", torch.square, "square"):
    register_function_rule(_f, _rule_pow)


@register_function_rule(torch.amax)
@register_function_rule("amax")
def _rule_amax(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """A max over dimensions is piecewise linear: kept with ``maxpool="keep"``, else a mean over
    the same dimensions, as max pooling becomes average pooling."""
    args = _call_args(node, ["input", "dim", "keepdim"])
    if ctx.config.maxpool == "keep":
        ctx.record(node, "kept", "amax (piecewise linear)")
        return
    module = bnn.MaxAsMean(args.get("dim", ()), args.get("keepdim", False))
    ctx.replace_with_module(node, module, "amax", inputs=(args["input"],))


@register_function_rule(torch.max)
@register_function_rule("max")
def _rule_max(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``max(x)`` and ``max(x, dim)`` as :func:`_rule_amax` (``max(x, dim)`` keeps its values and
    indices); ``max(a, b)`` of two input-dependent tensors picks one of them (piecewise linear,
    kept); with a constant it is a clamp whose constant no explanation reports."""
    args = _call_args(node, ["input", "dim", "keepdim"])
    dim = args.get("dim", args.get("other"))
    if dim is not None and not isinstance(dim, (int, list, tuple)):
        if isinstance(dim, torch.fx.Node) and dim in ctx.dependent:
            ctx.record(node, "kept", "max of two tensors (piecewise linear)")
        else:
            ctx.unsupported(node, "max", "an elementwise max with a constant (a clamp)")
        return
    if ctx.config.maxpool == "keep":
        ctx.record(node, "kept", "max (piecewise linear)")
        return
    if dim is None:
        module = bnn.MaxAsMean((), False)
    else:
        module = bnn.MaxAsMean(dim, args.get("keepdim", False), indices=True)
    ctx.replace_with_module(node, module, "max", inputs=(args["input"],))


@register_function_rule(torch.addcmul)
@register_function_rule("addcmul")
def _rule_addcmul(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``addcmul(input, t1, t2, value=v)`` is rewritten as ``input + t1 * t2 * v`` (an affine
    map when one factor is constant: ResMLP's ``Affine``, GRN); the constant ``input`` is
    reported like any added constant."""
    args = _call_args(node, ["input", "tensor1", "tensor2"])
    t1, t2, value = args["tensor1"], args["tensor2"], args.get("value", 1)
    if not (_is_const(ctx, t1) or _is_const(ctx, t2)) or isinstance(value, torch.fx.Node):
        ctx.unsupported(
            node, "addcmul", "of two input-dependent tensors; write it as input + t1 * t2"
        )
        return
    meta = {k: v for k, v in node.meta.items() if k != nodemap.ORIGIN}
    with ctx.graph.inserting_before(node):
        prod = ctx.graph.call_function(operator.mul, (t1, t2))
        if value != 1:
            prod.meta = dict(meta)
            prod = ctx.graph.call_function(operator.mul, (prod, value))
        out = ctx.graph.call_function(operator.add, (args["input"], prod))
    prod.meta, out.meta = dict(meta), dict(node.meta)
    node.replace_all_uses_with(out)
    ctx.graph.erase_node(node)
    for new in (*prod.all_input_nodes, prod, out):
        if new.op != "get_attr" and any(a in ctx.dependent for a in new.all_input_nodes):
            ctx.dependent.add(new)
    ctx.record(out, "replaced", "addcmul -> input + t1 * t2")
    if out in ctx.dependent:
        _rule_add(ctx, out)


@register_function_rule(F.scaled_dot_product_attention)
def _rule_sdpa(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """Fused attention is unfused so the attention matrix can be detached."""
    names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    unknown = set(args) - set(names)
    if unknown:
        ctx.unsupported(node, "scaled_dot_product_attention", f"arguments {sorted(unknown)}")
        return
    module = bnn.ScaledDotProductAttention()
    name = ctx.add_submodule(node.name, module)
    with ctx.graph.inserting_before(node):
        new = ctx.graph.call_module(name, (), {k: v for k, v in args.items()})
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    ctx.graph.erase_node(node)
    ctx.dependent.add(new)
    ctx.report.add(
        "replaced", "scaled_dot_product_attention -> ScaledDotProductAttention", ctx.qualname(new)
    )


def _rule_functional_norm(kind: str) -> FunctionRule:
    """``F.layer_norm``/``F.group_norm`` with parameter (or no) affine weights: replaced by the
    detachable module, sharing the parameters."""
    names = {
        "layer_norm": ["input", "normalized_shape", "weight", "bias", "eps"],
        "group_norm": ["input", "num_groups", "weight", "bias", "eps"],
    }[kind]

    def rule(ctx: RewriteContext, node: torch.fx.Node) -> None:
        args = dict(zip(names, node.args))
        args.update(node.kwargs)
        weight, bias = args.get("weight"), args.get("bias")
        params = [a for a in (weight, bias) if a is not None]
        if not all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in params):
            ctx.unsupported(node, f"F.{kind}", "a norm whose affine weights are computed")
            return
        w = _fetch(ctx, weight) if weight is not None else None
        b = _fetch(ctx, bias) if bias is not None else None
        eps = args.get("eps", 1e-5)
        if kind == "layer_norm":
            shape = args["normalized_shape"]
            shape = (shape,) if not isinstance(shape, (list, tuple)) else tuple(shape)
            if not all(isinstance(d, int) for d in shape):
                if w is None:  # a shape read from the input; the weight tells it otherwise
                    ctx.unsupported(node, "F.layer_norm", "a normalized_shape computed at run time")
                    return
                shape = tuple(w.shape)
            norm = nn.LayerNorm(shape, eps, elementwise_affine=False, device="meta")
            norm.elementwise_affine = w is not None
            converted = bnn.DetachableLayerNorm.from_layernorm(
                _with_params(norm, w, b), keep_bias=ctx.config.keep_bias
            )
        else:
            groups = args["num_groups"]
            channels = w.shape[0] if w is not None else None
            if channels is None:
                ctx.unsupported(node, "F.group_norm", "a group norm without affine weights")
                return
            norm = nn.GroupNorm(groups, channels, eps, affine=False, device="meta")
            norm.affine = True
            converted = bnn.DetachableGroupNorm.from_groupnorm(
                _with_params(norm, w, b), keep_bias=ctx.config.keep_bias
            )
        ctx.replace_with_module(node, converted, f"F.{kind}", inputs=(args["input"],))

    return rule


def _with_params(module: nn.Module, weight: Any, bias: Any) -> nn.Module:
    module.weight = weight
    module.bias = bias
    return module


register_function_rule(F.layer_norm, _rule_functional_norm("layer_norm"))
register_function_rule(F.group_norm, _rule_functional_norm("group_norm"))


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


GLU_MODULES: tuple[type, ...] = (nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish)
GLU_FUNCTIONS = {F.silu, F.gelu, F.mish, F.hardswish, "silu", "gelu"}


def is_glu_gate(node: torch.fx.Node, module: nn.Module | None) -> bool:
    """An activation output that multiplies another tensor (the gate of a GLU)."""
    if node.op == "call_module":
        return isinstance(module, GLU_MODULES)
    try:
        return node.target in GLU_FUNCTIONS
    except TypeError:
        return False


def is_gate_target(node: torch.fx.Node, module: nn.Module | None) -> bool:
    """Whether the node is a gate bcosify handles itself (not when the user registered a rule
    for it)."""
    if node.op == "call_module":
        return isinstance(module, GATE_MODULES) and not is_user_rule(type(module))
    try:
        return node.target in GATE_FUNCTIONS and node.target not in _USER_FUNCTION_TARGETS
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
        if not (isinstance(weight, torch.fx.Node) and weight.op == "get_attr"):
            ctx.unsupported(
                node,
                f"F.{kind}",
                "a functional layer whose weight is computed at run time; register a rule",
            )
            return
        if bias is not None and not _is_const(ctx, bias):
            ctx.unsupported(node, f"F.{kind}", "a functional layer with an input-dependent bias")
            return
        w = _fetch(ctx, weight)
        param_bias = isinstance(bias, torch.fx.Node) and bias.op == "get_attr"
        b = _fetch(ctx, bias) if param_bias else None
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
        layer.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w, requires_grad=False)
        if b is not None:
            layer.bias = b if isinstance(b, nn.Parameter) else nn.Parameter(b, requires_grad=False)
        if kind == "linear" and node in ctx.projections:
            converted = bnn.PlainLinear.from_linear(layer, keep_bias=ctx.config.keep_bias)
        else:
            converted = get_module_rule(type(layer))(layer, ctx.config)
        new = ctx.replace_with_module(node, converted, f"F.{kind}", inputs=(args["input"],))
        if bias is not None and not param_bias and ctx.config.keep_bias:
            # a bias computed from parameters (e.g. concatenated q/k/v biases): a constant term
            label = constant_label(ctx, new, bias)
            if kind == "conv2d":
                with ctx.graph.inserting_after(new):
                    bias = ctx.graph.call_method("view", (bias, 1, -1, 1, 1))
            name = ctx.add_submodule(f"{new.name}_bias", bnn.AddConstant(label))
            with ctx.graph.inserting_after(bias if kind == "conv2d" else new):
                added = ctx.graph.call_module(name, (new, bias))
            new.replace_all_uses_with(added)
            added.args = (new, bias)
            ctx.dependent.add(added)

    return rule


def _fetch(ctx: RewriteContext, node: torch.fx.Node) -> torch.Tensor:
    obj: Any = ctx.gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


register_function_rule(F.linear, _rule_functional_layer("linear"))
register_function_rule(F.conv2d, _rule_functional_layer("conv2d"))


@register_module_rule(nn.MultiheadAttention)
def _mha(module: nn.MultiheadAttention, config: BcosConfig):
    out_proj = bnn.BcosLinear.from_linear(
        module.out_proj,
        b=config.b,
        keep_bias=config.keep_bias,
        normalize_weights=config.normalize_weights,
    )
    try:
        return bnn.BcosMultiheadAttention.from_mha(module, out_proj, keep_bias=config.keep_bias)
    except ValueError as exc:
        raise BcosifyError(str(exc)) from exc


def _constant_pad(module: nn.Module, config: BcosConfig):
    return KEEP if float(module.value) == 0.0 else None


_constant_pad.declined = "padding with a non-zero constant is not linear (only 0 is)"
for _t in (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d):
    register_module_rule(_t, _constant_pad)


@register_module_rule(nn.Conv1d)
def _conv1d(module: nn.Conv1d, config: BcosConfig):
    try:
        return bnn.BcosConv1d.from_conv1d(
            module,
            b=config.b,
            keep_bias=config.keep_bias,
            normalize_weights=config.normalize_weights,
        )
    except ValueError:
        return None


_conv1d.declined = "a Conv1d with non-zero padding mode"


def _rmsnorm(module: nn.Module, config: BcosConfig):
    return bnn.DetachableRmsNorm.from_rmsnorm(module)


if hasattr(nn, "RMSNorm"):
    register_module_rule(nn.RMSNorm, _rmsnorm)
register_module_rule(nn.Upsample, _keep)  # nearest/bilinear interpolation: linear
register_module_rule(nn.ZeroPad1d, _keep)


@register_function_rule(F.rms_norm)
def _rule_rms_norm(ctx: RewriteContext, node: torch.fx.Node) -> None:
    names = ["input", "normalized_shape", "weight", "eps"]
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    weight = args.get("weight")
    if weight is not None and not (isinstance(weight, torch.fx.Node) and weight.op == "get_attr"):
        ctx.unsupported(node, "F.rms_norm", "an RMS norm whose weight is computed")
        return
    shape = args["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    w = _fetch(ctx, weight) if weight is not None else None
    norm = bnn.DetachableRmsNorm(shape, args.get("eps"), w)
    ctx.replace_with_module(node, norm, "F.rms_norm", inputs=(args["input"],))


NEUTRAL_FUNCTIONS.update({"unfold", F.unfold, F.fold, F.upsample, F.upsample_bilinear})

_BUILTIN[0] = False  # from here on, registrations are the user's
