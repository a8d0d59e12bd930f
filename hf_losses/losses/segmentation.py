"""Overlap losses of soft segmentation statistics: Dice (and Jaccard), generalized Dice, Tversky, focal-Tversky.

:class:`~hf_losses.losses.segmentation_base.SegmentationLoss` holds what every segmentation loss shares (inputs,
binary / multi-class / multi-label modes, probabilities, ``classes``, ``class_weights``, ignored entries, the image
count); :class:`OverlapStatisticsLoss` the losses computed from the soft statistics of each image and class (true
positives, predicted mass, label mass, labelled entries), defined here. The Matthews correlation loss (``mcc``) is
in :mod:`hf_losses.losses.mcc`, Lovasz-softmax and the Lovasz hinge in :mod:`hf_losses.losses.lovasz`.

Two reductions, chosen with ``per_image``:

* ``per_image=True`` (default, MONAI's ``batch=False``): each image gets its own loss (a mean over its classes);
  the item is the image, so the loss is the sum of per-image losses divided by ``num_items_in_batch`` (the
  global count of images with at least one labelled pixel). Decomposable: exact under gradient accumulation
  and across processes; ``reduction="none"`` gives the ``(N,)`` per-image losses, ``sample_weight`` weighs images.
* ``per_image=False`` (MONAI's ``batch=True``, smp's only mode): one set of overlap statistics for the whole
  batch -- across all processes when ``torch.distributed`` is initialized, with differentiable collectives
  (:mod:`hf_losses.distributed`). Not decomposable: it ignores ``num_items_in_batch`` and gradient
  accumulation changes its value (each micro-batch is its own batch).

Where the definitions coincide the values equal MONAI's ``DiceLoss``, ``GeneralizedDiceLoss`` and ``TverskyLoss``
and smp's ``DiceLoss``, ``JaccardLoss`` and ``TverskyLoss`` (tests/losses/test_segmentation_peers.py). Conventions
kept on purpose:

* a ratio with a zero denominator (nothing labelled, nothing predicted, ``smooth_dr = 0``) is a perfect score, so
  such terms give 0 and a zero gradient, never NaN (MONAI: NaN; smp: the denominator is clamped at ``eps``);
* an image with no labelled pixel (all ``ignore_index``) is no item: it adds nothing and is not counted (MONAI
  averages it in, with the loss ``1 - smooth_nr / smooth_dr``); in multi-label mode a class channel with no labelled
  entry in an image is left out of that image's class mean;
* a class absent from an image's labels still counts, with the loss of its false positives (as MONAI; smp sets the
  loss of a class absent from the batch to 0 and keeps it in the mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.distributed import all_reduce_sum_with_grad
from hf_losses.losses.base import Normalize, Reduction
from hf_losses.losses.checks import check_bool, check_choice, check_number
from hf_losses.losses.segmentation_base import SegmentationLoss, class_probabilities, one_hot_targets
from hf_losses.registry import register_loss

DEFAULT_SMOOTH = 1e-5
#: ``log_loss`` floors the score here before the log (smp's default ``eps``): a finite loss at zero overlap
LOG_LOSS_FLOOR = 1e-7
#: generalized Dice class weights from the label mass ``|G_c|`` (MONAI's ``w_type``)
WeightType = Literal["square", "simple", "uniform"]
WEIGHT_TYPES = ("square", "simple", "uniform")


# ------------------------------------------------------------------------------------------ statistics
def soft_statistics(
    probs: Tensor, targets: Tensor, squared_pred: bool = False, soft_label: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives, predicted mass and label mass per image and class, each ``(N, C)``, from
    probabilities and float targets ``(N, C, P)`` (0 at ignored entries).

    ``TP = sum_x p y`` -- or ``sum_x min(p, y)`` with ``soft_label`` (Wang et al. 2023, MONAI's ``soft_label``: equal
    for 0/1 targets, and 0 loss at ``p = y`` for soft targets); ``|P| = sum_x p``, ``|G| = sum_x y`` -- or
    ``sum_x p^2`` and ``sum_x y^2`` with ``squared_pred`` (Milletari et al. 2016; then ``TP = sum_x p y`` whatever
    ``soft_label``, as MONAI).
    """
    if soft_label and not squared_pred:
        tp = torch.minimum(probs, targets).sum(2)  # = (|p|_1 + |y|_1 - |p - y|_1) / 2 for p, y >= 0
    else:
        tp = (probs * targets).sum(2)
    if squared_pred:
        return tp, (probs * probs).sum(2), (targets * targets).sum(2)
    return tp, probs.sum(2), targets.sum(2)


def overlap_statistics(logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives ``sum_x p_c [y = c]``, predicted mass ``sum_x p_c`` and label count ``sum_x [y = c]``
    per image and class, each ``(N, C)``, of logits ``(N, C, P)`` (softmax; sigmoid for ``C == 1``) and integer
    labels ``(N, P)``; pixels with ``valid`` ``(N, P)`` False count nowhere (``None``: every pixel counts).

    One softmax, one one-hot (a scatter into distinct positions) and three sums, differentiated by autograd: measured
    on CPU and CUDA as fast as or faster than a hand-fused backward with scatter-add or bincount grouping of ``p[y]``.
    """
    probs = class_probabilities(logits)
    safe_labels = labels if valid is None else labels.masked_fill(~valid, 0)
    target = one_hot_targets(safe_labels, logits.shape[1], probs.dtype)
    if valid is not None:
        valid_float = valid.unsqueeze(1).to(probs.dtype)
        probs = probs * valid_float
        target = target * valid_float
    return soft_statistics(probs, target)


def _ratio(numerator: Tensor, denominator: Tensor, smooth_dr: float) -> Tensor:
    """``numerator / denominator``; with ``smooth_dr = 0`` a zero denominator (nothing to find, nothing predicted)
    is a perfect score 1, with a finite (zero) gradient."""
    if smooth_dr > 0:  # the denominator is >= smooth_dr
        return numerator / denominator
    nonzero = denominator > 0
    return torch.where(
        nonzero, numerator / torch.where(nonzero, denominator, torch.ones_like(denominator)), torch.ones_like(numerator)
    )


def dice_score(
    tp: Tensor,
    pred_sum: Tensor,
    target_sum: Tensor,
    smooth_nr: float = DEFAULT_SMOOTH,
    smooth_dr: float = DEFAULT_SMOOTH,
    jaccard: bool = False,
) -> Tensor:
    """Soft Dice ``(2 TP + s_nr) / (|P| + |G| + s_dr)`` (Milletari et al. 2016), or with ``jaccard`` the soft IoU
    written as MONAI does, ``(2 TP + s_nr) / (2 (|P| + |G| - TP) + s_dr)``."""
    denominator = 2.0 * (pred_sum + target_sum - tp) if jaccard else pred_sum + target_sum
    return _ratio(2.0 * tp + smooth_nr, denominator + smooth_dr, smooth_dr)


def tversky_index(
    tp: Tensor,
    pred_sum: Tensor,
    target_sum: Tensor,
    alpha: float,
    beta: float,
    smooth_nr: float = DEFAULT_SMOOTH,
    smooth_dr: float = DEFAULT_SMOOTH,
) -> Tensor:
    """Tversky index ``(TP + s_nr) / (TP + alpha FP + beta FN + s_dr)`` (Salehi et al. 2017), ``FP = |P| - TP``
    (predicted mass outside the class), ``FN = |G| - TP`` (class mass missed); ``alpha = beta = 0.5`` is Dice,
    ``alpha = beta = 1`` the IoU."""
    denominator = tp + alpha * (pred_sum - tp) + beta * (target_sum - tp)
    return _ratio(tp + smooth_nr, denominator + smooth_dr, smooth_dr)


def generalized_dice_score(
    tp: Tensor,
    pred_sum: Tensor,
    target_sum: Tensor,
    present: Tensor | None = None,
    w_type: WeightType = "square",
    smooth_nr: float = DEFAULT_SMOOTH,
    smooth_dr: float = DEFAULT_SMOOTH,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Generalized Dice score of each row (image, or the batch) over its classes (Sudre et al. 2017).

    ``(2 sum_c w_c TP_c + s_nr) / (sum_c w_c (|P_c| + |G_c|) + s_dr)`` with ``w_c = 1 / |G_c|^2`` (``"square"``),
    ``1 / |G_c|`` (``"simple"``) or 1 (``"uniform"``), no gradient; a class absent from the row's labels gets the
    largest weight of the present classes, as in MONAI. Classes not ``present`` (no labelled entry) are left out;
    ``class_weights`` ``(C,)`` multiply the ``w_c``. Inputs ``(R, C)``, output ``(R,)``.
    """
    mass = target_sum.detach()
    if w_type == "uniform":
        weights = torch.ones_like(mass)
    else:
        weights = 1.0 / (mass * mass if w_type == "square" else mass)
    absent = torch.isinf(weights)
    weights = weights.masked_fill(absent, 0.0)
    if present is not None:
        weights = weights * present.to(weights.dtype)
        absent = absent & present
    weights = weights + absent * weights.max(dim=1, keepdim=True).values
    if class_weights is not None:
        weights = weights * class_weights
    numerator = 2.0 * (weights * tp).sum(1) + smooth_nr
    denominator = (weights * (pred_sum + target_sum)).sum(1) + smooth_dr
    return _ratio(numerator, denominator, smooth_dr)


def score_loss(score: Tensor, log_loss: bool = False) -> Tensor:
    """``1 - score``, or smp's ``log_loss``: ``-log(max(score, 1e-7))``."""
    return -torch.log(score.clamp(min=LOG_LOSS_FLOOR)) if log_loss else 1.0 - score


def focal_power(loss: Tensor, gamma: float) -> Tensor:
    """``loss ** gamma``; where ``loss`` is 0 the result is 0 with a zero gradient (for ``gamma < 1`` the slope of
    ``x ** gamma`` at 0 is infinite)."""
    positive = loss > 0
    return torch.where(positive, torch.where(positive, loss, torch.ones_like(loss)) ** gamma, torch.zeros_like(loss))


# ------------------------------------------------------------------------------------------ losses
class OverlapStatisticsLoss(SegmentationLoss):
    """A loss of the soft statistics (TP, predicted mass, label mass, labelled entries) of each image and class,
    per image or summed over the batch; subclasses define :meth:`row_losses`."""

    squared_pred = False
    soft_label = False
    one_hot_checks_labels = True

    def statistics(self, logits: Tensor, labels: Tensor) -> tuple[tuple[Tensor | int, ...], Tensor | int]:
        """``(TP, |P|, |G|, labelled entries)`` per image and selected class, each ``(N, C')``, and the image
        count. With no entry ignored the labelled-entry count is the int ``P`` shared by every image and class."""
        probs, targets, valid = self._statistics_inputs(logits, labels)
        tp, pred_sum, target_sum = soft_statistics(probs, targets, self.squared_pred, self.soft_label)
        images = self._image_count(probs, valid)  # probs (N, C, P): the shape of the labelled entries
        if valid is None:
            return (*self._select_classes(tp, pred_sum, target_sum), probs.shape[2]), images
        count = valid.sum(2, dtype=tp.dtype).expand_as(tp)
        return self._select_classes(tp, pred_sum, target_sum, count), images

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | int]:
        statistics, image_count = self.statistics(logits, labels)
        if self.per_image:
            return self.row_losses(*statistics).sum(), image_count
        tp = statistics[0]
        statistics = tuple(s if isinstance(s, Tensor) else torch.full_like(tp, s) for s in statistics)
        batch = torch.stack([s.sum(0) for s in statistics])  # (4, C'): one collective for all four sums
        if self.across_processes:
            batch = all_reduce_sum_with_grad(batch)
        return self.row_losses(*batch.unsqueeze(1)).squeeze(0), image_count

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``(N,)`` per-image losses (0 for an image with no labelled pixel)."""
        statistics, _ = self.statistics(logits, labels)
        return self.row_losses(*statistics)

    def row_losses(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor, count: Tensor | int) -> Tensor:
        """Loss of each row ``(R,)`` from its per-class statistics ``(R, C')``; 0 for a row with no labelled entry.
        ``count`` is a tensor ``(R, C')``, or an int shared by every row and class (no entry ignored)."""
        raise NotImplementedError


def labelled(count: Tensor | int, like: Tensor) -> Tensor | None:
    """Which (row, class) statistics have a labelled entry; None when all do (an int count > 0: nothing ignored),
    which spares the class mean its masking."""
    if isinstance(count, Tensor):
        return count > 0
    return None if count > 0 else torch.zeros_like(like, dtype=torch.bool)


class OverlapLoss(OverlapStatisticsLoss):
    """An overlap-ratio loss: smoothing (``smooth`` or ``smooth_nr`` / ``smooth_dr``), ``log_loss``, ``soft_label``
    on top of what every segmentation loss takes."""

    float_targets_option = "multilabel=True (independent sigmoid channels) or soft_label=True (class probabilities)"

    def __init__(
        self,
        smooth: float = DEFAULT_SMOOTH,
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
        *,
        smooth_nr: float | None = None,
        smooth_dr: float | None = None,
        log_loss: bool = False,
        classes: Sequence[int] | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        multilabel: bool = False,
        soft_label: bool = False,
        from_logits: bool = True,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        owner = self._label()
        smooth = check_number(owner, "smooth", smooth, minimum=0.0)
        soft_label = check_bool(owner, "soft_label", soft_label)
        super().__init__(
            include_background=include_background,
            per_image=per_image,
            across_processes=across_processes,
            ignore_index=ignore_index,
            multilabel=multilabel,
            float_targets=soft_label,
            from_logits=from_logits,
            classes=classes,
            class_weights=class_weights,
            reduction=reduction,
            normalize=normalize,
        )
        self.smooth = smooth
        self.smooth_nr = smooth if smooth_nr is None else check_number(owner, "smooth_nr", smooth_nr, minimum=0.0)
        self.smooth_dr = smooth if smooth_dr is None else check_number(owner, "smooth_dr", smooth_dr, minimum=0.0)
        self.log_loss = check_bool(owner, "log_loss", log_loss)
        self.soft_label = soft_label

    def _check_soft_label(self) -> None:
        if self.soft_label and self.multilabel and self.squared_pred:
            raise ValueError(
                f"{self._label()}: `soft_label=True` has no effect with squared_pred=True and multilabel=True (the "
                f"squared form's TP is sum p*y, exact for soft targets already); leave soft_label out."
            )

    def class_losses(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        """Per-class losses ``(R, C')`` (losses averaged over classes)."""
        raise NotImplementedError

    def row_losses(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor, count: Tensor | int) -> Tensor:
        return self.class_mean(self.class_losses(tp, pred_sum, target_sum), present=labelled(count, tp))

    def extra_repr(self) -> str:
        if self.smooth_nr == self.smooth_dr:
            smooth = f"smooth={self.smooth_nr:g}"
        else:
            smooth = f"smooth_nr={self.smooth_nr:g}, smooth_dr={self.smooth_dr:g}"
        options = "".join(
            f", {name}=True" for name in ("log_loss", "soft_label", "squared_pred") if getattr(self, name, False)
        )
        return f"{smooth}{options}, {super().extra_repr()}"


_COMMON_ARGS = """
    Args:
        smooth: added to numerator and denominator; >= 0.
        include_background: keep class 0 in the class mean (ignored for ``C == 1``, whose one channel is
            the foreground).
        per_image: True (default, as MONAI's ``batch=False``): loss per image averaged over images, item =
            image, decomposable. False (MONAI's ``batch=True``, smp): statistics over the whole (global) batch,
            not decomposable.
        across_processes: with ``per_image=False``, sum the statistics over all processes with a
            differentiable all-reduce (exact gradients under DDP); set False to use the local batch only.
        ignore_index: label of pixels (or, with float targets, entries) left out of every sum.
        smooth_nr, smooth_dr: MONAI's separate smoothing of numerator and denominator; each, when given, replaces
            ``smooth`` there (MONAI's BraTS recipe: ``smooth_nr=0, smooth_dr=1e-5``).
        log_loss: smp's ``-log(score)`` (floored at 1e-7) instead of ``1 - score``.
        classes: smp's subset: the class indices the loss averages over (None: every class, see
            ``include_background``).
        class_weights: one weight >= 0 per class (all C, background included): the class mean becomes smp's
            weighted mean ``sum w_c L_c / sum w_c``. MONAI's ``weight`` multiplies without normalising: it equals
            this loss times ``sum(w) / C``.
        multilabel: every channel is its own sigmoid and the labels are float targets in [0, 1] shaped like the
            logits (overlapping regions: tumour sub-regions, multi-organ masks), smp's ``mode="multilabel"``,
            MONAI's ``sigmoid=True`` with C-channel targets.
        soft_label: targets in [0, 1] (soft labels): TP is ``sum min(p, y)`` (MONAI's ``soft_label``, 0 loss at
            ``p = y``). Without ``multilabel`` the labels are then float class probabilities ``(N, C, d1, ...)``
            shaped like the logits (one-hot or soft) under the softmax.
        from_logits: False when the first input already holds probabilities in [0, 1] (smp's ``from_logits``;
            MONAI without ``sigmoid`` / ``softmax``).
        reduction: "mean" (the contract), "sum" or "none" (``(N,)`` per-image losses, for hard-example mining
            and logging); "sum" / "none" need ``per_image=True``.
        normalize: "count" (divide by labelled images) or "weight" (by the sum of the images' ``sample_weight``).
"""


def _check_alpha_beta(owner: str, alpha: float, beta: float) -> tuple[float, float]:
    alpha = check_number(owner, "alpha", alpha, minimum=0.0)
    beta = check_number(owner, "beta", beta, minimum=0.0)
    if alpha + beta == 0:
        raise ValueError(
            f"{owner}: `alpha` + `beta` must be > 0 (alpha weights false positives, beta false "
            f"negatives; with both 0 the index is always 1), got alpha={alpha:g}, beta={beta:g}."
        )
    return alpha, beta


@register_loss("dice", aliases=("dice_loss",))
class DiceLoss(OverlapLoss):
    __doc__ = (
        """Soft Dice loss, mean over classes: ``1 - (2 TP_c + s_nr) / (|P_c| + |G_c| + s_dr)``.

    Equals ``monai.losses.DiceLoss(softmax=True, to_onehot_y=True, smooth_nr, smooth_dr, squared_pred, jaccard)``
    (``batch`` = ``not per_image``; ``sigmoid=True`` for one channel or ``multilabel``) and, with
    ``per_image=False, smooth=2 s``, smp's ``DiceLoss(smooth=s)`` (``JaccardLoss`` with ``jaccard=True``: smp writes
    ``(TP + s) / ((|P| + |G|) / 2 + s)``) where every class is present.

    Args:
        squared_pred: MONAI's ``squared_pred``: ``sum p^2`` and ``sum y^2`` in the denominator.
        jaccard: MONAI's ``jaccard``: the soft IoU (Jaccard) loss ``1 - (2 TP + s_nr) / (2 |P ∪ G| + s_dr)``.
    """
        + _COMMON_ARGS
    )

    summary = "Soft Dice (or Jaccard/IoU) loss, per image or over the batch, mean over classes."
    reference = "Milletari et al. 2016, V-Net (arXiv:1606.04797)"

    def __init__(
        self,
        smooth: float = DEFAULT_SMOOTH,
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
        *,
        smooth_nr: float | None = None,
        smooth_dr: float | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        log_loss: bool = False,
        classes: Sequence[int] | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        multilabel: bool = False,
        soft_label: bool = False,
        from_logits: bool = True,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(
            smooth,
            include_background,
            per_image,
            across_processes,
            ignore_index,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            log_loss=log_loss,
            classes=classes,
            class_weights=class_weights,
            multilabel=multilabel,
            soft_label=soft_label,
            from_logits=from_logits,
            reduction=reduction,
            normalize=normalize,
        )
        self.squared_pred = check_bool(self._label(), "squared_pred", squared_pred)
        self.jaccard = check_bool(self._label(), "jaccard", jaccard)
        self._check_soft_label()

    def class_losses(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        score = dice_score(tp, pred_sum, target_sum, self.smooth_nr, self.smooth_dr, self.jaccard)
        return score_loss(score, self.log_loss)

    def extra_repr(self) -> str:
        return ("jaccard=True, " if self.jaccard else "") + super().extra_repr()


@register_loss("generalized_dice", aliases=("gdl",))
class GeneralizedDiceLoss(OverlapLoss):
    __doc__ = (
        """Generalized Dice loss: class terms weighted by ``1 / |G_c|^2`` (``w_type``) so rare classes count as much
    as frequent ones. Equals ``monai.losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, w_type)``.

    Args:
        w_type: MONAI's class weight from the label mass: "square" ``1 / |G_c|^2`` (default, Sudre et al.),
            "simple" ``1 / |G_c|``, "uniform" 1 (then ``class_weights`` alone weigh the pooled sums).
    """
        + _COMMON_ARGS
        + """
    Here ``class_weights`` multiply the ``w_type`` weights inside the score, and ``classes`` restricts its sums.
"""
    )

    summary = "Generalized Dice loss: Dice with class weights 1/|G_c|^2 for imbalanced segmentation."
    reference = "Sudre et al. 2017, Generalised Dice overlap (arXiv:1707.03237)"

    def __init__(
        self,
        smooth: float = DEFAULT_SMOOTH,
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
        *,
        w_type: WeightType = "square",
        smooth_nr: float | None = None,
        smooth_dr: float | None = None,
        log_loss: bool = False,
        classes: Sequence[int] | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        multilabel: bool = False,
        soft_label: bool = False,
        from_logits: bool = True,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(
            smooth,
            include_background,
            per_image,
            across_processes,
            ignore_index,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            log_loss=log_loss,
            classes=classes,
            class_weights=class_weights,
            multilabel=multilabel,
            soft_label=soft_label,
            from_logits=from_logits,
            reduction=reduction,
            normalize=normalize,
        )
        self.w_type = check_choice(self._label(), "w_type", w_type, WEIGHT_TYPES)

    def row_losses(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor, count: Tensor | int) -> Tensor:
        present = labelled(count, tp)
        score = generalized_dice_score(
            tp,
            pred_sum,
            target_sum,
            present,
            self.w_type,
            self.smooth_nr,
            self.smooth_dr,
            self._selected_class_weights(tp),
        )
        loss = score_loss(score, self.log_loss)
        return loss if present is None else torch.where(present.any(-1), loss, 0.0)

    def extra_repr(self) -> str:
        return f"w_type={self.w_type!r}, {super().extra_repr()}"


@register_loss("tversky")
class TverskyLoss(OverlapLoss):
    __doc__ = (
        """Tversky loss, mean over classes: ``1 - (TP + s_nr) / (TP + alpha FP + beta FN + s_dr)``.

    ``alpha`` weights false positives, ``beta`` false negatives (MONAI's and smp's convention); the defaults
    0.3 / 0.7 favour recall as in the paper, 0.5 / 0.5 is Dice, 1 / 1 the IoU. Equals
    ``monai.losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha, beta)`` and, with ``per_image=False``,
    smp's ``TverskyLoss(smooth, gamma=1)`` where every class is present.

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
        *,
        smooth_nr: float | None = None,
        smooth_dr: float | None = None,
        log_loss: bool = False,
        classes: Sequence[int] | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        multilabel: bool = False,
        soft_label: bool = False,
        from_logits: bool = True,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(
            smooth,
            include_background,
            per_image,
            across_processes,
            ignore_index,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            log_loss=log_loss,
            classes=classes,
            class_weights=class_weights,
            multilabel=multilabel,
            soft_label=soft_label,
            from_logits=from_logits,
            reduction=reduction,
            normalize=normalize,
        )
        self.alpha, self.beta = _check_alpha_beta(self._label(), alpha, beta)

    def class_losses(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        index = tversky_index(tp, pred_sum, target_sum, self.alpha, self.beta, self.smooth_nr, self.smooth_dr)
        return score_loss(index, self.log_loss)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, {super().extra_repr()}"


@register_loss("focal_tversky")
class FocalTverskyLoss(TverskyLoss):
    __doc__ = (
        """Focal-Tversky loss, mean over classes: ``(1 - TI_c) ** gamma`` with TI the Tversky index.

    The paper writes the exponent as ``1/gamma`` with gamma in [1, 3] and uses 4/3; here ``gamma`` is the
    exponent itself, default 0.75 (= 1 / (4/3)), so that ``gamma = 1`` is the Tversky loss. gamma < 1 raises
    the loss (and gradient) of classes that are already well segmented less than of poorly segmented ones.
    The exponent applies to each class's loss, as in the paper (smp raises the class mean to ``gamma``: the same
    for one class); with ``log_loss`` it applies to ``-log(TI_c)``.

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
        *,
        smooth_nr: float | None = None,
        smooth_dr: float | None = None,
        log_loss: bool = False,
        classes: Sequence[int] | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        multilabel: bool = False,
        soft_label: bool = False,
        from_logits: bool = True,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(
            alpha,
            beta,
            smooth,
            include_background,
            per_image,
            across_processes,
            ignore_index,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            log_loss=log_loss,
            classes=classes,
            class_weights=class_weights,
            multilabel=multilabel,
            soft_label=soft_label,
            from_logits=from_logits,
            reduction=reduction,
            normalize=normalize,
        )
        self.gamma = check_number(self._label(), "gamma", gamma, minimum=0.0, strict=True)

    def class_losses(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        return focal_power(super().class_losses(tp, pred_sum, target_sum), self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, {super().extra_repr()}"
