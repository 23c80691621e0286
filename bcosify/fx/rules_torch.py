"""bcosify's rules for torch's own ops: one module rule and one function rule per op of the op
table (:mod:`bcosify.fx.ops`), registered for every spelling of the op at once. Loaded by
:func:`bcosify.fx.registry.load_library_rules` before the first conversion or rule lookup."""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.errors import BcosifyError
from bcosify.fx import nodemap, ops, registry
from bcosify.fx.graph import matmul_operands
from bcosify.fx.registry import (
    KEEP,
    REMOVE,
    FunctionRule,
    ModuleRule,
    add_op,
    get_module_rule,
    register_op_rules,
)

if TYPE_CHECKING:
    from bcosify.fx.passes import RewriteContext

registry.begin_builtin_rules(__name__)

# --------------------------------------------------------------------------- module rules


def _keep(module: nn.Module, config: BcosConfig):
    return KEEP


def _conv2d(module: nn.Conv2d, config: BcosConfig):
    return bnn.BcosConv2d.from_conv2d(
        module, b=config.b, keep_bias=config.keep_bias, normalize_weights=config.normalize_weights
    )


def _linear(module: nn.Linear, config: BcosConfig):
    return bnn.BcosLinear.from_linear(
        module, b=config.b, keep_bias=config.keep_bias, normalize_weights=config.normalize_weights
    )


def _batchnorm(module: nn.Module, config: BcosConfig):
    if isinstance(module, nn.BatchNorm1d):
        return bnn.UncenteredBatchNorm1d.from_batchnorm(module, keep_bias=config.keep_bias)
    return bnn.UncenteredBatchNorm2d.from_batchnorm(module, keep_bias=config.keep_bias)


def _layernorm(module: nn.LayerNorm, config: BcosConfig):
    return bnn.DetachableLayerNorm.from_layernorm(module, keep_bias=config.keep_bias)


def _groupnorm(module: nn.GroupNorm, config: BcosConfig):
    return bnn.DetachableGroupNorm.from_groupnorm(module, keep_bias=config.keep_bias)


def _relu(module: nn.Module, config: BcosConfig):
    if config.activation == "remove":
        return REMOVE
    if config.activation == "keep" and isinstance(module, nn.Hardtanh):
        return nn.ReLU()  # the cap (ReLU6) is a constant no explanation accounts for
    if getattr(module, "inplace", False):
        module.inplace = False
    return KEEP


def _hardtanh(module: nn.Hardtanh, config: BcosConfig):
    """``nn.Hardtanh(0, c)`` is a capped ReLU, as ``F.hardtanh(x, 0, c)`` and ReLU6 are."""
    if module.min_val == 0.0:
        return _relu(module, config)
    return None


_hardtanh.declined = "a clipping non-linearity that is not a capped ReLU (min_val 0)"


def _gated(kind: str) -> ModuleRule:
    def rule(module: nn.Module, config: BcosConfig):
        return bnn.GatedActivation(kind)

    return rule


def _gelu(module: nn.GELU, config: BcosConfig):
    tanh = getattr(module, "approximate", "none") == "tanh"
    return bnn.GatedActivation("gelu_tanh" if tanh else "gelu")


def _maxpool(module: nn.Module, config: BcosConfig):
    if config.maxpool == "keep":
        return KEEP
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices or module.dilation not in (1, (1, 1)):
            return KEEP
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return KEEP if module.return_indices else nn.AdaptiveAvgPool2d(module.output_size)
    return KEEP


# --------------------------------------------------------------------------- function rules


_IN_PLACE = {
    torch.relu_: torch.relu,
    F.relu_: torch.relu,
    F.hardtanh_: F.hardtanh,
    F.leaky_relu_: F.leaky_relu,
    torch.sigmoid_: torch.sigmoid,
    torch.tanh_: torch.tanh,
}


def _out_of_place(node: torch.fx.Node) -> None:
    """Write an in-place call (``relu_``, ``F.relu(x, inplace=True)``) out of place: explaining
    needs the input's value after the call."""
    if node.kwargs.get("inplace"):
        node.update_kwarg("inplace", False)
    if node.op == "call_method" and str(node.target).endswith("_"):
        node.target = str(node.target)[:-1]
    elif node.op == "call_function" and node.target in _IN_PLACE:
        node.target = _IN_PLACE[node.target]


def _rule_relu(ctx: RewriteContext, node: torch.fx.Node) -> None:
    if ctx.config.activation == "remove":
        ctx.remove_node(node, "ReLU")
    else:
        _out_of_place(node)
        capped = node.target in (F.relu6, F.hardtanh)
        if capped and ctx.config.activation == "keep":  # the cap at 6 is a constant
            node.target = torch.relu
            node.args, node.kwargs = node.args[:1], {}
            ctx.record(node, "replaced", "capped ReLU (ReLU6) -> ReLU")
            return
        ctx.record(node, "kept", "ReLU6" if capped else "ReLU")


def _rule_hardtanh(ctx: RewriteContext, node: torch.fx.Node) -> None:
    lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
    if lo == 0.0:  # a capped ReLU (ReLU6 written as hardtanh): the cap is a constant
        _rule_relu(ctx, node)
    else:
        ctx.unsupported(node, "F.hardtanh", "a clipping non-linearity that is not a ReLU6")


def _rule_gated_function(kind: str) -> FunctionRule:
    def rule(ctx: RewriteContext, node: torch.fx.Node) -> None:
        if kind == "gelu" and node.kwargs.get("approximate", "none") == "tanh":
            ctx.replace_with_module(node, bnn.GatedActivation("gelu_tanh"), "GELU")
        else:
            ctx.replace_with_module(node, bnn.GatedActivation(kind), kind)

    return rule


def _rule_max_pool2d(ctx: RewriteContext, node: torch.fx.Node) -> None:
    if ctx.config.maxpool == "keep":
        ctx.record(node, "kept", "max_pool2d")
        return
    names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    args = _call_args(node, names)
    if args.get("return_indices") or args.get("dilation", 1) not in (1, (1, 1)):
        ctx.record(node, "kept", "max_pool2d")
        return
    pool = nn.AvgPool2d(
        args["kernel_size"],
        args.get("stride"),
        args.get("padding", 0),
        args.get("ceil_mode", False),
    )
    ctx.replace_with_module(node, pool, "max_pool2d", inputs=(args["input"],))


def _rule_adaptive_max_pool2d(ctx: RewriteContext, node: torch.fx.Node) -> None:
    if ctx.config.maxpool == "keep":
        ctx.record(node, "kept", "adaptive_max_pool2d")
        return
    size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
    pool = nn.AdaptiveAvgPool2d(size)
    ctx.replace_with_module(node, pool, "adaptive_max_pool2d", inputs=(node.args[0],))


_DROPOUT_MODULES = {
    F.dropout1d: nn.Dropout1d,
    F.dropout2d: nn.Dropout2d,
    F.dropout3d: nn.Dropout3d,
    F.alpha_dropout: nn.AlphaDropout,
    torch.alpha_dropout: nn.AlphaDropout,
    torch.alpha_dropout_: nn.AlphaDropout,
}


def _rule_dropout(ctx: RewriteContext, node: torch.fx.Node) -> None:
    # ``training`` was baked in at trace time: make it a module that follows train()/eval().
    p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
    source = node.args[0] if node.args else node.kwargs["input"]
    module = _DROPOUT_MODULES.get(node.target, nn.Dropout)(p)
    ctx.replace_with_module(node, module, "dropout", inputs=(source,), quiet=True)


def _is_const(ctx: RewriteContext, a: Any) -> bool:
    return not (isinstance(a, torch.fx.Node) and a in ctx.dependent)


def _rule_mul(ctx: RewriteContext, node: torch.fx.Node) -> None:
    a, b = node.args[0], node.args[1]
    if _is_const(ctx, a) or _is_const(ctx, b):
        return  # scaling by a constant is linear
    if node in ctx.detach_policy:
        ctx.detach_operand(node, *ctx.detach_policy[node])
        return
    for i, operand in ((1, b), (0, a)):
        if operand in ctx.gates:
            ctx.detach_gate(node, i)
            return
    ctx.unsupported(
        node,
        "mul",
        "a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/"
        "softmax scaling a tensor); BcosConfig(products='detach') detaches one factor, or "
        "register a rule",
    )


def _rule_div(ctx: RewriteContext, node: torch.fx.Node) -> None:
    args = _call_args(node, ["input", "other"])
    if args.get("rounding_mode") is not None:
        ctx.unsupported(node, "div", f"a division with rounding_mode={args['rounding_mode']!r}")
        return
    if len(node.args) < 2:
        ctx.unsupported(node, "div", "a division written with keyword arguments")
        return
    if _is_const(ctx, node.args[1]):
        return
    if node in ctx.detach_policy:
        ctx.detach_operand(node, *ctx.detach_policy[node])
        return
    if _is_const(ctx, node.args[0]):
        ctx.unsupported(
            node, "div", "a constant divided by an input-dependent tensor (not linear in it)"
        )
        return
    ctx.unsupported(
        node,
        "div",
        "division by an input-dependent tensor; BcosConfig(products='detach') detaches the divisor",
    )


def constant_label(ctx: RewriteContext, node: torch.fx.Node, const: Any) -> str:
    """A readable name for a constant: the parameters/buffers it is computed from, or the node."""
    if isinstance(const, torch.fx.Node):
        names, stack, seen = [], [const], set()
        while stack and len(seen) < 64:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "get_attr":
                names.append(str(n.target))
            stack.extend(a for a in n.all_input_nodes if a not in ctx.dependent)
        if names:
            return "+".join(sorted(set(names)))
    return f"{ctx.qualname(node)}.constant"


def _rule_add(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``x + c`` / ``x - c`` / ``c - x`` with a constant ``c``: the constant is added through
    :class:`~bcosify.nn.AddConstant`, so explanations report its contribution."""
    a, b = node.args[0], node.args[1]
    const_a, const_b = _is_const(ctx, a), _is_const(ctx, b)
    if const_a == const_b:
        return  # sum of two input-dependent tensors (or of two constants): linear
    const = a if const_a else b
    if isinstance(const, (int, float)) and const == 0:
        return
    if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
        ctx.unsupported(node, "add", "an add/sub with alpha; write it as x + alpha * y")
        return
    if not isinstance(const, (int, float, torch.fx.Node)):
        ctx.unsupported(node, "add", f"an additive constant of type {type(const).__name__}")
        return
    subtract = ops.is_op(node, "sub")
    x = b if const_a else a
    label = constant_label(ctx, node, const)
    if subtract and const_a:  # c - x = (-x) + c
        with ctx.graph.inserting_before(node):
            x = ctx.graph.call_function(operator.neg, (x,))
        ctx.dependent.add(x)
    negate = subtract and not const_a
    if isinstance(const, torch.fx.Node):
        module = bnn.AddConstant(label, negate=negate)
        inputs = (x, const)
    else:
        module = bnn.AddConstant(label, value=float(const), negate=negate)
        inputs = (x,)
    new = ctx.replace_with_module(node, module, "add constant", inputs=inputs, quiet=True)
    ctx.record(new, "inserted", "AddConstant (constant reported in explanations)", label)


def _rule_cat(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """Constant pieces of a concatenation (a class token) are recorded for explanations."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    if not isinstance(tensors, (list, tuple)):
        return
    like = next((t for t in tensors if not _is_const(ctx, t)), None)
    if like is None:
        return
    new_tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.fx.Node) or not _is_const(ctx, t):
            continue
        label = constant_label(ctx, node, t)
        name = ctx.add_submodule(f"{node.name}_constant", bnn.RecordConstant(label))
        with ctx.graph.inserting_before(node):
            rec = ctx.graph.call_module(name, (t, like))
        ctx.dependent.add(rec)
        new_tensors[i] = rec
        ctx.record(node, "inserted", "RecordConstant (concatenated constant)", label)
    if node.args:
        node.args = (type(tensors)(new_tensors),) + tuple(node.args[1:])
    else:
        node.update_kwarg("tensors", type(tensors)(new_tensors))


def _rule_matmul(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``attn @ v``: the attention matrix (a softmax) is detached in explanation mode; a product
    with a constant matrix is linear."""
    operands = matmul_operands(node)
    if len(operands) != 2:
        if sum(not _is_const(ctx, o) for o in operands) > 1:
            ctx.unsupported(
                node, "einsum", "an einsum of more than two operands, two of them input-dependent"
            )
        return
    if any(_is_const(ctx, o) for o in operands):
        return
    if node in ctx.detach_policy:
        ctx.detach_operand(node, *ctx.detach_policy[node])
        return
    offset = 1 if node.target is torch.einsum else 0
    for i, operand in enumerate(operands):
        if operand in ctx.gates:
            if offset and isinstance(node.args[1], (list, tuple)):
                break  # einsum with a list of operands: not rewritten
            ctx.detach_gate(node, i + offset)
            return
    ctx.unsupported(
        node,
        getattr(node.target, "__name__", str(node.target)),
        "a product of two input-dependent tensors where neither is an attention matrix "
        "(a softmax); BcosConfig(products='detach') detaches one factor, or register a rule",
    )


def _call_args(node: torch.fx.Node, names: list[str]) -> dict[str, Any]:
    """A call's arguments by name (a method's ``self`` is the first name)."""
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return args


def _products_off(ctx: RewriteContext, node: torch.fx.Node, kind: str, what: str) -> bool:
    """Report ``node`` as unsupported when ``BcosConfig(products="error")``."""
    if ctx.config.products == "detach":
        return False
    ctx.unsupported(node, kind, f"{what}; BcosConfig(products='detach') makes it exact")
    return True


def _rule_normalize(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``F.normalize``: the norm becomes a dynamic weight (the product policy's divisor)."""
    args = _call_args(node, ["input", "p", "dim", "eps", "out"])
    options = [args.get("p", 2.0), args.get("dim", 1), args.get("eps", 1e-12)]
    if args.get("out") is not None or any(isinstance(o, torch.fx.Node) for o in options):
        ctx.unsupported(node, "F.normalize", "with out= or options computed at run time")
        return
    if _products_off(ctx, node, "F.normalize", "a division by the input's norm"):
        return
    module = bnn.DetachableNormalize(*options)
    ctx.replace_with_module(node, module, "normalize", inputs=(args["input"],))


def _rule_pow(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``x ** p`` with a constant ``p >= 1``: ``x * x ** (p - 1)``, the second factor a dynamic
    weight (:class:`~bcosify.nn.DetachablePower`); ``square`` is ``p = 2``."""
    square = node.target in (torch.square, torch.square_, "square", "square_")
    args = _call_args(node, ["input"] if square else ["input", "exponent"])
    base, exponent = args["input"], 2 if square else args.get("exponent")
    if _is_const(ctx, base) or isinstance(exponent, torch.fx.Node):
        ctx.unsupported(node, "pow", "an input-dependent exponent (not a product)")
        return
    if not isinstance(exponent, (int, float)) or not exponent >= 1:
        ctx.unsupported(
            node, "pow", f"x ** {exponent!r}: only powers >= 1 are products of x with itself"
        )
        return
    if exponent == 1 or _products_off(ctx, node, "pow", f"x ** {exponent}"):
        return
    ctx.replace_with_module(node, bnn.DetachablePower(exponent), "pow", inputs=(base,))


def _rule_amax(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """A max over dimensions is piecewise linear: kept with ``maxpool="keep"``, else a mean over
    the same dimensions, as max pooling becomes average pooling."""
    args = _call_args(node, ["input", "dim", "keepdim"])
    if ctx.config.maxpool == "keep":
        ctx.record(node, "kept", "amax (piecewise linear)")
        return
    module = bnn.MaxAsMean(args.get("dim", ()), args.get("keepdim", False))
    ctx.replace_with_module(node, module, "amax", inputs=(args["input"],))


def _rule_max(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``max(x)`` and ``max(x, dim)`` as :func:`_rule_amax` (``max(x, dim)`` keeps its values and
    indices); ``max(a, b)`` of two input-dependent tensors picks one of them (piecewise linear,
    kept); with a constant it is a clamp whose constant no explanation reports."""
    args = _call_args(node, ["input", "dim", "keepdim"])
    dim = args.get("dim", args.get("other"))
    if dim is not None and not isinstance(dim, (int, list, tuple)):
        if isinstance(dim, torch.fx.Node) and dim in ctx.dependent:
            ctx.record(node, "kept", "max of two tensors (piecewise linear)")
        else:
            ctx.unsupported(node, "max", "an elementwise max with a constant (a clamp)")
        return
    if ctx.config.maxpool == "keep":
        ctx.record(node, "kept", "max (piecewise linear)")
        return
    if dim is None:
        module = bnn.MaxAsMean((), False)
    else:
        module = bnn.MaxAsMean(dim, args.get("keepdim", False), indices=True)
    ctx.replace_with_module(node, module, "max", inputs=(args["input"],))


def _rule_addcmul(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """``addcmul(input, t1, t2, value=v)`` is rewritten as ``input + t1 * t2 * v`` (an affine
    map when one factor is constant: ResMLP's ``Affine``, GRN); the constant ``input`` is
    reported like any added constant."""
    args = _call_args(node, ["input", "tensor1", "tensor2"])
    t1, t2, value = args["tensor1"], args["tensor2"], args.get("value", 1)
    if not (_is_const(ctx, t1) or _is_const(ctx, t2)) or isinstance(value, torch.fx.Node):
        ctx.unsupported(
            node, "addcmul", "of two input-dependent tensors; write it as input + t1 * t2"
        )
        return
    meta = {k: v for k, v in node.meta.items() if k != nodemap.ORIGIN}
    with ctx.graph.inserting_before(node):
        prod = ctx.graph.call_function(operator.mul, (t1, t2))
        if value != 1:
            prod.meta = dict(meta)
            prod = ctx.graph.call_function(operator.mul, (prod, value))
        out = ctx.graph.call_function(operator.add, (args["input"], prod))
    prod.meta, out.meta = dict(meta), dict(node.meta)
    node.replace_all_uses_with(out)
    ctx.graph.erase_node(node)
    for new in (*prod.all_input_nodes, prod, out):
        if new.op != "get_attr" and any(a in ctx.dependent for a in new.all_input_nodes):
            ctx.dependent.add(new)
    ctx.record(out, "replaced", "addcmul -> input + t1 * t2")
    if out in ctx.dependent:
        _rule_add(ctx, out)


def _rule_sdpa(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """Fused attention is unfused so the attention matrix can be detached."""
    names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]
    args = _call_args(node, names)
    unknown = set(args) - set(names)
    if unknown:
        ctx.unsupported(node, "scaled_dot_product_attention", f"arguments {sorted(unknown)}")
        return
    module = bnn.ScaledDotProductAttention()
    name = ctx.add_submodule(node.name, module)
    with ctx.graph.inserting_before(node):
        new = ctx.graph.call_module(name, (), {k: v for k, v in args.items()})
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    ctx.graph.erase_node(node)
    ctx.dependent.add(new)
    ctx.report.add(
        "replaced", "scaled_dot_product_attention -> ScaledDotProductAttention", ctx.qualname(new)
    )


def _rule_functional_norm(kind: str) -> FunctionRule:
    """``F.layer_norm``/``F.group_norm`` with parameter (or no) affine weights: replaced by the
    detachable module, sharing the parameters."""
    names = {
        "layer_norm": ["input", "normalized_shape", "weight", "bias", "eps"],
        "group_norm": ["input", "num_groups", "weight", "bias", "eps"],
    }[kind]

    def rule(ctx: RewriteContext, node: torch.fx.Node) -> None:
        args = _call_args(node, names)
        weight, bias = args.get("weight"), args.get("bias")
        params = [a for a in (weight, bias) if a is not None]
        if not all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in params):
            ctx.unsupported(node, f"F.{kind}", "a norm whose affine weights are computed")
            return
        w = _fetch(ctx, weight) if weight is not None else None
        b = _fetch(ctx, bias) if bias is not None else None
        eps = args.get("eps", 1e-5)
        if kind == "layer_norm":
            shape = args["normalized_shape"]
            shape = (shape,) if not isinstance(shape, (list, tuple)) else tuple(shape)
            if not all(isinstance(d, int) for d in shape):
                if w is None:  # a shape read from the input; the weight tells it otherwise
                    ctx.unsupported(node, "F.layer_norm", "a normalized_shape computed at run time")
                    return
                shape = tuple(w.shape)
            norm = nn.LayerNorm(shape, eps, elementwise_affine=False, device="meta")
            norm.elementwise_affine = w is not None
            converted = bnn.DetachableLayerNorm.from_layernorm(
                _with_params(norm, w, b), keep_bias=ctx.config.keep_bias
            )
        else:
            groups = args["num_groups"]
            channels = w.shape[0] if w is not None else None
            if channels is None:
                ctx.unsupported(node, "F.group_norm", "a group norm without affine weights")
                return
            norm = nn.GroupNorm(groups, channels, eps, affine=False, device="meta")
            norm.affine = True
            converted = bnn.DetachableGroupNorm.from_groupnorm(
                _with_params(norm, w, b), keep_bias=ctx.config.keep_bias
            )
        ctx.replace_with_module(node, converted, f"F.{kind}", inputs=(args["input"],))

    return rule


def _with_params(module: nn.Module, weight: Any, bias: Any) -> nn.Module:
    module.weight = weight
    module.bias = bias
    return module


def _rule_pad(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """Reflect, replicate, circular and zero padding copy values: linear. Padding with another
    constant is zero padding plus that constant in the border, reported in explanations."""
    args = _call_args(node, ["input", "pad", "mode", "value"])
    mode, value = args.get("mode", "constant"), args.get("value")
    if mode != "constant" or value in (None, 0, 0.0):
        return
    if isinstance(value, torch.fx.Node) or isinstance(args.get("pad"), torch.fx.Node):
        ctx.unsupported(node, "F.pad", "a padding value or size computed at run time")
        return
    if not math.isfinite(float(value)):
        ctx.unsupported(
            node, "F.pad", f"padding with {value} (before a max pool, it is the max pool's)"
        )
        return
    new = ctx.replace_with_module(
        node, bnn.ConstantPad(args["pad"], value), "pad", inputs=(args["input"],), quiet=True
    )
    ctx.record(new, "inserted", "ConstantPad (the padding constant reported in explanations)")


def _rule_functional_layer(kind: str) -> FunctionRule:
    """``F.linear``/``F.conv1d``/``F.conv2d`` whose weight is a parameter of the model: replaced by
    a B-cos module that shares the parameter; the bias (module or functional alike) follows
    keep_bias."""
    names = {
        "linear": ["input", "weight", "bias"],
        "conv1d": ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
        "conv2d": ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
    }[kind]

    def rule(ctx: RewriteContext, node: torch.fx.Node) -> None:
        args = _call_args(node, names)
        weight, bias = args.get("weight"), args.get("bias")
        if not (isinstance(weight, torch.fx.Node) and weight.op == "get_attr"):
            ctx.unsupported(
                node,
                f"F.{kind}",
                "a functional layer whose weight is computed at run time; register a rule",
            )
            return
        if bias is not None and not _is_const(ctx, bias):
            ctx.unsupported(node, f"F.{kind}", "a functional layer with an input-dependent bias")
            return
        w = _fetch(ctx, weight)
        param_bias = isinstance(bias, torch.fx.Node) and bias.op == "get_attr"
        b = _fetch(ctx, bias) if param_bias else None
        if kind == "linear":
            layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        else:
            groups = args.get("groups", 1)
            padding = args.get("padding", 0)
            if isinstance(padding, str) and kind == "conv1d":
                ctx.unsupported(node, "F.conv1d", f"padding={padding!r}; pass the padding size")
                return
            layer = (nn.Conv1d if kind == "conv1d" else nn.Conv2d)(
                w.shape[1] * groups,
                w.shape[0],
                tuple(w.shape[2:]),
                args.get("stride", 1),
                padding,
                args.get("dilation", 1),
                groups,
                bias=b is not None,
                device="meta",
            )
        layer.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w, requires_grad=False)
        if b is not None:
            layer.bias = b if isinstance(b, nn.Parameter) else nn.Parameter(b, requires_grad=False)
        if kind == "linear" and node in ctx.projections:
            converted = bnn.PlainLinear.from_linear(layer, keep_bias=ctx.config.keep_bias)
        else:
            converted = get_module_rule(type(layer))(layer, ctx.config)
            if converted is None:
                ctx.unsupported(node, f"F.{kind}", "its module form is not supported either")
                return
        new = ctx.replace_with_module(node, converted, f"F.{kind}", inputs=(args["input"],))
        if bias is not None and not param_bias and ctx.config.keep_bias:
            # a bias computed from parameters (e.g. concatenated q/k/v biases): a constant term
            label = constant_label(ctx, new, bias)
            if kind != "linear":
                shape = (1, -1, 1, 1) if kind == "conv2d" else (1, -1, 1)
                with ctx.graph.inserting_after(new):
                    bias = ctx.graph.call_method("view", (bias, *shape))
            name = ctx.add_submodule(f"{new.name}_bias", bnn.AddConstant(label))
            with ctx.graph.inserting_after(bias if kind != "linear" else new):
                added = ctx.graph.call_module(name, (new, bias))
            new.replace_all_uses_with(added)
            added.args = (new, bias)
            ctx.dependent.add(added)

    return rule


def _fetch(ctx: RewriteContext, node: torch.fx.Node) -> torch.Tensor:
    obj: Any = ctx.gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def _mha(module: nn.MultiheadAttention, config: BcosConfig):
    out_proj = bnn.BcosLinear.from_linear(
        module.out_proj,
        b=config.b,
        keep_bias=config.keep_bias,
        normalize_weights=config.normalize_weights,
    )
    try:
        return bnn.BcosMultiheadAttention.from_mha(module, out_proj, keep_bias=config.keep_bias)
    except ValueError as exc:
        raise BcosifyError(str(exc)) from exc


def _constant_pad(module: nn.Module, config: BcosConfig):
    return KEEP if float(module.value) == 0.0 else None


_constant_pad.declined = "padding with a non-zero constant is not linear (only 0 is)"


def _conv1d(module: nn.Conv1d, config: BcosConfig):
    try:
        return bnn.BcosConv1d.from_conv1d(
            module,
            b=config.b,
            keep_bias=config.keep_bias,
            normalize_weights=config.normalize_weights,
        )
    except ValueError:
        return None


_conv1d.declined = "a Conv1d with non-zero padding mode"


def _rmsnorm(module: nn.Module, config: BcosConfig):
    return bnn.DetachableRmsNorm.from_rmsnorm(module)


def _rule_rms_norm(ctx: RewriteContext, node: torch.fx.Node) -> None:
    names = ["input", "normalized_shape", "weight", "eps"]
    args = _call_args(node, names)
    weight = args.get("weight")
    if weight is not None and not (isinstance(weight, torch.fx.Node) and weight.op == "get_attr"):
        ctx.unsupported(node, "F.rms_norm", "an RMS norm whose weight is computed")
        return
    shape = args["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    w = _fetch(ctx, weight) if weight is not None else None
    norm = bnn.DetachableRmsNorm(shape, args.get("eps"), w)
    ctx.replace_with_module(node, norm, "F.rms_norm", inputs=(args["input"],))


# --------------------------------------------------------------------------- ops without a
# rule of their own above


def _pass(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """A structural op (a reshape, a sum, a shape query): linear, it passes through unchanged."""


def _rule_piecewise(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """A piecewise-linear activation (leaky ReLU, PReLU): exact as it is, written out of place."""
    _out_of_place(node)


# a saturating non-linearity on the explained path as a gated identity: tanh(x) = x * g(x), and
# sigmoid(x) = 0.5 + x * g(x) (hard sigmoid alike) with the constant 0.5 reported
_GATED_IDENTITY = ("tanh", "sigmoid", "hardsigmoid")


def _gate_module(module: nn.Module, config: BcosConfig):
    """A gate module that does not only scale a tensor (gates that do are left in their detached
    branch before any rule is asked): tanh, sigmoid and hard sigmoid become gated identities
    (:class:`~bcosify.nn.GatedActivation`), exact; a softmax on the explained path is not
    supported."""
    op = ops.op_of_module(type(module))
    if op is not None and op.name in _GATED_IDENTITY:
        return bnn.GatedActivation(op.name)
    return None


_gate_module.declined = (
    "a softmax used on its own (not as an attention matrix or a gate that scales a tensor)"
)


def _rule_gate(ctx: RewriteContext, node: torch.fx.Node) -> None:
    """As :func:`_gate_module`, for the function and method spellings."""
    op = ops.op_of(node)
    if op is not None and op.name in _GATED_IDENTITY:
        ctx.replace_with_module(node, bnn.GatedActivation(op.name), op.name)
        return
    ctx.unsupported(
        node,
        str(getattr(node.target, "__name__", node.target)),
        _gate_module.declined,
    )


def _rule_functional_batch_norm(ctx: RewriteContext, node: torch.fx.Node) -> None:
    ctx.unsupported(
        node,
        "F.batch_norm",
        "a functional batch norm (its dimensionality is not known to the graph); write it as "
        "nn.BatchNorm1d/2d or register a rule",
    )


def _pad_module(module: nn.Module, config: BcosConfig):
    """Zero, reflection, replication and circular padding only copy values: linear. Padding with
    another constant becomes :class:`~bcosify.nn.ConstantPad` (its constant reported)."""
    value = float(getattr(module, "value", 0.0))
    if not math.isfinite(value):
        return None
    return KEEP if value == 0.0 else bnn.ConstantPad(module.padding, value)


_pad_module.declined = "padding with an infinite or NaN constant"


def _conv_transpose(module: nn.ConvTranspose2d, config: BcosConfig):
    return bnn.PlainConvTranspose2d.from_module(module, keep_bias=config.keep_bias)


def _rule_conv_transpose(ctx: RewriteContext, node: torch.fx.Node) -> None:
    args = _call_args(node, ["input", "weight", "bias"])
    if not _is_const(ctx, args.get("weight")):
        ctx.unsupported(
            node, "F.conv_transpose2d", "a transposed convolution whose weight depends on the input"
        )
        return
    if args.get("bias") is not None:
        ctx.unsupported(
            node,
            "F.conv_transpose2d",
            "a functional transposed convolution with a bias (a constant explanations would "
            "miss); use nn.ConvTranspose2d, whose bias bcosify reports",
        )
        return
    ctx.record(node, "kept", "conv_transpose2d (a plain linear map)")


# one entry per op of the table: (module rule, function rule)
_RULES: dict[str, tuple[ModuleRule | None, FunctionRule | None]] = {
    "conv1d": (_conv1d, _rule_functional_layer("conv1d")),
    "conv2d": (_conv2d, _rule_functional_layer("conv2d")),
    "linear": (_linear, _rule_functional_layer("linear")),
    "multihead_attention": (_mha, None),
    "conv_transpose2d": (_conv_transpose, _rule_conv_transpose),
    "scaled_dot_product_attention": (None, _rule_sdpa),
    "batch_norm": (_batchnorm, _rule_functional_batch_norm),
    "layer_norm": (_layernorm, _rule_functional_norm("layer_norm")),
    "group_norm": (_groupnorm, _rule_functional_norm("group_norm")),
    "rms_norm": (_rmsnorm, _rule_rms_norm),
    "normalize": (None, _rule_normalize),
    "sigmoid": (_gate_module, _rule_gate),
    "hardsigmoid": (_gate_module, _rule_gate),
    "tanh": (_gate_module, _rule_gate),
    "softmax": (_gate_module, _rule_gate),
    "silu": (_gated("silu"), _rule_gated_function("silu")),
    "gelu": (_gelu, _rule_gated_function("gelu")),
    "hardswish": (_gated("hardswish"), _rule_gated_function("hardswish")),
    "mish": (_gated("mish"), _rule_gated_function("mish")),
    "relu": (_relu, _rule_relu),
    "relu6": (_relu, _rule_relu),
    "hardtanh": (_hardtanh, _rule_hardtanh),
    "leaky_relu": (_keep, _rule_piecewise),
    "prelu": (_keep, _rule_piecewise),
    "max_pool2d": (_maxpool, _rule_max_pool2d),
    "adaptive_max_pool2d": (_maxpool, _rule_adaptive_max_pool2d),
    "amax": (None, _rule_amax),
    "max": (None, _rule_max),
    "dropout": (_keep, _rule_dropout),
    "alpha_dropout": (_keep, _rule_dropout),
    "mul": (None, _rule_mul),
    "matmul": (None, _rule_matmul),
    "div": (None, _rule_div),
    "pow": (None, _rule_pow),
    "add": (None, _rule_add),
    "sub": (None, _rule_add),
    "addcmul": (None, _rule_addcmul),
    "cat": (None, _rule_cat),
    "pad": (_pad_module, _rule_pad),
}

add_op(
    ops.Op(
        "bcosify",
        ops.Kind.CONVERTED,
        (bnn.DetachableGate, bnn.InputEncoding, bnn.LogitLayer),
        note="bcosify's own modules: kept as they are",
    ),
    _keep,
)
for _op in ops.OPS.values():
    if _op.name in _RULES:
        register_op_rules(_op.name, *_RULES[_op.name])
    elif _op.kind is ops.Kind.STRUCTURAL:
        register_op_rules(_op.name, _keep, _pass)
    elif _op.library == "torch" and _op.kind is not ops.Kind.CONVERTED:
        raise ValueError(f"the op {_op.name!r} has no rules")  # pragma: no cover

registry.end_builtin_rules(__name__)
