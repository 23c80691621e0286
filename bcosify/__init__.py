"""bcosify: turn pretrained image classifiers into B-cos networks with exact explanations.

Example:
    >>> import bcosify, torch, torchvision
    >>> model = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> e = bcosify.explain(model, torch.rand(1, 3, 64, 64))
    >>> bool(e.completeness_error.max() < 1e-4)
    True
"""

from bcosify.config import BcosConfig
from bcosify.convert import analyze, convert, is_converted
from bcosify.errors import BcosifyError, ModelSourceError, TraceError, UnsupportedLayerError
from bcosify.explain import Explanation, explain, explanation_mode
from bcosify.fx import (
    KEEP,
    REMOVE,
    declare_safe_subclass,
    register_function_rule,
    register_module_rule,
    scoped_rules,
    unregister_function_rule,
    unregister_module_rule,
)
from bcosify.fx.nodemap import NodeMap, node_map
from bcosify.io import load, save
from bcosify.report import ConversionReport
from bcosify.sources import build_model

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
    "declare_safe_subclass",
    "register_function_rule",
    "register_module_rule",
    "scoped_rules",
    "unregister_function_rule",
    "unregister_module_rule",
    "save",
]
