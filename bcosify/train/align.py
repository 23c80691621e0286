"""Label-free alignment of a converted model with its frozen source, at matched graph nodes.

The converter knows, for every value the source computes, which node of the converted model
computes its counterpart (:class:`bcosify.fx.nodemap.NodeMap`). Alignment taps both graphs at
chosen nodes (by default the output of every block and the features the classifier reads) and
pulls the student's features towards the teacher's with a scale-invariant distance, since B-cos
activations live at other scales than the source's. A logit distillation term is added on top. No
labels are needed. Feature-level distillation itself is an old public idea (FitNets, Romero et
al., ICLR 2015); here the pairs of nodes come from the conversion's own graph map.

Example:
    >>> import torch, torchvision, bcosify
    >>> from bcosify.train.align import AlignmentLoss, FeatureTaps, TeacherFeatures, align_nodes
    >>> src = torchvision.models.resnet18().eval()
    >>> exact = bcosify.BcosConfig(b=1, keep_bias=True, activation="exact", maxpool="keep")
    >>> student = bcosify.convert(src, exact, mean=(0.5,) * 3, std=(0.5,) * 3).eval()
    >>> nodes = align_nodes(student)
    >>> teacher = TeacherFeatures(src, student, nodes)
    >>> taps = FeatureTaps(student, nodes)
    >>> x = torch.rand(2, 3, 64, 64)
    >>> with taps.capture() as s_feats:
    ...     logits = student(x)
    >>> t_logits, t_feats = teacher((x - 0.5) / 0.5)
    >>> loss, parts = AlignmentLoss(nodes)(logits, s_feats, t_logits, t_feats)
    >>> bool(loss.abs() < 1e-4)  # the exact start computes the source's function
    True
    >>> taps.remove()
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import operator
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from bcosify.errors import BcosifyError
from bcosify.fx.nodemap import node_map
from bcosify.train.losses import DistillationLoss

__all__ = [
    "AlignNode",
    "align_nodes",
    "FeatureTap",
    "FeatureTaps",
    "TeacherFeatures",
    "AlignmentLoss",
    "feature_distance",
]


@dataclasses.dataclass(frozen=True)
class AlignNode:
    """One matched pair: ``name`` as the user wrote it (a module or source node name), the node
    in the source graph, the node in the converted graph, its weight and its channel axis."""

    name: str
    source: str
    student: str
    weight: float = 1.0
    channel_dim: int = 1


def align_nodes(
    model: nn.Module,
    nodes: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
) -> list[AlignNode]:
    """The pairs of nodes to align, by name.

    Args:
        model: a converted model.
        nodes: module names (``"layer3.1"``, ``"encoder.layers.encoder_layer_5"``) or source node
            names (``"layer3_1_relu_1"``, see :func:`bcosify.node_map`). Default: every block's
            output and the features the classifier reads (:class:`~bcosify.fx.nodemap.NodeMap`).
        weights: a weight per name (default 1); names not in ``nodes`` are an error.

    Raises:
        BcosifyError: for a name that is neither a module with a single output nor a matched
            node (the closest known names are suggested), or a negative weight.

    Example:
        >>> import torchvision, bcosify
        >>> m = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> [n.name for n in align_nodes(m, ["layer2", "layer4"], {"layer4": 2.0})]
        ['layer2', 'layer4']
    """
    nm = node_map(model)
    weights = dict(weights or {})
    if nodes is None:
        names = list(nm.blocks)
        if nm.features is not None and nm.features not in [nm.outputs[b] for b in names]:
            names.append(nm.features)
        if not names:
            raise BcosifyError(
                "this model has no blocks and no classifier features to align by default; name "
                "the nodes (train.align.nodes: [module names]; bcosify.node_map(model).outputs "
                "lists them)"
            )
    else:
        names = [str(n) for n in nodes]
        if not names:
            raise BcosifyError("train.align.nodes is empty; name at least one node, or use null")
    unknown_weights = sorted(set(weights) - set(names))
    if unknown_weights:
        raise BcosifyError(
            f"train.align.weights names {unknown_weights}, which are not aligned nodes "
            f"({names[:6]}{' ...' if len(names) > 6 else ''}); add them to train.align.nodes"
        )
    out = []
    for name in names:
        source = nm.source_node(name)
        if source is None or source not in nm.nodes:
            known = list(nm.outputs) + list(nm.nodes)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise BcosifyError(
                f"cannot align at {name!r}: it is neither a module with a single output nor a node "
                f"of the source graph that the conversion kept.{hint} "
                "bcosify.node_map(model).outputs lists the module names."
            )
        w = float(weights.get(name, 1.0))
        if not w >= 0:
            raise BcosifyError(f"train.align.weights[{name!r}] is {w}; weights must be >= 0")
        # the channel axis the features would have as a 4-d map (tokens always use the last)
        out.append(AlignNode(name, source, nm.nodes[source], w, nm.channel_dim(source, 4)))
    return out


# ---------------------------------------------------------------------------- student taps
class FeatureTap(nn.Module):
    """Identity that keeps its input while a :meth:`FeatureTaps.capture` is open."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        self.store: dict[str, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.store is not None:
            self.store[self.key] = x
        return x


_TAP_PREFIX = "bcosify_align_tap_"


class FeatureTaps:
    """Identity taps inserted into a converted model's graph after the aligned nodes.

    The taps have no parameters or buffers: the state dict, checkpoints and saved models are
    unchanged. They work through ``DistributedDataParallel`` (the forward of the wrapped model
    fills them). :meth:`remove` restores the graph.
    """

    def __init__(self, model: fx.GraphModule, nodes: Sequence[AlignNode]):
        if not isinstance(model, fx.GraphModule):
            raise BcosifyError(
                f"feature alignment needs the converted GraphModule, got {type(model).__name__}"
            )
        self.model = model
        self.nodes = list(nodes)
        self.taps: list[FeatureTap] = []
        by_name = {n.name: n for n in model.graph.nodes}
        for spec in self.nodes:  # every node checked before the graph is changed
            if spec.student not in by_name:
                raise BcosifyError(
                    f"the converted graph has no node {spec.student!r} (for {spec.name!r}); was it "
                    "changed after conversion?"
                )
        for i, spec in enumerate(self.nodes):
            node = by_name[spec.student]
            tap = FeatureTap(spec.name)
            target = f"{_TAP_PREFIX}{i}"
            model.add_submodule(target, tap)
            with model.graph.inserting_after(node):
                new = model.graph.call_module(target, (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
            self.taps.append(tap)
        model.recompile()

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, Tensor]]:
        """Within the block, every forward of the model stores the tapped features in the
        yielded dict (name -> tensor)."""
        store: dict[str, Tensor] = {}
        for tap in self.taps:
            tap.store = store
        try:
            yield store
        finally:
            for tap in self.taps:
                tap.store = None

    def remove(self) -> None:
        """Take the taps out of the graph (idempotent)."""
        remove_taps(self.model)
        self.taps = []


def remove_taps(model: nn.Module) -> None:
    """Remove alignment taps from a converted model (also from a copy of a tapped model, such as
    an EMA)."""
    if not isinstance(model, fx.GraphModule):
        return
    changed = False
    for node in list(model.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(_TAP_PREFIX):
            node.replace_all_uses_with(node.args[0])
            model.graph.erase_node(node)
            changed = True
    for name, _ in list(model.named_children()):
        if name.startswith(_TAP_PREFIX):
            delattr(model, name)
    if changed:
        model.recompile()


# ---------------------------------------------------------------------------- teacher
class TeacherFeatures(nn.Module):
    """The frozen source model, traced as it was for the conversion, returning its logits and its
    features at the aligned nodes: ``(logits, {name: tensor})``.

    Raises:
        BcosifyError: if the teacher's graph lacks one of the nodes (it is not the model the
            student was converted from).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, nodes: Sequence[AlignNode]):
        super().__init__()
        from bcosify.fx import trace

        config = getattr(student, "bcosify_config", None)
        leaves = (
            tuple(config.leaf_modules) + tuple(config.skip_modules) if config is not None else ()
        )
        was = teacher.training
        gm = trace(teacher.eval(), leaves)
        teacher.train(was)
        _no_inplace(gm)
        by_name = {n.name: n for n in gm.graph.nodes}
        missing = [n.source for n in nodes if n.source not in by_name]
        if missing:
            raise BcosifyError(
                f"the teacher ({type(teacher).__name__}) has no node {missing[0]!r} of the model "
                "the student was converted from: feature alignment needs the student's own source "
                "(train.distill.teacher: source, or finetune(teacher=<the unconverted model>))"
            )
        out = next(n for n in gm.graph.nodes if n.op == "output")
        logits = out.args[0]
        out.args = ((logits, tuple(by_name[n.source] for n in nodes)),)
        gm.recompile()
        self.names = [n.name for n in nodes]
        # shares the teacher's modules: its parameters keep their flags (the caller's model is not
        # changed); the loop runs the teacher under no_grad
        self.graph_module = gm.eval()

    def train(self, mode: bool = True) -> TeacherFeatures:
        return super().train(False)  # always frozen in eval mode

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits, feats = self.graph_module(x)
        return logits, dict(zip(self.names, feats))


_INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


def _no_inplace(gm: fx.GraphModule) -> None:
    """Make every in-place op of the traced teacher out of place, so that a captured feature is
    not overwritten by the op after it (``ReLU(inplace=True)`` after a block output). Modules are
    replaced by copies inside ``gm`` only: the caller's model is not changed."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if getattr(module, "inplace", False) is True:
                clone = copy.copy(module)
                clone.inplace = False
                gm.set_submodule(str(node.target), clone)
        elif node.op == "call_function":
            if node.target in _INPLACE_OPERATORS:
                node.target = _INPLACE_OPERATORS[node.target]
            if node.kwargs.get("inplace") is True:
                node.update_kwarg("inplace", False)
        elif node.op == "call_method":
            name = str(node.target)
            if name.endswith("_") and not name.startswith("_") and hasattr(Tensor, name[:-1]):
                node.target = name[:-1]
    gm.recompile()


# ---------------------------------------------------------------------------- loss
def feature_distance(s: Tensor, t: Tensor, metric: str = "cosine", dim: int = 1) -> Tensor:
    """Scale-invariant distance between student and teacher features, averaged over the batch.

    - ``cosine``: ``1 - cos`` between the channel vectors at each position (token), averaged over
      positions; in [0, 2].
    - ``nmse``: mean squared difference of the per-sample L2-normalised features (each sample
      flattened), i.e. ``2 - 2 cos`` of the flattened samples; in [0, 4].

    Both ignore a positive rescaling of ``s``.

    Example:
        >>> t = torch.randn(2, 8, 4, 4)
        >>> float(feature_distance(3 * t, t)) < 1e-6
        True
    """
    s, t = s.float(), t.float()
    if s.dim() == 1:
        s, t = s[:, None], t[:, None]
    if metric not in ("cosine", "nmse"):
        raise BcosifyError(f"unknown alignment metric {metric!r}; use 'cosine' or 'nmse'")
    if metric == "nmse":
        s, t, d = s.flatten(1), t.flatten(1), 1
    else:
        d = dim if s.dim() == 4 else -1
    # each side normalised on its own with a small eps: B-cos features can be tiny (1e-13 after
    # 16 blocks of a fresh conversion) and the distance must still ignore their scale; the eps
    # bounds the gradient of features that are zero
    sn, tn = F.normalize(s, dim=d, eps=_EPS), F.normalize(t, dim=d, eps=_EPS)
    if metric == "nmse":
        return (sn - tn).pow(2).sum(d).mean()
    cos = (sn * tn).sum(d)
    both_zero = (s.abs().amax(d) == 0) & (t.abs().amax(d) == 0)
    return (1 - torch.where(both_zero, torch.ones_like(cos), cos)).mean()


_EPS = 1e-20


class AlignmentLoss(nn.Module):
    """Weighted mean of the per-node feature distances plus ``logit_weight`` times the logit
    distillation ``T^2 KL(softmax(t/T) || softmax(s/T))``.

    ``forward(logits, student_feats, teacher_logits, teacher_feats, step=None)`` returns the total
    loss and a dict of its parts (``feature``, ``logit`` and ``node/<name>``, detached tensors),
    for logging. The logit term counts from ``logit_start_step`` on (a feature-only start, then
    both).

    Raises:
        BcosifyError: at the first call whose student and teacher features differ in shape at
            a node (it names the node and both shapes).
    """

    def __init__(
        self,
        nodes: Sequence[AlignNode],
        metric: str = "cosine",
        logit_weight: float = 1.0,
        temperature: float = 1.0,
        logit_start_step: int = 0,
    ):
        super().__init__()
        if metric not in ("cosine", "nmse"):
            raise BcosifyError(f"unknown alignment metric {metric!r}; use 'cosine' or 'nmse'")
        self.nodes = list(nodes)
        self.metric = metric
        self.logit_weight = float(logit_weight)
        self.temperature = float(temperature)
        self.distillation = DistillationLoss(self.temperature)
        self.logit_start_step = int(logit_start_step)
        total = sum(n.weight for n in self.nodes)
        if self.nodes and total <= 0:
            raise BcosifyError("train.align.weights: at least one aligned node needs weight > 0")
        self._total = total
        self._checked = False

    def logit_loss(self, logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return self.distillation(logits, teacher_logits)

    def forward(
        self,
        logits: Tensor,
        student_feats: Mapping[str, Tensor],
        teacher_logits: Tensor,
        teacher_feats: Mapping[str, Tensor],
        step: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if not self._checked:
            self._check(student_feats, teacher_feats)
        parts: dict[str, Tensor] = {}
        feature = logits.new_zeros((), dtype=torch.float32)
        for n in self.nodes:
            s, t = student_feats[n.name], teacher_feats[n.name]
            d = feature_distance(s, t, self.metric, n.channel_dim)
            parts[f"node/{n.name}"] = d.detach()
            feature = feature + n.weight * d
        if self.nodes:
            feature = feature / self._total
        loss = feature
        use_logits = step is None or step >= self.logit_start_step
        kl = self.logit_loss(logits, teacher_logits)
        # the logit term stays in the graph with weight 0 while it is off: under DDP every
        # parameter (the head after the last aligned node too) must receive a gradient
        loss = loss + (self.logit_weight if use_logits else 0.0) * kl
        parts["feature"] = feature.detach()
        parts["logit"] = kl.detach()
        return loss, parts

    def _check(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor]):
        for n in self.nodes:
            if n.name not in student_feats or n.name not in teacher_feats:
                raise BcosifyError(
                    f"no features at {n.name!r}: the model's forward did not reach that node"
                )
            s, t = student_feats[n.name], teacher_feats[n.name]
            if not (isinstance(s, Tensor) and isinstance(t, Tensor)):
                raise BcosifyError(
                    f"cannot align at {n.name!r}: its value is a {type(t).__name__}, not a tensor; "
                    "choose other nodes (train.align.nodes)"
                )
            if s.shape != t.shape:
                raise BcosifyError(
                    f"cannot align at {n.name!r}: the student's features are {tuple(s.shape)} but "
                    f"the teacher's are {tuple(t.shape)}; choose other nodes (train.align.nodes)"
                )
        self._checked = True
