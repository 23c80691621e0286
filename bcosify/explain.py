"""Exact, batched explanations of B-cos networks."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from bcosify import nn as bnn
from bcosify.errors import BcosifyError

__all__ = ["Explanation", "LayerExplanation", "explain", "explanation_mode"]


@contextmanager
def explanation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: every dynamic module of ``model`` detaches its data-dependent factors.

    Example:
        >>> import bcosify, torchvision
        >>> m = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> with bcosify.explanation_mode(m):
        ...     bcosify.nn.is_explanation_mode(m)
        True
    """
    previous = [
        (m, m.explanation_mode) for m in model.modules() if isinstance(m, bnn.DetachableModule)
    ]
    bnn.set_explanation_mode(model, True)
    try:
        yield model
    finally:
        for m, state in previous:
            m.set_explanation_mode(state)


def _sum_constants(constants: dict[str, Tensor], like: Tensor) -> Tensor:
    total = torch.zeros_like(like)
    for value in constants.values():
        total = total + value
    return total


@dataclass
class Explanation:
    """The explanation of one logit, or of several, per sample of a batch.

    The contributions are exact: ``contributions.sum((-3, -2, -1)) + sum(constant_contributions)``
    equals the explained logit (up to float rounding; see :attr:`completeness_error`).

    With several targets per sample (``explain(..., target=B x k tensor or "topk:k")``) every
    per-target field gets a target axis after the batch axis: ``target`` is B x k,
    ``dynamic_weights`` and ``contributions`` B x k x 2C x H x W, each constant B x k.

    Attributes:
        images: the explained images, B x C x H x W in [0, 1].
        logits: B x num_classes.
        prediction: B (argmax of the logits).
        target: B (or B x k), the explained class(es) per sample.
        dynamic_weights: B (x k) x 2C x H x W, the gradient of the target logit w.r.t. the
            encoding ``[x, 1 - x]`` in explanation mode, i.e. the row W(x) of the dynamic linear
            map.
        contributions: B (x k) x 2C x H x W, ``[x, 1 - x] * dynamic_weights``.
        constant_contributions: name -> B (or B x k) tensor, the contribution of every additive
            constant (the logit bias, kept biases) to the explained logit.
    """

    images: Tensor
    logits: Tensor
    prediction: Tensor
    target: Tensor
    dynamic_weights: Tensor
    contributions: Tensor
    constant_contributions: dict[str, Tensor] = field(default_factory=dict)

    @property
    def multi_target(self) -> bool:
        """Whether several targets per sample were explained (a target axis after the batch)."""
        return self.target.dim() == 2

    @property
    def explained_logit(self) -> Tensor:
        if self.multi_target:
            return self.logits.gather(1, self.target)
        return self.logits.gather(1, self.target[:, None]).squeeze(1)

    @property
    def contribution_map(self) -> Tensor:
        """B (x k) x H x W: contributions summed over the channels."""
        return self.contributions.sum(-3)

    @property
    def constant_total(self) -> Tensor:
        return _sum_constants(self.constant_contributions, self.explained_logit)

    @property
    def completeness_error(self) -> Tensor:
        """B (x k): ``|sum(contributions) + constants - logit| / |logit|`` per explanation."""
        total = self.contributions.flatten(-3).sum(-1) + self.constant_total
        logit = self.explained_logit
        return (total - logit).abs() / logit.abs().clamp_min(torch.finfo(logit.dtype).tiny)

    @property
    def pixel_completeness_error(self) -> Tensor:
        """B: ``|sum(contributions) - (logit - constants)| / |logit - constants|`` per sample.

        Completeness judged on the pixel part of the logit alone: a large constant (the logit
        bias ``-log(C - 1)``) cannot hide an error in the contributions, as it can in
        :attr:`completeness_error`. Where the pixel part is tiny (an untrained B=2 model), compute
        the explanation in float64 to measure it.
        """
        pixels = self.explained_logit - self.constant_total
        total = self.contributions.flatten(-3).sum(-1)
        return (total - pixels).abs() / pixels.abs().clamp_min(torch.finfo(pixels.dtype).tiny)

    def to_rgba(self, smooth: int = 15, percentile: float = 99.5) -> Tensor:
        """B (x k) x H x W x 4 colour image of the dynamic weights (see
        :func:`bcosify.viz.to_rgba`)."""
        from bcosify.viz import to_rgba

        lead = self.dynamic_weights.shape[:-3]
        rgba = to_rgba(
            self.dynamic_weights.flatten(0, len(lead) - 1),
            self.contributions.flatten(0, len(lead) - 1),
            smooth=smooth,
            percentile=percentile,
        )
        return rgba.reshape(*lead, *rgba.shape[1:])

    def save_figures(
        self,
        out_dir: str | os.PathLike,
        names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        smooth: int = 15,
    ) -> list[Path]:
        """Write one figure per sample and target (image | colour explanation | contribution
        map).

        Returns the paths written: ``<out_dir>/<name>.png``, or with several targets per sample
        ``<out_dir>/<name>_class<t>.png``.
        """
        from bcosify.viz import save_figure

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        n = self.images.shape[0]
        names = list(names) if names is not None else [f"sample_{i}" for i in range(n)]
        targets = self.target if self.multi_target else self.target[:, None]
        weights = self.dynamic_weights if self.multi_target else self.dynamic_weights[:, None]
        contributions = self.contributions if self.multi_target else self.contributions[:, None]
        logits = self.explained_logit if self.multi_target else self.explained_logit[:, None]
        paths = []
        for i in range(n):
            for j in range(targets.shape[1]):
                t = int(targets[i, j])
                known = class_names is not None and t < len(class_names)
                label = class_names[t] if known else str(t)
                title = f"{names[i]}: explaining '{label}' (logit {float(logits[i, j]):.2f})"
                stem = f"{names[i]}_class{t}" if self.multi_target else names[i]
                path = out / f"{stem}.png"
                save_figure(
                    path,
                    self.images[i],
                    weights[i, j],
                    contributions[i, j],
                    title=title,
                    smooth=smooth,
                )
                paths.append(path)
        return paths


@dataclass
class LayerExplanation:
    """Contributions at an intermediate layer: that layer's features times their dynamic
    weights (``explain(model, x, layer=...)``).

    In explanation mode a B-cos network is, from any layer on, a linear map of that layer's
    features plus the additive constants downstream of it, so ``contributions.sum() +
    sum(constant_contributions)`` equals the explained logit (see :attr:`completeness_error`).
    The constants upstream of the layer are part of the features.

    Attributes:
        layer: the module or node name that was asked for; ``node``: the converted graph's node.
        features: B x ... (the layer's output, e.g. B x C x H x W or B x tokens x D).
        dynamic_weights: B x ..., the gradient of the target logit w.r.t. the features in
            explanation mode.
        contributions: ``features * dynamic_weights``.
        logits, prediction, target: as in :class:`Explanation` (one target per sample).
        constant_contributions: name -> B, the constants downstream of the layer.
        channel_dim: the features' channel axis (1 for maps, -1 for tokens).
    """

    layer: str
    node: str
    features: Tensor
    dynamic_weights: Tensor
    contributions: Tensor
    logits: Tensor
    prediction: Tensor
    target: Tensor
    constant_contributions: dict[str, Tensor] = field(default_factory=dict)
    channel_dim: int = 1

    @property
    def explained_logit(self) -> Tensor:
        return self.logits.gather(1, self.target[:, None]).squeeze(1)

    @property
    def constant_total(self) -> Tensor:
        return _sum_constants(self.constant_contributions, self.explained_logit)

    @property
    def completeness_error(self) -> Tensor:
        """B: ``|sum(contributions) + downstream constants - logit| / |logit - constants|``,
        judged on the part of the logit that the features carry."""
        total = self.contributions.flatten(1).sum(1)
        part = self.explained_logit - self.constant_total
        tiny = torch.finfo(part.dtype).tiny
        return (total - part).abs() / part.abs().clamp_min(tiny)

    @property
    def contribution_map(self) -> Tensor:
        """The contributions summed over the channel axis (B x H x W for maps, B x tokens)."""
        return self.contributions.sum(self.channel_dim)


class _LayerLeaf(nn.Module):
    """Identity in the graph after an explained layer's node: makes its output a leaf of the
    autograd graph (so gradients stop there) and keeps it."""

    def __init__(self):
        super().__init__()
        self.store: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise BcosifyError(
                f"the explained layer's output is a {type(x).__name__}, not one tensor; name a "
                "layer with a single tensor output"
            )
        leaf = x.detach().requires_grad_(True)
        self.store["features"] = leaf
        return leaf


_LEAF = "bcosify_explain_layer_leaf"


def _layer_node(model: nn.Module, layer: str) -> tuple[str, int]:
    """The converted graph's node for a module name (``layer3``), a source node name or a
    converted node name, and the features' channel axis as a 4-d map."""
    import difflib

    from torch import fx

    from bcosify.fx.nodemap import node_map

    if not isinstance(model, fx.GraphModule):
        raise BcosifyError(
            f"explain(layer=...) needs the converted GraphModule, got {type(model).__name__}"
        )
    names = {n.name for n in model.graph.nodes if n.op not in ("placeholder", "output")}
    try:
        nm = node_map(model)
    except BcosifyError:
        nm = None
    if nm is not None:
        source = nm.source_node(layer)
        if source is not None and source in nm.nodes:
            return nm.nodes[source], nm.channel_dim(source, 4)
    if layer in names:  # a node of the converted graph itself
        return layer, 1
    known = (list(nm.outputs) if nm is not None else []) + sorted(names)
    close = difflib.get_close_matches(layer, known, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise BcosifyError(
        f"unknown layer {layer!r}: neither a module with a single output, nor a node of the "
        f"source or of the converted graph.{hint} bcosify.node_map(model).outputs lists the "
        "module names"
    )


@contextmanager
def _leaf_after(model, node_name: str) -> Iterator[_LayerLeaf]:
    """Insert a :class:`_LayerLeaf` after ``node_name`` for the duration of the block (the
    graph is restored afterwards, also on error)."""
    leaf = _LayerLeaf()
    node = next(n for n in model.graph.nodes if n.name == node_name)
    model.add_submodule(_LEAF, leaf)
    with model.graph.inserting_after(node):
        new = model.graph.call_module(_LEAF, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    model.recompile()
    try:
        yield leaf
    finally:
        new.replace_all_uses_with(node)
        model.graph.erase_node(new)
        delattr(model, _LEAF)
        model.recompile()


def _layer_explanation(layer, node_name, channel_dim, leaf, logits, t, recorder):
    if t.dim() != 1:
        raise BcosifyError("explain(layer=...) explains one target per sample, not several")
    features = leaf.store.get("features")
    if features is None:
        raise BcosifyError(f"the layer {layer!r} did not run in the forward pass")
    leaves = [value for _, value in recorder.leaves]
    with torch.enable_grad():
        y = logits.gather(1, t[:, None]).sum()
        grads = torch.autograd.grad(y, [features, *leaves], allow_unused=True)
    weights = grads[0] if grads[0] is not None else torch.zeros_like(features)
    n = features.shape[0]
    constants: dict[str, Tensor] = {}
    for (name, value), g in zip(recorder.leaves, grads[1:]):
        if g is None:  # upstream of the layer: part of the features
            continue
        c = (value.detach() * g).reshape(n, -1).sum(1)
        constants[name] = constants[name] + c if name in constants else c
    logits = logits.detach()
    return LayerExplanation(
        layer=layer,
        node=node_name,
        features=features.detach(),
        dynamic_weights=weights.detach(),
        contributions=(features.detach() * weights).detach(),
        logits=logits,
        prediction=logits.argmax(1),
        target=t,
        constant_contributions=constants,
        channel_dim=channel_dim if features.dim() == 4 else -1,
    )


def _find_encoder(model: nn.Module) -> bnn.InputEncoding:
    for m in model.modules():
        if isinstance(m, bnn.InputEncoding):
            return m
    raise BcosifyError(
        "this model has no B-cos input encoding: explain() needs a model from bcosify.convert or "
        "bcosify.load"
    )


def _prepare_images(
    images: Tensor, channels: int, device, dtype, check_range: bool = True
) -> Tensor:
    if not isinstance(images, Tensor):
        raise BcosifyError(f"images must be a tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != channels:
        raise BcosifyError(
            f"images must be N x {channels} x H x W (or {channels} x H x W), got shape "
            f"{tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise BcosifyError(
            f"images must be floats in [0, 1], got dtype {images.dtype}; use "
            "model.transform (ToTensor) or divide by 255"
        )
    lo, hi = float(images.min()), float(images.max())
    if check_range and (lo < -1e-3 or hi > 1 + 1e-3):
        raise BcosifyError(
            f"images must lie in [0, 1] (found values in [{lo:.3g}, {hi:.3g}]); do not normalise "
            "them: a B-cos model encodes its input as [x, 1 - x] itself"
        )
    return images.detach().to(device=device, dtype=dtype)


def _resolve_target(target, logits: Tensor) -> Tensor:
    """B classes (one target per sample) or B x k (several: ``"topk:k"``, a B x k tensor)."""
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(1)
    if isinstance(target, str):
        kind, _, k = target.partition(":")
        if kind.strip() != "topk" or not k.strip().isdigit() or int(k) < 1:
            raise BcosifyError(
                f"target {target!r}: a string target is 'topk:K' (the K highest logits of each "
                "sample), e.g. 'topk:5'"
            )
        if int(k) > num_classes:
            raise BcosifyError(f"target {target!r}: the model has only {num_classes} classes")
        return logits.topk(int(k), dim=1).indices
    t = torch.as_tensor(target, device=logits.device).long()
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() not in (1, 2) or t.shape[0] != n or t.numel() == 0:
        raise BcosifyError(
            f"target must be None, an int, one class per sample ({n}), {n} x k classes or "
            f"'topk:K'; got shape {tuple(t.shape)}"
        )
    if bool(((t < 0) | (t >= num_classes)).any()):
        raise BcosifyError(f"target classes must lie in [0, {num_classes - 1}], got {t.tolist()}")
    return t


def _gradients(y: Tensor, inputs: list[Tensor], chunk_size: int) -> tuple[Tensor | None, ...]:
    """The gradients of each column of ``y`` (B x k, one target per column) w.r.t. ``inputs``,
    each with a leading target axis (k x ...).

    ``chunk_size`` 1: one backward pass per target through the retained graph (the fastest on a
    CPU, and memory stays that of one explanation). Larger: batched backward passes of that
    many targets (``autograd.grad(..., is_grads_batched=True)``), which trade memory for fewer,
    wider passes.
    """
    k = y.shape[1]
    # each pass writes into one preallocated k x ... tensor per input (no list of parts to
    # concatenate: the gradients are held once)
    out: list[Tensor | None] = [None] * len(inputs)
    for start in range(0, k, chunk_size):
        cols = range(start, min(k, start + chunk_size))
        if len(cols) == 1:
            grads = torch.autograd.grad(
                y[:, start].sum(), inputs, retain_graph=True, allow_unused=True
            )
            grads = tuple(None if g is None else g.unsqueeze(0) for g in grads)
        else:
            one_hot = torch.zeros((len(cols), *y.shape), device=y.device, dtype=y.dtype)
            for row, col in enumerate(cols):
                one_hot[row, :, col] = 1.0
            grads = torch.autograd.grad(
                y, inputs, grad_outputs=one_hot, retain_graph=True, allow_unused=True,
                is_grads_batched=True,
            )  # fmt: skip
        for i, g in enumerate(grads):
            if g is None:
                continue
            if out[i] is None:
                out[i] = g.new_zeros((k, *g.shape[1:]))
            out[i][start : start + len(cols)] = g
    return tuple(out)


def explain(
    model: nn.Module,
    images: Tensor,
    target: int | Sequence[int] | Tensor | str | None = None,
    *,
    chunk_size: int = 1,
    check_range: bool = True,
    layer: str | None = None,
) -> Explanation | LayerExplanation:
    """Explain a batch: the exact contribution of every input pixel to one logit per sample, or
    to several.

    Runs ``model`` in eval and explanation mode, takes the gradient of each sample's target logit
    w.r.t. the encoding ``[x, 1 - x]`` and of every additive constant. The caller's tensor is not
    modified, and a sample gets the same explanation alone or inside a batch. Several targets
    per sample share one forward pass, then one backward pass per target (or per chunk of
    targets).

    Args:
        model: a converted model (from :func:`bcosify.convert` or :func:`bcosify.load`).
        images: N x C x H x W (or C x H x W) in [0, 1], not normalised.
        target: None (explain the prediction), one class for all samples, one per sample, or
            several per sample: an N x k tensor (or nested lists) of classes, or ``"topk:k"``
            (the k highest logits of each sample, highest first). With several targets the
            :class:`Explanation` has a target axis after the batch axis.
        chunk_size: with several targets, how many share one backward pass. 1 (default): one
            input-gradient pass per target through the retained graph, the fastest on a CPU
            (resnet50, batch 8, 224 px, one thread: 5 targets cost 3.2x one target and peak at
            785 MiB, against 3.9x and 1,079 MiB for one batched pass of 5;
            ``scripts/benchmark.py``); larger: batched passes (``is_grads_batched``) of that
            many targets, whose memory grows with the chunk.
        check_range: refuse images outside [0, 1] (normalised images, by mistake). False for
            images perturbed on purpose beyond it (robustness metrics): the explanation stays
            exact for any input, it only explains an image the model was not trained on.
        layer: explain at an intermediate layer instead of the pixels: a module name
            (``"layer3"``, ``"blocks.5"``), a source node name or a converted node name. Returns
            a :class:`LayerExplanation`: the layer's features times their dynamic weights, whose
            sum plus the constants downstream of the layer is the logit. One target per sample.

    Example:
        >>> import bcosify, torchvision
        >>> m = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> e = bcosify.explain(m, torch.rand(2, 3, 64, 64))
        >>> e.contributions.shape, bool(e.completeness_error.max() < 1e-4)
        (torch.Size([2, 6, 64, 64]), True)
    """
    encoder = _find_encoder(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    dtype = param.dtype if param is not None else torch.float32
    x = _prepare_images(images, encoder.in_channels, device, dtype, check_range)

    captured: dict[str, Tensor] = {}

    def _leaf(module, inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured["x6"] = leaf
        return leaf

    node_name, channel_dim = _layer_node(model, layer) if layer is not None else (None, 1)
    names = {id(m): name for name, m in model.named_modules()}
    recorder = bnn.ConstantRecorder(names)
    was_training = model.training
    handle = encoder.register_forward_hook(_leaf)
    tap = _leaf_after(model, node_name) if node_name is not None else nullcontext(None)
    try:
        model.eval()
        # the parameters enter as constants: autograd then keeps only what the input gradient
        # needs (not, e.g., every norm layer's input for its weight gradient)
        params = {name: p.detach() for name, p in model.named_parameters()}
        with tap as layer_leaf, explanation_mode(model), torch.enable_grad(), recorder.active():
            logits = torch.func.functional_call(model, params, (x,))
    finally:
        handle.remove()
        model.train(was_training)
    if logits.dim() != 2:
        raise BcosifyError(f"the model must return N x classes logits, got {tuple(logits.shape)}")
    t = _resolve_target(target, logits)
    if layer_leaf is not None:
        return _layer_explanation(layer, node_name, channel_dim, layer_leaf, logits, t, recorder)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise BcosifyError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    x6 = captured["x6"]
    leaves = [leaf for _, leaf in recorder.leaves]
    n = x.shape[0]
    if t.dim() == 1:  # one target per sample: one backward pass
        with torch.enable_grad():  # (also when called under torch.no_grad)
            y = logits.gather(1, t[:, None]).sum()
            grads = torch.autograd.grad(y, [x6, *leaves], allow_unused=True)
        weights = grads[0] if grads[0] is not None else torch.zeros_like(x6)
        per_target = (n,)
    else:  # k targets per sample: k x B x ... gradients, moved to B x k x ...
        with torch.enable_grad():
            grads = _gradients(logits.gather(1, t), [x6, *leaves], chunk_size)
        k = t.shape[1]
        if grads[0] is None:
            weights = torch.zeros((n, k, *x6.shape[1:]), device=x6.device, dtype=x6.dtype)
        else:
            weights = grads[0].transpose(0, 1)
        per_target = (n, k)
    constants: dict[str, Tensor] = {}
    for (name, leaf), g in zip(recorder.leaves, grads[1:]):
        value = torch.zeros(per_target, device=x.device, dtype=x.dtype)
        if g is not None:
            # a leaf's first dimension is the batch, or batch-major groups of it (windows)
            if len(per_target) == 1:
                value = (leaf.detach() * g).reshape(n, -1).sum(1)
            else:  # g: k x leaf shape
                value = (leaf.detach() * g).reshape(per_target[1], n, -1).sum(-1).transpose(0, 1)
        constants[name] = constants[name] + value if name in constants else value
    logits = logits.detach()
    encoding = x6.detach() if t.dim() == 1 else x6.detach().unsqueeze(1)
    return Explanation(
        images=x,
        logits=logits,
        prediction=logits.argmax(1),
        target=t,
        dynamic_weights=weights.detach(),
        contributions=(encoding * weights).detach(),
        constant_contributions=constants,
    )
