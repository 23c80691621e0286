"""Tracing and graph rewriting: the tracer, the rule tables and the passes."""

from bcosify.fx.rules import (
    KEEP,
    REMOVE,
    declare_safe_subclass,
    get_module_rule,
    list_module_rules,
    load_library_rules,
    register_function_rule,
    register_module_rule,
    scoped_rules,
    unregister_function_rule,
    unregister_module_rule,
)
from bcosify.fx.tracer import BcosTracer, trace

__all__ = [
    "KEEP",
    "REMOVE",
    "BcosTracer",
    "declare_safe_subclass",
    "get_module_rule",
    "list_module_rules",
    "load_library_rules",
    "register_function_rule",
    "register_module_rule",
    "scoped_rules",
    "trace",
    "unregister_function_rule",
    "unregister_module_rule",
]
