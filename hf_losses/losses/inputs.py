"""Call-time input checks of the losses: label dtype (converted once to int64), devices, shapes, label range and
finite regression targets. Every message names the loss, the input and what is allowed; nothing here reads a
device tensor's value except where the contract needs it (the label range)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def index_labels(labels: Tensor) -> Tensor:
    """Integer class labels as int64, converted once (int32, int16, int8, uint8... compute the same as int64);
    anything else is returned as it is, for the checks to refuse."""
    if (
        isinstance(labels, Tensor)
        and labels.dtype != torch.int64
        and not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool)
    ):
        return labels.long()
    return labels


def check_same_device(owner: str, tensors: Mapping[str, Tensor | None]) -> None:
    """Every tensor on the device of the first one; the message names both devices."""
    (first_name, first), *others = [(name, t) for name, t in tensors.items() if t is not None]
    for name, tensor in others:
        if tensor.device != first.device:
            raise ValueError(
                f"{owner}: `{name}` is on device {tensor.device} but `{first_name}` on {first.device}; put them on "
                f"the same device ({name}.to({first_name}.device))."
            )


def check_logits_labels(owner: str, logits: Tensor, labels: Tensor, label_kind: str, ignore_index: int) -> None:
    """Shape, dtype and label-range checks shared by all losses; messages name the loss and what is allowed."""
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(
            f"{owner}: `logits` and `labels` must be torch.Tensor, got "
            f"{type(logits).__name__} and {type(labels).__name__}."
        )
    if not logits.is_floating_point():
        raise TypeError(f"{owner}: `logits` must be a floating-point tensor, got dtype {logits.dtype}.")
    if logits.dim() < 1:
        raise ValueError(f"{owner}: `logits` must have a batch dimension, got a scalar.")
    check_same_device(owner, {"logits": logits, "labels": labels})
    if label_kind == "index":
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(
                f"{owner}: `labels` must hold integer class indices (torch.long), got dtype "
                f"{labels.dtype}; for float/multi-label targets use 'bce', 'sigmoid_focal' or 'asl'."
            )
        if logits.dim() < 2:
            raise ValueError(f"{owner}: `logits` must be (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}.")
        expected = (logits.shape[0],) + tuple(logits.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"{owner}: `labels` shape {tuple(labels.shape)} does not match logits "
                f"{tuple(logits.shape)}; expected {expected} (logits are (N, C, d1, ...))."
            )
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise ValueError(
                f"{owner}: `logits` must score C >= 2 classes along dim 1, got shape {tuple(logits.shape)}: a softmax "
                f"over one class is 1, so the loss would be identically 0; for one binary output use 'bce' with "
                f"float 0/1 labels, or give the model num_labels=2."
            )
        if labels.numel() == 0:
            return
        low, high = torch.stack(labels.aminmax()).tolist()  # one pass and one device sync in the common case
        if low >= 0 and high < num_classes:
            return
        out_of_range = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
        if out_of_range.any():
            bad = labels[out_of_range][0].item()
            raise ValueError(
                f"{owner}: `labels` must be in [0, {num_classes}) or ignore_index={ignore_index}; found {bad}."
            )
    else:
        what = "float multi-label targets (0./1.)" if label_kind == "binary" else "float regression targets"
        if not labels.is_floating_point():
            raise TypeError(
                f"{owner}: `labels` must be {what} shaped like the logits, got integer dtype "
                f"{labels.dtype}; for class indices use 'cross_entropy' or 'focal'."
            )
        if tuple(labels.shape) != tuple(logits.shape):
            kind = "multi-label" if label_kind == "binary" else "regression"
            raise ValueError(
                f"{owner}: `labels` shape {tuple(labels.shape)} must equal logits shape "
                f"{tuple(logits.shape)} for {kind} targets."
            )
        if label_kind == "target":
            check_finite_targets(owner, labels, ignore_index)


def check_finite_targets(owner: str, labels: Tensor, ignore_index: int) -> None:
    """Regression targets must be finite: one NaN or inf target makes the loss and every gradient NaN / inf.

    Checked where the labels are on the CPU, where reading them costs no device synchronisation.
    """
    if labels.device.type != "cpu" or labels.numel() == 0:
        return
    finite = torch.isfinite(labels)
    if not finite.all():
        raise ValueError(
            f"{owner}: `labels` must be finite regression targets (ignore_index={ignore_index} skips an entry); "
            f"found {labels[~finite][0].item()}."
        )
