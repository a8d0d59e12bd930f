"""The loss contract shared by every hf-losses loss, and one base class per kind of input.

A loss is an ``nn.Module`` holding validated parameters around a functional core. Its ``forward`` checks its
inputs, upcasts half precision to float32 outside autocast (float64 stays float64), computes the *sum* of its
per-item losses and the local item count, and divides by ``num_items_in_batch`` (the global count of the whole
accumulated, all-device batch) when given, else by the local count. That division rule is what makes gradients
equal whether a batch is seen whole, in accumulation steps, or split across processes.

What a loss takes decides its base class (and how the trainer calls it):

* :class:`LogitsLoss`: ``loss(logits, labels, num_items_in_batch)`` -- classification, segmentation, multi-label,
  regression (the "logits" are then the predictions);
* :class:`HiddenStatesLoss`: ``loss(hidden_states, labels, weight, bias, num_items_in_batch, shift_labels)`` -- the
  final hidden states and the output head, so the logits are never materialised (causal LM);
* :class:`EmbeddingPairLoss`: ``loss(queries, keys, num_items_in_batch)`` -- two embedding matrices paired row by
  row (contrastive).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping
from typing import ClassVar, Literal, Union

import torch
from torch import Tensor, nn

from hf_losses.compat import autocast_dtype
from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.checks import check_number, interval
from hf_losses.losses.inputs import check_logits_labels, check_same_device, index_labels

ItemUnit = Literal["label", "sample"]
#: "index": integer class labels ``(N, d1, ...)``; "binary": 0/1 (or soft) float targets shaped like the logits;
#: "target": real-valued regression targets shaped like the predictions; "embedding": a float embedding paired
#: row by row with the first input (contrastive)
LabelKind = Literal["index", "binary", "target", "embedding"]
#: label kinds whose labels are float tensors shaped like the first input
FLOAT_LABEL_KINDS = ("binary", "target")
NumItems = Union[int, float, Tensor, Mapping[str, Union[int, float, Tensor]], None]

__all__ = [
    "IGNORE_INDEX",
    "EmbeddingPairLoss",
    "HiddenStatesLoss",
    "LogitsLoss",
    "Loss",
    "LossBase",
    "labels_compatible",
    "reduce_by_items",
]


def labels_compatible(loss_kind: str | None, task_kind: str | None) -> bool:
    """Whether a loss taking ``loss_kind`` labels can train on a task that gives ``task_kind`` labels: the same
    kind, or two float kinds (BCE on soft targets in [0, 1], MSE on multi-hot targets); None means "any"."""
    if loss_kind is None or task_kind is None or loss_kind == task_kind:
        return True
    return loss_kind in FLOAT_LABEL_KINDS and task_kind in FLOAT_LABEL_KINDS


class LossBase(nn.Module):
    """What every loss shares: its description, ``ignore_index``, item counting and the reduction.

    Subclass one of :class:`LogitsLoss`, :class:`HiddenStatesLoss`, :class:`EmbeddingPairLoss`.
    """

    #: registered name, set by :func:`hf_losses.register_loss`
    name: ClassVar[str] = ""
    #: one-line summary shown by ``describe_loss`` / ``hf-losses list``
    summary: ClassVar[str] = ""
    #: the paper (or "PyTorch") the definition follows
    reference: ClassVar[str] = ""
    #: what the loss averages over: a non-ignored label entry, or a sample (image)
    item_unit: ClassVar[ItemUnit] = "label"
    #: what the second input holds (see :data:`LabelKind`)
    label_kind: ClassVar[LabelKind] = "index"
    #: False for losses whose value needs whole-batch statistics (they ignore ``num_items_in_batch``)
    decomposable: ClassVar[bool] = True

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            raise TypeError(f"{self._label()}: `ignore_index` must be an int, got {ignore_index!r}.")
        self.ignore_index = ignore_index

    def valid_mask(self, labels: Tensor) -> Tensor:
        """Boolean mask of the label entries that count (not ``ignore_index``)."""
        return labels != self.ignore_index

    def num_items(self, labels: Tensor) -> dict[str, Tensor]:
        """Local item count per unit, summed by the trainer over the accumulation window and processes."""
        if not self.decomposable:
            return {}
        valid = self.valid_mask(labels)
        if self.item_unit == "sample":
            # not reshape(N, -1): an empty batch (N = 0) or image (no pixel) has no unique -1
            count = valid.reshape(valid.shape[0], math.prod(valid.shape[1:])).any(dim=1).sum()
        else:
            count = valid.sum()
        return {self.item_unit: count}

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"

    def _label(self) -> str:
        return f"loss '{self.name or type(self).__name__}'"

    def _reduce_in_float32(self, first: Tensor, second: Tensor, num_items_in_batch: NumItems) -> Tensor:
        """``loss_sum(first, second)`` in float32 (float64 stays) outside autocast, reduced by the item count."""
        dtype = compute_dtype(first)
        with float32_region(first.device.type):
            total, count = self.loss_sum(first.to(dtype), second if self.label_kind == "index" else second.to(dtype))
            if not self.decomposable:
                return total.to(compute_dtype(total))
            return reduce_by_items(total, count, num_items_in_batch, self.item_unit, self._label())


class LogitsLoss(LossBase):
    """A loss on logits ``(N, C, d1, ...)`` (or predictions) and labels; subclasses implement :meth:`loss_sum`."""

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(sum of per-item losses, local item count)``; inputs are float32 and already checked."""
        raise NotImplementedError

    def forward(self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems = None) -> Tensor:
        if self.label_kind == "index":
            labels = index_labels(labels)
        self.check_inputs(logits, labels)
        return self._reduce_in_float32(logits, labels, num_items_in_batch)

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        """Raise a clear error for malformed inputs before any kernel runs (integer labels of any dtype: the
        forward converts them to int64 first)."""
        check_logits_labels(self._label(), logits, labels, self.label_kind, self.ignore_index)


#: the name third-party losses written against hf-losses 0.1 subclass; new code says :class:`LogitsLoss`
Loss = LogitsLoss


class HiddenStatesLoss(LossBase):
    """A loss on the final hidden states ``(N, T, H)`` and an output head ``weight (V, H)`` / ``bias (V,)``.

    The trainer hands it the hidden states the model feeds its head, never the logits (see
    :mod:`hf_losses.trainers.hidden_states`); ``labels`` are as the model receives them (unshifted for a causal
    LM) and ``shift_labels``, when a collator gives them, are already aligned with the positions.
    """

    def targets(self, labels: Tensor | None, shift_labels: Tensor | None = None) -> Tensor:
        """The per-position targets the loss compares the hidden states' predictions with."""
        raise NotImplementedError

    def num_items(self, labels: Tensor | None, shift_labels: Tensor | None = None) -> dict[str, Tensor]:
        """Count of non-ignored targets (after any shift)."""
        return {self.item_unit: (self.targets(labels, shift_labels) != self.ignore_index).sum()}

    def forward(
        self,
        hidden_states: Tensor,
        labels: Tensor | None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        num_items_in_batch: NumItems = None,
        shift_labels: Tensor | None = None,
    ) -> Tensor:
        raise NotImplementedError


class EmbeddingPairLoss(LossBase):
    """A loss on two embedding matrices ``(N, D)`` whose row ``i`` is a positive pair (contrastive)."""

    label_kind: ClassVar[LabelKind] = "embedding"

    def loss_sum(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(sum of per-item losses, item count)``; inputs are float32 and already checked."""
        raise NotImplementedError

    def forward(self, queries: Tensor, keys: Tensor, num_items_in_batch: NumItems = None) -> Tensor:
        self.check_inputs(queries, keys)
        return self._reduce_in_float32(queries, keys, num_items_in_batch)

    def check_inputs(self, queries: Tensor, keys: Tensor) -> None:
        """Two floating-point ``(N, D)`` tensors of the same shape."""
        owner = self._label()
        if not isinstance(queries, Tensor) or not isinstance(keys, Tensor):
            raise TypeError(
                f"{owner}: call loss(query_embeddings, key_embeddings) with two tensors, got "
                f"{type(queries).__name__} and {type(keys).__name__}."
            )
        if not queries.is_floating_point() or not keys.is_floating_point():
            raise TypeError(
                f"{owner}: query and key embeddings must be floating-point, got {queries.dtype} and "
                f"{keys.dtype} (integer labels? this loss takes key embeddings as its second input)."
            )
        if queries.dim() != 2 or tuple(keys.shape) != tuple(queries.shape):
            raise ValueError(
                f"{owner}: query and key embeddings must both be (N, D) with the same shape, got "
                f"{tuple(queries.shape)} and {tuple(keys.shape)}."
            )
        if queries.shape[1] == 0:
            raise ValueError(
                f"{owner}: the embeddings must have D >= 1 dimensions, got shape {tuple(queries.shape)} (with D = 0 "
                f"every similarity is 0: a constant loss with zero gradient)."
            )
        check_same_device(owner, {"query_embeddings": queries, "key_embeddings": keys})


def float32_region(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off (the loss computes in float32); a no-op when autocast is off, since leaving it costs
    ~10 us of Python per call."""
    if autocast_dtype(device_type) is not None:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def select_num_items(num_items_in_batch: NumItems, item_unit: str, owner: str = "hf_losses") -> NumItems:
    """Pick this loss's count out of a per-unit mapping (composites mix units); pass a plain count through."""
    if isinstance(num_items_in_batch, Mapping):
        if item_unit not in num_items_in_batch:
            raise ValueError(
                f"{owner}: `num_items_in_batch` has no count for its item unit '{item_unit}' (keys "
                f"{sorted(map(str, num_items_in_batch))}); give {{'{item_unit}': count}}, as loss.num_items(labels) "
                f"names it."
            )
        return num_items_in_batch[item_unit]
    return num_items_in_batch


def check_num_items(owner: str, count: NumItems, local_count: Tensor | int | None = None) -> NumItems:
    """A count of items: None, a number > 0, or a one-element numeric tensor.

    A tensor's value is read only on the CPU, where that costs no device synchronisation: it must be >= 0, and 0
    only when this call has no item either -- 0 is what the trainer counts for an accumulation window whose
    labels are all ignored (the loss is then 0).
    """
    if count is None:
        return None
    if isinstance(count, Tensor):
        if count.dtype == torch.bool or count.is_complex():
            raise TypeError(f"{owner}: `num_items_in_batch` must be a count, got a tensor of dtype {count.dtype}.")
        if count.numel() != 1:
            raise ValueError(
                f"{owner}: `num_items_in_batch` must be one count (a 0-d tensor), got shape {tuple(count.shape)}; "
                f"for losses counting different items give a mapping {{item_unit: count}}."
            )
        if count.device.type == "cpu":
            value = float(count)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(
                    f"{owner}: `num_items_in_batch` must be a count in {interval(0.0, None)} (0: every label of the "
                    f"batch ignored), got tensor {value:g}."
                )
            local = _host_value(local_count) if value == 0 else 0.0
            if local > 0:
                raise ValueError(
                    f"{owner}: `num_items_in_batch` is 0 but this call has {local:g} items; it must count the items "
                    f"of the whole batch (this call's included), or be None."
                )
        return count
    if isinstance(count, numbers.Real) and not isinstance(count, bool):
        count = float(count)  # numpy scalars
    if not isinstance(count, float):
        raise TypeError(
            f"{owner}: `num_items_in_batch` must be a number > 0, a 0-d tensor, a mapping {{item_unit: count}} or "
            f"None, got {type(count).__name__} {count!r}."
        )
    return check_number(owner, "num_items_in_batch", count, minimum=0.0, strict=True)


def _host_value(count: Tensor | int | None) -> float:
    """A count's value where reading it is free (a Python number, a CPU tensor); 0 where it is not."""
    if isinstance(count, Tensor):
        return float(count) if count.device.type == "cpu" else 0.0
    return float(count or 0)


def reduce_by_items(
    total: Tensor, local_count: Tensor | int, num_items_in_batch: NumItems, item_unit: str, owner: str = "hf_losses"
) -> Tensor:
    """``total / num_items_in_batch`` when given (global count), else ``total / local_count``; 0 for no items.

    ``num_items_in_batch`` is checked (:func:`check_num_items`): a count of 0 or less, NaN or inf is refused,
    naming ``owner``.
    """
    total = total.to(compute_dtype(total))
    denominator = check_num_items(owner, select_num_items(num_items_in_batch, item_unit, owner), local_count)
    if denominator is None:
        denominator = local_count
    if isinstance(denominator, Tensor):
        # reshape: a (1,) count keeps the result a scalar
        denominator = denominator.reshape(()).to(device=total.device, dtype=total.dtype).clamp(min=1.0)
    else:
        denominator = max(float(denominator), 1.0)
    return total / denominator
