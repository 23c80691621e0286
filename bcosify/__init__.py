"""bcosify: turn pretrained image classifiers into B-cos networks with exact explanations.

Example:
    >>> import bcosify, torch, torchvision
    >>> model = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> e = bcosify.explain(model, torch.rand(1, 3, 64, 64))
    >>> bool(e.completeness_error.max() < 1e-4)
    True
"""

import sys
import types
from typing import TYPE_CHECKING

from bcosify._lazy import lazy_exports

# The public names load on first use, so that `import bcosify` and `bcosify --help` do not pay
# for torch, torchvision or timm (PEP 562).
_EXPORTS = {
    "BcosConfig": "bcosify.config",
    "analyze": "bcosify.convert",
    "convert": "bcosify.convert",
    "is_converted": "bcosify.convert",
    "BcosifyError": "bcosify.errors",
    "ModelSourceError": "bcosify.errors",
    "TraceError": "bcosify.errors",
    "UnsupportedLayerError": "bcosify.errors",
    "Explanation": "bcosify.explain",
    "explain": "bcosify.explain",
    "explanation_mode": "bcosify.explain",
    "KEEP": "bcosify.fx.registry",
    "REMOVE": "bcosify.fx.registry",
    "declare_safe_subclass": "bcosify.fx.registry",
    "register_function_rule": "bcosify.fx.registry",
    "register_module_rule": "bcosify.fx.registry",
    "scoped_rules": "bcosify.fx.registry",
    "unregister_function_rule": "bcosify.fx.registry",
    "unregister_module_rule": "bcosify.fx.registry",
    "NodeMap": "bcosify.fx.nodemap",
    "node_map": "bcosify.fx.nodemap",
    "push_to_hub": "bcosify.hub",
    "load": "bcosify.io",
    "save": "bcosify.io",
    "ConversionReport": "bcosify.report",
    "build_model": "bcosify.sources",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from bcosify.config import BcosConfig
    from bcosify.convert import analyze, convert, is_converted
    from bcosify.errors import BcosifyError, ModelSourceError, TraceError, UnsupportedLayerError
    from bcosify.explain import Explanation, explain, explanation_mode
    from bcosify.fx.nodemap import NodeMap, node_map
    from bcosify.fx.registry import (
        KEEP,
        REMOVE,
        declare_safe_subclass,
        register_function_rule,
        register_module_rule,
        scoped_rules,
        unregister_function_rule,
        unregister_module_rule,
    )
    from bcosify.hub import push_to_hub
    from bcosify.io import load, save
    from bcosify.report import ConversionReport
    from bcosify.sources import build_model


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, subpackages=True)


class _Package(types.ModuleType):
    """``bcosify.convert`` and ``bcosify.explain`` are the functions, although submodules of the
    same names exist: importing a submodule binds it on its package, which must not hide the
    function (as ``from bcosify.convert import convert`` in an eager ``__init__`` used to)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "KEEP",
    "REMOVE",
    "BcosConfig",
    "BcosifyError",
    "ConversionReport",
    "Explanation",
    "ModelSourceError",
    "NodeMap",
    "TraceError",
    "UnsupportedLayerError",
    "analyze",
    "build_model",
    "convert",
    "explain",
    "explanation_mode",
    "is_converted",
    "load",
    "node_map",
    "push_to_hub",
    "declare_safe_subclass",
    "register_function_rule",
    "register_module_rule",
    "scoped_rules",
    "unregister_function_rule",
    "unregister_module_rule",
    "save",
]
