"""Exceptions raised by bcosify.

Every error a user can trigger is a :class:`BcosifyError`, so callers can catch one type; messages
name the problem and how to fix it.
"""

from __future__ import annotations

__all__ = ["BcosifyError", "UnsupportedLayerError", "TraceError", "ModelSourceError"]


class BcosifyError(Exception):
    """Base class of all errors raised by bcosify on bad input."""


class UnsupportedLayerError(BcosifyError, NotImplementedError):
    """The model contains operations no conversion rule covers.

    Attributes:
        nodes: one ``(qualified_name, type_or_op, hint)`` tuple per offending graph node.
    """

    def __init__(self, nodes: list[tuple[str, str, str]]):
        self.nodes = list(nodes)
        lines = [f"cannot convert {len(self.nodes)} operation(s) with no B-cos conversion rule:"]
        for name, kind, hint in self.nodes:
            lines.append(f"  - {name} ({kind}): {hint}")
        lines.append(
            "Fix: register a rule with bcosify.register_module_rule / register_function_rule, "
            "or keep the module unconverted with BcosConfig(skip_modules=(<qualified name>, ...))."
        )
        super().__init__("\n".join(lines))


class TraceError(BcosifyError):
    """torch.fx could not trace the model (typically data-dependent Python control flow)."""


class ModelSourceError(BcosifyError):
    """A source model or its weights could not be built or found."""
