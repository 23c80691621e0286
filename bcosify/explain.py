"""Exact, batched explanations of B-cos networks."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from bcosify import nn as bnn
from bcosify.errors import BcosifyError

__all__ = ["Explanation", "explain", "explanation_mode"]


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


@dataclass
class Explanation:
    """The explanation of one logit per sample of a batch.

    The contributions are exact: ``contributions.sum((1, 2, 3)) + sum(constant_contributions)``
    equals the explained logit (up to float rounding; see :attr:`completeness_error`).

    Attributes:
        images: the explained images, B x C x H x W in [0, 1].
        logits: B x num_classes.
        prediction: B (argmax of the logits).
        target: B, the explained class per sample.
        dynamic_weights: B x 2C x H x W, the gradient of the target logit w.r.t. the encoding
            ``[x, 1 - x]`` in explanation mode, i.e. the row W(x) of the dynamic linear map.
        contributions: B x 2C x H x W, ``[x, 1 - x] * dynamic_weights``.
        constant_contributions: name -> B tensor, the contribution of every additive constant
            (the logit bias, kept biases) to the explained logit.
    """

    images: Tensor
    logits: Tensor
    prediction: Tensor
    target: Tensor
    dynamic_weights: Tensor
    contributions: Tensor
    constant_contributions: dict[str, Tensor] = field(default_factory=dict)

    @property
    def explained_logit(self) -> Tensor:
        return self.logits.gather(1, self.target[:, None]).squeeze(1)

    @property
    def contribution_map(self) -> Tensor:
        """B x H x W: contributions summed over the channels."""
        return self.contributions.sum(1)

    @property
    def constant_total(self) -> Tensor:
        total = torch.zeros_like(self.explained_logit)
        for value in self.constant_contributions.values():
            total = total + value
        return total

    @property
    def completeness_error(self) -> Tensor:
        """B: ``|sum(contributions) + constants - logit| / |logit|`` per sample."""
        total = self.contributions.flatten(1).sum(1) + self.constant_total
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
        total = self.contributions.flatten(1).sum(1)
        return (total - pixels).abs() / pixels.abs().clamp_min(torch.finfo(pixels.dtype).tiny)

    def to_rgba(self, smooth: int = 15, percentile: float = 99.5) -> Tensor:
        """B x H x W x 4 colour image of the dynamic weights (see :func:`bcosify.viz.to_rgba`)."""
        from bcosify.viz import to_rgba

        return to_rgba(
            self.dynamic_weights, self.contributions, smooth=smooth, percentile=percentile
        )

    def save_figures(
        self,
        out_dir: str | os.PathLike,
        names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        smooth: int = 15,
    ) -> list[Path]:
        """Write one figure per sample (image | colour explanation | contribution map).

        Returns the paths written, ``<out_dir>/<name>.png``.
        """
        from bcosify.viz import save_figure

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        n = self.images.shape[0]
        names = list(names) if names is not None else [f"sample_{i}" for i in range(n)]
        paths = []
        for i in range(n):
            t = int(self.target[i])
            label = class_names[t] if class_names is not None and t < len(class_names) else str(t)
            title = f"{names[i]}: explaining '{label}' (logit {float(self.explained_logit[i]):.2f})"
            path = out / f"{names[i]}.png"
            save_figure(
                path,
                self.images[i],
                self.dynamic_weights[i],
                self.contributions[i],
                title=title,
                smooth=smooth,
            )
            paths.append(path)
        return paths


def _find_encoder(model: nn.Module) -> bnn.InputEncoding:
    for m in model.modules():
        if isinstance(m, bnn.InputEncoding):
            return m
    raise BcosifyError(
        "this model has no B-cos input encoding: explain() needs a model from bcosify.convert or "
        "bcosify.load"
    )


def _prepare_images(images: Tensor, channels: int, device, dtype) -> Tensor:
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
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise BcosifyError(
            f"images must lie in [0, 1] (found values in [{lo:.3g}, {hi:.3g}]); do not normalise "
            "them: a B-cos model encodes its input as [x, 1 - x] itself"
        )
    return images.detach().to(device=device, dtype=dtype)


def _resolve_target(target, logits: Tensor) -> Tensor:
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device).long()
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise BcosifyError(
            f"target must be None, an int or one class per sample ({n}); got shape {tuple(t.shape)}"
        )
    if bool(((t < 0) | (t >= num_classes)).any()):
        raise BcosifyError(f"target classes must lie in [0, {num_classes - 1}], got {t.tolist()}")
    return t


def explain(
    model: nn.Module,
    images: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
) -> Explanation:
    """Explain a batch: the exact contribution of every input pixel to one logit per sample.

    Runs ``model`` in eval and explanation mode, takes the gradient of each sample's target logit
    w.r.t. the encoding ``[x, 1 - x]`` and of every additive constant. The caller's tensor is not
    modified, and a sample gets the same explanation alone or inside a batch.

    Args:
        model: a converted model (from :func:`bcosify.convert` or :func:`bcosify.load`).
        images: N x C x H x W (or C x H x W) in [0, 1], not normalised.
        target: None (explain the prediction), one class for all samples, or one per sample.

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
    x = _prepare_images(images, encoder.in_channels, device, dtype)

    captured: dict[str, Tensor] = {}

    def _leaf(module, inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured["x6"] = leaf
        return leaf

    names = {id(m): name for name, m in model.named_modules()}
    recorder = bnn.ConstantRecorder(names)
    was_training = model.training
    handle = encoder.register_forward_hook(_leaf)
    try:
        model.eval()
        # the parameters enter as constants: autograd then keeps only what the input gradient
        # needs (not, e.g., every norm layer's input for its weight gradient)
        params = {name: p.detach() for name, p in model.named_parameters()}
        with explanation_mode(model), torch.enable_grad(), recorder.active():
            logits = torch.func.functional_call(model, params, (x,))
    finally:
        handle.remove()
        model.train(was_training)
    if logits.dim() != 2:
        raise BcosifyError(f"the model must return N x classes logits, got {tuple(logits.shape)}")
    t = _resolve_target(target, logits)
    x6 = captured["x6"]
    y = logits.gather(1, t[:, None]).sum()
    leaves = [leaf for _, leaf in recorder.leaves]
    grads = torch.autograd.grad(y, [x6, *leaves], allow_unused=True)
    weights = grads[0] if grads[0] is not None else torch.zeros_like(x6)
    constants: dict[str, Tensor] = {}
    for (name, leaf), g in zip(recorder.leaves, grads[1:]):
        value = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        if g is not None:
            # a leaf's first dimension is the batch, or batch-major groups of it (windows)
            value = (leaf.detach() * g).reshape(x.shape[0], -1).sum(1)
        constants[name] = constants[name] + value if name in constants else value
    logits = logits.detach()
    return Explanation(
        images=x,
        logits=logits,
        prediction=logits.argmax(1),
        target=t,
        dynamic_weights=weights.detach(),
        contributions=(x6.detach() * weights).detach(),
        constant_contributions=constants,
    )
