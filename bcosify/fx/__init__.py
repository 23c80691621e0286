"""Tracing and graph rewriting.

- :mod:`~bcosify.fx.ops`: the op table (every op, every spelling, what it is);
- :mod:`~bcosify.fx.registry`: the rule registry (bcosify's rules and yours, one lookup);
- ``rules_torch``, ``rules_torchvision``, ``rules_timm``: the built-in rules, loaded on demand;
- :mod:`~bcosify.fx.graph`: graph analysis (gates, the product policy, projections);
- :mod:`~bcosify.fx.passes`: the passes that rewrite the graph;
- :mod:`~bcosify.fx.tracer` and :mod:`~bcosify.fx.nodemap`: tracing, and the node map.
"""

from bcosify.fx.registry import (
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
