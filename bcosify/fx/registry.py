"""The rule registry: one lookup for bcosify's built-in rules and the user's.

A *module rule* maps a module type to a function ``rule(module, config)`` returning a replacement
module, :data:`KEEP` (leave it), :data:`REMOVE` (the call becomes the identity on its first
input), or ``None`` (this configuration is not supported: the module is reported; the rule's
``declined`` attribute says why).
Lookup walks the type's MRO, most specific class first, so a rule for a subclass (timm's
``BatchNormAct2d``) wins over its base (``nn.BatchNorm2d``); a subclass that overrides
``forward`` inherits no rule unless it is declared safe. Every type with a module rule is a leaf
for the tracer: its ``forward`` is not traced into.

A *function rule* handles a graph node calling a function (``F.relu``) or a tensor method
(``"relu_"``): ``rule(ctx, node)`` may rewrite the graph through the
:class:`~bcosify.fx.passes.RewriteContext`.

bcosify's own rules are registered per op of the op table (:mod:`bcosify.fx.ops`), for every
spelling of the op at once (:func:`register_op_rules`); they live in ``rules_torch``,
``rules_torchvision`` and ``rules_timm``, which load on demand (:func:`load_library_rules`).
A rule the user registers wins over bcosify's, gates included.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bcosify.config import BcosConfig
from bcosify.errors import BcosifyError
from bcosify.fx import ops

if TYPE_CHECKING:
    from bcosify.fx.passes import RewriteContext

__all__ = [
    "KEEP",
    "REMOVE",
    "register_module_rule",
    "register_function_rule",
    "register_op_rules",
    "extend_op",
    "get_module_rule",
    "get_function_rule",
    "list_module_rules",
    "load_library_rules",
    "resolve_module_rule",
    "scoped_rules",
    "declare_safe_subclass",
    "unregister_module_rule",
    "unregister_function_rule",
    "is_user_rule",
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
_SAFE_SUBCLASSES: set[type] = ops.SAFE_SUBCLASSES
_BUILTIN = [False]  # True while bcosify registers its own rules (load_library_rules)
# the built-in rules of each op (module rule, function rule), applied to spellings added later
_OP_RULES: dict[str, tuple[ModuleRule | None, FunctionRule | None]] = {}


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
    ("torch", "bcosify.fx.rules_torch"),
    ("torchvision", "bcosify.fx.rules_torchvision"),
    ("timm", "bcosify.fx.rules_timm"),
)
_LOADED_LIBRARY_RULES: set[str] = set()


def load_library_rules() -> list[str]:
    """Register bcosify's built-in rules: those for torch's own ops, and those for the layers of
    torchvision and timm, for each of the two that is imported (a model made of a library's
    layers cannot exist before the library is imported, so ``import bcosify`` need not import
    either). Conversion and the rule lookups call this; calling it again is cheap.

    A rule the user registered before for a library class stays: built-in rules never replace
    user rules.

    Returns:
        The rule modules loaded by this call.
    """
    loaded = []
    for library, module in _LIBRARY_RULES:
        if module in _LOADED_LIBRARY_RULES or library not in sys.modules:
            continue
        try:  # its begin_builtin_rules/end_builtin_rules calls register it
            importlib.import_module(module)
        except BaseException:
            _BUILTIN[0] = False
            _LOADED_LIBRARY_RULES.discard(module)
            _SAVED_USER_RULES.pop(module, None)
            raise
        loaded.append(module)
    return loaded


_SAVED_USER_RULES: dict[str, list] = {}


def begin_builtin_rules(module: str) -> None:
    """Called first by a built-in rule module (``rules_torch``, ``rules_timm``, ...), however it
    is imported: what it registers until :func:`end_builtin_rules` is bcosify's own, and a rule
    the user registered for the same key stays in front of it."""
    if module in _LOADED_LIBRARY_RULES:
        raise BcosifyError(f"{module} is already loaded")  # pragma: no cover
    _LOADED_LIBRARY_RULES.add(module)
    if module != _LIBRARY_RULES[0][1]:
        importlib.import_module(_LIBRARY_RULES[0][1])  # the library rules extend torch's ops
    _SAVED_USER_RULES[module] = [
        (kind, key, table[key])
        for kind, table, users in (
            ("module", _MODULE_RULES, _USER_MODULE_TYPES),
            ("function", _FUNCTION_RULES, _USER_FUNCTION_TARGETS),
        )
        for key in users
        if key in table
    ]
    _BUILTIN[0] = True


def end_builtin_rules(module: str) -> None:
    """Called last by a built-in rule module (see :func:`begin_builtin_rules`)."""
    _BUILTIN[0] = False
    for kind, key, fn in _SAVED_USER_RULES.pop(module):
        table = _MODULE_RULES if kind == "module" else _FUNCTION_RULES
        if table.get(key) is not fn:  # the user's rule stays; the built-in waits behind it
            _SHADOWED[(kind, key)] = table[key]
            table[key] = fn


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


def register_op_rules(
    name: str,
    module_rule: ModuleRule | None = None,
    function_rule: FunctionRule | None = None,
) -> None:
    """Register bcosify's rules for every spelling of the op ``name`` (for the built-in rule
    modules only): the module rule for its module classes, the function rule for its functions
    and methods. An op with a spelling that would be left without a rule is an error, so two
    spellings of one op cannot be handled differently."""
    if not _BUILTIN[0]:
        raise BcosifyError(
            "register_op_rules is for bcosify's built-in rules; use register_module_rule or "
            "register_function_rule for your own"
        )
    op = ops.OPS[name]
    if op.modules and module_rule is None:
        raise ValueError(f"the op {name!r} has module spellings but no module rule")
    if (op.functions or op.methods) and function_rule is None:
        raise ValueError(f"the op {name!r} has function spellings but no function rule")
    _OP_RULES[name] = (module_rule, function_rule)
    _apply_op_rules(op, op.modules, (*op.functions, *op.methods))


def _apply_op_rules(op: ops.Op, modules: Iterable[type], targets: Iterable[Any]) -> None:
    module_rule, function_rule = _OP_RULES[op.name]
    for m in modules:
        if module_rule is None:
            raise ValueError(f"the op {op.name!r} has no module rule for {m!r}")
        _set_rule("module", m, module_rule, False)
    for t in targets:
        if function_rule is None:
            raise ValueError(f"the op {op.name!r} has no function rule for {t!r}")
        _set_rule("function", t, function_rule, False)


def extend_op(
    name: str,
    *,
    modules: Iterable[type] = (),
    functions: Iterable[Any] = (),
    methods: Iterable[str] = (),
) -> None:
    """Add spellings to the op ``name`` and give them the op's built-in rules (for the library
    rule modules: timm's ``Sigmoid`` is a spelling of ``sigmoid``)."""
    if not _BUILTIN[0]:
        raise BcosifyError("extend_op is for bcosify's built-in rules")
    modules, functions, methods = tuple(modules), tuple(functions), tuple(methods)
    op = ops.extend(name, modules=modules, functions=functions, methods=methods)
    _apply_op_rules(op, modules, (*functions, *methods))


def add_op(op: ops.Op, module_rule: ModuleRule | None = None, function_rule=None) -> None:
    """Add a library's op to the table with its rules (for the library rule modules)."""
    ops.add(op)
    register_op_rules(op.name, module_rule, function_rule)


def is_gate(node: torch.fx.Node, gm: torch.fx.GraphModule | None) -> bool:
    """Whether ``node`` is a gate bcosify handles itself: a saturating non-linearity (a GATE op
    of the table) that the user has no rule for."""
    op = ops.op_of(node, gm)
    if op is None or op.kind is not ops.Kind.GATE:
        return False
    if node.op == "call_module":
        return not is_user_rule(type(gm.get_submodule(str(node.target))))
    return not is_user_rule(node.target)


def is_gated_activation(node: torch.fx.Node, gm: torch.fx.GraphModule | None) -> bool:
    """An activation ``x * g(x)`` (SiLU, GELU) whose output may be the gate of a GLU."""
    return ops.kind_of(node, gm) is ops.Kind.GATED_ACTIVATION


def is_structural(target: Any) -> bool:
    """A function or method that only moves or linearly combines values (a reshape)."""
    op = ops.lookup(target)
    return op is not None and op.kind is ops.Kind.STRUCTURAL
