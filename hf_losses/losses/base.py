"""The loss contract shared by every hf-losses loss.

A loss is an ``nn.Module`` holding validated parameters around a functional core. ``forward`` checks its
inputs, upcasts half precision to float32 outside autocast (float64 stays float64), asks the subclass for
the *sum* of its per-item losses and the local item count, and divides by ``num_items_in_batch`` (the
global count of the whole accumulated, all-device batch) when given, else by the local count. That
division rule is what makes gradients equal whether a batch is seen whole, in accumulation steps, or
split across processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import ClassVar, Literal, Union

import torch
from torch import Tensor, nn

ItemUnit = Literal["label", "sample"]
LabelKind = Literal["index", "binary", "embedding"]
NumItems = Union[int, float, Tensor, Mapping[str, Union[int, float, Tensor]], None]

IGNORE_INDEX = -100


class Loss(nn.Module):
    """Base class: validated inputs, float32 numerics and reduction by ``num_items_in_batch``.

    Subclasses set the class attributes below and implement :meth:`loss_sum`.
    """

    #: registered name, set by :func:`hf_losses.register_loss`
    name: ClassVar[str] = ""
    #: one-line summary shown by ``describe_loss`` / ``hf-losses list``
    summary: ClassVar[str] = ""
    #: the paper (or "PyTorch") the definition follows
    reference: ClassVar[str] = ""
    #: what the loss averages over: a non-ignored label entry, or a sample (image)
    item_unit: ClassVar[ItemUnit] = "label"
    #: "index": integer class labels ``(N, d1, ...)``; "binary": float targets shaped like the logits;
    #: "embedding": the second input is a float embedding paired row by row with the first (contrastive)
    label_kind: ClassVar[LabelKind] = "index"
    #: False for losses whose value needs whole-batch statistics (they ignore ``num_items_in_batch``)
    decomposable: ClassVar[bool] = True

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            raise TypeError(f"{self._label()}: `ignore_index` must be an int, got {ignore_index!r}.")
        self.ignore_index = ignore_index

    # ---------------------------------------------------------------- subclass API
    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(sum of per-item losses, local item count)``; inputs are float32 and already checked."""
        raise NotImplementedError

    def valid_mask(self, labels: Tensor) -> Tensor:
        """Boolean mask of the label entries that count (not ``ignore_index``)."""
        return labels != self.ignore_index

    def num_items(self, labels: Tensor) -> dict[str, Tensor]:
        """Local item count per unit, summed by the trainer over the accumulation window and processes."""
        if not self.decomposable:
            return {}
        valid = self.valid_mask(labels)
        if self.item_unit == "sample":
            count = valid.reshape(valid.shape[0], -1).any(dim=1).sum()
        else:
            count = valid.sum()
        return {self.item_unit: count}

    # ---------------------------------------------------------------- contract
    def forward(self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems = None) -> Tensor:
        self.check_inputs(logits, labels)
        # "float32" means at least float32: half precision is upcast, float64 stays (gradcheck needs it).
        dtype = compute_dtype(logits)
        device_type = logits.device.type
        # leaving autocast costs ~10 us of Python per call: only do it when autocast is on
        outside_autocast = (torch.autocast(device_type=device_type, enabled=False)
                            if torch.is_autocast_enabled(device_type) else contextlib.nullcontext())
        with outside_autocast:
            total, count = self.loss_sum(logits.to(dtype), labels if self.label_kind == "index" else labels.to(dtype))
            if not self.decomposable:
                return total.to(compute_dtype(total))
            return reduce_by_items(total, count, num_items_in_batch, self.item_unit)

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        """Raise a clear error for malformed inputs before any kernel runs."""
        check_logits_labels(self._label(), logits, labels, self.label_kind, self.ignore_index)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"

    def _label(self) -> str:
        return f"loss '{self.name or type(self).__name__}'"


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def select_num_items(num_items_in_batch: NumItems, item_unit: str) -> NumItems:
    """Pick this loss's count out of a per-unit mapping (composites mix units); pass a plain count through."""
    if isinstance(num_items_in_batch, Mapping):
        return num_items_in_batch.get(item_unit)
    return num_items_in_batch


def reduce_by_items(total: Tensor, local_count: Tensor, num_items_in_batch: NumItems, item_unit: str) -> Tensor:
    """``total / num_items_in_batch`` when given (global count), else ``total / local_count``; 0 for no items."""
    total = total.to(compute_dtype(total))
    denominator = select_num_items(num_items_in_batch, item_unit)
    if denominator is None:
        denominator = local_count
    if isinstance(denominator, Tensor):
        denominator = denominator.to(device=total.device, dtype=total.dtype).clamp(min=1.0)
    else:
        denominator = max(float(denominator), 1.0)
    return total / denominator


def check_logits_labels(owner: str, logits: Tensor, labels: Tensor, label_kind: str, ignore_index: int) -> None:
    """Shape, dtype and label-range checks shared by all losses; messages name the loss and what is allowed."""
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"{owner}: `logits` and `labels` must be torch.Tensor, got "
                        f"{type(logits).__name__} and {type(labels).__name__}.")
    if not logits.is_floating_point():
        raise TypeError(f"{owner}: `logits` must be a floating-point tensor, got dtype {logits.dtype}.")
    if logits.dim() < 1:
        raise ValueError(f"{owner}: `logits` must have a batch dimension, got a scalar.")
    if label_kind == "index":
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"{owner}: `labels` must hold integer class indices (torch.long), got dtype "
                            f"{labels.dtype}; for float/multi-label targets use 'bce', 'sigmoid_focal' or 'asl'.")
        if logits.dim() < 2:
            raise ValueError(f"{owner}: `logits` must be (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}.")
        expected = (logits.shape[0],) + tuple(logits.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(f"{owner}: `labels` shape {tuple(labels.shape)} does not match logits "
                             f"{tuple(logits.shape)}; expected {expected} (logits are (N, C, d1, ...)).")
        num_classes = logits.shape[1]
        if labels.numel() == 0:
            return
        low, high = torch.stack(labels.aminmax()).tolist()  # one pass and one device sync in the common case
        if low >= 0 and high < num_classes:
            return
        out_of_range = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
        if out_of_range.any():
            bad = labels[out_of_range][0].item()
            raise ValueError(f"{owner}: `labels` must be in [0, {num_classes}) or ignore_index={ignore_index}; "
                             f"found {bad}.")
    else:
        if not labels.is_floating_point():
            raise TypeError(f"{owner}: `labels` must be float multi-label targets (0./1.) shaped like the logits, "
                            f"got integer dtype {labels.dtype}; for class indices use 'cross_entropy' or 'focal'.")
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(f"{owner}: `labels` shape {tuple(labels.shape)} must equal logits shape "
                             f"{tuple(logits.shape)} for multi-label targets.")
