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
from collections.abc import Callable, Mapping
from typing import ClassVar, Literal, Union

import torch
from torch import Tensor, nn

from hf_losses.compat import autocast_dtype
from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.checks import check_choice, check_number, interval
from hf_losses.losses.inputs import (
    check_class_range,
    check_logits_labels,
    check_same_device,
    index_labels,
    label_pass,
    values_are_free,
)

ItemUnit = Literal["label", "sample"]
#: "mean": the contract's reduction (sum / item count); "sum": the sum of the per-item losses; "none": the
#: per-item losses themselves (label-shaped, or ``(N,)`` for per-sample losses), 0 at ignored entries
Reduction = Literal["mean", "sum", "none"]
#: what a "mean" divides by: "count" -- the number of items (decomposable by design, the default); "weight" -- the
#: sum of the items' weights (class weights times data weights): PyTorch's weighted mean, kept exact by the trainer,
#: which sums the weights over the accumulation window and the processes like the counts
Normalize = Literal["count", "weight"]
REDUCTIONS = ("mean", "sum", "none")
NORMALIZATIONS = ("count", "weight")
#: "index": integer class labels ``(N, d1, ...)``; "binary": 0/1 (or soft) float targets shaped like the logits;
#: "target": real-valued regression targets shaped like the predictions; "embedding": a float embedding paired
#: row by row with the first input (contrastive)
LabelKind = Literal["index", "binary", "target", "embedding"]
#: label kinds whose labels are float tensors shaped like the first input
FLOAT_LABEL_KINDS = ("binary", "target")
NumItems = Union[int, float, Tensor, Mapping[str, Union[int, float, Tensor]], None]
#: a call's own item count, or a function computing it: read only when ``num_items_in_batch`` is not given (a
#: count costs a pass over the labels that the trainer's global count makes unnecessary)
LocalCount = Union[Tensor, int, Callable[[], Union[Tensor, int]]]

__all__ = [
    "IGNORE_INDEX",
    "EmbeddingPairLoss",
    "HiddenStatesLoss",
    "LogitsLoss",
    "Loss",
    "LossBase",
    "labels_compatible",
    "reduce_by_items",
    "weight_unit",
]


def weight_unit(item_unit: str) -> str:
    """The ``num_items_in_batch`` key of a weighted mean's denominator (``label_weight``, ``sample_weight``)."""
    return f"{item_unit}_weight"


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
    #: True for losses that apply data weights and ``normalize="weight"`` themselves (inside a kernel) rather than
    #: from :meth:`loss_items`
    weighs_tokens: ClassVar[bool] = False

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, *, reduction: Reduction = "mean", normalize: Normalize = "count"
    ) -> None:
        super().__init__()
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            raise TypeError(f"{self._label()}: `ignore_index` must be an int, got {ignore_index!r}.")
        self.ignore_index = ignore_index
        self.reduction = check_choice(self._label(), "reduction", reduction, REDUCTIONS)
        self.normalize = check_choice(self._label(), "normalize", normalize, NORMALIZATIONS)
        weights_unsupported = self.normalize != "count" and not (self.has_item_losses() or self.weighs_tokens)
        if (self.reduction != "mean" and not self.has_item_losses()) or weights_unsupported:
            option = "reduction" if self.reduction != "mean" else "normalize"
            raise ValueError(
                f"{self._label()}: `{option}={getattr(self, option)!r}` needs per-item losses, which this loss does "
                f"not compute (its value needs whole-batch statistics); use reduction='mean', normalize='count'."
            )

    @classmethod
    def has_item_losses(cls) -> bool:
        """Whether the loss computes per-item losses (:meth:`loss_items`): what ``reduction="none"``, data weights
        and ``normalize="weight"`` are computed from."""
        return cls.loss_items is not LossBase.loss_items

    def loss_items(self, first: Tensor, second: Tensor) -> Tensor:
        """Per-item losses (float32 inputs, already checked): label-shaped for ``item_unit="label"`` and ``(N,)``
        for ``"sample"``, 0 at ignored entries; class weights already applied. Implemented by decomposable losses."""
        raise NotImplementedError(f"{self._label()} does not compute per-item losses.")

    def item_weights(self, second: Tensor) -> Tensor:
        """Each item's weight from the loss's own parameters (class weights ``w[y_i]``; 1 without), 0 at ignored
        entries, shaped like :meth:`loss_items`: the denominator of ``normalize="weight"``."""
        valid = self.valid_mask(second)  # float targets mark ignored entries with ignore_index too
        if self.item_unit == "sample":
            valid = valid.reshape(valid.shape[0], math.prod(valid.shape[1:])).any(dim=1)
        return valid.to(torch.float32)

    @property
    def count_unit(self) -> str:
        """The ``num_items_in_batch`` key this loss divides by: its item unit, or ``<unit>_weight`` for
        ``normalize="weight"``."""
        return weight_unit(self.item_unit) if self.normalize == "weight" else self.item_unit

    def valid_mask(self, labels: Tensor) -> Tensor:
        """Boolean mask of the label entries that count (not ``ignore_index``)."""
        return labels != self.ignore_index

    def num_items(self, labels: Tensor, sample_weight: Tensor | None = None) -> dict[str, Tensor]:
        """Local item count per unit (or weight sum, for ``normalize="weight"``), summed by the trainer over the
        accumulation window and processes."""
        if not self.decomposable:
            return {}
        if self.normalize == "weight":
            weights = self.item_weights(labels)
            if sample_weight is not None:
                weights = weights * expand_sample_weight(self._label(), sample_weight, weights).to(weights)
            return {self.count_unit: weights.sum(dtype=torch.float64 if weights.device.type != "mps" else None)}
        valid = self.valid_mask(labels)
        if self.item_unit == "sample":
            # not reshape(N, -1): an empty batch (N = 0) or image (no pixel) has no unique -1
            count = valid.reshape(valid.shape[0], math.prod(valid.shape[1:])).any(dim=1).sum()
        else:
            count = valid.sum()
        return {self.item_unit: count}

    def extra_repr(self) -> str:
        options = "".join(
            f", {name}={value!r}"
            for name, value, default in (("reduction", self.reduction, "mean"), ("normalize", self.normalize, "count"))
            if value != default
        )
        return f"ignore_index={self.ignore_index}{options}"

    def _label(self) -> str:
        return f"loss '{self.name or type(self).__name__}'"

    def _reduce_in_float32(
        self, first: Tensor, second: Tensor, num_items_in_batch: NumItems, sample_weight: Tensor | None = None
    ) -> Tensor:
        """``loss_sum(first, second)`` in float32 (float64 stays) outside autocast, reduced by the item count; with
        data weights, ``reduction`` other than "mean" or ``normalize="weight"``, from :meth:`loss_items`."""
        dtype = compute_dtype(first)
        second_cast = second if self.label_kind == "index" else second.to(dtype)
        with float32_region(first.device.type):
            if sample_weight is None and self.reduction == "mean" and self.normalize == "count":
                total, count = self.loss_sum(first.to(dtype), second_cast)
                if not self.decomposable:
                    return total.to(compute_dtype(total))
                return reduce_by_items(total, count, num_items_in_batch, self.item_unit, self._label())
            return self._reduce_items(first.to(dtype), second_cast, num_items_in_batch, sample_weight)

    def _reduce_items(
        self, first: Tensor, second: Tensor, num_items_in_batch: NumItems, sample_weight: Tensor | None
    ) -> Tensor:
        """The weighted / unreduced path: ``loss_items * sample_weight``, then summed and divided by the count or
        the weight sum."""
        if not self.has_item_losses() or not self.decomposable:
            raise ValueError(
                f"{self._label()}: data weights (`sample_weight`) need per-item losses, which this loss does not "
                f"compute (its value needs whole-batch statistics)."
            )
        items = self.loss_items(first, second)
        weights = None
        if sample_weight is not None:
            weights = expand_sample_weight(self._label(), sample_weight, items).to(items)
            items = items * weights
        if self.reduction == "none":
            return items
        total = items.sum()
        if self.reduction == "sum":
            return total
        if self.normalize == "weight":
            local = self.item_weights(second).to(items)
            local = (local if weights is None else local * weights).sum()
        else:
            local = lambda: next(iter(LossBase.num_items(self, second).values()))  # noqa: E731 (counted if needed)
        return reduce_by_items(total, local, num_items_in_batch, self.count_unit, self._label())


class LogitsLoss(LossBase):
    """A loss on logits ``(N, C, d1, ...)`` (or predictions) and labels; subclasses implement :meth:`loss_sum`."""

    #: True when every path of :meth:`loss_sum` / :meth:`loss_items` indexes with the class labels through a kernel
    #: that bounds-checks them (``F.cross_entropy``, ``gather``, ``scatter_``, tensor indexing): the CPU then skips
    #: its own pass over the labels, and a kernel's failure is re-checked into the usual ``ValueError``; on CUDA,
    #: where those kernels stop the run with a device-side assert, the loss's own queued check (which names the
    #: loss and the allowed range) runs on the first :data:`CUDA_RANGE_CHECKED_CALLS` calls only
    kernel_checks_labels: ClassVar[bool] = False
    _cuda_calls: int = 0

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, LocalCount]:
        """Return ``(sum of per-item losses, local item count)``; inputs are float32 and already checked. The count
        may be a function computing it, called only when ``num_items_in_batch`` is not given."""
        raise NotImplementedError

    def forward(
        self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems = None, sample_weight: Tensor | None = None
    ) -> Tensor:
        """The loss of ``logits`` against ``labels``; ``sample_weight`` (``(N,)`` per example, or shaped like the
        per-item losses, e.g. per token or pixel) multiplies each item's loss."""
        if self.label_kind == "index":
            labels = index_labels(labels)
        if self.kernel_checks_labels and isinstance(labels, Tensor) and labels.device.type == "cuda":
            self._cuda_calls += 1
        with label_pass():  # the labels' min/max, where needed, is read once for the whole call
            self.check_inputs(logits, labels)
            if not self._kernel_checks(labels):
                return self._reduce_in_float32(logits, labels, num_items_in_batch, sample_weight)
            try:
                return self._reduce_in_float32(logits, labels, num_items_in_batch, sample_weight)
            except (IndexError, RuntimeError):
                # the kernel refused a label: name it as every other loss does (a failure with valid labels
                # re-raises)
                check_class_range(self._label(), labels, logits.shape[1], self.ignore_index)
                raise

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        """Raise a clear error for malformed inputs before any kernel runs (integer labels of any dtype: the
        forward converts them to int64 first)."""
        check_logits_labels(
            self._label(),
            logits,
            labels,
            self.label_kind,
            self.ignore_index,
            check_range=not self._kernel_checks(labels),
        )

    def _kernel_checks(self, labels: Tensor) -> bool:
        """Whether this call leaves the label range to the loss's kernels: class indices on the CPU, and on CUDA
        after the first :data:`CUDA_RANGE_CHECKED_CALLS` calls (other devices: every call is checked, since their
        kernels may not bound-check, e.g. XLA's gather clamps)."""
        if not (
            self.kernel_checks_labels
            and isinstance(labels, Tensor)
            and not (labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex())
        ):
            return False
        if values_are_free(labels):
            return True
        return labels.device.type == "cuda" and self._cuda_calls > CUDA_RANGE_CHECKED_CALLS


#: calls of a ``kernel_checks_labels`` loss on CUDA whose label range the loss checks itself (a queued
#: ``torch._assert_async`` naming the loss and the range, no sync): enough for the usual mistakes (``num_labels``,
#: an ``ignore_index`` of 255), which show in the first batches. Later calls leave it to the kernels' own
#: device-side asserts, which still stop the run (with torch's message): the check's five passes over int64 labels
#: move ~34 bytes per label, against ~120 for cross-entropy's forward and backward on 4 float32 classes.
CUDA_RANGE_CHECKED_CALLS = 16


#: the name third-party losses written against hf-losses 0.1 subclass; new code says :class:`LogitsLoss`
Loss = LogitsLoss


class HiddenStatesLoss(LossBase):
    """A loss on the final hidden states ``(N, T, H)`` and an output head ``weight (V, H)`` / ``bias (V,)``.

    Data weights (``sample_weight``) and ``normalize="weight"`` are applied inside the kernel (``weighs_tokens``).
    The trainer hands it the hidden states the model feeds its head, never the logits (see
    :mod:`hf_losses.trainers.hidden_states`); ``labels`` are as the model receives them (unshifted for a causal
    LM) and ``shift_labels``, when a collator gives them, are already aligned with the positions.
    """

    weighs_tokens: ClassVar[bool] = True

    def targets(self, labels: Tensor | None, shift_labels: Tensor | None = None) -> Tensor:
        """The per-position targets the loss compares the hidden states' predictions with."""
        raise NotImplementedError

    def item_weights(self, targets: Tensor) -> Tensor:
        """1 per non-ignored target (subclasses with class weights over the vocabulary: ``w[target]``)."""
        return (targets != self.ignore_index).to(torch.float32)

    def reduction_scale(
        self, hidden_states: Tensor, targets: Tensor, num_items_in_batch: NumItems, token_weight: Tensor | None
    ) -> Tensor:
        """``1 / denominator``: the step's count (or weight sum) when given, else this call's."""
        if self.normalize == "weight":
            local = self.item_weights(targets) if token_weight is None else token_weight
            local = local.sum()
        else:
            local = (targets != self.ignore_index).sum()
        one = torch.ones((), dtype=compute_dtype(hidden_states), device=hidden_states.device)
        return reduce_by_items(one, local, num_items_in_batch, self.count_unit, self._label())

    def num_items(
        self, labels: Tensor | None, shift_labels: Tensor | None = None, sample_weight: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Count of non-ignored targets (after any shift); their weight sum for ``normalize="weight"``."""
        targets = self.targets(labels, shift_labels)
        if self.normalize == "weight":
            weights = self.target_weights(targets, sample_weight, shifted=shift_labels is None)
            return {self.count_unit: weights.sum(dtype=torch.float64 if weights.device.type != "mps" else None)}
        return {self.item_unit: (targets != self.ignore_index).sum()}

    def target_weights(self, targets: Tensor, sample_weight: Tensor | None, shifted: bool) -> Tensor:
        """Each target's weight: the class weight of its token (see :meth:`item_weights`) times its data weight --
        ``(N,)`` per sequence, or per token aligned with the unshifted labels (shifted here like them when
        ``shifted``); 0 at ignored targets."""
        weights = self.item_weights(targets)
        if sample_weight is None:
            return weights
        return weights * self.data_weights(targets, sample_weight, shifted)

    def data_weights(self, targets: Tensor, sample_weight: Tensor, shifted: bool) -> Tensor:
        """The data weight of each target, shaped like ``targets`` (per-token weights shifted with the labels)."""
        if shifted and sample_weight.dim() > 1 and sample_weight.shape[-1] == targets.shape[-1]:
            sample_weight = shift_causal_weights(sample_weight)
        expanded = expand_sample_weight(self._label(), sample_weight, targets)
        return (expanded if expanded.is_floating_point() else expanded.float()).expand(targets.shape)

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


def check_num_items(owner: str, count: NumItems, local_count: LocalCount | None = None) -> NumItems:
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


def _host_value(count: LocalCount | None) -> float:
    """A count's value where reading it is free (a Python number, a CPU tensor); 0 where it is not."""
    count = local_count_value(count)
    if isinstance(count, Tensor):
        return float(count) if count.device.type == "cpu" else 0.0
    return float(count or 0)


def local_count_value(count: LocalCount | None) -> Tensor | int | None:
    """A local count, computed now if it was given as a function."""
    return count() if callable(count) else count


def reduce_by_items(
    total: Tensor, local_count: LocalCount, num_items_in_batch: NumItems, item_unit: str, owner: str = "hf_losses"
) -> Tensor:
    """``total / num_items_in_batch`` when given (global count), else ``total / local_count``; 0 for no items.

    ``num_items_in_batch`` is checked (:func:`check_num_items`): a count of 0 or less, NaN or inf is refused,
    naming ``owner``.
    """
    total = total.to(compute_dtype(total))
    denominator = check_num_items(owner, select_num_items(num_items_in_batch, item_unit, owner), local_count)
    if denominator is None:
        denominator = local_count_value(local_count)
    if isinstance(denominator, Tensor) and values_are_free(denominator):
        denominator = float(denominator)  # free on the CPU, and one division instead of a cast, a test and a where
    if isinstance(denominator, Tensor):
        # reshape: a (1,) count keeps the result a scalar; 0 (nothing counts: the total is 0 too) divides by 1
        if denominator.dim() or denominator.dtype != total.dtype or denominator.device != total.device:
            denominator = denominator.reshape(()).to(device=total.device, dtype=total.dtype)
        denominator = torch.where(denominator > 0, denominator, 1.0)
    else:
        denominator = float(denominator) if float(denominator) > 0 else 1.0
    return total / denominator


def shift_causal_weights(weight: Tensor) -> Tensor:
    """Per-token weights aligned with unshifted causal-LM labels, shifted like the labels (0 at the last position)."""
    return torch.nn.functional.pad(weight[..., 1:], (0, 1), value=0.0)


def expand_sample_weight(owner: str, sample_weight: Tensor, items: Tensor) -> Tensor:
    """Data weights broadcast to the per-item losses: ``(N,)`` per example, or exactly ``items``' shape (per label
    entry). Values are checked where that costs no device sync (CPU); the trainer checks them on the data side."""
    if not isinstance(sample_weight, Tensor):
        raise TypeError(f"{owner}: `sample_weight` must be a tensor, got {type(sample_weight).__name__}.")
    if not (sample_weight.is_floating_point() or sample_weight.dtype in _INTEGER_DTYPES):
        raise TypeError(f"{owner}: `sample_weight` must hold real numbers, got dtype {sample_weight.dtype}.")
    if tuple(sample_weight.shape) == tuple(items.shape):
        weights = sample_weight
    elif sample_weight.dim() == 1 and items.dim() >= 1 and sample_weight.shape[0] == items.shape[0]:
        weights = sample_weight.reshape((items.shape[0],) + (1,) * (items.dim() - 1))
    else:
        raise ValueError(
            f"{owner}: `sample_weight` shape {tuple(sample_weight.shape)} fits neither one weight per example "
            f"({items.shape[0] if items.dim() else 1},) nor one per item {tuple(items.shape)}."
        )
    check_same_device(owner, {"per-item losses": items, "sample_weight": weights})
    if weights.device.type == "cpu" and weights.numel() > 0:
        check_weight_values(owner, "sample_weight", weights)
    return weights


_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_weight_values(owner: str, name: str, weights: Tensor) -> None:
    """Finite and >= 0 (reads the values: call it where they are on the CPU)."""
    weights = weights.detach()
    bad = ~torch.isfinite(weights) | (weights < 0) if weights.is_floating_point() else weights < 0
    if bad.any():
        raise ValueError(
            f"{owner}: `{name}` must be finite and >= 0 (0 leaves an item out), found {weights[bad][0].item():g}."
        )
