"""Matthews correlation coefficient (MCC) loss for segmentation: ``1 - MCC`` of the soft confusion counts.

Inputs, modes, ignored pixels, ``classes`` / ``class_weights`` and the two reductions (``per_image``) are those of
every segmentation loss: see :mod:`hf_losses.losses.segmentation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import Normalize, Reduction
from hf_losses.losses.checks import check_number
from hf_losses.losses.segmentation import OverlapStatisticsLoss, labelled
from hf_losses.registry import register_loss

DEFAULT_EPS = 1e-5


def mcc_loss(
    tp: Tensor, pred_sum: Tensor, target_sum: Tensor, count: Tensor | float, eps: float = DEFAULT_EPS
) -> Tensor:
    """``1 - MCC`` per entry, ``MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN))`` with ``eps``
    added to each soft count (Abhishek & Hamarneh 2021; smp's ``MCCLoss``): in [0, 2], 0 for a perfect prediction.

    Soft counts from ``TP = sum p y``, ``|P| = sum p``, ``|G| = sum y`` and ``count`` labelled pixels:
    ``FP = |P| - TP``, ``FN = |G| - TP``, ``TN = count - |P| - |G| + TP`` (= ``sum (1 - p)(1 - y)``).
    """
    # each soft count is >= 0; the clamps keep float rounding from taking one below 0 under the square root
    false_positives = (pred_sum - tp).clamp(min=0.0) + eps
    false_negatives = (target_sum - tp).clamp(min=0.0) + eps
    true_negatives = (count - pred_sum - target_sum + tp).clamp(min=0.0) + eps
    true_positives = tp + eps
    numerator = true_positives * true_negatives - false_positives * false_negatives
    denominator = torch.sqrt(
        (true_positives + false_positives)
        * (true_positives + false_negatives)
        * (true_negatives + false_positives)
        * (true_negatives + false_negatives)
    )
    return 1.0 - numerator / denominator


@register_loss("mcc", aliases=("matthews", "mcc_loss"))
class MCCLoss(OverlapStatisticsLoss):
    """Matthews correlation loss ``1 - MCC`` of each class against the rest, mean over classes.

    MCC weighs all four cells of the confusion matrix, so unlike Dice it rewards the true negatives too -- the
    loss stays informative when the foreground is tiny or absent. Equals smp's ``MCCLoss(eps)`` (binary, one
    sigmoid channel) with ``per_image=False, from_logits=False`` (smp takes probabilities and pools the batch).

    Args:
        eps: added to each soft count (TP, TN, FP, FN), > 0: keeps the ratio defined for an image of one class.
        include_background: keep class 0 in the class mean (ignored for ``C == 1``).
        per_image: True (default): loss per image averaged over images, item = image, decomposable. False (smp):
            the counts of the whole (global) batch, not decomposable.
        across_processes: with ``per_image=False``, sum the counts over all processes (differentiable).
        ignore_index: label of pixels (or, with float targets, entries) left out of every count.
        classes: the class indices the loss averages over (None: every class).
        class_weights: one weight >= 0 per class: the weighted class mean ``sum w_c L_c / sum w_c``.
        multilabel: every channel its own sigmoid, float 0/1 targets shaped like the logits.
        from_logits: False when the first input already holds probabilities in [0, 1] (as smp's ``MCCLoss``).
        reduction: "mean", "sum" or "none" (``(N,)`` per-image losses; with ``per_image=True``).
        normalize: "count" or "weight" (divide by the sum of the images' ``sample_weight``).
    """

    summary = "Matthews correlation loss 1 - MCC of the soft confusion counts, per image or over the batch."
    float_targets_option = "multilabel=True"
    reference = "Abhishek & Hamarneh 2021, Matthews Correlation Coefficient Loss (arXiv:2010.13454)"

    def __init__(
        self,
        eps: float = DEFAULT_EPS,
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
        *,
        classes: Sequence[int] | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        multilabel: bool = False,
        from_logits: bool = True,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        eps = check_number(self._label(), "eps", eps, minimum=0.0, strict=True)
        super().__init__(
            include_background=include_background,
            per_image=per_image,
            across_processes=across_processes,
            ignore_index=ignore_index,
            multilabel=multilabel,
            from_logits=from_logits,
            classes=classes,
            class_weights=class_weights,
            reduction=reduction,
            normalize=normalize,
        )
        self.eps = eps

    def row_losses(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor, count: Tensor | int) -> Tensor:
        return self.class_mean(mcc_loss(tp, pred_sum, target_sum, count, self.eps), present=labelled(count, tp))

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}, {super().extra_repr()}"
