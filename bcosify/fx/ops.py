"""The op table: every op the converter knows, with all its spellings and what it is.

An *op* is one computation (``sigmoid``, ``layer_norm``, ``mul``) however a model writes it: as a
module class (``nn.Sigmoid``), a function (``torch.sigmoid``, ``F.sigmoid``, the in-place
``torch.sigmoid_``), or a tensor method (``"sigmoid"``, ``"sigmoid_"``). Its *kind* says what it is
to a B-cos conversion (a linear unit, a norm, a gate, ...). The passes and the built-in rules
read the op table only: the rules are registered per op, for all its spellings at once, so two
spellings of one op cannot be converted differently.

Library layers (timm's ``Sigmoid``, torchvision's ``LayerNorm2d``) are added as spellings of an
op, or as ops of their own, when the library's rules load (:func:`extend`, :func:`add`).

This module only describes ops; it imports nothing of bcosify's.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "Kind",
    "Op",
    "OPS",
    "add",
    "extend",
    "is_op",
    "kind_of",
    "lookup",
    "op_of",
    "op_of_module",
]


class Kind(str, enum.Enum):
    """What an op is to a B-cos conversion."""

    LINEAR_UNIT = "linear unit"  # conv / linear: becomes a B-cos unit
    LINEAR_MAP = "linear map"  # a linear layer with no B-cos unit: kept plain, exact
    NORM = "norm"  # a normalisation: its scale is detached in explanation mode
    GATE = "gate"  # a saturating non-linearity that scales a tensor (detached factor)
    GATED_ACTIVATION = "gated activation"  # x * g(x) (SiLU, GELU): g detached
    PIECEWISE_LINEAR = "piecewise-linear activation"  # ReLU and kin: exact as they are
    MAX = "max"  # max pooling and max over dims: kept, or an average
    STRUCTURAL = "structural"  # linear or a rearrangement of values: passes through unchanged
    DROPOUT = "dropout"  # the identity in evaluation
    PRODUCT = "product"  # elementwise or matrix product: linear unless both factors vary
    DIVISION = "division"
    POWER = "power"  # x ** p: a product of x with itself
    ADD = "add"  # sums and differences: an added constant is reported
    CONCAT = "concat"  # concatenation: a constant piece (a class token) is reported
    AFFINE = "affine"  # addcmul: input + t1 * t2
    ATTENTION = "attention"  # a fused attention: its attention matrix is detached
    CONVERTED = "converted"  # bcosify's own modules, kept as they are


@dataclass
class Op:
    """One op: its name, its kind, and every spelling.

    Attributes:
        name: the op's name (``"sigmoid"``).
        kind: what it is (:class:`Kind`).
        modules: module classes that compute it (a subclass that overrides ``forward`` is not a
            spelling unless listed; see :func:`bcosify.declare_safe_subclass`).
        functions: functions a graph node may call (``torch.sigmoid``, ``F.sigmoid``, in-place
            ones included).
        methods: tensor method names (``"sigmoid"``, ``"sigmoid_"``).
        note: what the converter does with it, in a few words (shown by the support docs).
    """

    name: str
    kind: Kind
    modules: tuple[type, ...] = ()
    functions: tuple[Callable, ...] = ()
    methods: tuple[str, ...] = ()
    note: str = ""
    library: str = "torch"

    def spellings(self) -> list[Any]:
        return [*self.modules, *self.functions, *self.methods]


OPS: dict[str, Op] = {}
# subclasses that override forward() yet compute their base's function
# (:func:`bcosify.declare_safe_subclass`): they are spellings of their base's op
SAFE_SUBCLASSES: set[type] = set()
_BY_MODULE: dict[type, Op] = {}
_BY_TARGET: dict[Any, Op] = {}


def _index(op: Op, modules: Iterable[type], functions: Iterable[Any], methods: Iterable[str]):
    for key, table in (
        *((m, _BY_MODULE) for m in modules),
        *((f, _BY_TARGET) for f in functions),
        *((m, _BY_TARGET) for m in methods),
    ):
        other = table.get(key)
        if other is not None and other is not op:
            raise ValueError(f"{key!r} is already a spelling of the op {other.name!r}")
        table[key] = op


def add(op: Op) -> Op:
    """Add an op to the table (library rule modules do this for their own layers)."""
    if op.name in OPS:
        raise ValueError(f"the op {op.name!r} is already in the table")
    _index(op, op.modules, op.functions, op.methods)
    OPS[op.name] = op
    return op


def extend(
    name: str,
    *,
    modules: Iterable[type] = (),
    functions: Iterable[Any] = (),
    methods: Iterable[str] = (),
) -> Op:
    """Add spellings to the op ``name`` (timm's ``Sigmoid`` is a spelling of ``sigmoid``)."""
    op = OPS[name]
    modules, functions, methods = tuple(modules), tuple(functions), tuple(methods)
    _index(op, modules, functions, methods)
    op.modules += tuple(m for m in modules if m not in op.modules)
    op.functions += tuple(f for f in functions if f not in op.functions)
    op.methods += tuple(m for m in methods if m not in op.methods)
    return op


def op_of_module(module_type: type) -> Op | None:
    """The op a module class computes: its own entry, else the nearest base class's unless a
    class on the way overrides ``forward`` (then it computes something else)."""
    for cls in module_type.__mro__:
        op = _BY_MODULE.get(cls)
        if op is not None:
            return op
        if "forward" in cls.__dict__ and cls is not nn.Module and cls not in SAFE_SUBCLASSES:
            return None
    return None


def lookup(target: Any) -> Op | None:
    """The op of a function or method name (``None`` for one the table does not know)."""
    try:
        return _BY_TARGET.get(target)
    except TypeError:  # unhashable target
        return None


def op_of(node: fx.Node, gm: fx.GraphModule | None = None) -> Op | None:
    """The op a graph node computes (a module call needs ``gm`` to find the module)."""
    if node.op == "call_module":
        if gm is None:
            return None
        return op_of_module(type(gm.get_submodule(str(node.target))))
    if node.op in ("call_function", "call_method"):
        return lookup(node.target)
    return None


def kind_of(node: fx.Node, gm: fx.GraphModule | None = None) -> Kind | None:
    op = op_of(node, gm)
    return None if op is None else op.kind


def is_op(node: Any, *names: str, gm: fx.GraphModule | None = None) -> bool:
    """Whether ``node`` is a graph node computing one of the ops ``names``."""
    if not isinstance(node, fx.Node):
        return False
    op = op_of(node, gm)
    return op is not None and op.name in names


# --------------------------------------------------------------------------- the table
_K = Kind


def _op(name, kind, modules=(), functions=(), methods=(), note=""):
    add(Op(name, kind, tuple(modules), tuple(functions), tuple(methods), note))


def _optional(owner: Any, *names: str) -> list[Any]:
    return [getattr(owner, n) for n in names if hasattr(owner, n)]


# linear units
_op("conv1d", _K.LINEAR_UNIT, [nn.Conv1d], [F.conv1d, torch.conv1d], note="B-cos convolution")
_op("conv2d", _K.LINEAR_UNIT, [nn.Conv2d], [F.conv2d, torch.conv2d], note="B-cos convolution")
_op("linear", _K.LINEAR_UNIT, [nn.Linear], [F.linear], note="B-cos linear (plain for q/k/v)")
_op(
    "conv_transpose2d",
    _K.LINEAR_MAP,
    [nn.ConvTranspose2d],
    [F.conv_transpose2d],
    note="kept a plain linear map (no B-cos unit for it); a kept bias is a reported constant",
)
_op(
    "multihead_attention",
    _K.ATTENTION,
    [nn.MultiheadAttention],
    note="plain q/k/v, B-cos output projection, detachable attention",
)
_op(
    "scaled_dot_product_attention",
    _K.ATTENTION,
    functions=[F.scaled_dot_product_attention],
    note="unfused; the attention matrix is detached",
)

# norms
_op(
    "batch_norm",
    _K.NORM,
    [nn.BatchNorm1d, nn.BatchNorm2d],
    [F.batch_norm, torch.batch_norm],
    note="uncentered BatchNorm (the functional form is reported)",
)
_op(
    "layer_norm",
    _K.NORM,
    [nn.LayerNorm],
    [F.layer_norm, torch.layer_norm],
    note="detachable LayerNorm",
)
_op(
    "group_norm",
    _K.NORM,
    [nn.GroupNorm],
    [F.group_norm, torch.group_norm],
    note="detachable GroupNorm",
)
_op(
    "rms_norm",
    _K.NORM,
    _optional(nn, "RMSNorm"),
    [F.rms_norm, *_optional(torch, "rms_norm")],
    note="detachable RMS norm",
)
_op("normalize", _K.NORM, functions=[F.normalize], note="detachable: the norm is detached")

# gates: saturating non-linearities
_op(
    "sigmoid",
    _K.GATE,
    [nn.Sigmoid],
    [torch.sigmoid, torch.sigmoid_, F.sigmoid],
    ["sigmoid", "sigmoid_"],
    note="a gate where it scales a tensor, else reported",
)
_op(
    "hardsigmoid",
    _K.GATE,
    [nn.Hardsigmoid],
    [F.hardsigmoid],
    note="a gate where it scales a tensor, else reported",
)
_op(
    "tanh",
    _K.GATE,
    [nn.Tanh],
    [torch.tanh, torch.tanh_, F.tanh],
    ["tanh", "tanh_"],
    note="a gate where it scales a tensor, else the gated identity x * (tanh(x) / x)",
)
_op(
    "softmax",
    _K.GATE,
    [nn.Softmax],
    [torch.softmax, F.softmax, torch.Tensor.softmax],
    ["softmax"],
    note="an attention matrix or gate where it scales a tensor, else reported",
)

# gated activations x * g(x)
_op("silu", _K.GATED_ACTIVATION, [nn.SiLU], [F.silu], note="x * sigmoid(x), gate detached")
_op("gelu", _K.GATED_ACTIVATION, [nn.GELU], [F.gelu], note="x * Phi(x), gate detached")
_op("hardswish", _K.GATED_ACTIVATION, [nn.Hardswish], [F.hardswish], note="gate detached")
_op("mish", _K.GATED_ACTIVATION, [nn.Mish], [F.mish], note="gate detached")

# piecewise-linear activations
_op(
    "relu",
    _K.PIECEWISE_LINEAR,
    [nn.ReLU],
    [torch.relu, torch.relu_, F.relu, F.relu_],
    ["relu", "relu_"],
    note="kept, removed or exact per BcosConfig.activation",
)
_op(
    "relu6",
    _K.PIECEWISE_LINEAR,
    [nn.ReLU6],
    [F.relu6],
    note="as ReLU; with activation='keep' the cap becomes a plain ReLU",
)
_op(
    "hardtanh",
    _K.PIECEWISE_LINEAR,
    [nn.Hardtanh],
    [F.hardtanh, F.hardtanh_],
    note="as ReLU6 when min_val is 0, else reported",
)
_op(
    "leaky_relu",
    _K.PIECEWISE_LINEAR,
    [nn.LeakyReLU],
    [F.leaky_relu, F.leaky_relu_],
    note="exact as it is",
)
_op(
    "prelu",
    _K.PIECEWISE_LINEAR,
    [nn.PReLU],
    [torch.prelu, F.prelu],
    ["prelu"],
    note="exact as it is",
)

# max
_op(
    "max_pool2d",
    _K.MAX,
    [nn.MaxPool2d],
    [F.max_pool2d, torch.max_pool2d],
    note="average pooling, or kept with maxpool='keep'",
)
_op(
    "adaptive_max_pool2d",
    _K.MAX,
    [nn.AdaptiveMaxPool2d],
    [F.adaptive_max_pool2d],
    note="adaptive average pooling, or kept with maxpool='keep'",
)
_op("amax", _K.MAX, functions=[torch.amax], methods=["amax"], note="a mean, or kept")
_op("max", _K.MAX, functions=[torch.max], methods=["max"], note="a mean, or kept")

# dropout
_op(
    "dropout",
    _K.DROPOUT,
    [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d],
    [F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.dropout, torch.dropout_],
    note="a dropout module that follows train()/eval()",
)
_op(
    "alpha_dropout",
    _K.DROPOUT,
    [nn.AlphaDropout],
    [F.alpha_dropout, torch.alpha_dropout, torch.alpha_dropout_],
    note="an alpha-dropout module that follows train()/eval() (affine in training)",
)

# products, divisions, sums
_op(
    "mul",
    _K.PRODUCT,
    functions=[operator.mul, operator.imul, torch.mul, torch.multiply],
    methods=["mul", "mul_", "multiply", "multiply_"],
    note="linear by a constant; a gate's or the product policy's factor is detached",
)
_op(
    "matmul",
    _K.PRODUCT,
    functions=[operator.matmul, torch.matmul, torch.bmm, torch.einsum],
    methods=["matmul", "bmm"],
    note="linear by a constant; an attention matrix or the policy's factor is detached",
)
_op(
    "div",
    _K.DIVISION,
    functions=[operator.truediv, operator.itruediv, torch.div, torch.divide, torch.true_divide],
    methods=["div", "div_", "divide", "divide_", "true_divide", "true_divide_"],
    note="linear by a constant; an input-dependent divisor is detached",
)
_op(
    "pow",
    _K.POWER,
    functions=[operator.pow, operator.ipow, torch.pow, torch.square, torch.square_],
    methods=["pow", "pow_", "square", "square_"],
    note="x ** p (p >= 1): x ** (p - 1) detached",
)
_op(
    "add",
    _K.ADD,
    functions=[operator.add, operator.iadd, torch.add],
    methods=["add", "add_"],
    note="an added constant is reported in explanations",
)
_op(
    "sub",
    _K.ADD,
    functions=[operator.sub, operator.isub, torch.sub, torch.subtract],
    methods=["sub", "sub_", "subtract", "subtract_"],
    note="a subtracted constant is reported in explanations",
)
_op(
    "neg",
    _K.STRUCTURAL,
    functions=[operator.neg, torch.neg, torch.neg_, torch.negative, torch.negative_],
    methods=["neg", "neg_", "negative", "negative_"],
)
_op(
    "addcmul",
    _K.AFFINE,
    functions=[torch.addcmul],
    methods=["addcmul", "addcmul_"],
    note="input + t1 * t2: an affine map when one factor is constant",
)
_op(
    "cat",
    _K.CONCAT,
    functions=[torch.cat, torch.concat, torch.concatenate, torch.stack],
    note="constant pieces (class tokens) are reported",
)

# structural: linear maps and rearrangements of values
_op("identity", _K.STRUCTURAL, [nn.Identity])
_op(
    "flatten",
    _K.STRUCTURAL,
    [nn.Flatten],
    [torch.flatten],
    ["flatten"],
)
_op("unflatten", _K.STRUCTURAL, [nn.Unflatten], [torch.unflatten], ["unflatten"])
_op(
    "view",
    _K.STRUCTURAL,
    functions=[torch.reshape],
    methods=["view", "reshape", "view_as", "reshape_as"],
)
_op("squeeze", _K.STRUCTURAL, functions=[torch.squeeze], methods=["squeeze", "squeeze_"])
_op("unsqueeze", _K.STRUCTURAL, functions=[torch.unsqueeze], methods=["unsqueeze", "unsqueeze_"])
_op(
    "permute",
    _K.STRUCTURAL,
    functions=[torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.movedim],
    methods=[
        "permute",
        "transpose",
        "transpose_",
        "swapaxes",
        "swapaxes_",
        "swapdims",
        "swapdims_",
        "movedim",
    ],
)
_op(
    "split",
    _K.STRUCTURAL,
    functions=[
        torch.chunk,
        torch.split,
        torch.unbind,
        torch.narrow,
        torch.select,
        torch.index_select,
        operator.getitem,
    ],
    methods=["chunk", "split", "unbind", "narrow", "select", "index_select"],
)
_op(
    "repeat",
    _K.STRUCTURAL,
    functions=[torch.roll, torch.flip, torch.tile, torch.repeat_interleave],
    methods=["roll", "flip", "tile", "repeat", "repeat_interleave", "expand", "expand_as"],
)
_op("copy", _K.STRUCTURAL, functions=[torch.clone], methods=["clone", "contiguous"])
_op("cast", _K.STRUCTURAL, methods=["float", "to", "type_as"])
_op(
    "shape",
    _K.STRUCTURAL,
    functions=[getattr, torch._assert],
    methods=["size", "dim"],
    note="shape queries and checks",
)
_op("mean", _K.STRUCTURAL, functions=[torch.mean], methods=["mean"])
_op("sum", _K.STRUCTURAL, functions=[torch.sum], methods=["sum"])
_op(
    "avg_pool",
    _K.STRUCTURAL,
    [nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d],
    [F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d],
)
_op(
    "interpolate",
    _K.STRUCTURAL,
    [nn.Upsample],
    [F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest],
    note="nearest or (bi)linear interpolation",
)
_op(
    "pixel_shuffle",
    _K.STRUCTURAL,
    [nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle],
    [
        F.pixel_shuffle,
        F.pixel_unshuffle,
        F.channel_shuffle,
        torch.pixel_shuffle,
        torch.pixel_unshuffle,
        torch.channel_shuffle,
    ],
)
_op("unfold", _K.STRUCTURAL, [nn.Unfold], [F.unfold], ["unfold"], note="patches: linear")
_op("fold", _K.STRUCTURAL, [nn.Fold], [F.fold], note="linear")
_op(
    "pad",
    _K.STRUCTURAL,
    [
        nn.ConstantPad1d,
        nn.ConstantPad2d,
        nn.ConstantPad3d,
        nn.ZeroPad1d,
        nn.ZeroPad2d,
        nn.ReflectionPad1d,
        nn.ReflectionPad2d,
        nn.ReflectionPad3d,
        nn.ReplicationPad1d,
        nn.ReplicationPad2d,
        nn.ReplicationPad3d,
        *_optional(nn, "ZeroPad3d", "CircularPad1d", "CircularPad2d", "CircularPad3d"),
    ],
    [F.pad],
    note="zero, reflect, replicate, circular: linear; another constant is reported",
)
