"""The torch.fx tracer used by the converter."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bcosify.errors import TraceError
from bcosify.fx.registry import is_rule_leaf

__all__ = ["BcosTracer", "trace", "untraceable_modules"]


def _timm_notrace() -> tuple[set[type], list]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover - timm is a core dependency
        return set(), []
    return set(get_notrace_modules()), list(get_notrace_functions())


class BcosTracer(torch.fx.Tracer):
    """A tracer whose leaves are the modules that have a conversion rule, the modules named in
    ``leaf_names`` (and everything below them), and timm's no-trace modules."""

    def __init__(self, leaf_names: Iterable[str] = ()):
        notrace_modules, notrace_functions = _timm_notrace()
        super().__init__(autowrap_functions=tuple(notrace_functions))
        self.leaf_names = tuple(leaf_names)
        self.notrace_modules = notrace_modules
        self._traceable: dict[type, bool] = {}
        self.current_module = ""
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        name = module_qualified_name
        if any(name == p or name.startswith(p + ".") for p in self.leaf_names):
            return True
        if is_rule_leaf(type(m)):
            return True
        if type(m) in self.notrace_modules and not self._traces_alone(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def _traces_alone(self, m: nn.Module) -> bool:
        """Whether a timm no-trace module traces on its own (timm marks modules for its feature
        extraction, some of which trace; those that do not stay leaves, to be reported)."""
        kind = type(m)
        if kind not in self._traceable:
            probe = BcosTracer()
            probe.notrace_modules = set()
            try:
                probe.trace(m)
                self._traceable[kind] = True
            except Exception:  # any tracing failure: keep it a leaf
                self._traceable[kind] = False
        return self._traceable[kind]

    def call_module(self, m, forward, args, kwargs):
        from bcosify.fx.specialize import SpecializedModule

        previous = self.current_module
        self.current_module = self.path_of_module(m)
        buffers = self.proxy_buffer_attributes
        # a specialised graph reads its buffers as graph nodes (``rel.expand(B, -1)`` with a
        # traced batch size needs a traced tensor)
        self.proxy_buffer_attributes = buffers or isinstance(m, SpecializedModule)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:
                self.failed_module = self.current_module
            raise
        finally:
            self.current_module = previous
            self.proxy_buffer_attributes = buffers


def untraceable_modules(model: nn.Module, leaf_names: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The outermost modules the tracer keeps whole because they cannot be traced (timm's
    no-trace modules that do not trace on their own) and that have no rule, by name."""
    from bcosify.fx.specialize import shape_dependent_modules

    tracer = BcosTracer()
    kinds = {
        type(m)
        for m in model.modules()
        if type(m) in tracer.notrace_modules
        and not is_rule_leaf(type(m))
        and not tracer._traces_alone(m)
    }
    return shape_dependent_modules(model, kinds, tuple(leaf_names))


def _defaults_after_input(model: nn.Module) -> dict[str, Any] | None:
    """The optional arguments of ``model.forward`` after the image, at their defaults (``None``
    for the mask of a masked-image model, ``False`` for a flag): a classifier is converted for
    ``model(x)``, and an optional input traced as a tensor would become a required one."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    constant = (type(None), bool, int, float, str)
    concrete = {
        p.name: p.default
        for p in params[1:]
        if p.kind in positional and type(p.default) in constant
    }
    return concrete or None


def trace(model: nn.Module, leaf_names: Iterable[str] = ()) -> torch.fx.GraphModule:
    """Trace ``model`` into a GraphModule, turning tracing failures into a :class:`TraceError`."""
    tracer = BcosTracer(leaf_names)
    try:
        graph = tracer.trace(model, concrete_args=_defaults_after_input(model))
    except Exception as exc:  # torch.fx raises many types; all mean "cannot trace"
        failed = tracer.failed_module
        where = failed or "the top-level forward"
        hint = (
            f'BcosConfig(leaf_modules=("{failed}",)) and register a rule for it '
            "with bcosify.register_module_rule (or also list it in skip_modules)"
            if failed
            else "move the data-dependent code into a submodule and mark it as a leaf with "
            "BcosConfig(leaf_modules=(...))"
        )
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: in {where}: "
            f"{type(exc).__name__}: {exc}\n"
            "This usually means data-dependent Python control flow (an `if` or loop on tensor "
            f"values). Fix: {hint}."
        ) from exc
    name = type(model).__name__
    return torch.fx.GraphModule(tracer.root, graph, name)
