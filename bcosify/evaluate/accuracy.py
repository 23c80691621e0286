"""Top-1 / top-5 accuracy of a (converted or original) classifier on a labelled dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bcosify.errors import BcosifyError
from bcosify.evaluate.data import (
    check_batch,
    label_lookup,
    make_loader,
    map_labels,
    model_device,
    resolve_normalize,
)

__all__ = ["AccuracyResult", "evaluate_accuracy", "topk_correct"]


def topk_correct(logits: Tensor, labels: Tensor, k: int = 5) -> tuple[int, int]:
    """How many rows of ``logits`` (N x classes) have their label first, and among the top ``k``
    (``k`` is capped at the number of classes). The one top-1/top-k count of the package: the
    evaluation and the fine-tuning loop's validation both use it.

    Example:
        >>> topk_correct(torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), torch.tensor([1, 2]), 2)
        (1, 2)
    """
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return int(hit[:, 0].sum()), int(hit.any(1).sum())


@dataclass(frozen=True)
class AccuracyResult:
    """Counts of correct top-1 and top-k predictions.

    The counts (not only the rates) are kept so that results of several processes or data
    shards can be added up.

    Attributes:
        n: number of images.
        correct1: images whose top-1 prediction is the label.
        correct5: images whose label is among the ``k5`` highest logits.
        k5: the k of "top-5" (5, or the number of classes if there are fewer).
    """

    n: int
    correct1: int
    correct5: int
    k5: int = 5

    @property
    def top1(self) -> float:
        """Top-1 accuracy in [0, 1] (0 for an empty dataset)."""
        return self.correct1 / self.n if self.n else 0.0

    @property
    def top5(self) -> float:
        """Top-5 accuracy in [0, 1] (0 for an empty dataset)."""
        return self.correct5 / self.n if self.n else 0.0

    def __add__(self, other: AccuracyResult) -> AccuracyResult:
        if not isinstance(other, AccuracyResult):
            return NotImplemented
        return AccuracyResult(
            self.n + other.n,
            self.correct1 + other.correct1,
            self.correct5 + other.correct5,
            min(self.k5, other.k5),
        )

    def to_dict(self) -> dict[str, Any]:
        """The counts and the rates, JSON-serialisable.

        Example:
            >>> AccuracyResult(4, 3, 4).to_dict()["top1"]
            0.75
        """
        return {**asdict(self), "top1": self.top1, "top5": self.top5}


def evaluate_accuracy(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    normalize: Any = "auto",
    class_map: Sequence[int] | Mapping[int, int] | None = None,
    progress: bool = True,
    desc: str = "accuracy",
) -> AccuracyResult:
    """Top-1 and top-5 accuracy of ``model`` on a dataset of ``(image, label)`` pairs.

    The model runs in eval mode without gradients on the device it is on (its mode is restored
    afterwards); each batch is moved there. It works for a converted B-cos model (images in
    ``[0, 1]``) and for an original model (normalised, see ``normalize``), and can serve as the
    validation step of a training loop.

    Args:
        model: a classifier returning N x classes logits, on any device.
        data: a dataset yielding ``(image tensor C x H x W, int label)`` (e.g.
            :func:`bcosify.evaluate.image_folder` with ``transform=model.transform``) or an
            iterable of ``(images, labels)`` batches such as a DataLoader.
        batch_size: images per forward pass (when ``data`` is a dataset).
        num_workers: DataLoader worker processes (when ``data`` is a dataset).
        normalize: how ``[0, 1]`` images are normalised for the model, see
            :func:`bcosify.evaluate.data.resolve_normalize`: ``"auto"`` (none for converted
            models, the model's recorded mean/std otherwise), ``None``, a Preprocessing, a
            ``(mean, std)`` pair or a callable.
        class_map: model output index of each dataset label (see
            :func:`bcosify.evaluate.class_index_map`); default: the label is the index.
        progress: show a progress bar (tqdm, only on a terminal).
        desc: the progress bar's label.

    Returns:
        An :class:`AccuracyResult`.

    Raises:
        BcosifyError: for batches that are not image tensors with integer labels, or labels
            outside the model's classes.

    Example:
        >>> import torch
        >>> data = [(torch.rand(3, 8, 8), i % 2) for i in range(6)]
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
        >>> r = evaluate_accuracy(model, data, batch_size=4, progress=False)
        >>> r.n, r.k5, r.top5
        (6, 2, 1.0)
    """
    from tqdm import tqdm

    device = model_device(model)
    norm: Callable[[Tensor], Tensor] = resolve_normalize(model, normalize)
    loader = make_loader(data, batch_size, num_workers)
    table = label_lookup(class_map, device)
    n = correct1 = correct5 = 0
    k5 = 5
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            bar = tqdm(loader, desc=desc, unit="batch", disable=None if progress else True)
            for batch in bar:
                images, labels = check_batch(batch)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                labels = map_labels(labels, table)
                logits = model(norm(images))
                if logits.dim() != 2:
                    raise BcosifyError(
                        f"the model must return N x classes logits, got {tuple(logits.shape)}"
                    )
                num_classes = logits.shape[1]
                if bool(((labels < 0) | (labels >= num_classes)).any()):
                    raise BcosifyError(
                        f"labels must lie in [0, {num_classes - 1}] (the model's classes), got "
                        f"{sorted(set(labels.tolist()))[:10]}; pass class_map= to map them"
                    )
                k5 = min(5, num_classes)
                c1, c5 = topk_correct(logits, labels, k5)
                correct1 += c1
                correct5 += c5
                n += labels.numel()
                bar.set_postfix(top1=f"{correct1 / max(n, 1):.3f}")
    finally:
        model.train(was_training)
    return AccuracyResult(n=n, correct1=correct1, correct5=correct5, k5=k5)
