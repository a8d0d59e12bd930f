"""Call-time input checks of the losses: label dtype (converted once to int64), devices, shapes, label range and
finite regression targets. Every message names the loss, the input and what is allowed.

No check makes the host wait for an accelerator. Values are read where that is free, on the CPU (an eager
``ValueError`` naming the first bad value); on CUDA the label range is a ``torch._assert_async`` with the same
message, checked on the device in stream order (a bad label stops the run at the next synchronisation with a
device-side assert that prints the message, as ``F.cross_entropy`` does with its own assert). For a Python
exception before any device work, check the labels on the data side while they are still on the CPU
(:func:`check_in_range` takes CPU labels).

The CPU reads the labels at most once per call: the range check's min/max is remembered, within the call
(:class:`label_pass`), for the ignore-index test (:func:`value_bounds`); losses whose kernels bound-check every
label themselves (``F.cross_entropy``, ``scatter_``, indexing: ``LogitsLoss.kernel_checks_labels``, the overlap
losses' one-hot) skip the pass and check only when a kernel refuses a label. On CUDA those losses queue their
own check on their first ``CUDA_RANGE_CHECKED_CALLS`` calls only, then rely on their kernels' device-side asserts
(``hf_losses.losses.base``).
"""

from __future__ import annotations

import threading
import weakref
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


def check_logits_labels(
    owner: str, logits: Tensor, labels: Tensor, label_kind: str, ignore_index: int, *, check_range: bool = True
) -> None:
    """Shape, dtype and label-range checks shared by all losses; messages name the loss and what is allowed.

    ``check_range=False`` leaves the class-index range to the caller (a loss whose kernel bounds-checks every label
    on the CPU, see :func:`check_class_range`)."""
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
        if check_range:
            check_class_range(owner, labels, num_classes, ignore_index)
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


def check_class_range(owner: str, labels: Tensor, num_classes: int, ignore_index: int) -> None:
    """Class indices in ``[0, num_classes)`` or ``ignore_index`` (see :func:`check_in_range`)."""
    check_in_range(
        labels,
        0,
        num_classes,
        ignore_index,
        f"{owner}: `labels` must be in [0, {num_classes}) or ignore_index={ignore_index}",
    )


def check_finite_targets(owner: str, labels: Tensor, ignore_index: int) -> None:
    """Regression targets must be finite: one NaN or inf target makes the loss and every gradient NaN / inf.

    Read on the CPU, where that costs no device synchronisation; queued on the device elsewhere.
    """
    if labels.numel() == 0 or labels.device.type == "meta":
        return
    if not values_are_free(labels):
        assert_on_device(
            torch.isfinite(labels).all(),
            f"{owner}: `labels` must be finite regression targets (ignore_index={ignore_index} skips an entry)",
        )
        return
    finite = torch.isfinite(labels)
    if not finite.all():
        raise ValueError(
            f"{owner}: `labels` must be finite regression targets (ignore_index={ignore_index} skips an entry); "
            f"found {labels[~finite][0].item()}."
        )


def values_are_free(tensor: Tensor) -> bool:
    """Whether reading ``tensor``'s values costs nothing: on the CPU. On an accelerator it is a device->host sync
    that stalls the host until every queued kernel has run."""
    return tensor.device.type == "cpu"


#: the longest message ``torch._assert_async`` carries to a CUDA kernel (its buffer is 256 bytes)
_DEVICE_MESSAGE_LENGTH = 250


def assert_on_device(ok: Tensor, message: str) -> None:
    """Fail with ``message`` when the one-element boolean ``ok`` is False, without a device sync.

    ``torch._assert_async`` queues the check on the device: CUDA reports a failure at a later synchronisation as a
    device-side assert printing the message; the CPU raises ``RuntimeError(message)`` at once. A device without
    the operator (some out-of-tree backends) reads the value instead: a sync, but never a silent pass.
    """
    try:
        torch._assert_async(ok, message[:_DEVICE_MESSAGE_LENGTH])
    except NotImplementedError:
        if not bool(ok):
            raise ValueError(message) from None


def check_in_range(
    values: Tensor, low: float, high: float, ignore_index: float, message: str, *, high_inclusive: bool = False
) -> None:
    """Every entry in ``[low, high)`` (``[low, high]`` with ``high_inclusive``) or equal to ``ignore_index``; NaN
    is out of range. ``message`` names the loss, the input and the allowed values.

    On the CPU one min/max pass proves the common case, else ``ValueError("<message>; found <first bad value>.")``.
    Elsewhere the check is queued on the device (:func:`assert_on_device`): no sync, the message kept.
    """
    if values.numel() == 0 or values.device.type == "meta":
        return
    if values_are_free(values):
        seen_low, seen_high = value_bounds(values)  # NaN fails both comparisons
        if seen_low >= low and (seen_high <= high if high_inclusive else seen_high < high):
            return
        bad = _out_of_range(values, low, high, ignore_index, high_inclusive)
        if bad.any():
            value = values[bad][0].item()
            raise ValueError(
                f"{message}; found {value:g}." if isinstance(value, float) else f"{message}; found {value}."
            )
        return
    assert_on_device(~_out_of_range(values, low, high, ignore_index, high_inclusive).any(), f"{message}.")


class _LabelPass(threading.local):
    """Per thread: how deep in loss calls we are, and the bounds last computed there (the tensor, weakly; its
    version counter; (min, max))."""

    depth = 0
    last: tuple[weakref.ref, int, tuple[float, float]] | None = None


_label_pass = _LabelPass()


class label_pass:  # noqa: N801 (used as a context manager, like torch.no_grad)
    """The span of one loss call, inside which :func:`value_bounds` remembers the labels' min/max: a range check and
    an ignore-index test of the same call then read the labels once. Nothing is remembered across calls, where
    the labels could have been rewritten behind torch's back (a numpy array shared with a tensor keeps the
    tensor's version counter unchanged)."""

    def __enter__(self) -> None:
        _label_pass.depth += 1

    def __exit__(self, *exc: object) -> None:
        _label_pass.depth -= 1
        if _label_pass.depth == 0:
            _label_pass.last = None


def value_bounds(values: Tensor) -> tuple[float, float]:
    """``(min, max)`` of a non-empty CPU tensor, in one pass; inside a :class:`label_pass`, remembered for the
    tensor last asked about while it is alive and unmodified (same object, same version counter, which views
    share with their base)."""
    remember = _label_pass.depth > 0 and not values.is_inference()  # inference tensors have no version counter
    if remember and _label_pass.last is not None:
        ref, version, bounds = _label_pass.last
        if ref() is values and values._version == version:
            return bounds
    bounds = tuple(torch.stack(values.aminmax()).tolist())
    if remember:
        _label_pass.last = (weakref.ref(values), values._version, bounds)
    return bounds


def _out_of_range(values: Tensor, low: float, high: float, ignore_index: float, high_inclusive: bool) -> Tensor:
    """Boolean mask of the entries outside the range that are not ``ignore_index`` (NaN included)."""
    above = values > high if high_inclusive else values >= high
    outside = (values < low) | above
    if values.is_floating_point():
        outside |= values.isnan()
    return outside & (values != ignore_index)
