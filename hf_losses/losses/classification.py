"""Single-label classification losses for imbalanced data: weighted CE, focal, class-balanced, LDAM, Poly-1.

Item unit: one non-ignored label entry. Logits ``(N, C)`` or ``(N, C, d1, ...)``, integer labels ``(N)`` or
``(N, d1, ...)``. ``cross_entropy`` and ``focal`` also take class probabilities shaped like the logits (mixup,
cutmix, a teacher's distribution): then one item per row ``(n, d1, ...)``, since a probability row has no
``ignore_index``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses.compat import autocast_dtype
from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import LocalCount, LogitsLoss, Normalize, NumItems, Reduction, reduce_by_items
from hf_losses.losses.checks import as_vector, check_choice, check_num_classes, check_number
from hf_losses.losses.class_weights import effective_number_weights
from hf_losses.losses.ignored import count_valid
from hf_losses.losses.inputs import check_logits_labels
from hf_losses.losses.multilabel import class_shaped
from hf_losses.registry import register_loss


# ------------------------------------------------------------------------------------------------ shared
def class_indices(labels: Tensor, ignore_index: int) -> Tensor:
    """Labels with ``ignore_index`` replaced by class 0, safe for indexing (those entries are masked anyway)."""
    return labels.masked_fill(labels == ignore_index, 0)


def row_shape(probabilities: Tensor) -> tuple[int, ...]:
    """The item shape of class probabilities ``(N, C, d1, ...)``: one item per row, ``(N, d1, ...)``."""
    return (probabilities.shape[0],) + tuple(probabilities.shape[2:])


def smoothed_probabilities(targets: Tensor, label_smoothing: float) -> Tensor:
    """``y (1 - eps) + eps / C`` along the class dimension 1: PyTorch's label smoothing of probability targets."""
    if label_smoothing == 0:
        return targets
    return targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[1]


def class_weight_per_item(weight: Tensor | None, labels: Tensor, ignore_index: int) -> Tensor:
    """``w[y_i]`` per label entry (1 without class weights), 0 at ignored entries: a weighted mean's denominator.

    For class probabilities ``y`` (float labels shaped like the logits), ``sum_c w_c y_c`` per row -- ``w[y]`` for a
    one-hot row, so ``normalize="weight"`` means the same for hard labels and their one-hot form (1 per row without
    class weights).
    """
    if labels.is_floating_point():
        if weight is None:
            return torch.ones(row_shape(labels), dtype=torch.float32, device=labels.device)
        return (labels.to(torch.float32) * class_shaped(weight.to(torch.float32), labels)).sum(dim=1)
    valid = labels != ignore_index
    if weight is None:
        return valid.to(torch.float32)
    return torch.where(valid, weight.to(torch.float32)[class_indices(labels, ignore_index)], 0.0)


def check_probability_targets(owner: str, logits: Tensor, labels: Tensor) -> None:
    """Float labels of a single-label loss are class probabilities shaped like the logits ``(N, C, d1, ...)``,
    finite and >= 0; values are read only on the CPU, where that costs no device synchronisation."""
    if isinstance(logits, Tensor) and tuple(labels.shape) != tuple(logits.shape):
        raise TypeError(
            f"{owner}: `labels` must hold integer class indices (torch.long) shaped {row_shape(logits)}, or class "
            f"probabilities shaped like the logits {tuple(logits.shape)}; got dtype {labels.dtype} and shape "
            f"{tuple(labels.shape)} (for multi-label float targets use 'bce', 'sigmoid_focal' or 'asl')."
        )
    # float targets shaped like the logits: the multi-label ("binary") shape, dtype and device checks
    check_logits_labels(owner, logits, labels, "binary", IGNORE_INDEX)
    if logits.dim() < 2 or logits.shape[1] < 2:
        raise ValueError(
            f"{owner}: `logits` must score C >= 2 classes along dim 1 for class-probability labels, got shape "
            f"{tuple(logits.shape)}."
        )
    if labels.device.type == "cpu" and labels.numel() > 0:
        bad = ~torch.isfinite(labels) | (labels < 0)
        if bad.any():
            raise ValueError(
                f"{owner}: class-probability `labels` must be finite and >= 0 (rows summing to 1; a probability row "
                f"has no ignore_index: give it sample_weight 0 instead), found {labels[bad][0].item():g}."
            )


class ClassLabelsLoss(LogitsLoss):
    """A single-label loss taking class indices ``(N, d1, ...)`` or class probabilities ``(N, C, d1, ...)``; the
    label kind stays "index" (what the trainer's tasks give), float labels are read as probabilities per call.

    A subclass may compute the common CPU case straight from torch's kernels (:meth:`_direct_loss`): no Python of
    ours between them, the checks only when a kernel refuses the inputs.
    """

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        if isinstance(labels, Tensor) and labels.is_floating_point():
            check_probability_targets(self._label(), logits, labels)
        else:
            super().check_inputs(logits, labels)

    def valid_mask(self, labels: Tensor) -> Tensor:
        if labels.is_floating_point():
            return torch.ones(row_shape(labels), dtype=torch.bool, device=labels.device)
        return super().valid_mask(labels)

    def item_count(self, labels: Tensor) -> Tensor | int:
        """Local item count: non-ignored label entries, or rows of class probabilities."""
        if labels.is_floating_point():
            return labels.numel() // labels.shape[1]
        return count_valid(labels, self.ignore_index)

    def forward(
        self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems = None, sample_weight: Tensor | None = None
    ) -> Tensor:
        if sample_weight is None and self._direct_call(logits, labels):
            loss = self._direct_loss(logits, labels, num_items_in_batch)
            if loss is not None:
                return loss
        return super().forward(logits, labels, num_items_in_batch, sample_weight)

    def _direct_call(self, logits: Tensor, labels: Tensor) -> bool:
        """Whether this call can skip the checks and the generic reduction (:meth:`_direct_loss`): class indices
        (int64) and float32/float64 logits ``(N, C >= 2, ...)`` on the CPU, where torch's kernels bound-check
        every label and reading a value back is free; the mean by count; no autocast; not traced by dynamo."""
        return (
            self.reduction == "mean"
            and self.normalize == "count"
            and type(logits) is Tensor
            and type(labels) is Tensor
            and labels.dtype == torch.int64
            and (logits.dtype == torch.float32 or logits.dtype == torch.float64)
            and logits.device.type == "cpu"
            and logits.dim() >= 2
            and logits.shape[1] >= 2
            and autocast_dtype("cpu") is None
            and not torch.compiler.is_compiling()
        )

    def _direct_loss(self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems) -> Tensor | None:
        """The loss straight from torch's kernels, or None where the checked path must decide (whatever a kernel
        refuses -- a shape, a label out of range -- is then named by the checks). None by default."""
        return None

    def _direct_mean(self, total: Tensor, labels: Tensor, num_items_in_batch: NumItems) -> Tensor:
        """A direct path's sum divided by the step's count, or by this call's (counted only when needed)."""
        return reduce_by_items(
            total, lambda: self.item_count(labels), num_items_in_batch, self.item_unit, self._label()
        )


# ------------------------------------------------------------------------------------------------ cross-entropy
def per_item_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Unreduced ``F.cross_entropy`` (0 at ignored entries) -- each entry is ``w[y_i] * ce_i``; for class
    probabilities ``y`` (float, shaped like the logits) ``-sum_c w_c y'_c log p_c`` per row, ``y' = y (1-e) + e/C``."""
    weight = None if weight is None else weight.to(logits)
    if labels.is_floating_point():
        return F.cross_entropy(
            logits, labels.to(logits.dtype), weight=weight, label_smoothing=label_smoothing, reduction="none"
        )
    return F.cross_entropy(
        logits, labels, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none"
    )


def summed_nll(
    log_probs: Tensor, labels: Tensor, weight: Tensor | None, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """``(sum_i -w[y_i] log p_i[y_i], sum_i w[y_i])`` over non-ignored labels, from one call of PyTorch's NLL kernel.

    ``F.nll_loss`` computes both and returns only their ratio; aten's ``nll_loss_forward`` returns the pair, so the
    item count (the total weight without class weights) costs no second pass over the labels. Inputs of any rank
    are viewed as ``(N, C, 1, L)`` as ``F.nll_loss`` does.
    """
    reduction = _SUM
    if log_probs.dim() <= 2:
        return torch.ops.aten.nll_loss_forward(log_probs, labels, weight, reduction, ignore_index)
    if log_probs.dim() != 4:
        log_probs = log_probs.reshape(log_probs.shape[0], log_probs.shape[1], 1, -1)
        labels = labels.reshape(labels.shape[0], 1, -1)
    return torch.ops.aten.nll_loss2d_forward(log_probs, labels, weight, reduction, ignore_index)


_SUM = torch.nn._reduction.get_enum("sum")


@register_loss("cross_entropy", aliases=("ce", "weighted_cross_entropy"))
class CrossEntropyLoss(ClassLabelsLoss):
    """Softmax cross-entropy with optional class weights and label smoothing, on class indices or probabilities.

    Reduction: ``sum_i w[y_i] * ce_i / N`` where ``N`` is ``num_items_in_batch`` (or the local count of
    non-ignored labels). With class weights this is PyTorch's weighted mean
    (``sum w[y_i] ce_i / sum w[y_i]``) multiplied by ``sum_i w[y_i] / N`` -- dividing by a count instead of
    by the batch's weight sum is what keeps it decomposable across accumulation steps and processes;
    ``normalize="weight"`` divides by the weight sum (PyTorch's weighted mean, kept exact by the trainer).
    Float labels shaped like the logits are class probabilities (mixup, cutmix, a teacher): per row
    ``-sum_c w_c y'_c log p_c`` with ``y' = y (1 - label_smoothing) + label_smoothing / C``, exactly PyTorch's
    probability-target cross-entropy, whose mean divides by the number of rows as this loss does by default.
    """

    summary = "Softmax cross-entropy with optional class weights and label smoothing (class indices or probabilities)."
    kernel_checks_labels = True  # F.cross_entropy / nll_loss bound-check every label on the CPU
    reference = "PyTorch F.cross_entropy; label smoothing: Szegedy et al. 2016"

    def __init__(
        self,
        weight: Sequence[float] | Tensor | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        self.label_smoothing = check_number(self._label(), "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        self.register_buffer("weight", None if weight is None else as_vector(self._label(), "weight", weight))

    def _direct_loss(self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems) -> Tensor | None:
        """The loss from one ``F.cross_entropy`` call, no Python between its kernels; None where the checked path
        must decide: whatever the kernel refuses (a shape, a label out of range: the checked path names it) and a
        NaN mean (0/0 when no label counts -- the contract's 0 -- or NaN logits, which it tells apart).

        Without ``num_items_in_batch`` torch's own mean over the non-ignored labels is the contract's local-count
        mean; with it, torch's sum divided by the count, as the checked path computes it.
        """
        if self.weight is not None:  # torch's mean would divide by the class weights' sum
            return None
        reduction = "mean" if num_items_in_batch is None else "sum"
        try:
            loss = F.cross_entropy(
                logits,
                labels,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
                reduction=reduction,
            )
        except (IndexError, RuntimeError, ValueError):
            return None
        if num_items_in_batch is None:
            return None if math.isnan(loss.item()) else loss
        return self._direct_mean(loss, labels, num_items_in_batch)

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        check_num_classes(self._label(), "weight", self.weight, logits.shape[1])

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, LocalCount]:
        # reduction="sum" is the sum of the unreduced w[y_i] * ce_i, in one fused kernel
        weight = None if self.weight is None else self.weight.to(logits)
        if labels.is_floating_point():
            total = F.cross_entropy(
                logits, labels.to(logits.dtype), weight=weight, label_smoothing=self.label_smoothing, reduction="sum"
            )
            return total, self.item_count(labels)
        if self.label_smoothing == 0:
            total, total_weight = summed_nll(F.log_softmax(logits, dim=1), labels, weight, self.ignore_index)
            # without class weights the kernel's total weight is the count of non-ignored labels
            return total, (total_weight if weight is None else lambda: self.item_count(labels))
        total = F.cross_entropy(
            logits,
            labels,
            weight=weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        return total, lambda: self.item_count(labels)

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        return per_item_cross_entropy(logits, labels, self.weight, self.label_smoothing, self.ignore_index)

    def item_weights(self, labels: Tensor) -> Tensor:
        return class_weight_per_item(self.weight, labels, self.ignore_index)


# ------------------------------------------------------------------------------------------------ focal
def per_item_soft_focal(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax focal loss of class probabilities per row, ``-sum_c alpha_c y'_c (1 - p_c)**gamma log p_c``.

    Lin et al. 2017 eq. 5 summed over the classes a row's mass is on, ``y' = y (1 - eps) + eps / C`` as in
    PyTorch's label smoothing: a one-hot row gives the hard-label focal loss, ``gamma = 0`` PyTorch's
    probability-target cross-entropy with ``weight=alpha``.
    """
    log_probs = F.log_softmax(logits, dim=1)
    terms = -smoothed_probabilities(targets.to(logits.dtype), label_smoothing) * log_probs
    if gamma != 0:
        # 1 - p_c = -expm1(log p_c), floored so that gamma < 1 keeps a finite gradient
        terms = terms * (-torch.expm1(log_probs)).clamp(min=torch.finfo(terms.dtype).tiny).pow(gamma)
    if alpha is not None:
        terms = terms * class_shaped(alpha, logits)
    return terms.sum(dim=1)


class FocalTerm(torch.autograd.Function):
    """``(1 - p)^gamma * ce`` of per-item cross-entropies ``ce = -log p``, with its derivative as one expression:
    autograd's chain (expm1, neg, clamp, pow, mul) saves and replays five elementwise passes each way."""

    @staticmethod
    def forward(ctx: Any, ce: Tensor, gamma: float) -> Tensor:
        modulator = torch.expm1(-ce).neg_()  # 1 - p = -expm1(-ce), exact near p = 1
        ctx.save_for_backward(ce, modulator)
        ctx.gamma = gamma
        return modulator.pow(gamma).mul_(ce)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ce, modulator = ctx.saved_tensors
        gamma = ctx.gamma
        tiny = torch.finfo(ce.dtype).tiny
        if torch.is_grad_enabled():
            # create_graph=True (a second derivative): the same expression out of place, from ce, for autograd
            modulator = torch.expm1(-ce).neg()
            power = modulator if gamma == 2.0 else modulator.clamp(min=tiny).pow(gamma - 1.0)
            return ((1.0 - modulator) * ce * gamma + modulator) * power * grad, None
        # d/dce [m^g ce] = m^(g-1) (m + g (1 - m) ce), m = 1 - p; m floored so that gamma < 1 stays finite at p = 1
        inner = torch.rsub(modulator, 1.0).mul_(ce).mul_(gamma).add_(modulator)
        if gamma != 2.0:
            modulator = modulator.clamp(min=tiny).pow_(gamma - 1.0)
        return inner.mul_(modulator).mul_(grad), None


def per_item_focal(
    logits: Tensor,
    labels: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax focal loss per label entry, ``-alpha[y] * (1 - p_y)**gamma * log p_y`` (0 at ignored entries).

    Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5 with the softmax probability ``p_y`` of
    the true class. ``alpha`` is a per-class vector (or None for no class weighting). Class probabilities (float
    labels) or ``label_smoothing > 0`` go through :func:`per_item_soft_focal` (hard labels as one-hot rows).
    """
    if labels.is_floating_point():
        return per_item_soft_focal(logits, labels, gamma, alpha, label_smoothing)
    if label_smoothing > 0:
        # one-hot rows (N, C, d1, ...) by scatter: unlike F.one_hot, no range check that reads the labels
        one_hot = torch.zeros_like(logits).scatter_(1, class_indices(labels, ignore_index).unsqueeze(1), 1.0)
        losses = per_item_soft_focal(logits, one_hot, gamma, alpha, label_smoothing)
        return torch.where(labels != ignore_index, losses, 0.0)
    # F.cross_entropy is one fused log_softmax + gather; it is already 0 at ignored entries.
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    losses = ce if gamma == 0 else FocalTerm.apply(ce, float(gamma))
    if alpha is not None:
        losses = alpha.to(losses)[class_indices(labels, ignore_index)] * losses
    return losses


def focal_alpha(owner: str, alpha: float | Sequence[float] | Tensor | None) -> Tensor | None:
    """A scalar alpha in [0, 1] or a per-class list of non-negative weights (None: no class weighting)."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        check_number(owner, "alpha", alpha, minimum=0.0, maximum=1.0)
        return torch.tensor(float(alpha))
    return as_vector(owner, "alpha", alpha)


def expand_alpha(alpha: Tensor | None, num_classes: int) -> Tensor | None:
    """A scalar alpha weighs class 0 (negative / background) by ``1 - alpha`` and every other class by ``alpha``."""
    if alpha is None or alpha.dim() == 1:
        return alpha
    vector = alpha.repeat(num_classes)
    vector[0] = 1.0 - alpha
    return vector


@register_loss("focal", aliases=("focal_loss", "softmax_focal"))
class FocalLoss(ClassLabelsLoss):
    """Softmax focal loss ``-alpha[y] (1 - p_y)^gamma log p_y`` (Lin et al. 2017), for imbalanced classes.

    ``gamma`` down-weights well-classified examples (0 gives cross-entropy). ``alpha`` is either a list with
    one weight per class, or a scalar in [0, 1] which (as in the binary paper form and MONAI's softmax focal
    loss) weighs class 0 by ``1 - alpha`` and every other class by ``alpha``; None disables class weighting.
    Reduction: ``sum_i alpha[y_i] fl_i / N`` over non-ignored label entries (like weighted cross-entropy,
    this is the alpha-weighted mean times ``sum_i alpha[y_i] / N``). Class probabilities ``y`` (float labels shaped
    like the logits) and ``label_smoothing`` give ``-sum_c alpha_c y'_c (1 - p_c)^gamma log p_c`` per row with
    ``y' = y (1 - label_smoothing) + label_smoothing / C`` (PyTorch's smoothing; at ``gamma=0`` exactly
    ``F.cross_entropy(weight=alpha, label_smoothing=...)``).
    """

    summary = "Softmax focal loss -alpha_y (1 - p_y)^gamma log p_y: focuses training on hard examples."
    kernel_checks_labels = True  # F.cross_entropy, scatter_ and alpha[labels] bound-check every label on the CPU
    reference = "Lin et al. 2017, Focal Loss for Dense Object Detection (ICCV)"

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        self.gamma = check_number(self._label(), "gamma", gamma, minimum=0.0)
        self.label_smoothing = check_number(self._label(), "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        self.register_buffer("alpha", focal_alpha(self._label(), alpha))

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        if self.alpha is not None and self.alpha.dim() == 1:
            check_num_classes(self._label(), "alpha", self.alpha, logits.shape[1])

    def _direct_loss(self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems) -> Tensor | None:
        """Without alpha or label smoothing: the per-entry focal terms (``F.cross_entropy`` and the modulation),
        their sum and the division, without the generic path's checks and Python in between."""
        if self.alpha is not None or self.label_smoothing:
            return None
        try:
            total = per_item_focal(logits, labels, self.gamma, None, self.ignore_index).sum()
        except (IndexError, RuntimeError, ValueError):
            return None
        return self._direct_mean(total, labels, num_items_in_batch)

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        alpha = expand_alpha(self.alpha, logits.shape[1])
        return per_item_focal(logits, labels, self.gamma, alpha, self.ignore_index, self.label_smoothing)

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, LocalCount]:
        return self.loss_items(logits, labels).sum(), lambda: self.item_count(labels)

    def item_weights(self, labels: Tensor) -> Tensor:
        if self.alpha is not None and self.alpha.dim() == 0 and not labels.is_floating_point():
            # a scalar alpha: 1 - alpha for class 0, alpha for every other class (no class count needed)
            valid = labels != self.ignore_index
            alpha = self.alpha.to(device=labels.device, dtype=torch.float32)
            return torch.where(valid, torch.where(labels == 0, 1.0 - alpha, alpha), 0.0)
        num_classes = labels.shape[1] if labels.is_floating_point() else 0
        return class_weight_per_item(expand_alpha(self.alpha, num_classes), labels, self.ignore_index)

    def extra_repr(self) -> str:
        smoothing = f", label_smoothing={self.label_smoothing:g}" if self.label_smoothing else ""
        return f"gamma={self.gamma:g}{smoothing}, {super().extra_repr()}"


# ------------------------------------------------------------------------------------------------ class-balanced
@register_loss("class_balanced", aliases=("cb", "class_balanced_loss"))
class ClassBalancedLoss(LogitsLoss):
    """Class-balanced loss (Cui et al. 2019): CE or focal loss weighted by the inverse effective number of samples.

    The weight of class ``j`` is ``(1 - beta) / (1 - beta**n_j)`` with ``n_j = samples_per_class[j]``,
    normalised to sum to ``C``. ``base="ce"`` gives weighted cross-entropy, ``base="focal"`` the softmax
    focal loss with these weights as per-class ``alpha`` and focusing parameter ``gamma``. Reduction:
    ``sum_i w[y_i] l_i / N`` over non-ignored label entries (the weighted mean times ``sum_i w[y_i] / N``);
    ``normalize="weight"`` divides by ``sum_i w[y_i]`` instead.
    """

    summary = "Class-balanced CE/focal: weights (1-beta)/(1-beta^n_j) from the effective number of samples."
    reference = "Cui et al. 2019, Class-Balanced Loss Based on Effective Number of Samples (CVPR)"

    def __init__(
        self,
        samples_per_class: Sequence[float] | Tensor,
        beta: float = 0.9999,
        base: Literal["ce", "focal"] = "ce",
        gamma: float = 2.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        owner = self._label()
        samples = as_vector(owner, "samples_per_class", samples_per_class, minimum=0.0, strict=True)
        self.beta = check_number(owner, "beta", beta, minimum=0.0, maximum=1.0)
        if self.beta == 1.0:
            raise ValueError(
                f"{owner}: `beta` must be in [0, 1), got 1 (use beta close to 1, e.g. 0.9999, "
                f"for inverse-frequency weights)."
            )
        self.base = check_choice(owner, "base", base, ("ce", "focal"))
        self.gamma = check_number(owner, "gamma", gamma, minimum=0.0)
        self.register_buffer("samples_per_class", samples)
        self.register_buffer("weight", effective_number_weights(samples, self.beta).to(torch.float32))

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        check_num_classes(self._label(), "samples_per_class", self.samples_per_class, logits.shape[1])

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.base == "ce":
            return per_item_cross_entropy(logits, labels, self.weight, 0.0, self.ignore_index)
        return per_item_focal(logits, labels, self.gamma, self.weight, self.ignore_index)

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | int]:
        return self.loss_items(logits, labels).sum(), count_valid(labels, self.ignore_index)

    def item_weights(self, labels: Tensor) -> Tensor:
        return class_weight_per_item(self.weight, labels, self.ignore_index)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, base={self.base!r}, gamma={self.gamma:g}, {super().extra_repr()}"


# ------------------------------------------------------------------------------------------------ LDAM
def ldam_margins(samples_per_class: Tensor, max_margin: float) -> Tensor:
    """Cao et al. 2019, eq. 12: ``Delta_j = K / n_j**(1/4)``, ``K`` chosen so that ``max_j Delta_j = max_margin``."""
    margins = samples_per_class.to(torch.float64).pow(-0.25)
    return (margins * (max_margin / margins.max())).to(torch.float32)


def per_item_ldam(
    logits: Tensor,
    labels: Tensor,
    margins: Tensor,
    scale: float,
    weight: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """LDAM per label entry: cross-entropy of ``scale * (z - Delta_y e_y)`` (0 at ignored entries)."""
    index = class_indices(labels, ignore_index).unsqueeze(1)
    shift = margins.to(logits)[index]
    # subtract the true class's margin from its own logit only (out of place: autograd keeps `logits`)
    shifted = logits.scatter_add(1, index, -shift)
    weight = None if weight is None else weight.to(logits)
    return F.cross_entropy(shifted * scale, labels, weight=weight, ignore_index=ignore_index, reduction="none")


@register_loss("ldam", aliases=("ldam_loss",))
class LDAMLoss(LogitsLoss):
    """Label-distribution-aware margin loss (Cao et al. 2019): CE with a larger margin for rarer classes.

    The true-class logit is lowered by ``Delta_y = K / n_y^(1/4)`` (``n_y = samples_per_class[y]``, ``K`` set
    so the largest margin equals ``max_margin``), then cross-entropy is taken of ``scale *`` logits. The paper
    feeds cosine logits (normalised features and weights, in [-1, 1]) with ``scale=30``; for raw logits use
    ``scale=1`` and a margin on their scale. ``weight`` gives the per-class re-weighting of LDAM-DRW.
    Reduction: ``sum_i w[y_i] l_i / N`` over non-ignored label entries (``normalize="weight"``: ``/ sum_i w[y_i]``).
    """

    summary = "LDAM: CE with per-class margins C/n_j^(1/4), larger for rare classes (optional DRW weights)."
    reference = "Cao et al. 2019, Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss (NeurIPS)"

    def __init__(
        self,
        samples_per_class: Sequence[float] | Tensor,
        max_margin: float = 0.5,
        scale: float = 30.0,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        owner = self._label()
        samples = as_vector(owner, "samples_per_class", samples_per_class, minimum=0.0, strict=True)
        self.max_margin = check_number(owner, "max_margin", max_margin, minimum=0.0)
        self.scale = check_number(owner, "scale", scale, minimum=0.0, strict=True)
        self.register_buffer("samples_per_class", samples)
        self.register_buffer("margins", ldam_margins(samples, self.max_margin))
        self.register_buffer("weight", None if weight is None else as_vector(owner, "weight", weight))

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        check_num_classes(self._label(), "samples_per_class", self.samples_per_class, logits.shape[1])
        check_num_classes(self._label(), "weight", self.weight, logits.shape[1])

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        return per_item_ldam(logits, labels, self.margins, self.scale, self.weight, self.ignore_index)

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | int]:
        return self.loss_items(logits, labels).sum(), count_valid(labels, self.ignore_index)

    def item_weights(self, labels: Tensor) -> Tensor:
        return class_weight_per_item(self.weight, labels, self.ignore_index)

    def extra_repr(self) -> str:
        return f"max_margin={self.max_margin:g}, scale={self.scale:g}, {super().extra_repr()}"


# ------------------------------------------------------------------------------------------------ Poly-1
def per_item_poly1(logits: Tensor, labels: Tensor, epsilon: float = 1.0, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Poly-1 per label entry, ``-log p_y + epsilon * (1 - p_y)`` (0 at ignored entries)."""
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    # 1 - p_y = -expm1(-ce); it is 0 at ignored entries, where ce = 0
    return ce + epsilon * -torch.expm1(-ce)


@register_loss("poly1", aliases=("poly1_cross_entropy", "poly_loss"))
class Poly1Loss(LogitsLoss):
    """Poly-1 loss (Leng et al. 2022): cross-entropy plus ``epsilon * (1 - p_y)``, the first polynomial term.

    ``epsilon > 0`` emphasises the leading gradient term (the paper's best on ImageNet is 2; its general
    default 1); ``epsilon = -1`` removes it; 0 is plain cross-entropy. Values below -1 make the loss
    non-monotone in ``p_y`` and are refused.
    """

    summary = "Poly-1: cross-entropy + epsilon * (1 - p_y) (polynomial expansion of CE)."
    reference = "Leng et al. 2022, PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions (ICLR)"

    def __init__(
        self,
        epsilon: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        self.epsilon = check_number(self._label(), "epsilon", epsilon, minimum=-1.0)

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        return per_item_poly1(logits, labels, self.epsilon, self.ignore_index)

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | int]:
        return self.loss_items(logits, labels).sum(), count_valid(labels, self.ignore_index)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon:g}, {super().extra_repr()}"
