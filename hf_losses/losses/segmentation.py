"""Segmentation losses: what they share, and the overlap losses Dice, generalized Dice, Tversky, focal-Tversky.

:class:`~hf_losses.losses.segmentation_base.SegmentationLoss` holds what every segmentation loss shares
(parameters, input checks, flattening, background removal, the image count); :class:`OverlapLoss` the losses of
soft overlap statistics, defined here.
Lovasz-softmax, a loss of sorted pixel errors, is in :mod:`hf_losses.losses.lovasz`.

Shapes: logits ``(N, C, d1, ...)`` and integer labels ``(N, d1, ...)`` as for ``F.cross_entropy``. With
``C > 1`` the probabilities are a softmax over the classes; with ``C == 1`` the task is binary, the
probability is ``sigmoid(logit)`` and labels hold 0 (background) / 1 (foreground). Pixels labelled
``ignore_index`` are left out of every sum.

Two reductions, chosen with ``per_image``:

* ``per_image=True`` (default, MONAI's ``batch=False``): each image gets its own loss (a mean over its classes);
  the item is the image, so the loss is the sum of per-image losses divided by ``num_items_in_batch`` (the
  global count of images with at least one labelled pixel). Decomposable: exact under gradient accumulation
  and across processes.
* ``per_image=False`` (MONAI's ``batch=True``): one set of overlap statistics for the whole batch -- across
  all processes when ``torch.distributed`` is initialized, with differentiable collectives
  (:mod:`hf_losses.distributed`). Not decomposable: it ignores ``num_items_in_batch`` and gradient
  accumulation changes its value (each micro-batch is its own batch).

Where the definitions coincide (no ignored pixels, ``smooth`` = MONAI's ``smooth_nr`` = ``smooth_dr``) the
values equal MONAI's ``DiceLoss``, ``GeneralizedDiceLoss`` and ``TverskyLoss`` with ``softmax=True,
to_onehot_y=True`` (``sigmoid=True`` for one channel). A ratio ``0 / 0`` (a class absent from the labels and
from the prediction, e.g. an image whose pixels are all ignored with ``smooth=0``) counts as a perfect score,
so such terms give 0 and a zero gradient, never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.distributed import all_reduce_sum_with_grad
from hf_losses.losses.checks import check_number
from hf_losses.losses.segmentation_base import SegmentationLoss, class_probabilities, one_hot_targets
from hf_losses.registry import register_loss

DEFAULT_SMOOTH = 1e-5


# ------------------------------------------------------------------------------------------ statistics
def overlap_statistics(logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives ``sum_x p_c [y = c]``, predicted mass ``sum_x p_c`` and label count ``sum_x [y = c]``
    per image and class, each ``(N, C)``.

    ``logits`` ``(N, C, P)`` (pixels flattened), ``labels`` and ``valid`` ``(N, P)``; ``valid=None`` means every
    pixel counts, otherwise pixels with ``valid`` False count nowhere. One softmax, one one-hot (a scatter into
    distinct positions) and three sums, differentiated by autograd: measured on CPU (1 and 8 threads) and CUDA
    as fast as or faster than a hand-fused backward with scatter-add or bincount grouping of ``p[y]``, which
    serialize (CPU) or contend (CUDA atomics) on the C bins of each image.
    """
    probs = class_probabilities(logits)
    safe_labels = labels if valid is None else labels.masked_fill(~valid, 0)
    target = one_hot_targets(safe_labels, logits.shape[1], probs.dtype)
    if valid is not None:
        valid_float = valid.unsqueeze(1).to(probs.dtype)
        probs = probs * valid_float
        target = target * valid_float
    return (probs * target).sum(2), probs.sum(2), target.sum(2)


def _ratio(numerator: Tensor, denominator: Tensor, smooth: float) -> Tensor:
    """``numerator / denominator``; with ``smooth = 0`` a ``0 / 0`` (nothing to find, nothing predicted) is 1,
    with a finite (zero) gradient."""
    if smooth > 0:  # the denominator is >= smooth
        return numerator / denominator
    nonzero = denominator > 0
    return torch.where(
        nonzero, numerator / torch.where(nonzero, denominator, torch.ones_like(denominator)), torch.ones_like(numerator)
    )


def dice_loss(tp: Tensor, pred_sum: Tensor, target_sum: Tensor, smooth: float = DEFAULT_SMOOTH) -> Tensor:
    """Per-class Dice loss ``1 - (2 |P∩G| + s) / (|P| + |G| + s)`` (Milletari et al. 2016, soft form)."""
    return 1.0 - _ratio(2.0 * tp + smooth, pred_sum + target_sum + smooth, smooth)


def tversky_loss(
    tp: Tensor, pred_sum: Tensor, target_sum: Tensor, alpha: float, beta: float, smooth: float = DEFAULT_SMOOTH
) -> Tensor:
    """Per-class Tversky loss ``1 - (TP + s) / (TP + alpha FP + beta FN + s)`` (Salehi et al. 2017).

    ``FP = |P| - TP`` (predicted mass outside the class), ``FN = |G| - TP`` (class pixels missed);
    ``alpha = beta = 0.5`` is the Dice loss.
    """
    false_positives = pred_sum - tp
    false_negatives = target_sum - tp
    return 1.0 - _ratio(tp + smooth, tp + alpha * false_positives + beta * false_negatives + smooth, smooth)


def focal_tversky_loss(
    tp: Tensor,
    pred_sum: Tensor,
    target_sum: Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """Per-class focal-Tversky loss ``(1 - TI) ** gamma`` (Abraham & Khan 2019, who write the exponent 1/gamma)."""
    loss = tversky_loss(tp, pred_sum, target_sum, alpha, beta, smooth)
    positive = loss > 0  # d/dx x**gamma is infinite at 0 for gamma < 1: keep such terms at 0 with zero gradient
    return torch.where(positive, torch.where(positive, loss, torch.ones_like(loss)) ** gamma, torch.zeros_like(loss))


def generalized_dice_loss(tp: Tensor, pred_sum: Tensor, target_sum: Tensor, smooth: float = DEFAULT_SMOOTH) -> Tensor:
    """Generalized Dice loss of each row (image, or the batch) over its classes (Sudre et al. 2017).

    ``1 - (2 sum_c w_c TP_c + s) / (sum_c w_c (|P_c| + |G_c|) + s)`` with ``w_c = 1 / |G_c|^2`` (no gradient);
    a class absent from the row's labels gets the largest weight of the present classes, as in MONAI.
    Inputs ``(R, C)``, output ``(R,)``.
    """
    weights = 1.0 / target_sum.detach() ** 2
    absent = torch.isinf(weights)
    weights = weights.masked_fill(absent, 0.0)
    weights = weights + absent * weights.max(dim=1, keepdim=True).values
    numerator = 2.0 * (weights * tp).sum(1) + smooth
    denominator = (weights * (pred_sum + target_sum)).sum(1) + smooth
    return 1.0 - _ratio(numerator, denominator, smooth)


# ------------------------------------------------------------------------------------------ losses
class OverlapLoss(SegmentationLoss):
    """A loss of the soft overlap statistics (TP, predicted mass, label count) per image or over the batch.

    Its parameters are those of Dice and generalized Dice, which take them as they are."""

    def __init__(
        self,
        smooth: float = DEFAULT_SMOOTH,
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        smooth = check_number(self._label(), "smooth", smooth, minimum=0.0)
        super().__init__(
            include_background=include_background,
            per_image=per_image,
            across_processes=across_processes,
            ignore_index=ignore_index,
        )
        self.smooth = smooth

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | int]:
        logits, labels, valid = self._flatten(logits, labels)
        statistics = self._drop_background(*overlap_statistics(logits, labels, valid))
        count = self._image_count(labels, valid)
        if self.per_image:
            return self.score(*statistics).sum(), count
        batch = torch.stack([s.sum(0) for s in statistics])  # (3, C): one collective for all three sums
        if self.across_processes:
            batch = all_reduce_sum_with_grad(batch)
        return self.score(*batch.unsqueeze(1)).squeeze(0), count

    def score(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        """Loss of each row ``(R,)`` from its per-class statistics ``(R, C)``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, {super().extra_repr()}"


_COMMON_ARGS = """
    Args:
        smooth: added to numerator and denominator (MONAI's ``smooth_nr = smooth_dr``); >= 0.
        include_background: keep class 0 in the class mean (ignored for ``C == 1``, whose one channel is
            the foreground).
        per_image: True (default, as MONAI's ``batch=False``): loss per image averaged over images, item =
            image, decomposable. False: statistics over the whole (global) batch, not decomposable.
        across_processes: with ``per_image=False``, sum the statistics over all processes with a
            differentiable all-reduce (exact gradients under DDP); set False to use the local batch only.
        ignore_index: label of pixels left out of every sum.
"""


@register_loss("dice", aliases=("dice_loss",))
class DiceLoss(OverlapLoss):
    __doc__ = (
        """Soft Dice loss, mean over classes: ``1 - (2 TP_c + s) / (|P_c| + |G_c| + s)``.

    Equals ``monai.losses.DiceLoss(softmax=True, to_onehot_y=True, smooth_nr=s, smooth_dr=s)`` (``batch`` =
    ``not per_image``).
    """
        + _COMMON_ARGS
    )

    summary = "Soft Dice loss (per image or over the batch), mean over classes."
    reference = "Milletari et al. 2016, V-Net (arXiv:1606.04797)"

    def score(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        return dice_loss(tp, pred_sum, target_sum, self.smooth).mean(-1)


@register_loss("generalized_dice", aliases=("gdl",))
class GeneralizedDiceLoss(OverlapLoss):
    __doc__ = (
        """Generalized Dice loss: class terms weighted by ``1 / |G_c|^2`` so rare classes count as much
    as frequent ones. Equals ``monai.losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True)``.
    """
        + _COMMON_ARGS
    )

    summary = "Generalized Dice loss: Dice with class weights 1/|G_c|^2 for imbalanced segmentation."
    reference = "Sudre et al. 2017, Generalised Dice overlap (arXiv:1707.03237)"

    def score(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        return generalized_dice_loss(tp, pred_sum, target_sum, self.smooth)


def _check_alpha_beta(owner: str, alpha: float, beta: float) -> tuple[float, float]:
    alpha = check_number(owner, "alpha", alpha, minimum=0.0)
    beta = check_number(owner, "beta", beta, minimum=0.0)
    if alpha + beta == 0:
        raise ValueError(
            f"{owner}: `alpha` + `beta` must be > 0 (alpha weights false positives, beta false "
            f"negatives; with both 0 the index is always 1), got alpha={alpha:g}, beta={beta:g}."
        )
    return alpha, beta


@register_loss("tversky")
class TverskyLoss(OverlapLoss):
    __doc__ = (
        """Tversky loss, mean over classes: ``1 - (TP + s) / (TP + alpha FP + beta FN + s)``.

    ``alpha`` weights false positives, ``beta`` false negatives (MONAI's convention); the defaults 0.3 / 0.7
    favour recall as in the paper, 0.5 / 0.5 is Dice. Equals ``monai.losses.TverskyLoss(softmax=True,
    to_onehot_y=True, alpha, beta)``.

    Args:
        alpha: weight of false positives, >= 0.
        beta: weight of false negatives, >= 0 (alpha + beta > 0).
    """
        + _COMMON_ARGS
    )

    summary = "Tversky loss: Dice with separate weights on false positives (alpha) and false negatives (beta)."
    reference = "Salehi et al. 2017, Tversky loss (arXiv:1706.05721)"

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth: float = DEFAULT_SMOOTH,
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(
            smooth=smooth,
            include_background=include_background,
            per_image=per_image,
            across_processes=across_processes,
            ignore_index=ignore_index,
        )
        self.alpha, self.beta = _check_alpha_beta(self._label(), alpha, beta)

    def score(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        return tversky_loss(tp, pred_sum, target_sum, self.alpha, self.beta, self.smooth).mean(-1)


@register_loss("focal_tversky")
class FocalTverskyLoss(OverlapLoss):
    __doc__ = (
        """Focal-Tversky loss, mean over classes: ``(1 - TI_c) ** gamma`` with TI the Tversky index.

    The paper writes the exponent as ``1/gamma`` with gamma in [1, 3] and uses 4/3; here ``gamma`` is the
    exponent itself, default 0.75 (= 1 / (4/3)), so that ``gamma = 1`` is the Tversky loss. gamma < 1 raises
    the loss (and gradient) of classes that are already well segmented less than of poorly segmented ones.

    Args:
        alpha: weight of false positives, >= 0.
        beta: weight of false negatives, >= 0 (alpha + beta > 0).
        gamma: exponent, > 0.
    """
        + _COMMON_ARGS
    )

    summary = "Focal-Tversky loss (1 - Tversky index) ** gamma, mean over classes."
    reference = "Abraham & Khan 2019, focal Tversky loss (arXiv:1810.07842)"

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 0.75,
        smooth: float = DEFAULT_SMOOTH,
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(
            smooth=smooth,
            include_background=include_background,
            per_image=per_image,
            across_processes=across_processes,
            ignore_index=ignore_index,
        )
        self.alpha, self.beta = _check_alpha_beta(self._label(), alpha, beta)
        self.gamma = check_number(self._label(), "gamma", gamma, minimum=0.0, strict=True)

    def score(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        return focal_tversky_loss(tp, pred_sum, target_sum, self.alpha, self.beta, self.gamma, self.smooth).mean(-1)
