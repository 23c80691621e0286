"""Graph passes of the converter. Each pass is a small function over the traced graph; what
they know of ops comes from the op table (:mod:`bcosify.fx.ops`), of rules from the registry
(:mod:`bcosify.fx.registry`), and of the graph from its analysis (:mod:`bcosify.fx.graph`)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.errors import BcosifyError
from bcosify.fx import nodemap, ops, registry
from bcosify.fx.graph import analyse
from bcosify.report import ConversionReport

__all__ = [
    "RewriteContext",
    "functionalize_in_place",
    "convert_nodes",
    "move_head_before_pool",
    "encode_input",
    "add_logit",
]


class RewriteContext:
    """State shared by the passes: the graph module, the options and the report."""

    def __init__(self, gm: fx.GraphModule, config: BcosConfig, report: ConversionReport):
        self.gm = gm
        self.graph = gm.graph
        self.config = config
        self.report = report
        self.unsupported_nodes: list[tuple[str, str, str]] = []
        # what the rules read: input-dependent nodes, gates and their branch, the product
        # policy's detached factors (node -> (operand index, why)), q/k/v projections
        found = analyse(gm, config.products)
        self.dependent = found.dependent
        self.detach_policy = found.detach_policy
        self.gates, self.gate_branch = found.gates, found.gate_branch
        self.projections = found.projections
        self._replaced: dict[str, Any] = {}
        self._counter = 0
        # for the node map: removed source node -> the source node whose value replaces it, and
        # the (source) global pooling node in front of the classifier
        self.aliases: dict[str, str] = {}
        self.pool_origin: str | None = None

    # -- helpers used by rules -------------------------------------------------------------
    def qualname(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack")
        if stack:
            path = list(stack.keys())[-1]
            path = path if isinstance(path, str) else str(path)
            return f"{path}.{node.name}" if path else node.name
        return node.name

    def record(self, node: fx.Node, action: str, what: str, detail: str = "") -> None:
        self.report.add(action, what, self.qualname(node), detail)

    def unsupported(self, node: fx.Node, kind: str, hint: str) -> None:
        self.unsupported_nodes.append((self.qualname(node), kind, hint))

    def add_submodule(self, hint: str, module: nn.Module) -> str:
        base = "bcosify_" + "".join(c if c.isalnum() else "_" for c in hint)
        name = base
        while hasattr(self.gm, name):
            self._counter += 1
            name = f"{base}_{self._counter}"
        self.gm.add_submodule(name, module)
        return name

    def remove_node(self, node: fx.Node, what: str) -> None:
        self.record(node, "removed", what)
        source = node.args[0] if node.args else node.kwargs["input"]
        origin = node.meta.get(nodemap.ORIGIN)
        into = source.meta.get(nodemap.ORIGIN) if isinstance(source, fx.Node) else None
        if origin is not None and into is not None:
            self.aliases[origin] = into
        node.replace_all_uses_with(source)
        self.graph.erase_node(node)

    def replace_with_module(
        self,
        node: fx.Node,
        module: nn.Module,
        what: str,
        inputs: Sequence[Any] | None = None,
        quiet: bool = False,
    ) -> fx.Node:
        name = self.add_submodule(node.name, module)
        if inputs is None:
            inputs = (node.args[0] if node.args else node.kwargs["input"],)
        with self.graph.inserting_before(node):
            new = self.graph.call_module(name, tuple(inputs))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)
        if node in self.dependent:
            self.dependent.add(new)
        if not quiet:
            self.report.add("replaced", f"{what} -> {type(module).__name__}", self.qualname(new))
        return new

    def detach_gate(self, mul: fx.Node, index: int) -> None:
        gate = mul.args[index]
        name = self.add_submodule(f"{gate.name}_detach", bnn.DetachableGate())
        with self.graph.inserting_after(gate):
            detached = self.graph.call_module(name, (gate,))
        detached.meta = dict(gate.meta)
        mul.replace_input_with(gate, detached)
        self.record(mul, "inserted", "DetachableGate (x * gate)")

    def detach_operand(self, node: fx.Node, index: int, why: str) -> None:
        """Detach the operand at ``node.args[index]`` alone in explanation mode (``x * x``
        keeps its other occurrence)."""
        operand = node.args[index]
        name = self.add_submodule(f"{operand.name}_detach", bnn.DetachableGate())
        with self.graph.inserting_before(node):
            detached = self.graph.call_module(name, (operand,))
        detached.meta = dict(operand.meta)
        self.dependent.add(detached)
        args = list(node.args)
        args[index] = detached
        node.args = tuple(args)
        self.record(node, "inserted", "DetachableGate (product policy)", why)


# ----------------------------------------------------------------------- in-place operations

_IN_PLACE_FUNCTIONS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ipow,
    operator.imatmul,
}
# ops whose result may share memory with their input (a mutation of one is a mutation of the
# other): views, and casts, copies, dropout and the identity, which may return their input
_VIEW_OPS = (
    "view",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "permute",
    "split",
    "copy",
    "cast",
    "identity",
    "dropout",
    "alpha_dropout",
)


def _is_view(node: fx.Node, gm: fx.GraphModule) -> bool:
    return (
        ops.is_op(node, *_VIEW_OPS, gm=gm)
        and node.target not in ("clone", torch.clone)
        and bool(node.args)
        and isinstance(node.args[0], fx.Node)
    )


def _aliases(target: fx.Node, gm: fx.GraphModule, before: int, order: dict) -> set[fx.Node]:
    """The nodes computed before position ``before`` that may share memory with ``target``:
    the tensors it is a view of, and their views, transitively."""
    found, stack = {target}, [target]
    while stack:
        node = stack.pop()
        linked = [u for u in node.users if _is_view(u, gm)]
        if _is_view(node, gm):
            linked.append(node.args[0])
        for other in linked:
            if other not in found and order[other] < before:
                found.add(other)
                stack.append(other)
    return found


def positional_operands(gm: fx.GraphModule) -> None:
    """Write the operands of binary ops given by keyword (``torch.mul(x, other=y)``,
    ``x.add(other=y)``) as positional arguments, as the rules and the analysis read them."""
    for node in gm.graph.nodes:
        if not ops.is_op(node, "mul", "add", "sub", "div", "pow") or "other" not in node.kwargs:
            continue
        kwargs = dict(node.kwargs)
        args = list(node.args)
        if not args and "input" in kwargs:
            args.append(kwargs.pop("input"))
        if len(args) == 1:
            args.append(kwargs.pop("other"))
            node.args, node.kwargs = tuple(args), kwargs


def _mutates_first_argument(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__")
    if node.op == "call_function":
        if node.target in _IN_PLACE_FUNCTIONS or node.kwargs.get("inplace") is True:
            return True
        name = getattr(node.target, "__name__", "")
        module = getattr(node.target, "__module__", "") or ""
        return name.endswith("_") and not name.endswith("__") and module.startswith("torch")
    if node.op == "call_module":
        return getattr(gm.get_submodule(str(node.target)), "inplace", False) is True
    return False


def functionalize_in_place(gm: fx.GraphModule) -> list[tuple[str, str, str]]:
    """Make in-place operations explicit in the graph: what uses a tensor after an operation
    changed it in place (``x.add_(c)``, ``x += c``, ``F.relu(x, inplace=True)``) now uses that
    operation's result. The rules may then rewrite the operation out of place (a reported
    constant, a ReLU that keeps its input) without changing what later nodes see.

    A mutation through a view (``x[:, 1:].add_(c)``) also changes the viewed tensor; where that
    tensor is used afterwards the mutation is not followed, and it is returned as unsupported
    (qualified name, kind, hint) instead of converted silently wrong.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    problems: list[tuple[str, str, str]] = []
    for node in list(gm.graph.nodes):
        if not _mutates_first_argument(node, gm) or not node.args:
            continue
        target = node.args[0]
        if not isinstance(target, fx.Node):
            continue
        aliases = _aliases(target, gm, order[node], order) - {target}
        if any(u is not node and order[u] > order[node] for a in aliases for u in a.users):
            kind = str(getattr(node.target, "__name__", node.target))
            problems.append(
                (
                    node.name,
                    kind,
                    "an in-place operation on a tensor that a view or another name of it is "
                    "read from afterwards; write it out of place (y = x + c)",
                )
            )
            continue
        for user in list(target.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(target, node)
    return problems


def _skipped(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def convert_nodes(ctx: RewriteContext) -> None:
    """Apply the module and function rules to every node outside gate branches."""
    gm, config = ctx.gm, ctx.config
    for node in list(ctx.graph.nodes):
        if node.op in ("placeholder", "output", "get_attr") or node not in ctx.dependent:
            continue  # constants and shape arithmetic need no conversion
        if node in ctx.gate_branch and node not in ctx.projections:
            if node in ctx.gates:
                ctx.record(node, "kept", "gate branch (detached in explanation mode)")
            continue
        if node.op == "call_module":
            _convert_module_node(ctx, node, gm.get_submodule(node.target), config)
            continue
        module_stack = node.meta.get("nn_module_stack") or {}
        if any(_skipped(str(p), config.skip_modules) for p in module_stack):
            continue
        target = node.target
        rule = registry.get_function_rule(target)
        if rule is not None:
            rule(ctx, node)
        else:
            kind = target if isinstance(target, str) else getattr(target, "__name__", str(target))
            what = f"method .{kind}()" if node.op == "call_method" else f"function {kind}"
            ctx.unsupported(
                node,
                what,
                "no conversion rule; register one with bcosify.register_function_rule",
            )


def _convert_module_node(
    ctx: RewriteContext, node: fx.Node, module: nn.Module, config: BcosConfig
) -> None:
    name = str(node.target)
    if _skipped(name, config.skip_modules):
        ctx.record(node, "skipped", type(module).__name__)
        return
    if name in ctx._replaced:
        result = ctx._replaced[name]
    elif node in ctx.projections and ops.op_of_module(type(module)) is ops.OPS["linear"]:
        result = bnn.PlainLinear.from_linear(module, keep_bias=config.keep_bias)
        ctx._replaced[name] = result
        ctx.gm.set_submodule(name, result)
        ctx.record(node, "replaced", "Linear -> PlainLinear (attention q/k/v projection)")
    else:
        rule, why = registry.resolve_module_rule(type(module))
        kind = type(module).__module__ + "." + type(module).__qualname__
        if rule is None:
            ctx.unsupported(
                node,
                kind,
                why
                or "no conversion rule for this module type; register one with "
                "bcosify.register_module_rule or skip it",
            )
            return
        result = rule(module, config)
        if result is None:
            ctx.unsupported(
                node, kind, getattr(rule, "declined", "its rule does not cover this configuration")
            )
            return
        if not (isinstance(result, nn.Module) or result in (registry.KEEP, registry.REMOVE)):
            raise BcosifyError(
                f"the conversion rule {getattr(rule, '__qualname__', rule)!r} for {kind} (at "
                f"{name}) returned {result!r}; a module rule returns a replacement nn.Module, "
                "bcosify.KEEP, bcosify.REMOVE, or None when it does not support the module"
            )
        ctx._replaced[name] = result
        if result is module:
            ctx.record(node, "kept", type(module).__name__, "changed in place by its rule")
        elif isinstance(result, nn.Module):
            ctx.gm.set_submodule(name, result)
            ctx.record(node, "replaced", f"{_describe(module)} -> {_describe(result)}")
    if result is registry.KEEP and _interesting_keep(module):
        ctx.record(node, "kept", type(module).__name__)
    elif result is registry.REMOVE:
        ctx.remove_node(node, type(module).__name__)


def _describe(module: nn.Module) -> str:
    act = getattr(module, "act", None)
    name = type(module).__name__
    return f"{name}({type(act).__name__})" if isinstance(act, nn.Module) else name


def _interesting_keep(module: nn.Module) -> bool:
    return isinstance(module, (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AdaptiveMaxPool2d))


# ------------------------------------------------------------------ classifier before pooling


def _is_passthrough(ctx: RewriteContext, node: fx.Node) -> bool:
    """Dropout, the identity, or a flatten of N x C x 1 x 1 to N x C: what may stand between the
    global pooling and the classifier."""
    if node.op == "call_module":
        m = ctx.gm.get_submodule(node.target)
        if ops.is_op(node, "dropout", "identity", gm=ctx.gm):
            return True
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if ops.is_op(node, "flatten", "view", "squeeze") and node.target not in (
        "view_as",
        "reshape_as",
    ):
        rest = list(node.args[1:]) + list(node.kwargs.values())
        if ops.is_op(node, "flatten"):
            return rest in ([1], [1, -1])
        if ops.is_op(node, "squeeze"):
            return True
        # view/reshape(N, -1): the channel count must not be hard-coded
        if len(rest) == 2:
            return rest[-1] == -1
        return len(rest) == 1 and isinstance(rest[0], (list, tuple)) and rest[0][-1:] == (-1,)
    return False


def _is_global_avg_pool(ctx: RewriteContext, node: fx.Node) -> bool:
    if node.op == "call_module":
        m = ctx.gm.get_submodule(node.target)
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))
    if node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if ops.is_op(node, "mean"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
        return tuple(sorted(d % 4 for d in dims if isinstance(d, int))) == (2, 3)
    return False


def _is_channels_last_mean(node: fx.Node) -> bool:
    """A mean over the positions of channels-last features: ``x.mean((1, 2))`` of N x H x W x C
    (timm's NHWC heads) or ``x.mean(1)`` of N x L x C tokens.

    The channel axis is the last and is not reduced, so a linear map on the last axis commutes
    with it. (Reducing the last axis too would need a 3-d input for ``(1, 2)`` or a 2-d one for
    ``1``, and then the head's input would be the 1-d batch axis: no classifier is written so.)
    """
    if not ops.is_op(node, "mean"):
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
    if node.kwargs.get("keepdim", False) or (len(node.args) > 2 and node.args[2]):
        return False
    return dims in ((1, 2), (1,))


def move_head_before_pool(ctx: RewriteContext) -> None:
    """Rewrite ``global avg pool -> flatten -> linear`` as ``1x1 conv -> pool -> flatten``, and
    ``mean over positions -> linear`` of channels-last features as ``linear -> mean``.

    Exact at B=1 (pooling and a linear map commute); with B=2 the B-cos head acts per position.
    """
    for node in list(ctx.graph.nodes):
        if node.op != "call_module" or node in ctx.gate_branch:
            continue
        linear = ctx.gm.get_submodule(node.target)
        if not isinstance(linear, bnn.BcosLinear):
            continue
        chain = node.args[0]
        while isinstance(chain, fx.Node) and len(chain.users) == 1 and _is_passthrough(ctx, chain):
            chain = chain.args[0]
        if not (isinstance(chain, fx.Node) and len(chain.users) == 1):
            continue
        if _is_global_avg_pool(ctx, chain):
            ctx.gm.set_submodule(str(node.target), _linear_to_conv(linear))
            what = "Linear -> 1x1 BcosConv2d before global pooling"
        elif _is_channels_last_mean(chain):
            what = "Linear -> per-position BcosLinear before the mean over positions"
        else:
            continue
        features = chain.args[0]
        with ctx.graph.inserting_before(chain):
            conv_node = ctx.graph.call_module(str(node.target), (features,))
        conv_node.meta = dict(node.meta)
        # node map: the per-position head has no source counterpart, the pooled chain now
        # carries logits (the head's value), and ``features`` is what fed the pooling
        conv_node.meta.pop(nodemap.ORIGIN, None)
        ctx.pool_origin = chain.meta.get(nodemap.ORIGIN)
        link = chain
        while link is not node:
            link.meta.pop(nodemap.ORIGIN, None)
            link = next(iter(link.users))
        if nodemap.ORIGIN in node.meta:
            node.args[0].meta[nodemap.ORIGIN] = node.meta[nodemap.ORIGIN]
        chain.replace_input_with(features, conv_node)
        node.replace_all_uses_with(node.args[0])
        ctx.graph.erase_node(node)
        # one entry for the head: it was replaced and moved in one go
        ctx.report.entries = [
            e
            for e in ctx.report.entries
            if not (e.action == "replaced" and e.name == str(node.target))
        ]
        ctx.report.add("moved", what, str(node.target))


def _linear_to_conv(linear: bnn.BcosLinear) -> bnn.BcosConv2d:
    out_f, in_f = linear.weight.shape
    conv = bnn.BcosConv2d(
        in_f,
        out_f // linear.max_out,
        1,
        bias=linear.bias is not None,
        device="meta",
        b=linear.b,
        max_out=linear.max_out,
        normalize_weights=linear.normalize_weights,
    )
    conv.weight = nn.Parameter(
        linear.weight.detach().view(out_f, in_f, 1, 1), linear.weight.requires_grad
    )
    if linear.bias is not None:
        conv.bias = linear.bias
    conv.train(linear.training)
    return conv


# ------------------------------------------------------------------------- input encoding


def encode_input(
    ctx: RewriteContext,
    mean: Sequence[float],
    std: Sequence[float],
    size: tuple[int, int] | None = None,
) -> None:
    """Insert ``[x, 1 - x]`` after the input and fold the normalisation into the first layer.
    ``size``: the only image size the model accepts (it was traced at that size), or None.

    The fold is bias-free: ``W6 = [W (1 - mean) / std, -W mean / std]`` per input channel, exact
    also at zero-padded borders. Where a consumer of the input is not a B-cos conv, a fixed
    :class:`~bcosify.nn.EncodedNormalize` maps the encoding back instead.
    """
    placeholders = [n for n in ctx.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise BcosifyError("the traced model has no input")
    x = placeholders[0]
    channels = len(mean)
    consumers = [u for u in x.users if not ops.is_op(u, "shape")]
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    std_t = torch.as_tensor(std, dtype=torch.float64)

    def foldable(node: fx.Node) -> bool:
        if node.op != "call_module" or node.args[0] is not x or len(node.args) != 1:
            return False
        m = ctx.gm.get_submodule(node.target)
        return isinstance(m, bnn.BcosConv2d) and m.groups == 1 and m.in_channels == channels

    name = ctx.add_submodule("input_encoding", bnn.InputEncoding(channels, size))
    with ctx.graph.inserting_after(x):
        enc = ctx.graph.call_module(name, (x,))
    ctx.report.add("inserted", "InputEncoding [x, 1-x]", name)
    if consumers and all(foldable(u) for u in consumers):
        for u in consumers:
            conv = ctx.gm.get_submodule(u.target)
            w = conv.weight
            standardized = getattr(conv, "standardize", False)
            if standardized:  # a weight-standardised conv: fold its effective filter
                with torch.no_grad():
                    w = nn.Parameter(conv._weight().detach().clone(), w.requires_grad)
            with torch.no_grad():
                a = ((1 - mean_t) / std_t).to(w).view(1, -1, 1, 1)
                c = (-mean_t / std_t).to(w).view(1, -1, 1, 1)
                w6 = torch.cat([w * a, w * c], dim=1)
            new = type(conv).from_conv2d(
                conv,
                b=conv.b,
                keep_bias=conv.bias is not None,
                normalize_weights=conv.normalize_weights,
                weight=nn.Parameter(w6, requires_grad=w.requires_grad),
            )
            if standardized:
                new.standardize = False
                new.gain = None
            if ctx.config.first_layer_norm == "normalized":  # the published code's patch norm
                new.set_norm_input(torch.cat([mean_t, 1 - mean_t]), torch.cat([std_t, std_t]))
            ctx.gm.set_submodule(str(u.target), new)
            u.replace_input_with(x, enc)
            ctx.report.add("folded", "input normalisation into first layer (bias-free)", u.target)
    else:
        param = next(ctx.gm.parameters(), None)
        dtype = torch.float32 if param is None else param.dtype
        normalize = bnn.EncodedNormalize(mean, std, dtype=dtype)
        norm_name = ctx.add_submodule("encoded_normalize", normalize)
        with ctx.graph.inserting_after(enc):
            normed = ctx.graph.call_module(norm_name, (enc,))
        for u in consumers:
            u.replace_input_with(x, normed)
        ctx.report.add("inserted", "EncodedNormalize (first layer not foldable)", norm_name)


# ---------------------------------------------------------------------------- logit layer


def output_node(graph: fx.Graph) -> fx.Node:
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    if not isinstance(out.args[0], fx.Node):
        raise BcosifyError(
            "the model returns "
            f"{type(out.args[0]).__name__}, not a single tensor of logits; wrap it in a module "
            "that returns the logits only"
        )
    return out


def infer_num_classes(ctx: RewriteContext) -> int | None:
    node = output_node(ctx.graph).args[0]
    seen = 0
    while isinstance(node, fx.Node) and seen < 20:
        seen += 1
        if node.op == "call_module":
            m = ctx.gm.get_submodule(node.target)
            for attr in ("out_features", "out_channels"):
                if hasattr(m, attr):
                    return int(getattr(m, attr)) // int(getattr(m, "max_out", 1))
        if not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
    return None


def add_logit(ctx: RewriteContext, bias: float) -> None:
    out = output_node(ctx.graph)
    name = ctx.add_submodule("logit_layer", bnn.LogitLayer(bias))
    with ctx.graph.inserting_before(out):
        new = ctx.graph.call_module(name, (out.args[0],))
    out.replace_input_with(out.args[0], new)
    ctx.report.add("inserted", f"LogitLayer (bias {bias:.4f})", name)
