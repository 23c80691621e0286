"""What a converted model knows about itself, kept through copies.

A converted model carries its conversion config, preprocessing, number of classes, source, node
map, conversion report and eval transform as attributes (``model.bcosify_config`` and so on).
A plain ``torch.fx.GraphModule`` drops attributes it did not make when it is deep-copied (EMA
copies, ``copy.deepcopy`` before an experiment) and keeps them, but not its ``meta``, when
pickled. A converted model is therefore a :class:`BcosGraphModule`, which keeps them through
``copy.deepcopy``, pickling (DataLoader workers, multiprocessing) and both in turn;
``bcosify.save`` and ``bcosify.load`` write and rebuild them.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import fx, nn

from bcosify.errors import BcosifyError

ATTRIBUTES = (
    "bcosify_config",
    "bcosify_preprocessing",
    "bcosify_num_classes",
    "bcosify_source",
    "bcosify_node_map",
    "conversion_report",
    "transform",
)
"""The metadata attributes of a converted model."""


class BcosGraphModule(fx.GraphModule):
    """A ``torch.fx.GraphModule`` whose metadata attributes (:data:`ATTRIBUTES`) survive
    ``copy.deepcopy`` and pickling.

    Example:
        >>> import copy, pickle, torch
        >>> gm = BcosGraphModule(fx.symbolic_trace(torch.nn.Linear(2, 2)), None)
        >>> gm.bcosify_num_classes = 2
        >>> copy.deepcopy(pickle.loads(pickle.dumps(gm))).bcosify_num_classes
        2
    """

    def __init__(self, root: nn.Module, graph: fx.Graph | None, class_name: str | None = None):
        graph = root.graph if graph is None else graph
        super().__init__(root, graph, class_name or type(root).__name__)

    def _metadata(self) -> dict[str, Any]:
        return {n: self.__dict__[n] for n in ATTRIBUTES if n in self.__dict__}

    def __deepcopy__(self, memo: dict[int, Any]) -> BcosGraphModule:
        values = self._metadata()
        res = super().__deepcopy__(memo)
        for name, value in values.items():
            setattr(res, name, copy.deepcopy(value, memo))
        return res

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild, args = super().__reduce__()
        return (_rebuild, (rebuild, args, self._metadata(), type(self).__name__))


def _rebuild(rebuild, args, values: dict[str, Any], class_name: str) -> BcosGraphModule:
    plain = rebuild(*args)  # torch's own unpickling: a plain GraphModule
    gm = BcosGraphModule(plain, plain.graph, class_name)
    gm.train(plain.training)
    for name, value in values.items():
        setattr(gm, name, value)
    return gm


def architecture_fingerprint(model: fx.GraphModule) -> str:
    """A hash of a converted model's architecture: its graph's code and its modules (types and
    hyperparameters, not weights). Two conversions of the same architecture with the same config
    have the same fingerprint."""
    import hashlib

    return hashlib.sha256((model.code + "\n" + repr(model)).encode()).hexdigest()


def attach(model: nn.Module, **values: Any) -> nn.Module:
    """Set metadata attributes (:data:`ATTRIBUTES`) on ``model``.

    Raises:
        BcosifyError: for a name that is not one of :data:`ATTRIBUTES`.
    """
    unknown = sorted(set(values) - set(ATTRIBUTES))
    if unknown:
        raise BcosifyError(f"unknown metadata {unknown}; the known names are {list(ATTRIBUTES)}")
    for name, value in values.items():
        setattr(model, name, value)
    return model
