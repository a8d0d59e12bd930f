"""Regression losses (``problem_type="regression"``): squared and Huber error per target entry.

Item unit: one target entry; labels are real-valued targets shaped like the predictions (label kind "target").
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import LogitsLoss
from hf_losses.losses.checks import check_number
from hf_losses.registry import register_loss


class RegressionLoss(LogitsLoss):
    """Shared parts: real-valued targets shaped like the predictions, ignored entries left out of the sum."""

    label_kind = "target"

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        valid = self.valid_mask(labels)
        errors = self.per_entry(logits, labels)
        return errors.masked_fill(~valid, 0.0).sum(), valid.sum()

    def per_entry(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """Unreduced error of every entry."""
        raise NotImplementedError


@register_loss("mse", aliases=("mean_squared_error",))
class MSELoss(RegressionLoss):
    """Squared error ``(prediction - target)^2`` averaged over target entries; equals ``F.mse_loss``."""

    summary = "Mean squared error over target entries (regression)."
    reference = "PyTorch F.mse_loss"

    def per_entry(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(predictions, targets, reduction="none")


@register_loss("huber", aliases=("smooth_l1",))
class HuberLoss(RegressionLoss):
    """Huber error: quadratic within ``delta`` of the target, linear beyond; equals ``F.huber_loss``."""

    summary = "Huber loss over target entries (regression robust to outliers)."
    reference = "Huber 1964; PyTorch F.huber_loss"

    def __init__(self, delta: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(ignore_index)
        self.delta = check_number(self._label(), "delta", delta, minimum=0.0, strict=True)

    def per_entry(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return F.huber_loss(predictions, targets, reduction="none", delta=self.delta)
