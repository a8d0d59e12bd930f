"""Lovasz losses for semantic segmentation (Berman et al. 2018): convex Lovasz extensions of the IoU loss --
Lovasz-softmax on class probabilities, and the binary Lovasz hinge on the logit of one foreground channel.

Shapes, binary (one sigmoid channel) inputs, ignored pixels and the two reductions (``per_image``) are those of
every segmentation loss: see :mod:`hf_losses.losses.segmentation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import torch
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.distributed import all_gather_with_grad, gather_across_processes
from hf_losses.losses.base import Normalize, Reduction, compute_dtype
from hf_losses.losses.segmentation_base import SegmentationLoss
from hf_losses.registry import register_loss

LovaszClasses = Union[Literal["present", "all"], Sequence[int]]


def lovasz_grad(foreground_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at errors sorted in decreasing order (last dim).

    Berman et al. 2018, Alg. 1; the same steps as ``lovasz_grad`` of the authors' reference code, batched.
    """
    foreground_sorted = foreground_sorted.to(compute_dtype(foreground_sorted))
    total = foreground_sorted.sum(-1, keepdim=True)
    intersection = total - foreground_sorted.cumsum(-1)
    union = total + (1.0 - foreground_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def lovasz_from_errors(errors: Tensor, foreground: Tensor, valid: Tensor | None = None, hinge: bool = False) -> Tensor:
    """``sum_i f(sorted_errors_i) * lovasz_grad_i`` per row (last dim = pixels), ``f`` the identity (errors in
    [0, 1], Lovasz-softmax) or ``relu`` (``hinge``: margins ``1 - s y``); ``valid`` False pixels left out."""
    if valid is not None:
        # Ignored pixels are sorted to the end and weighted 0; the weights of the valid prefix depend only on the
        # prefix, so this equals dropping them (without a data-dependent shape: no device sync).
        errors = errors.masked_fill(~valid, float("-inf") if hinge else -1.0)
    errors_sorted, order = torch.sort(errors, dim=-1, descending=True)
    weights = lovasz_grad(foreground.gather(-1, order))
    if valid is not None:
        weights = weights * valid.to(weights.dtype).gather(-1, order)
    if hinge:
        errors_sorted = torch.relu(errors_sorted)
    return (errors_sorted * weights).sum(-1)


def _flat_rows(tensor: Tensor) -> Tensor:
    """``(N, C, P)`` -> ``(N * P, C)``: one row per pixel of the batch, gathered across processes along dim 0."""
    return tensor.transpose(1, 2).reshape(-1, tensor.shape[1])


class _LovaszLoss(SegmentationLoss):
    """The two reductions of a Lovasz loss: per image (one sort per image and class), or one sort over the pixels
    of the whole batch, gathered from all processes (with gradient)."""

    #: the errors are hinge margins (relu applied), not probability errors in [0, 1]
    hinge = False

    def per_class_errors(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | int]:
        """Errors and foreground ``(N, C', P)``, the valid mask ``(N, 1, P)`` (None: none ignored), image count."""
        raise NotImplementedError

    def presence(self, foreground: Tensor, valid: Tensor) -> Tensor:
        """Which classes of each row enter the class mean (``valid`` has the rows' shape without the classes)."""
        return valid.any(-1, keepdim=True).expand(foreground.shape[:-1])

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        errors, foreground, valid, _ = self.per_class_errors(logits, labels)
        return self._per_image(errors, foreground, valid)

    def _per_image(self, errors: Tensor, foreground: Tensor, valid: Tensor | None) -> Tensor:
        """``(N,)`` per-image losses: one sort per image and class, then the class mean (0 without a labelled
        pixel)."""
        per_class = lovasz_from_errors(
            errors, foreground, None if valid is None else valid.expand_as(errors), self.hinge
        )
        if valid is None:
            valid = torch.full(errors.shape[:1] + (1, 1), errors.shape[-1] > 0, device=errors.device)
        return self.class_mean(per_class, self.presence(foreground, valid.squeeze(1)))

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | int]:
        errors, foreground, valid, image_count = self.per_class_errors(logits, labels)
        if self.per_image:
            return self._per_image(errors, foreground, valid).sum(), image_count
        if valid is None:
            valid = torch.ones(errors.shape[:1] + (1,) + errors.shape[2:], dtype=torch.bool, device=errors.device)
        errors, foreground, valid = _flat_rows(errors), _flat_rows(foreground), _flat_rows(valid)[:, 0]
        if self.across_processes:
            errors = all_gather_with_grad(errors)
            foreground = gather_across_processes(foreground)
            valid = gather_across_processes(valid.to(foreground.dtype)) > 0.5
        per_class = lovasz_from_errors(errors.t(), foreground.t(), valid.expand(errors.shape[1], -1), self.hinge)
        present = self.presence(foreground.t().unsqueeze(0), valid.unsqueeze(0))
        return self.class_mean(per_class.unsqueeze(0), present).squeeze(0), image_count


@register_loss("lovasz", aliases=("lovasz_softmax",))
class LovaszSoftmaxLoss(_LovaszLoss):
    """Lovasz-softmax loss: the convex Lovasz extension of the Jaccard (IoU) loss, mean over classes.

    For each class, the errors ``|[y = c] - p_c|`` of the pixels are sorted in decreasing order and weighted
    by the increments of the Jaccard loss (Berman et al. 2018, Alg. 1 and Eq. 12, the authors'
    ``lovasz_softmax``). With ``C == 1`` the one channel is ``sigmoid(logit)`` of the foreground (label 1).
    There is no ``smooth``: the Lovasz extension has no ratio to smooth.

    Args:
        classes: "present" (default, as the reference) averages over the classes present in the labels of the
            image (or batch); "all" over every class; a list of class indices over those classes (the reference's
            third form).
        include_background: keep class 0 (ignored for ``C == 1``).
        per_image: True (default): per image then averaged over images (item = image, decomposable; the
            reference averages over all images, fully ignored ones included). False (smp's default): one sort
            over the pixels of the whole batch, gathered from all processes (with gradient) when
            ``across_processes``.
        across_processes: see ``per_image``.
        ignore_index: label of pixels left out.
        from_logits: False when the first input already holds class probabilities (the reference's ``probas``).
        reduction: "mean", "sum" or "none" (``(N,)`` per-image losses; with ``per_image=True``).
        normalize: "count" or "weight" (divide by the sum of the images' ``sample_weight``).
    """

    summary = "Lovasz-softmax loss: convex surrogate of the IoU (Jaccard) loss, per image or over the batch."
    reference = "Berman et al. 2018, The Lovasz-Softmax loss (arXiv:1705.08790)"

    def __init__(
        self,
        classes: LovaszClasses = "present",
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
        *,
        from_logits: bool = True,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        if isinstance(classes, str) and classes not in ("present", "all"):
            raise ValueError(
                f"{self._label()}: `classes` must be 'present', 'all' or a list of class indices, got {classes!r}."
            )
        super().__init__(
            include_background=include_background,
            per_image=per_image,
            across_processes=across_processes,
            ignore_index=ignore_index,
            from_logits=from_logits,
            classes=None if isinstance(classes, str) else classes,
            reduction=reduction,
            normalize=normalize,
        )
        #: average over the classes present in the labels only ("present"), else over every selected class
        self.present_only = classes == "present"

    def per_class_errors(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | int]:
        logits, labels, valid = self._flatten(logits, labels)
        probs, foreground, valid = self._probabilities_and_targets(logits, labels, valid)
        probs, foreground = self._select_classes(probs, foreground)
        return (foreground - probs).abs(), foreground, valid, self._image_count(labels, valid)

    def presence(self, foreground: Tensor, valid: Tensor) -> Tensor:
        if self.present_only:
            return foreground.sum(-1) > 0
        return super().presence(foreground, valid)

    def extra_repr(self) -> str:
        if self.classes is not None:  # a list: shown with the options every segmentation loss shares
            return super().extra_repr()
        return f"classes={'present' if self.present_only else 'all'!r}, {super().extra_repr()}"


@register_loss("lovasz_hinge")
class LovaszHingeLoss(_LovaszLoss):
    """Binary Lovasz hinge loss: the Lovasz extension of the Jaccard loss of the foreground applied to the hinge
    errors ``max(0, 1 - s y)`` of the foreground logit ``s`` and the sign ``y = +-1`` of the label.

    Berman et al. 2018, Eq. 10 and the authors' ``lovasz_hinge`` (smp's ``LovaszLoss(mode="binary")``, whose
    ``per_image`` defaults to False). Logits ``(N, 1, d1, ...)``, labels 0 / 1 ``(N, d1, ...)``. Two-class logits
    ``(N, 2, d1, ...)`` (a model with ``num_labels=2``) are read as the one logit ``s = z_1 - z_0``, since the
    softmax over two classes is the sigmoid of their difference. For ``C > 2`` classes use ``lovasz`` (softmax).

    Args:
        per_image: True (default, as the reference): per image then averaged over images (item = image,
            decomposable). False: one sort over the pixels of the whole batch, gathered from all processes.
        across_processes: see ``per_image``.
        ignore_index: label of pixels left out.
        reduction: "mean", "sum" or "none" (``(N,)`` per-image losses; with ``per_image=True``).
        normalize: "count" or "weight" (divide by the sum of the images' ``sample_weight``).
    """

    summary = "Binary Lovasz hinge loss on one foreground logit: convex surrogate of the IoU loss."
    reference = "Berman et al. 2018, The Lovasz-Softmax loss (arXiv:1705.08790), Eq. 10"
    hinge = True

    def __init__(
        self,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
        *,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(
            include_background=True,
            per_image=per_image,
            across_processes=across_processes,
            ignore_index=ignore_index,
            reduction=reduction,
            normalize=normalize,
        )

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        if isinstance(logits, Tensor) and logits.dim() >= 2 and logits.shape[1] > 2:
            raise ValueError(
                f"{self._label()}: the Lovasz hinge is binary: `logits` must be (N, 1, d1, ...), the foreground "
                f"logit, or (N, 2, d1, ...), got shape {tuple(logits.shape)}; for C > 2 classes use 'lovasz'."
            )
        super().check_inputs(logits, labels)

    def per_class_errors(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | int]:
        if logits.shape[1] == 2:
            logits = logits[:, 1:] - logits[:, :1]  # the binary logit of two-class scores
        logits, labels, valid = self._flatten(logits, labels)
        foreground = (labels == 1).unsqueeze(1).to(logits.dtype)  # (N, 1, P); ignored pixels are not 1
        errors = 1.0 - logits * (2.0 * foreground - 1.0)
        valid = None if valid is None else valid.unsqueeze(1)
        return errors, foreground, valid, self._image_count(labels, valid)

    def extra_repr(self) -> str:
        return f"per_image={self.per_image}, {super(SegmentationLoss, self).extra_repr()}"
