"""Regression losses (``problem_type="regression"``): squared and Huber error per target entry.

Item unit: one target entry; labels are float and shaped like the predictions.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hf_losses.losses.base import IGNORE_INDEX, Loss
from hf_losses.losses.checks import check_number
from hf_losses.registry import register_loss


@register_loss("mse", aliases=("mean_squared_error",))
class MSELoss(Loss):
    """Squared error ``(prediction - target)^2`` averaged over target entries; equals ``F.mse_loss``."""

    summary = "Mean squared error over target entries (regression)."
    reference = "PyTorch F.mse_loss"
    label_kind = "binary"

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        valid = self.valid_mask(labels)
        errors = F.mse_loss(logits, labels, reduction="none")
        return errors.masked_fill(~valid, 0.0).sum(), valid.sum()


@register_loss("huber", aliases=("smooth_l1",))
class HuberLoss(Loss):
    """Huber error: quadratic within ``delta`` of the target, linear beyond; equals ``F.huber_loss``."""

    summary = "Huber loss over target entries (regression robust to outliers)."
    reference = "Huber 1964; PyTorch F.huber_loss"
    label_kind = "binary"

    def __init__(self, delta: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(ignore_index)
        self.delta = check_number(self._label(), "delta", delta, minimum=0.0, strict=True)

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        valid = self.valid_mask(labels)
        errors = F.huber_loss(logits, labels, reduction="none", delta=self.delta)
        return errors.masked_fill(~valid, 0.0).sum(), valid.sum()
