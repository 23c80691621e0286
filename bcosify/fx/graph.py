"""Graph analysis: what the passes need to know about a traced graph before rewriting it.

Which nodes depend on the input, which are gates (a sigmoid scaling a tensor, an attention
matrix) and which nodes only feed them, which factor of each product the product policy detaches,
and which linear layers project queries, keys and values. Nothing here rewrites the graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from bcosify.fx import nodemap, ops, registry

__all__ = ["Analysis", "analyse", "is_attention_op", "matmul_operands"]

# what may stand between a softmax and the product it scales: dropout, casts, a permutation, and
# a head-mixing linear map on the attention ("talking heads")
_CHAIN_OPS = ("dropout", "identity", "linear", "cast", "copy", "permute")


class Analysis:
    """What :func:`analyse` found in a graph.

    Attributes:
        dependent: nodes whose values depend on the input.
        detach_policy: products whose factor the product policy detaches:
            node -> (argument index, why).
        gates: gate nodes (their product detaches them).
        gate_branch: the gates and what only feeds them or other detached factors (left as it
            is: it is detached in explanation mode).
        projections: linear layers whose output reaches an attention product through reshapes
            (queries, keys, values: they stay plain linear maps).
    """

    def __init__(self, gm: fx.GraphModule, products: str):
        self.gm = gm
        self.graph = gm.graph
        self.products = products
        self.dependent = _input_dependent(gm.graph)
        self.detach_policy: dict[fx.Node, tuple[int, str]] = {}
        self.gates, self.gate_branch = _find_gates(self)
        self.projections = _find_projections(self)


def analyse(gm: fx.GraphModule, products: str = "detach") -> Analysis:
    """Analyse a traced graph (``products`` as :attr:`bcosify.BcosConfig.products`)."""
    return Analysis(gm, products)


def matmul_operands(node: fx.Node) -> list[Any]:
    """The two tensor operands of a matmul-like node (``einsum`` takes them after the equation)."""
    if node.target is torch.einsum:
        ops_ = node.args[1:]
        if len(ops_) == 1 and isinstance(ops_[0], (list, tuple)):
            ops_ = ops_[0]
        return list(ops_)
    return list(node.args[:2])


def _input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose values depend on the input (shape arithmetic does not count). The input is
    the first placeholder and any other without a default; an optional argument traced at its
    default (see ``tracer.trace``) is a constant, and so are the checks fx adds for it."""
    dep: set[fx.Node] = set()
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node in graph.nodes:
        image = node.op == "placeholder" and (node is placeholders[0] or not node.args)
        if image or (not nodemap.is_metadata(node) and any(a in dep for a in node.all_input_nodes)):
            dep.add(node)
    return dep


def _is_softmax_output(an: Analysis, node: Any) -> bool:
    """Whether ``node`` is a softmax (possibly followed by dropout or a dtype cast)."""
    for _ in range(8):
        if not isinstance(node, fx.Node):
            return False
        if ops.is_op(node, "softmax", gm=an.gm):
            return True
        # dropout, casts, and a head-mixing linear map on the attention ("talking heads")
        if not ops.is_op(node, *_CHAIN_OPS, gm=an.gm) or not node.args:
            return False
        node = node.args[0]
    return False


def _sdpa_arg(node: fx.Node, index: int, name: str) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _find_gates(an: Analysis) -> tuple[set[fx.Node], set[fx.Node]]:
    """Gate nodes and the branch of nodes that feed only detached factors.

    A gate is a sigmoid-like output scaling another tensor, or an attention matrix (a softmax)
    multiplying the values. The queries and keys of a fused attention call are detached inside the
    attention module. The branch that computes a gate or only feeds queries and keys (a
    squeeze-excitation MLP, the ``q k^T`` logits and their biases) is left as it is: it is detached
    in explanation mode, so nothing inside it needs to be B-cos.
    """
    gates: set[fx.Node] = set()
    detached_uses: set[tuple[fx.Node, fx.Node]] = set()
    for node in an.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        op = ops.op_of(node)
        name = None if op is None else op.name
        if name == "mul":
            a, b = node.args[0], node.args[1]
            if not (a in an.dependent and b in an.dependent):
                continue
            for operand in (b, a):
                if registry.is_gate(operand, an.gm) and _only_scales(an, operand):
                    gates.add(operand)
                    break
            else:  # a gated linear unit (SwiGLU, GeGLU): the activated half is the gate
                for operand in (a, b):
                    if registry.is_gated_activation(operand, an.gm) and _only_scales(an, operand):
                        gates.add(operand)
                        break
        elif name == "matmul":
            operands = matmul_operands(node)
            if len(operands) != 2 or not all(o in an.dependent for o in operands):
                continue
            for operand in operands:
                if _is_softmax_output(an, operand) and _only_scales(an, operand):
                    gates.add(operand)
                    break
        elif name == "scaled_dot_product_attention":
            for i, name in ((0, "query"), (1, "key"), (3, "attn_mask")):
                arg = _sdpa_arg(node, i, name)
                if isinstance(arg, fx.Node):
                    detached_uses.add((arg, node))
    for arg, _ in list(detached_uses):
        if all((arg, u) in detached_uses for u in arg.users):
            gates.add(arg)
    branch = _grow_branch(an.graph, set(gates))
    if an.products == "detach":
        _apply_product_policy(an, gates, branch)
    return gates, branch


def _only_scales(an: Analysis, gate: fx.Node) -> bool:
    """Whether ``gate`` is used only as a factor that scales another input-dependent tensor
    (shape queries aside): a gate that is also used otherwise (added, or only scaled by a
    constant: ``g * 0.5``) is on the explained path, where it must be converted or reported."""

    def scales(u: fx.Node) -> bool:
        if not ops.is_op(u, "mul", "matmul"):
            return False
        operands = matmul_operands(u) if ops.is_op(u, "matmul") else list(u.args[:2])
        others = [o for o in operands if o is not gate]
        return len(operands) == 2 and len(others) == 1 and others[0] in an.dependent

    return all(nodemap.is_metadata(u) or scales(u) for u in gate.users)


def _grow_branch(graph: fx.Graph, branch: set[fx.Node]) -> set[fx.Node]:
    """``branch`` and every node all of whose users are in it (what only feeds detached
    factors)."""
    for node in reversed(list(graph.nodes)):
        if node in branch or node.op in ("placeholder", "output") or not node.users:
            continue
        if all(u in branch for u in node.users):
            branch.add(node)
    return branch


def _exclusive_branch(graph: fx.Graph, root: fx.Node, consumer: fx.Node) -> set[fx.Node]:
    """``root`` and the nodes upstream of it that are computed only for ``consumer`` through
    ``root`` (empty if ``root`` has another user)."""
    if any(u is not consumer for u in root.users):
        return set()
    return _grow_branch(graph, {root})


def _policy_candidates(an: Analysis, node: fx.Node) -> list[int] | None:
    """Argument positions of ``node`` that are input-dependent factors of a product, a divisor,
    or None if ``node`` is no such product."""
    if node.op not in ("call_function", "call_method"):
        return None
    if ops.is_op(node, "mul", "matmul"):
        if node.target is torch.einsum and not (
            len(node.args) == 3 and all(isinstance(a, fx.Node) for a in node.args[1:])
        ):
            return None  # einsum with other than two operands after the equation
        offset = 1 if node.target is torch.einsum else 0
        positions = [offset, offset + 1]
    elif ops.is_op(node, "div") and node.kwargs.get("rounding_mode") is None:
        positions = [1]
    else:
        return None
    if len(node.args) <= positions[-1]:
        return None
    factors = positions if len(positions) == 2 else [0, 1]  # a / b: a and b
    if not all(node.args[i] in an.dependent for i in factors):
        return None  # by a constant: linear; c / x is not, and stays unsupported
    return positions


def _apply_product_policy(an: Analysis, gates: set[fx.Node], branch: set[fx.Node]) -> None:
    """Choose the detached factor of every product of two input-dependent tensors that is not a
    gate or an attention product (``BcosConfig.products="detach"``; docs/rules.md, "Products"):
    the divisor of a division; the factor computed through a saturating non-linearity (that is
    not itself a detached gate); else of ``a * b`` the right-hand factor (``x * modulation``, as
    gates are written) and of ``a @ b`` the left-hand one (``weights @ values``, as attention is
    written: in ``q @ (k^T @ v)`` the queries and keys are detached, the values explained).
    What is computed only for a detached factor joins the branch that is left as it is.
    Products inside such a branch need no decision; the graph is walked from the output, so the
    outermost product decides first."""
    for node in reversed(list(an.graph.nodes)):
        if node in branch:
            continue
        positions = _policy_candidates(an, node)
        if positions is None or any(node.args[i] in gates for i in positions):
            continue
        if len(positions) == 1:
            index, why = positions[0], "the divisor of an input-dependent division"
        elif ops.is_op(node, "mul"):
            index, why = positions[1], "the right-hand factor of a product (x * modulation)"
        else:
            index, why = positions[0], "the left-hand factor of a matrix product (weights @ values)"
        if len(positions) == 2:
            for i in positions:
                own = _exclusive_branch(an.graph, node.args[i], node)
                saturating = (  # (one already in a detached gate's branch is accounted for)
                    n not in branch and registry.is_gate(n, an.gm) for n in own
                )
                if any(saturating):
                    index, why = i, "the factor computed through a saturating non-linearity"
                    break
        an.detach_policy[node] = (index, why)
        operand = node.args[index]
        factors = positions if len(positions) == 2 else [0, 1]
        if all(node.args[i] is not operand for i in factors if i != index):
            # (x * x: the other occurrence stays on the explained path, so x is converted)
            own = _exclusive_branch(an.graph, operand, node)
            if own:
                branch |= own
                _grow_branch(an.graph, branch)


def is_attention_op(an: Analysis, node: fx.Node) -> bool:
    """A product of two input-dependent tensors (``q k^T``, ``attn v``) or a fused attention."""
    if node.op != "call_function" and node.op != "call_method":
        return False
    if ops.is_op(node, "scaled_dot_product_attention"):
        return True
    if ops.is_op(node, "matmul"):
        operands = matmul_operands(node)
        return len(operands) == 2 and all(o in an.dependent for o in operands)
    return False


def _find_projections(an: Analysis) -> set[fx.Node]:
    """``nn.Linear`` nodes whose output reaches an attention product through reshapes only: the
    query/key/value projections, which stay plain linear maps."""
    found: set[fx.Node] = set()
    for node in an.graph.nodes:
        if not ops.is_op(node, "linear", gm=an.gm):
            continue
        frontier, seen = list(node.users), set()
        while frontier and len(seen) < 64:
            user = frontier.pop()
            if user in seen:
                continue
            seen.add(user)
            if is_attention_op(an, user):
                found.add(node)
                break
            structural = (
                user in an.gate_branch
                or (user.op != "call_module" and registry.is_structural(user.target))
                or ops.is_op(user, "mul")
            )
            if structural:
                frontier.extend(user.users)
    return found
