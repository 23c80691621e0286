"""bcosify's exact explanations as a Quantus ``explain_func``.

Quantus (Hedström et al., JMLR 2023) evaluates explanations with metrics called as
``metric(model=..., x_batch=..., y_batch=..., explain_func=..., explain_func_kwargs=...)``;
its explanation functions take numpy arrays and return numpy arrays. :func:`explain_func` is
one: the exact contributions of a converted model, per pixel (the ``x`` and ``1 - x`` parts
of the 3 image channels added), N x 1 x H x W as ``quantus.explain`` returns them (summed over
the channel axis: what Quantus's localisation metrics compare with N x 1 x H x W masks), or per
image channel, N x 3 x H x W (``channels=3``).

B-cos models are trained with a binary cross-entropy on sigmoid outputs (and the logit bias
``-log(C - 1)``), not a softmax: pass ``softmax=False`` to the metrics that take it (Quantus's
default), so that they compare the logits the explanation is of.

Example:
    >>> import numpy as np, torchvision, bcosify
    >>> from bcosify.integrations.quantus import explain_func
    >>> m = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> a = explain_func(m, np.random.rand(2, 3, 32, 32).astype("float32"), np.array([1, 2]))
    >>> a.shape, a.dtype
    ((2, 1, 32, 32), dtype('float32'))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bcosify.errors import BcosifyError


def explain_func(
    model: nn.Module,
    inputs: np.ndarray,
    targets: np.ndarray | int | None,
    *,
    channels: int = 1,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Quantus explanation function: the exact B-cos contributions of ``model`` to each
    sample's target logit.

    Args:
        model: a converted model (:func:`bcosify.convert`, :func:`bcosify.load`).
        inputs: N x 3 x H x W images in [0, 1] (numpy or tensor, channels first). Quantus's
            perturbations may leave [0, 1]: such inputs are explained as they are.
        targets: the class of each sample (N ints), one int for all, or None (the prediction).
        channels: 1 (default: summed over the image channels, Quantus's convention) or 3
            (each image channel's contribution, the input's shape).
        device: where to run (default: the model's device).
        kwargs: other keys Quantus passes (ignored).

    Returns:
        float32 numpy array, N x 1 x H x W (or N x 3 x H x W).
    """
    from bcosify.convert import is_converted
    from bcosify.explain import explain

    if not is_converted(model):
        raise BcosifyError(
            "bcosify.integrations.quantus.explain_func explains converted models; for the "
            f"unconverted {type(model).__name__} use quantus.explain with a post-hoc method "
            "(e.g. method='Saliency')"
        )
    if channels not in (1, 3):
        raise BcosifyError(f"channels must be 1 or 3, got {channels!r}")
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if x.dim() != 4 or x.shape[1] != 3:
        raise BcosifyError(
            f"inputs must be N x 3 x H x W (channels first), got shape {tuple(x.shape)}; pass "
            "channel_first=True to the metric"
        )
    if device is not None:
        model = model.to(device)
    target = None
    if targets is not None:
        target = torch.as_tensor(np.asarray(targets)).long().reshape(-1)
        if target.numel() == 1 and x.shape[0] > 1:
            target = target.expand(x.shape[0])
    e = explain(model, x.float(), target=target, check_range=False)
    c = e.contributions
    half = c.shape[1] // 2
    a = c[:, :half] + c[:, half:]
    if channels == 1:
        a = a.sum(1, keepdim=True)
    return a.detach().cpu().numpy().astype(np.float32)


__all__ = ["explain_func"]
