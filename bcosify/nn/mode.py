"""Explanation mode and the recording of constant terms.

In explanation mode every dynamic module detaches its data-dependent factor (the ``|cos|^(B-1)``
scale of a B-cos unit, a norm's standard deviation, an activation's gate). The network is then
linear in its input and its additive constants, so the input gradient is the dynamic weight W(x).

While a :class:`ConstantRecorder` is active, modules that add a constant (a kept bias, the logit
bias) add it through :func:`add_constant`, which turns the constant into a per-sample leaf tensor
whose gradient gives that constant's contribution to each sample's output.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = [
    "DetachableModule",
    "set_explanation_mode",
    "is_explanation_mode",
    "ConstantRecorder",
    "add_constant",
    "constant_leaf",
]


class DetachableModule:
    """Mixin for modules whose data-dependent factors are detached in explanation mode."""

    explanation_mode: bool = False

    def set_explanation_mode(self, on: bool = True) -> None:
        self.explanation_mode = bool(on)


def set_explanation_mode(model: nn.Module, on: bool = True) -> None:
    """Switch explanation mode on or off for every dynamic module of ``model``."""
    for m in model.modules():
        if isinstance(m, DetachableModule):
            m.set_explanation_mode(on)


def is_explanation_mode(model: nn.Module) -> bool:
    """Whether any dynamic module of ``model`` is in explanation mode."""
    return any(isinstance(m, DetachableModule) and m.explanation_mode for m in model.modules())


_local = threading.local()


class ConstantRecorder:
    """Collects the constants added during one forward pass as per-sample leaf tensors.

    Args:
        names: qualified module names by ``id(module)``, used to name the constants.
    """

    def __init__(self, names: dict[int, str]):
        self.names = names
        self.leaves: list[tuple[str, Tensor]] = []

    def record(self, module: nn.Module, name: str, like: Tensor, constant: Tensor) -> Tensor:
        c = constant.detach().to(like.dtype)
        if c.dim() > like.dim():
            raise ValueError(f"constant {name} has more dimensions than the tensor it is added to")
        c = c.reshape((1,) * (like.dim() - c.dim()) + tuple(c.shape))
        leaf = c.expand((like.shape[0],) + tuple(c.shape[1:])).clone().requires_grad_(True)
        label = getattr(module, "constant_label", None)
        if label:
            full = f"{label}.{name}" if name else label
        else:
            prefix = self.names.get(id(module), type(module).__name__)
            full = f"{prefix}.{name}" if prefix else name
        self.leaves.append((full, leaf))
        return leaf

    @contextmanager
    def active(self) -> Iterator[ConstantRecorder]:
        previous = getattr(_local, "recorder", None)
        _local.recorder = self
        try:
            yield self
        finally:
            _local.recorder = previous


def constant_leaf(module: nn.Module, name: str, like: Tensor, constant: Tensor) -> Tensor:
    """Return ``constant``, or while a recorder is active, a recorded per-sample leaf equal to it
    (for a constant that enters the network linearly, e.g. a concatenated class token).

    ``like`` is an input-dependent tensor that gives the batch size.
    """
    recorder = getattr(_local, "recorder", None)
    if recorder is None or torch.jit.is_scripting():
        return constant
    return recorder.record(module, name, like, constant)


def add_constant(module: nn.Module, name: str, x: Tensor, constant: Tensor) -> Tensor:
    """Return ``x + constant``, recording the constant when a recorder is active.

    ``constant`` must broadcast against ``x`` and must not vary over the batch dimension.
    """
    recorder = getattr(_local, "recorder", None)
    if recorder is None or torch.jit.is_scripting():
        return x + constant
    return x + recorder.record(module, name, x, constant)
