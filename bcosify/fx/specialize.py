"""Shape-specialised tracing of modules whose code branches on their input's shape.

timm marks some modules as not traceable by torch.fx because their ``forward`` branches on the
input's size (``if H <= window: ...``, padding to a multiple of a window, recomputing relative
positions for a new token count). For a model whose input size is known (its preprocessing),
such a module can be traced *at that size*: every shape query returns the size it has there, so
the branches resolve, and the graph is specialised to it. The batch size stays free: the module
is run at two batch sizes (2 and 5) side by side while it is traced, a size that differs is
recorded in the graph as a ``size()`` call, and one that does not is a constant.

The specialised graph replaces the module only if it computes what the module computes at batch
sizes 1, 2 and 5; otherwise the module stays whole (and is reported by the converter as before).
A branch on tensor *values*, or on the batch size, still cannot be traced.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.fx import _symbolic_trace
from torch.utils._pytree import tree_map

from bcosify.fx.registry import is_rule_leaf

__all__ = [
    "SpecializedModule",
    "example_images",
    "shape_dependent_modules",
    "specialize_shape_dependent",
]

BATCHES = (2, 5)  # traced side by side; verified at these and at 1
_SHAPE_QUERIES = {"size", "dim", "numel", "ndimension", "nelement"}
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device)


class _Values:
    """A value at each batch size; whether it depends on tensor data (not only on shapes), and
    whether on the batch size."""

    __slots__ = ("batch", "data", "each")

    def __init__(self, each: Sequence[Any], data: bool, batch: bool = False):
        self.each = tuple(each)
        self.data = data
        self.batch = batch


class _ValueProxy(fx.Proxy):
    """A proxy that also carries the value at each batch size."""

    def __init__(self, node: fx.Node, tracer: ShapeTracer, values: _Values):
        super().__init__(node, tracer)
        self.values = values

    def __getattr__(self, k: str) -> Any:
        if k in ("values", "node", "tracer"):
            raise AttributeError(k)
        if k in ("shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout"):
            return self.tracer.create_proxy("call_function", getattr, (self, k), {})
        return super().__getattr__(k)

    def __len__(self) -> int:
        lengths = {len(v) for v in self.values.each}
        if len(lengths) != 1:
            raise fx.proxy.TraceError("len() of a batch-dependent value")
        return lengths.pop()

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))


def _value_of(a: Any, i: int) -> Any:
    if isinstance(a, _ValueProxy):
        return a.values.each[i]
    if isinstance(a, fx.proxy.Attribute):  # an attribute used as a value (``x.mT``)
        return getattr(_value_of(a.root, i), a.attr)
    return a


def _root(a: Any) -> Any:
    while isinstance(a, fx.proxy.Attribute):
        a = a.root
    return a


def _is_data(a: Any) -> bool:
    a = _root(a)
    return isinstance(a, _ValueProxy) and a.values.data


def _is_batch(a: Any) -> bool:
    a = _root(a)
    return isinstance(a, _ValueProxy) and a.values.batch


def _flat(x: Any) -> list[Any]:
    out: list[Any] = []
    tree_map(lambda a: out.append(a), x)
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # tensors and the like: not a shape answer
        return False


def _plain_scalar(v: Any) -> bool:
    if isinstance(v, (tuple, list, torch.Size)):
        return all(_plain_scalar(e) for e in v)
    return isinstance(v, _SCALARS)


@contextmanager
def _unpatched() -> Iterator[None]:
    """Run eager code while tracing: torch.fx patches ``nn.Module.__call__`` and
    ``__getattr__`` for the duration of a trace; the values are computed with the originals."""
    call, get = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__ = _symbolic_trace._orig_module_call
    nn.Module.__getattr__ = _symbolic_trace._orig_module_getattr
    try:
        yield
    finally:
        nn.Module.__call__, nn.Module.__getattr__ = call, get


class ShapeTracer(fx.Tracer):
    """A tracer that runs every op on real values at several batch sizes while tracing:
    shapes that do not depend on the batch are constants, so control flow on them resolves."""

    def __init__(self, inputs: dict[str, Sequence[Any]], concrete: dict[str, Any] | None = None):
        super().__init__()
        self.inputs = inputs
        # torch.fx gives each leaf of a constant argument ``name`` a placeholder ``name_<i>``
        self.constants = {
            f"{name}_{i + 1}": leaf
            for name, value in (concrete or {}).items()
            for i, leaf in enumerate(_flat(value))
        }
        # buffers as proxies too: a real tensor cannot take a traced size (``t.expand(B, -1)``)
        self.proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_rule_leaf(type(m)) or super().is_leaf_module(m, module_qualified_name)

    def to_bool(self, obj: fx.Proxy) -> bool:
        if _is_batch(obj) and not _is_data(obj):
            raise fx.proxy.TraceError("control flow on the batch size cannot be specialised")
        raise fx.proxy.TraceError("control flow on tensor values cannot be specialised")

    def iter(self, obj: fx.Proxy) -> Iterator:
        return iter(obj)

    def _run(self, kind: str, target: Any, args: tuple, kwargs: dict, i: int) -> Any:
        a = tree_map(lambda v: _value_of(v, i), args)
        k = tree_map(lambda v: _value_of(v, i), kwargs)
        with _unpatched():
            return self._eval(kind, target, a, k)

    def _eval(self, kind: str, target: Any, a: tuple, k: dict) -> Any:
        if kind == "call_function":
            return target(*a, **k)
        if kind == "call_method":
            return getattr(a[0], target)(*a[1:], **k)
        if kind == "call_module":
            return self.root.get_submodule(target)(*a, **k)
        if kind == "get_attr":
            obj: Any = self.root
            for part in target.split("."):
                obj = getattr(obj, part)
            return obj
        raise fx.proxy.TraceError(f"unexpected node kind {kind}")

    def create_proxy(
        self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None
    ):
        if kind == "placeholder":
            node = self.create_node(kind, target, self.create_arg(args), {}, name, type_expr)
            each = self.inputs.get(str(target))
            if each is not None:
                return _ValueProxy(node, self, _Values(each, data=True))
            if str(target) in self.constants:  # a leaf of a constant argument (concrete_args)
                value = self.constants[str(target)]
                return _ValueProxy(node, self, _Values([value] * len(BATCHES), data=False))
            raise fx.proxy.TraceError(f"no example value for the argument {target!r}")
        with torch.no_grad():
            each = [self._run(kind, target, args, kwargs, i) for i in range(len(BATCHES))]
        shape_query = (kind == "call_function" and target is getattr) or (
            kind == "call_method" and target in _SHAPE_QUERIES
        )
        flat = _flat((args, kwargs))
        data = not shape_query and any(_is_data(a) for a in flat)
        # a shape query depends on the batch size where its answer does (the batch dimension),
        # anything else where an argument does
        batch = (
            not all(_same(v, each[0]) for v in each[1:])
            if shape_query
            else any(_is_batch(a) for a in flat)
        )
        if kind == "get_attr":
            data = False
        first = each[0]
        if isinstance(first, torch.Size) and not data:
            # a shape: each dimension that is the same at every batch size is a constant,
            # one that is not (the batch) is read from the tensor at run time
            if any(len(s) != len(first) for s in each):
                raise fx.proxy.TraceError("a shape whose rank depends on the batch size")
            base = args[0]
            return tuple(
                d if all(s[j] == d for s in each) else self._batch_size(base, j)
                for j, d in enumerate(first)
            )
        constant = not (data or batch) and _plain_scalar(first)
        if constant and all(v == first for v in each[1:]):
            return first  # the same at every batch size, computed from shapes: a constant
        node = self.create_node(
            kind, target, self.create_arg(args), self.create_arg(kwargs), name, type_expr
        )
        values = _Values(each, data=data or isinstance(first, torch.Tensor), batch=batch)
        return _ValueProxy(node, self, values)

    def _batch_size(self, tensor: Any, dim: int) -> _ValueProxy:
        """``tensor.size(dim)`` for a dimension that depends on the batch size, in the graph."""
        node = self.create_node("call_method", "size", (self.create_arg(tensor), dim), {})
        each = [_value_of(tensor, i).size(dim) for i in range(len(BATCHES))]
        return _ValueProxy(node, self, _Values(each, data=False, batch=True))


class SpecializedModule(fx.GraphModule):
    """A module's graph traced at one input size (what replaces it in the model)."""


def _record_inputs(
    model: nn.Module, modules: dict[str, nn.Module], images: Sequence[torch.Tensor]
) -> dict[str, list[tuple[tuple, dict]] | None]:
    """The (args, kwargs) each module receives for each batch of ``images`` (None for a module
    called more than once per forward: it would be specialised to one of its calls)."""
    seen: dict[str, list] = {name: [] for name in modules}
    handles = []
    for name, module in modules.items():

        def hook(mod, args, kwargs, _name=name):
            seen[_name].append((args, kwargs))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for x in images:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: calls if len(calls) == len(images) else None for name, calls in seen.items()}


def example_images(
    model: nn.Module, image_shape: Sequence[int], batches: Sequence[int]
) -> list[torch.Tensor]:
    """Random images (a fixed seed) of ``image_shape`` for each batch size, on the device and at
    the dtype of ``model``'s parameters."""
    g = torch.Generator().manual_seed(0)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return [torch.randn(b, *image_shape, generator=g, dtype=dtype).to(device) for b in batches]


def _clone(x: Any) -> Any:
    return tree_map(lambda a: a.clone() if isinstance(a, torch.Tensor) else a, x)


def _trace_at(module: nn.Module, calls: list[tuple[tuple, dict]]) -> fx.GraphModule:
    """Trace ``module`` on its recorded calls at the batch sizes 1, 2, 5 (traced at 2 and 5)."""
    params = list(inspect.signature(module.forward).parameters)
    bound = [inspect.signature(module.forward).bind(*a, **k).arguments for a, k in calls]
    traced_calls = bound[1:]  # batches 2 and 5
    inputs: dict[str, list] = {}
    concrete: dict[str, Any] = {}
    for name in params:
        each = [b.get(name, inspect.Parameter.empty) for b in traced_calls]
        if all(any(isinstance(a, torch.Tensor) for a in _flat(v)) for v in each):
            inputs[name] = [_clone(v) for v in each]
        elif all(v is inspect.Parameter.empty for v in each):
            continue
        elif all(_plain_scalar(v) and v == each[0] for v in each):
            concrete[name] = each[0]
        else:
            raise fx.proxy.TraceError(f"the argument {name!r} is neither a tensor nor a constant")
    tracer = ShapeTracer(inputs, concrete)
    # code that caches a tensor computed from parameters in evaluation (timm's attention-bias
    # cache) takes its uncached path under torch.jit tracing: the graph then reads the
    # parameters, which stay trainable, instead of freezing the cached copy
    is_tracing = torch.jit.is_tracing
    torch.jit.is_tracing = lambda: True
    try:
        graph = tracer.trace(module, concrete_args=concrete or None)
    finally:
        torch.jit.is_tracing = is_tracing
    # a constant argument that is a single value keeps its name (torch.fx calls its
    # placeholder ``name_1``), so that calls by keyword still work
    single = {f"{n}_1": n for n, v in concrete.items() if len(_flat(v)) == 1}
    for node in graph.nodes:
        if (
            node.op == "placeholder"
            and node.target in single
            and graph._codegen.__class__ is (fx.graph.CodeGen)
        ):
            node.target = single[node.target]
    gm = SpecializedModule(tracer.root, graph, type(module).__name__)
    kept = {id(p) for p in gm.parameters()}
    frozen = [n for n, p in module.named_parameters() if id(p) not in kept]
    if frozen:  # a parameter read through a cache or a copy would be frozen into the graph
        raise fx.proxy.TraceError(f"the traced graph does not read the parameters {frozen[:3]}")
    for args, kwargs in calls:  # the specialised graph must compute what the module computes
        with torch.no_grad():
            want = module(*_clone(args), **_clone(kwargs))
            got = gm(*_clone(args), **_clone(kwargs))
        for w, g in zip(_flat(want), _flat(got), strict=True):
            if isinstance(w, torch.Tensor):
                if not (isinstance(g, torch.Tensor) and w.shape == g.shape):
                    raise fx.proxy.TraceError("the specialised graph gives another shape")
                scale = w.abs().max().clamp_min(1e-12)
                if ((w - g).abs().max() / scale) > 1e-5:
                    raise fx.proxy.TraceError("the specialised graph computes another value")
    return gm


def shape_dependent_modules(
    model: nn.Module, untraceable: Iterable[type], leaf_names: Sequence[str] = ()
) -> dict[str, nn.Module]:
    """The outermost modules of ``model`` whose type is in ``untraceable`` (timm's no-trace
    modules that do not trace on their own), outside ``leaf_names``, without a rule."""
    kinds = set(untraceable)
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name or type(module) not in kinds or is_rule_leaf(type(module)):
            continue
        if any(name == p or name.startswith(p + ".") for p in (*leaf_names, *found)):
            continue
        found[name] = module
    return found


def specialize_shape_dependent(
    model: nn.Module,
    modules: dict[str, nn.Module],
    image_shape: Sequence[int],
) -> tuple[dict[str, str], dict[str, str]]:
    """Replace each of ``modules`` (submodules of ``model``, by name) by its graph traced at
    input images of ``image_shape`` (C, H, W), where that graph computes what it computes.

    Returns:
        The modules specialised (name -> type name), and those left whole (name -> why).
    """
    if not modules:
        return {}, {}
    images = example_images(model, image_shape, (1, *BATCHES))
    try:
        recorded = _record_inputs(model, modules, images)
    except Exception as exc:  # the model does not run at this size: nothing is specialised
        why = f"the model does not run on a {tuple(image_shape)} input ({type(exc).__name__})"
        return {}, dict.fromkeys(modules, why)
    done: dict[str, str] = {}
    left: dict[str, str] = {}
    for name, module in modules.items():
        calls = recorded[name]
        if calls is None:
            left[name] = "called more than once per forward"
            continue
        try:
            gm = _trace_at(module, calls)
        except Exception as exc:  # any failure leaves the module whole, to be reported
            left[name] = f"{type(exc).__name__}: {exc}"
            continue
        model.set_submodule(name, gm)
        done[name] = type(module).__name__
    return done, left
