"""Lovasz-softmax loss for semantic segmentation (Berman et al. 2018): the convex Lovasz extension of the IoU loss.

Shapes, binary (one sigmoid channel) inputs, ignored pixels and the two reductions (``per_image``) are those of
every segmentation loss: see :mod:`hf_losses.losses.segmentation`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.distributed import all_gather_with_grad, gather_across_processes
from hf_losses.losses.base import compute_dtype
from hf_losses.losses.checks import check_choice
from hf_losses.losses.segmentation_base import SegmentationLoss, class_probabilities, one_hot_targets
from hf_losses.registry import register_loss


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


def lovasz_from_errors(errors: Tensor, foreground: Tensor, valid: Tensor | None = None) -> Tensor:
    """``sum_i sorted_errors_i * lovasz_grad_i`` per row (last dim = pixels); ``valid`` False pixels left out."""
    if valid is not None:
        # Ignored pixels are sorted to the end (errors are in [0, 1]) and weighted 0; the weights of the
        # valid prefix depend only on the prefix, so this equals dropping them.
        errors = errors.masked_fill(~valid, -1.0)
    errors_sorted, order = torch.sort(errors, dim=-1, descending=True)
    weights = lovasz_grad(foreground.gather(-1, order))
    if valid is not None:
        weights = weights * valid.to(weights.dtype).gather(-1, order)
    return (errors_sorted * weights).sum(-1)


def _class_mean(losses: Tensor, present: Tensor) -> Tensor:
    """Mean over the last dim of the ``present`` entries (0 when none is present)."""
    present = present.to(losses.dtype)
    return (losses * present).sum(-1) / present.sum(-1).clamp(min=1.0)


@register_loss("lovasz", aliases=("lovasz_softmax",))
class LovaszSoftmaxLoss(SegmentationLoss):
    """Lovasz-softmax loss: the convex Lovasz extension of the Jaccard (IoU) loss, mean over classes.

    For each class, the errors ``|[y = c] - p_c|`` of the pixels are sorted in decreasing order and weighted
    by the increments of the Jaccard loss (Berman et al. 2018, Alg. 1 and Eq. 12, the authors'
    ``lovasz_softmax``). With ``C == 1`` the one channel is ``sigmoid(logit)`` of the foreground (label 1).
    There is no ``smooth``: the Lovasz extension has no ratio to smooth.

    Args:
        classes: "present" (default, as the reference) averages over the classes present in the labels of the
            image (or batch); "all" over every class.
        include_background: keep class 0 (ignored for ``C == 1``).
        per_image: True (default): per image then averaged over images (item = image, decomposable; the
            reference averages over all images, fully ignored ones included). False: one sort over the pixels
            of the whole batch, gathered from all processes (with gradient) when ``across_processes``.
        across_processes: see ``per_image``.
        ignore_index: label of pixels left out.
    """

    summary = "Lovasz-softmax loss: convex surrogate of the IoU (Jaccard) loss, per image or over the batch."
    reference = "Berman et al. 2018, The Lovasz-Softmax loss (arXiv:1705.08790)"

    def __init__(
        self,
        classes: Literal["present", "all"] = "present",
        include_background: bool = True,
        per_image: bool = True,
        across_processes: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(
            include_background=include_background,
            per_image=per_image,
            across_processes=across_processes,
            ignore_index=ignore_index,
        )
        self.classes = check_choice(self._label(), "classes", classes, ("present", "all"))

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits, labels, valid = self._flatten(logits, labels)
        if valid is None:
            valid = torch.ones_like(labels, dtype=torch.bool)
        probs = class_probabilities(logits)
        foreground = one_hot_targets(labels.masked_fill(~valid, 0), logits.shape[1], probs.dtype)
        foreground = foreground * valid.unsqueeze(1).to(probs.dtype)
        probs, foreground = self._drop_background(probs, foreground)
        errors = (foreground - probs).abs()
        image_count = self._image_count(labels, valid)
        if self.per_image:
            per_class = lovasz_from_errors(errors, foreground, valid.unsqueeze(1).expand_as(errors))  # (N, C)
            if self.classes == "present":
                present = foreground.sum(-1) > 0
            else:
                present = valid.any(1, keepdim=True).expand_as(per_class)
            return _class_mean(per_class, present).sum(), image_count
        # whole batch: the valid pixels of every image (and process) in one sort per class
        pixel_valid = valid.reshape(-1)
        errors = errors.transpose(1, 2).reshape(-1, errors.shape[1])[pixel_valid]  # (pixels, C)
        foreground = foreground.transpose(1, 2).reshape(-1, foreground.shape[1])[pixel_valid]
        if self.across_processes:
            errors = all_gather_with_grad(errors)
            foreground = gather_across_processes(foreground)
        per_class = lovasz_from_errors(errors.t(), foreground.t())  # (C,)
        if self.classes == "present":
            present = foreground.sum(0) > 0
        else:
            present = torch.full_like(per_class, errors.shape[0] > 0, dtype=torch.bool)
        return _class_mean(per_class, present), image_count

    def extra_repr(self) -> str:
        return f"classes={self.classes!r}, {super().extra_repr()}"
