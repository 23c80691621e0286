"""Losses for fine-tuning B-cos networks.

- ``bce`` (default): binary cross-entropy with logits against targets ``max(onehot, 1/C)``, as in
  B-cos v2 and B-cosification (Böhle et al., TPAMI 2024; Arya et al., NeurIPS 2024). Together
  with the logit bias ``-log(C - 1)`` a zero pixel contribution gives every class probability 1/C.
- ``ce``: cross-entropy.
- ``distill``: KL divergence to the softened class distribution of a teacher (the original
  model); labels are not used.

All accept integer labels or soft targets (N x C, e.g. from mixup).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BCEWithOffTargets", "SoftCrossEntropy", "DistillationLoss", "to_soft_targets"]


def to_soft_targets(target: Tensor, num_classes: int) -> Tensor:
    """Integer labels (N) become one-hot rows; soft targets (N x C) pass through as floats."""
    if target.dim() == 1:
        return F.one_hot(target.long(), num_classes).float()
    if target.dim() != 2 or target.shape[1] != num_classes:
        raise ValueError(
            f"targets must be N labels or N x {num_classes} soft targets, got {tuple(target.shape)}"
        )
    return target.float()


class BCEWithOffTargets(nn.Module):
    """BCE-with-logits against ``max(target, off_value)`` with ``off_value = 1/C`` by default.

    Example:
        >>> loss = BCEWithOffTargets(4)
        >>> round(float(loss(torch.zeros(2, 4), torch.tensor([0, 3]))), 4)
        0.6931
    """

    def __init__(self, num_classes: int, off_value: float | None = None):
        super().__init__()
        self.num_classes = int(num_classes)
        self.off_value = 1.0 / num_classes if off_value is None else float(off_value)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        t = to_soft_targets(target, self.num_classes).clamp_min(self.off_value)
        return F.binary_cross_entropy_with_logits(logits.float(), t.to(logits.device))


class SoftCrossEntropy(nn.Module):
    """Cross-entropy for integer labels or soft targets.

    Example:
        >>> round(float(SoftCrossEntropy()(torch.zeros(1, 4), torch.tensor([2]))), 4)
        1.3863
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        if target.dim() == 1:
            return F.cross_entropy(logits, target.long())
        return torch.sum(-target.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()


class DistillationLoss(nn.Module):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    Softmax ignores a constant shift of the logits, so the B-cos logit bias plays no role.

    Example:
        >>> float(DistillationLoss()(torch.zeros(2, 3), torch.zeros(2, 3)))
        0.0
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        t = self.temperature
        log_p = F.log_softmax(student_logits.float() / t, dim=-1)
        log_q = F.log_softmax(teacher_logits.float() / t, dim=-1)
        return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t
