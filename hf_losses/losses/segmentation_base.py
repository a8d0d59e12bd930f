"""What every segmentation loss shares: parameters (background, class subset and weights, per image or over the
batch, across processes, multi-label and probability inputs), input checks, flattening, the class probabilities and
float targets the losses are computed from, the class mean, and the image count.

Inputs, as for ``F.cross_entropy``: logits ``(N, C, d1, ...)`` and integer labels ``(N, d1, ...)``. With ``C > 1``
the probabilities are a softmax over the classes; with ``C == 1`` the task is binary, the probability is
``sigmoid(logit)`` and labels hold 0 (background) / 1 (foreground). With ``multilabel=True`` every channel is its own
sigmoid and the labels are float targets in [0, 1] shaped like the logits (overlapping regions); with
``from_logits=False`` the first input already holds the probabilities. Label entries equal to ``ignore_index`` count
nowhere.

No host synchronisation on an accelerator: where a label value decides a shortcut (no ignored entry, the value
ranges), it is read on the CPU only; elsewhere masks are computed in full.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from hf_losses.losses.base import LogitsLoss, Normalize, Reduction
from hf_losses.losses.checks import as_vector, check_bool
from hf_losses.losses.ignored import may_contain
from hf_losses.losses.inputs import check_class_range, check_in_range, check_logits_labels, values_are_free


def class_probabilities(logits: Tensor, multilabel: bool = False, from_logits: bool = True) -> Tensor:
    """Softmax over dim 1 when ``C > 1``; sigmoid per channel when ``C == 1`` (binary) or ``multilabel``; the
    input itself when ``from_logits`` is False (already probabilities)."""
    if not from_logits:
        return logits
    if multilabel or logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def one_hot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(N, C, P)`` float one-hot of ``(N, P)`` labels in ``[0, C)``; for ``C == 1`` the foreground (label 1)."""
    if num_classes == 1:
        return (labels == 1).unsqueeze(1).to(dtype)
    onehot = torch.zeros((labels.shape[0], num_classes) + tuple(labels.shape[1:]), dtype=dtype, device=labels.device)
    return onehot.scatter_(1, labels.unsqueeze(1), 1.0)


def check_class_subset(owner: str, classes: Sequence[int] | None) -> tuple[int, ...] | None:
    """A non-empty list of distinct class indices >= 0 (smp's ``classes``), or None for every class."""
    if classes is None:
        return None
    if (
        isinstance(classes, (str, bytes))
        or not isinstance(classes, Sequence)
        or not classes
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(
            f"{owner}: `classes` must be a non-empty list of distinct class indices >= 0 (the classes the loss "
            f"averages over), or None for every class; got {classes!r}."
        )
    return tuple(classes)


def check_probability_range(owner: str, name: str, tensor: Tensor, ignore_index: float | None = None) -> None:
    """Every entry in [0, 1] (or equal to ``ignore_index``): read on the CPU, queued on the device elsewhere
    (:func:`~hf_losses.losses.inputs.check_in_range`, no sync)."""
    allowed = "" if ignore_index is None else f" or ignore_index={ignore_index}"
    what = "targets" if name == "labels" else "probabilities (from_logits=False)"
    message = f"{owner}: `{name}` must be {what} in [0, 1]{allowed}"
    check_in_range(
        tensor.detach(), 0, 1, math.nan if ignore_index is None else ignore_index, message, high_inclusive=True
    )


class SegmentationLoss(LogitsLoss):
    """Shared parameters, checks, flattening, probabilities and targets, class mean and item count of the
    segmentation losses (see the module docstring). The item is the image: ``per_image=True`` losses are sums of
    per-image losses (:meth:`loss_items`), divided by the number of images with a labelled pixel."""

    item_unit = "sample"
    reference = ""
    #: the options that make the labels float targets shaped like the logits (named in error messages; "" when
    #: the loss has none)
    float_targets_option: ClassVar[str] = ""
    #: True for losses whose statistics come from :meth:`_statistics_inputs`: on the CPU the one-hot's scatter
    #: proves the labels, with no min/max pass (see there)
    one_hot_checks_labels: ClassVar[bool] = False
    #: set once the one-hot has refused an ignored label: this loss's data has them, so it masks from then on
    _seen_ignored: bool = False

    def __init__(
        self,
        *,
        include_background: bool,
        per_image: bool,
        across_processes: bool,
        ignore_index: int,
        multilabel: bool = False,
        float_targets: bool = False,
        from_logits: bool = True,
        classes: Sequence[int] | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        owner = self._label()
        self.include_background = check_bool(owner, "include_background", include_background)
        self.per_image = check_bool(owner, "per_image", per_image)
        self.across_processes = check_bool(owner, "across_processes", across_processes)
        self.multilabel = check_bool(owner, "multilabel", multilabel)
        self.from_logits = check_bool(owner, "from_logits", from_logits)
        # per_image=False needs whole-batch statistics: it returns the batch value (instance attribute)
        self.decomposable = per_image
        if not per_image and (self.reduction != "mean" or self.normalize != "count"):
            option = "reduction" if self.reduction != "mean" else "normalize"
            raise ValueError(
                f"{owner}: `{option}={getattr(self, option)!r}` needs one loss per image, but per_image=False computes "
                f"one loss from the statistics of the whole batch; use per_image=True."
            )
        # float targets shaped like the logits (multi-label, or class probabilities): what the trainer checks
        self.label_kind = "binary" if multilabel or float_targets else "index"
        self.classes = check_class_subset(owner, classes)
        if self.classes is not None and not include_background and 0 in self.classes:
            raise ValueError(
                f"{owner}: `classes` {list(self.classes)} includes class 0, the background, which "
                f"include_background=False leaves out; drop one of the two."
            )
        self.register_buffer(
            "class_index", None if self.classes is None else torch.tensor(self.classes), persistent=False
        )
        weights = None if class_weights is None else as_vector(owner, "class_weights", class_weights)
        if weights is not None:
            kept = self._kept(weights.numel())
            if self.classes is not None and max(self.classes) >= weights.numel():
                raise ValueError(
                    f"{owner}: `classes` {list(self.classes)} names class {max(self.classes)} but `class_weights` has "
                    f"{weights.numel()} entries (one per class)."
                )
            if not (weights[kept] > 0).any():
                raise ValueError(
                    f"{owner}: every class the loss averages over has weight 0 in `class_weights` "
                    f"{weights.tolist()} (classes {kept.tolist()}); give one of them a weight > 0."
                )
        self.register_buffer("class_weights", weights)

    # ------------------------------------------------------------------------------------------ checks
    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        owner = self._label()
        self._check_label_dtype(labels)
        if self.label_kind != "index":
            check_logits_labels(owner, logits, labels, self.label_kind, self.ignore_index)
            if logits.dim() < 2:
                raise ValueError(
                    f"{owner}: `logits` must be (N, C, d1, ...) with one channel per class, got shape "
                    f"{tuple(logits.shape)}."
                )
            check_probability_range(owner, "labels", labels, self.ignore_index)
        else:
            if isinstance(logits, Tensor) and isinstance(labels, Tensor) and logits.dim() >= 2 and logits.shape[1] == 1:
                # binary: one sigmoid channel, labels 0/1 -- check as two classes, with messages about one channel
                expected = (logits.shape[0],) + tuple(logits.shape[2:])
                if tuple(labels.shape) != expected:
                    raise ValueError(
                        f"{owner}: `labels` shape {tuple(labels.shape)} does not match logits "
                        f"{tuple(logits.shape)}; expected {expected} (logits are (N, C, d1, ...))."
                    )
                check_logits_labels(owner, logits.expand(-1, 2, *logits.shape[2:]), labels, "index", self.ignore_index)
            else:
                check_logits_labels(
                    owner,
                    logits,
                    labels,
                    self.label_kind,
                    self.ignore_index,
                    check_range=not self._one_hot_checks(logits, labels),
                )
        if not self.from_logits:
            check_probability_range(owner, "logits", logits)
        self._check_class_options(logits.shape[1])

    def _check_label_dtype(self, labels: Tensor) -> None:
        """Integer labels where float targets are expected, or the reverse: say which option switches."""
        if not isinstance(labels, Tensor) or not self.float_targets_option:
            return
        owner = self._label()
        if self.label_kind != "index" and not labels.is_floating_point():
            raise TypeError(
                f"{owner}: `labels` must be float targets in [0, 1] shaped like the logits (with "
                f"{self.float_targets_option}), got dtype {labels.dtype}; for integer class labels (N, d1, ...) leave "
                f"those options out."
            )
        if self.label_kind == "index" and labels.is_floating_point():
            raise TypeError(
                f"{owner}: `labels` must hold integer class indices (N, d1, ...), got dtype {labels.dtype}; for float "
                f"targets shaped like the logits set {self.float_targets_option}."
            )

    def _check_class_options(self, num_classes: int) -> None:
        """``classes`` and ``class_weights`` fit the C channels of the logits (shapes only: no device sync)."""
        owner = self._label()
        for name, given in (("classes", self.classes), ("class_weights", self.class_weights)):
            if given is not None and num_classes == 1:
                raise ValueError(
                    f"{owner}: `{name}` chooses or weighs classes in the class mean, but the logits have one channel "
                    f"(C=1: one class); leave `{name}` out."
                )
        if self.classes is not None and max(self.classes) >= num_classes:
            raise ValueError(
                f"{owner}: `classes` {list(self.classes)} names class {max(self.classes)} but the logits have "
                f"C={num_classes} classes (indices 0 to {num_classes - 1})."
            )
        if self.class_weights is not None and self.class_weights.numel() != num_classes:
            raise ValueError(
                f"{owner}: `class_weights` has {self.class_weights.numel()} entries but the logits have "
                f"C={num_classes} classes; give one weight per class (the background included)."
            )

    def _one_hot_checks(self, logits: Tensor, labels: Tensor) -> bool:
        """Whether this call builds the one-hot from the raw labels and lets ``scatter_`` prove them (see
        :meth:`_statistics_inputs`): a loss that opts in (``one_hot_checks_labels``), integer labels on the CPU
        (where scatter bound-checks), ``C > 1``, an ``ignore_index`` scatter refuses (outside ``[0, C)``), and no
        ignored label seen by this loss yet."""
        num_classes = logits.shape[1] if logits.dim() >= 2 else 0
        return (
            self.one_hot_checks_labels
            and not self._seen_ignored
            and self.label_kind == "index"
            and values_are_free(labels)
            and num_classes > 1
            and not 0 <= self.ignore_index < num_classes
        )

    # ------------------------------------------------------------------------------------------ computing
    def _flatten(
        self, logits: Tensor, labels: Tensor, assume_labelled: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(N, C, P)`` logits, labels ``(N, P)`` (or ``(N, C, P)`` float targets) and the valid-entry mask, None
        when no entry can be ignored (decided on the CPU only; on an accelerator the mask is always computed;
        ``assume_labelled``: None, for the caller to prove)."""
        n, c = logits.shape[:2]
        pixels = math.prod(logits.shape[2:])  # not -1: an empty batch (N = 0) or image (P = 0) has no unique -1
        # before the reshape: the range check's min/max
        maybe_ignored = not assume_labelled and may_contain(labels, self.ignore_index)
        labels = labels.reshape((n, c, pixels) if self.label_kind != "index" else (n, pixels))
        valid = self.valid_mask(labels) if maybe_ignored else None
        return logits.reshape(n, c, pixels), labels, valid

    def _statistics_inputs(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Probabilities, targets and valid mask (:meth:`_probabilities_and_targets`) of ``(N, C, d1, ...)`` inputs.

        On the CPU, without an ignored label seen so far, the one-hot is built from the raw labels first: its
        ``scatter_`` refuses any label outside ``[0, C)``, which proves that every label is a class and none is
        ignored, without the min/max pass over the labels. When it refuses, the labels are checked (a
        ``ValueError`` naming a label out of range) and masked, and this loss masks from then on (its data has
        ignored labels: no second refusal per batch)."""
        optimistic = self._one_hot_checks(logits, labels)
        flat_logits, flat_labels, valid = self._flatten(logits, labels, assume_labelled=optimistic)
        if not optimistic:
            return self._probabilities_and_targets(flat_logits, flat_labels, valid)
        try:
            return self._probabilities_and_targets(flat_logits, flat_labels, None)
        except (IndexError, RuntimeError):
            check_class_range(self._label(), labels, logits.shape[1], self.ignore_index)
            self._seen_ignored = True
            return self._probabilities_and_targets(flat_logits, flat_labels, self.valid_mask(flat_labels))

    def _probabilities_and_targets(
        self, logits: Tensor, labels: Tensor, valid: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Probabilities and float targets ``(N, C, P)``, both 0 at ignored entries, and the valid mask broadcast
        to them (``(N, 1, P)`` or ``(N, C, P)``; None when nothing is ignored)."""
        if self.label_kind != "index":
            probs = class_probabilities(logits, self.multilabel, self.from_logits)
            targets = labels if valid is None else labels.masked_fill(~valid, 0.0)
            if valid is not None:
                probs = probs * valid.to(probs.dtype)
            return probs, targets.to(probs.dtype), valid
        safe_labels = labels if valid is None else labels.masked_fill(~valid, 0)
        # the one-hot first: when its scatter refuses a label (see _statistics_inputs) no softmax is wasted
        targets = one_hot_targets(safe_labels, logits.shape[1], logits.dtype)
        probs = class_probabilities(logits, self.multilabel, self.from_logits)
        if valid is None:
            return probs, targets, None
        valid = valid.unsqueeze(1)
        valid_float = valid.to(probs.dtype)
        return probs * valid_float, targets * valid_float, valid

    def _kept(self, num_classes: int) -> Tensor:
        """Indices of the classes the loss averages over (CPU; for construction-time checks)."""
        if self.classes is not None:
            return torch.tensor(self.classes)
        start = 0 if self.include_background or num_classes == 1 else 1
        return torch.arange(start, num_classes)

    def _select_classes(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The classes the loss averages over, along dim 1: ``classes``, else all but the background when
        ``include_background`` is False (and ``C > 1``)."""
        if self.class_index is not None:
            # a no-op once the loss is on the device; else an asynchronous copy (no device sync)
            index = self.class_index.to(tensors[0].device, non_blocking=True)
            return tuple(t.index_select(1, index) for t in tensors)
        if self.include_background or tensors[0].shape[1] == 1:
            return tensors
        return tuple(t[:, 1:] for t in tensors)

    def _selected_class_weights(self, like: Tensor) -> Tensor | None:
        """``class_weights`` of the classes the loss averages over, on ``like``'s device and dtype."""
        if self.class_weights is None:
            return None
        weights = self.class_weights.to(device=like.device, dtype=like.dtype, non_blocking=True)
        (weights,) = self._select_classes(weights.unsqueeze(0))
        return weights.squeeze(0)

    def class_mean(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """Mean of the per-class losses ``(R, C')`` over the last dim, weighted by ``class_weights`` (smp's
        normalised weighted mean); classes not ``present`` (no labelled entry) left out, 0 when none is."""
        weights = self._selected_class_weights(losses)
        if present is None and weights is None:
            return losses.mean(-1)
        weights = torch.ones_like(losses) if weights is None else weights.expand_as(losses)
        if present is not None:
            weights = weights * present.to(losses.dtype)
        total = weights.sum(-1)
        numerator = (losses * weights).sum(-1)
        return torch.where(total > 0, numerator / torch.where(total > 0, total, torch.ones_like(total)), 0.0)

    @staticmethod
    def _image_count(labels: Tensor, valid: Tensor | None) -> Tensor | int:
        """Images with at least one labelled entry (the item of ``per_image=True``); a plain int when no entry
        is ignored (no host-to-device copy on an accelerator)."""
        if valid is None:
            return labels.shape[0] if labels.shape[-1] > 0 else 0
        return valid.reshape(valid.shape[0], math.prod(valid.shape[1:])).any(dim=1).sum()

    def item_weights(self, labels: Tensor) -> Tensor:
        """1 per image with a labelled entry, 0 per image without (the denominator of ``normalize="weight"``)."""
        valid = self.valid_mask(labels)
        return valid.reshape(valid.shape[0], math.prod(valid.shape[1:])).any(dim=1).to(torch.float32)

    def extra_repr(self) -> str:
        options = [f"include_background={self.include_background}", f"per_image={self.per_image}"]
        for name, default in (("multilabel", False), ("from_logits", True)):
            if getattr(self, name) != default:
                options.append(f"{name}={getattr(self, name)!r}")
        if self.classes is not None:
            options.append(f"classes={list(self.classes)}")
        if self.class_weights is not None:
            options.append(f"class_weights={self.class_weights.tolist()}")
        return f"{', '.join(options)}, {super().extra_repr()}"
