"""Single-label classification losses for imbalanced data: weighted CE, focal, class-balanced, LDAM, Poly-1.

Item unit: one non-ignored label entry. Logits ``(N, C)`` or ``(N, C, d1, ...)``, integer labels ``(N)`` or
``(N, d1, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses.losses.base import IGNORE_INDEX, Loss
from hf_losses.losses.checks import as_vector, check_num_classes, check_number
from hf_losses.registry import register_loss


def per_item_cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None = None,
                           label_smoothing: float = 0.0, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Unreduced ``F.cross_entropy`` (0 at ignored entries) -- each entry is ``w[y_i] * ce_i``."""
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="none")


@register_loss("cross_entropy", aliases=("ce", "weighted_cross_entropy"))
class CrossEntropyLoss(Loss):
    """Softmax cross-entropy with optional class weights and label smoothing.

    Reduction: ``sum_i w[y_i] * ce_i / N`` where ``N`` is ``num_items_in_batch`` (or the local count of
    non-ignored labels). With class weights this is PyTorch's weighted mean
    (``sum w[y_i] ce_i / sum w[y_i]``) multiplied by ``sum_i w[y_i] / N`` -- dividing by a count instead of
    by the batch's weight sum is what keeps it decomposable across accumulation steps and processes.
    """

    summary = "Softmax cross-entropy with optional class weights and label smoothing."
    reference = "PyTorch F.cross_entropy; label smoothing: Szegedy et al. 2016"

    def __init__(self, weight: Sequence[float] | Tensor | None = None, label_smoothing: float = 0.0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(ignore_index)
        self.label_smoothing = check_number(self._label(), "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        self.register_buffer("weight", None if weight is None else as_vector(self._label(), "weight", weight))

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        check_num_classes(self._label(), "weight", self.weight, logits.shape[1])

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        losses = per_item_cross_entropy(logits, labels, self.weight, self.label_smoothing, self.ignore_index)
        return losses.sum(), (labels != self.ignore_index).sum()
