"""What every segmentation loss shares: parameters (background, per image or over the batch, across processes),
input checks (one sigmoid channel or a softmax over C classes), flattening, background removal, the image count,
and the class probabilities / one-hot targets both the overlap losses and Lovasz-softmax are computed from."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hf_losses.losses.base import LogitsLoss
from hf_losses.losses.checks import check_bool
from hf_losses.losses.inputs import check_logits_labels


def class_probabilities(logits: Tensor) -> Tensor:
    """Softmax over dim 1 when ``C > 1``; sigmoid (binary, foreground probability) when ``C == 1``."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def one_hot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(N, C, P)`` float one-hot of ``(N, P)`` labels in ``[0, C)``; for ``C == 1`` the foreground (label 1)."""
    if num_classes == 1:
        return (labels == 1).unsqueeze(1).to(dtype)
    onehot = torch.zeros((labels.shape[0], num_classes) + tuple(labels.shape[1:]), dtype=dtype, device=labels.device)
    return onehot.scatter_(1, labels.unsqueeze(1), 1.0)


class SegmentationLoss(LogitsLoss):
    """Shared parameters, checks, flattening and item count of the segmentation losses (see the module docstring)."""

    item_unit = "sample"
    reference = ""

    def __init__(self, *, include_background: bool, per_image: bool, across_processes: bool, ignore_index: int) -> None:
        super().__init__(ignore_index)
        owner = self._label()
        self.include_background = check_bool(owner, "include_background", include_background)
        self.per_image = check_bool(owner, "per_image", per_image)
        self.across_processes = check_bool(owner, "across_processes", across_processes)
        # per_image=False needs whole-batch statistics: it returns the batch value (instance attribute)
        self.decomposable = per_image

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        owner = self._label()
        if isinstance(logits, Tensor) and isinstance(labels, Tensor) and logits.dim() >= 2 and logits.shape[1] == 1:
            # binary: one sigmoid channel, labels 0/1 -- check as two classes, with messages about one channel
            expected = (logits.shape[0],) + tuple(logits.shape[2:])
            if tuple(labels.shape) != expected:
                raise ValueError(
                    f"{owner}: `labels` shape {tuple(labels.shape)} does not match logits "
                    f"{tuple(logits.shape)}; expected {expected} (logits are (N, C, d1, ...))."
                )
            logits = logits.expand(-1, 2, *logits.shape[2:])
        check_logits_labels(owner, logits, labels, self.label_kind, self.ignore_index)

    def _flatten(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(N, C, P)`` logits, ``(N, P)`` labels and the valid-pixel mask (None when no pixel is ignored)."""
        n, c = logits.shape[:2]
        pixels = math.prod(labels.shape[1:])  # not -1: an empty batch (N = 0) or image (P = 0) has no unique -1
        labels = labels.reshape(n, pixels)
        if self.ignore_index < 0 and (labels.numel() == 0 or labels.min() >= 0):
            valid = None  # checked labels are in [0, C) or ignore_index: one pass decides
        else:
            valid = self.valid_mask(labels)
            if valid.all():
                valid = None
        return logits.reshape(n, c, pixels), labels, valid

    def _drop_background(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        if self.include_background or tensors[0].shape[1] == 1:
            return tensors
        return tuple(t[:, 1:] for t in tensors)

    @staticmethod
    def _image_count(labels: Tensor, valid: Tensor | None) -> Tensor | int:
        """Images with at least one labelled pixel (the item of ``per_image=True``); a plain int when no pixel
        is ignored (no host-to-device copy on CUDA)."""
        if valid is None:
            return labels.shape[0] if labels.shape[1] > 0 else 0
        return valid.any(dim=1).sum()

    def extra_repr(self) -> str:
        return f"include_background={self.include_background}, per_image={self.per_image}, {super().extra_repr()}"
