"""Regression losses (``problem_type="regression"``): squared, Huber and smooth-L1 error per target entry.

Item unit: one target entry; labels are real-valued targets shaped like the predictions (label kind "target").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import LogitsLoss, Normalize, Reduction
from hf_losses.losses.checks import check_number
from hf_losses.registry import register_loss


class RegressionLoss(LogitsLoss):
    """Shared parts: real-valued targets shaped like the predictions, ignored entries left out of the sum."""

    label_kind = "target"

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, reduction: Reduction = "mean", normalize: Normalize = "count"
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        valid = self.valid_mask(labels)
        return self.loss_items(logits, labels).sum(), valid.sum()

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self.per_entry(logits, labels).masked_fill(~self.valid_mask(labels), 0.0)

    def item_weights(self, labels: Tensor) -> Tensor:
        # 0 at ignored targets (the base class counts every entry of float labels)
        return self.valid_mask(labels).to(torch.float32)

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


@register_loss("huber")
class HuberLoss(RegressionLoss):
    """Huber error: quadratic within ``delta`` of the target, linear beyond; equals ``F.huber_loss``.

    ``0.5 e^2`` for ``|e| < delta``, else ``delta (|e| - 0.5 delta)``: its slope beyond ``delta`` is ``delta``
    (see ``smooth_l1``, which divides by ``beta`` so the slope is 1).
    """

    summary = "Huber loss over target entries (regression robust to outliers)."
    reference = "Huber 1964; PyTorch F.huber_loss"

    def __init__(
        self,
        delta: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        self.delta = check_number(self._label(), "delta", delta, minimum=0.0, strict=True)

    def per_entry(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return F.huber_loss(predictions, targets, reduction="none", delta=self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta:g}, {super().extra_repr()}"


@register_loss("smooth_l1", aliases=("smooth_l1_loss",))
class SmoothL1Loss(RegressionLoss):
    """Smooth L1 error: ``0.5 e^2 / beta`` for ``|e| < beta``, else ``|e| - 0.5 beta``; equals ``F.smooth_l1_loss``.

    The Huber loss with ``delta = beta`` divided by ``beta`` (slope 1 beyond ``beta``, as in Fast R-CNN);
    ``beta = 0`` is the L1 error ``|e|``.
    """

    summary = "Smooth L1 loss over target entries: Huber(delta=beta) / beta, L1 at beta=0 (regression)."
    reference = "Girshick 2015, Fast R-CNN (ICCV); PyTorch F.smooth_l1_loss"

    def __init__(
        self,
        beta: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        self.beta = check_number(self._label(), "beta", beta, minimum=0.0)

    def per_entry(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return F.smooth_l1_loss(predictions, targets, reduction="none", beta=self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, {super().extra_repr()}"
