"""Graph analysis helpers shared by the rules and the passes (no rewriting here)."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx


def matmul_operands(node: fx.Node) -> list[Any]:
    """The two tensor operands of a matmul-like node (``einsum`` takes them after the equation)."""
    if node.target is torch.einsum:
        ops = node.args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = ops[0]
        return list(ops)
    return list(node.args[:2])
