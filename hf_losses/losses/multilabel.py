"""Multi-label (and binary) losses on independent sigmoid outputs: BCE, RetinaNet sigmoid focal, ASL.

Logits ``(N, C)`` or ``(N, C, d1, ...)`` and float targets of the same shape with values in [0, 1] (soft
targets allowed); a target equal to ``ignore_index`` (-100.0) marks an entry to skip. Item unit: one
non-ignored label entry, so each loss is the mean over non-ignored entries, as
``F.binary_cross_entropy_with_logits(reduction="mean")`` is over all entries. Label smoothing (``bce``, ``asl``)
is the two-class one of each entry: ``t (1 - eps) + eps / 2`` (Keras' ``BinaryCrossentropy``, timm's
``AsymmetricLossSingleLabel`` convention ``eps / num_classes`` with 2 classes per entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import LogitsLoss, Normalize, Reduction
from hf_losses.losses.checks import as_vector, check_bool, check_num_classes, check_number
from hf_losses.losses.ignored import may_contain
from hf_losses.losses.inputs import check_in_range
from hf_losses.registry import register_loss


def check_binary_targets(owner: str, labels: Tensor, ignore_index: int) -> None:
    """Targets must lie in [0, 1] (soft labels allowed) or equal ``ignore_index``."""
    # read on the CPU; an asynchronous device assert elsewhere (no device sync)
    message = f"{owner}: `labels` must be targets in [0, 1] or ignore_index={ignore_index}"
    check_in_range(labels, 0.0, 1.0, ignore_index, message, high_inclusive=True)


def smoothed_binary_targets(targets: Tensor, label_smoothing: float) -> Tensor:
    """``t (1 - eps) + eps / 2``: each entry's two-class label smoothing (1 -> 1 - eps/2, 0 -> eps/2)."""
    if label_smoothing == 0:
        return targets
    return targets * (1.0 - label_smoothing) + 0.5 * label_smoothing


class MultiLabelLoss(LogitsLoss):
    """Shared parts: float targets shaped like the logits, range check, ignored entries zeroed, label smoothing."""

    label_kind = "binary"
    #: ``t (1 - eps) + eps / 2`` before the formula (losses that offer it set it in ``__init__``)
    label_smoothing: float = 0.0

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        check_binary_targets(self._label(), labels, self.ignore_index)

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | int]:
        if not may_contain(labels, self.ignore_index):
            targets = smoothed_binary_targets(labels, self.label_smoothing)
            return self.masked_sum(logits, targets, None), labels.numel()
        valid = self.valid_mask(labels)
        # ignored entries get target 0 so every formula stays finite there; their loss is then dropped
        targets = smoothed_binary_targets(labels.masked_fill(~valid, 0.0), self.label_smoothing)
        return self.masked_sum(logits, targets, valid), valid.sum()

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        valid = self.valid_mask(labels)
        targets = smoothed_binary_targets(labels.masked_fill(~valid, 0.0), self.label_smoothing)
        return torch.where(valid, self.per_entry(logits, targets), 0.0)

    def item_weights(self, labels: Tensor) -> Tensor:
        # 0 at ignored entries (the base class counts every entry of float labels)
        return self.valid_mask(labels).to(torch.float32)

    def masked_sum(self, logits: Tensor, targets: Tensor, valid: Tensor | None) -> Tensor:
        """Sum of the per-entry losses over the ``valid`` entries (all of them when ``valid`` is None)."""
        losses = self.per_entry(logits, targets)
        return (losses if valid is None else torch.where(valid, losses, 0.0)).sum()

    def per_entry(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Unreduced loss of every entry; ``targets`` in [0, 1]."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ BCE
def class_shaped(vector: Tensor, logits: Tensor) -> Tensor:
    """``(C,)`` -> ``(C, 1, ..., 1)`` so it broadcasts along the class dimension 1 of ``(N, C, d1, ...)``."""
    return vector.to(logits).reshape((-1,) + (1,) * max(logits.dim() - 2, 0))


def as_element_weight(owner: str, weight: Sequence[Any] | Tensor) -> Tensor:
    """A float32 tensor of any shape (nested lists allowed) with finite entries >= 0, at least one > 0."""
    try:
        tensor = torch.as_tensor(weight.detach() if isinstance(weight, Tensor) else weight, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{owner}: `weight` must be a tensor or (nested) list of numbers broadcastable to the logits, got "
            f"{weight!r}."
        ) from error
    if tensor.numel() == 0:
        raise ValueError(f"{owner}: `weight` must hold at least one number, got shape {tuple(tensor.shape)}.")
    if not torch.isfinite(tensor).all() or (tensor < 0).any():
        raise ValueError(f"{owner}: every entry of `weight` must be finite and >= 0, got {tensor.tolist()}.")
    if not (tensor > 0).any():
        raise ValueError(
            f"{owner}: `weight` must have at least one entry > 0 (all zeros weigh every item 0), got {tensor.tolist()}."
        )
    return tensor.clone()


@register_loss("bce", aliases=("binary_cross_entropy", "bce_with_logits"))
class BCELoss(MultiLabelLoss):
    """Binary cross-entropy on logits with optional ``pos_weight``, averaged over non-ignored label entries.

    Equals ``F.binary_cross_entropy_with_logits(logits, targets, weight=weight, pos_weight=pos_weight)`` (mean)
    when no entry is ignored. ``pos_weight`` multiplies the positive term: a scalar, or one value per class along
    dimension 1 (for ``(N, C, H, W)`` logits too, as PyTorch's docs advise with a ``(C, 1, 1)`` shape);
    ``n_negative / n_positive`` per class balances rare labels. ``weight`` multiplies each entry's loss with
    PyTorch's semantics: a tensor broadcast to the logits from the right (a ``(C,)`` list is per class for
    ``(N, C)`` logits; give ``(C, 1, 1)`` for ``(N, C, H, W)``); the mean still divides by the entry count,
    as PyTorch's does, and ``normalize="weight"`` by the sum of the weights. ``label_smoothing`` turns each
    target ``t`` into ``t (1 - eps) + eps / 2`` (PyTorch has none; Keras' convention).
    """

    summary = "Binary cross-entropy with logits, optional per-class pos_weight, element weight and label smoothing."
    reference = "PyTorch F.binary_cross_entropy_with_logits; label smoothing: Keras BinaryCrossentropy"

    def __init__(
        self,
        pos_weight: float | Sequence[float] | Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        weight: Sequence[Any] | Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        self.label_smoothing = check_number(self._label(), "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        self.register_buffer("weight", None if weight is None else as_element_weight(self._label(), weight))
        if isinstance(pos_weight, (int, float)) and not isinstance(pos_weight, bool):
            pos_weight = [check_number(self._label(), "pos_weight", pos_weight, minimum=0.0)]
            self.per_class = False
        else:
            self.per_class = pos_weight is not None
        # 0 is allowed, even everywhere: it drops the positive term only, the negatives still give a loss and a
        # gradient (the loss is not identically 0), as PyTorch allows it
        self.register_buffer(
            "pos_weight",
            None if pos_weight is None else as_vector(self._label(), "pos_weight", pos_weight, allow_all_zero=True),
        )

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        if self.per_class:
            check_num_classes(self._label(), "pos_weight", self.pos_weight, logits.shape[1] if logits.dim() > 1 else 1)
        if self.weight is not None:
            try:
                broadcast = torch.broadcast_shapes(self.weight.shape, logits.shape)
            except RuntimeError:
                broadcast = None
            if broadcast != logits.shape:
                raise ValueError(
                    f"{self._label()}: `weight` of shape {tuple(self.weight.shape)} does not broadcast to the logits "
                    f"{tuple(logits.shape)} (PyTorch broadcasting, aligned from the last dimension; per class of "
                    f"(N, C, d1, ...) logits give shape (C, 1, ...))."
                )

    def element_weight(self, logits: Tensor, valid: Tensor | None) -> Tensor | None:
        """``weight`` times the mask of non-ignored entries (None when neither is given)."""
        weight = None if self.weight is None else self.weight.to(logits)
        if valid is None:
            return weight
        mask = valid.to(logits.dtype)
        return mask if weight is None else mask * weight

    def per_entry(self, logits: Tensor, targets: Tensor) -> Tensor:
        pos_weight = None if self.pos_weight is None else class_shaped(self.pos_weight, logits)
        return F.binary_cross_entropy_with_logits(
            logits, targets, weight=self.element_weight(logits, None), pos_weight=pos_weight, reduction="none"
        )

    def masked_sum(self, logits: Tensor, targets: Tensor, valid: Tensor | None) -> Tensor:
        # the mask as BCE's element weight: one fused kernel for the masked sum
        pos_weight = None if self.pos_weight is None else class_shaped(self.pos_weight, logits)
        return F.binary_cross_entropy_with_logits(
            logits, targets, weight=self.element_weight(logits, valid), pos_weight=pos_weight, reduction="sum"
        )

    def item_weights(self, labels: Tensor) -> Tensor:
        valid = super().item_weights(labels)
        return valid if self.weight is None else valid * self.weight.to(valid)

    def extra_repr(self) -> str:
        smoothing = f"label_smoothing={self.label_smoothing:g}, " if self.label_smoothing else ""
        return f"{smoothing}{super().extra_repr()}"


# ------------------------------------------------------------------------------------------------ sigmoid focal
def per_entry_sigmoid_focal(
    logits: Tensor, targets: Tensor, alpha: float | Tensor | None = 0.25, gamma: float = 2.0
) -> Tensor:
    """RetinaNet focal loss of each entry, ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al. 2017, eq. 5).

    The same formula as ``torchvision.ops.sigmoid_focal_loss`` with ``p_t = p t + (1 - p)(1 - t)`` and
    ``alpha_t = alpha t + (1 - alpha)(1 - t)``; ``alpha=None`` disables the class balance; a tensor ``alpha``
    broadcasts to the logits (one value per class: ``class_shaped``).
    """
    probs = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # 1 - p_t = p (1 - t) + (1 - p) t = p + t - 2 p t
    one_minus_p_t = probs + targets - 2.0 * probs * targets
    losses = ce if gamma == 0 else ce * one_minus_p_t.clamp(min=torch.finfo(ce.dtype).tiny).pow(gamma)
    if alpha is not None:
        losses = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * losses
    return losses


class SigmoidFocalSum(torch.autograd.Function):
    """Sum of :func:`per_entry_sigmoid_focal` times ``weight``, its gradient computed in the same pass.

    The autograd graph of the plain formula keeps a dozen full-size intermediates and replays as many
    kernels backwards; the closed-form gradient, with ``q = 1 - p_t = t + p (1 - 2t)``,
    ``d/dx [a_t q^g ce] = a_t [ (p - t) q^g + g q^(g-1) p (1 - p) (1 - 2t) ce ]``,
    shares ``p``, ``q`` and ``ce`` with the forward pass: about half the time of the plain formula.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        targets: Tensor,
        weight: Tensor | None,
        alpha: float | Tensor | None,
        gamma: float,
        compute_grad: bool,
    ) -> Tensor:
        probs = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        flip = torch.rsub(targets, 1.0, alpha=2.0)  # 1 - 2t
        if alpha is not None:
            # alpha t + (1 - alpha)(1 - t) = 1/2 + (1/2 - alpha)(1 - 2t); a per-class alpha broadcasts along dim 1
            alpha_t = flip.mul(0.5 - alpha).add_(0.5)
            weight = alpha_t if weight is None else alpha_t.mul_(weight)
        if gamma == 0:
            losses, modulator, q_power = ce, None, None
        else:
            q = torch.addcmul(targets, probs, flip)  # 1 - p_t
            if gamma < 1:
                q = q.clamp_(min=torch.finfo(q.dtype).tiny)  # q^(gamma - 1) stays finite
            q_power = q.pow(gamma - 1.0)
            modulator = q_power * q
            losses = ce * modulator
        total = (losses if weight is None else losses * weight).sum()
        if compute_grad:
            grad = torch.sub(probs, targets)
            if modulator is not None:
                grad.mul_(modulator).add_(
                    torch.addcmul(probs, probs, probs, value=-1.0).mul_(flip).mul_(ce).mul_(q_power), alpha=gamma
                )
            if weight is not None:
                grad.mul_(weight)
            ctx.save_for_backward(grad)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None, None, None, None, None


@register_loss("sigmoid_focal", aliases=("sigmoid_focal_loss", "retinanet_focal"))
class SigmoidFocalLoss(MultiLabelLoss):
    """Sigmoid focal loss (RetinaNet): ``-alpha_t (1 - p_t)^gamma log p_t`` per entry, mean over label entries.

    Equals ``torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="mean")`` when no
    entry is ignored. ``alpha`` in [0, 1] weighs positives (``1 - alpha`` the negatives); None disables it; a
    list gives one alpha per output (class, along dimension 1), e.g. larger for rarer labels.
    """

    summary = "Sigmoid (RetinaNet) focal loss -alpha_t (1-p_t)^gamma log p_t per label entry (alpha per class)."
    reference = "Lin et al. 2017, Focal Loss for Dense Object Detection (ICCV); torchvision.ops.sigmoid_focal_loss"

    def __init__(
        self,
        alpha: float | Sequence[float] | Tensor | None = 0.25,
        gamma: float = 2.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        owner = self._label()
        if alpha is None or (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)):
            self.alpha = None if alpha is None else check_number(owner, "alpha", alpha, minimum=0.0, maximum=1.0)
        else:
            vector = as_vector(owner, "alpha", alpha, allow_all_zero=True)
            if (vector > 1).any():
                raise ValueError(f"{owner}: every entry of `alpha` must be in [0, 1], got {vector.tolist()}.")
            self.register_buffer("alpha", vector)
        self.gamma = check_number(owner, "gamma", gamma, minimum=0.0)

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        if isinstance(self.alpha, Tensor):
            check_num_classes(self._label(), "alpha", self.alpha, logits.shape[1] if logits.dim() > 1 else 1)

    def class_alpha(self, logits: Tensor) -> float | Tensor | None:
        """``alpha`` as a number, or per class shaped ``(C, 1, ...)`` to broadcast along dimension 1."""
        return class_shaped(self.alpha, logits) if isinstance(self.alpha, Tensor) else self.alpha

    def per_entry(self, logits: Tensor, targets: Tensor) -> Tensor:
        return per_entry_sigmoid_focal(logits, targets, self.class_alpha(logits), self.gamma)

    def masked_sum(self, logits: Tensor, targets: Tensor, valid: Tensor | None) -> Tensor:
        weight = None if valid is None else valid.to(logits.dtype)
        compute_grad = torch.is_grad_enabled() and logits.requires_grad
        return SigmoidFocalSum.apply(logits, targets, weight, self.class_alpha(logits), self.gamma, compute_grad)

    def extra_repr(self) -> str:
        alpha = (
            f"[{', '.join(f'{a:g}' for a in self.alpha.tolist())}]" if isinstance(self.alpha, Tensor) else self.alpha
        )
        return f"alpha={alpha}, gamma={self.gamma:g}, {super().extra_repr()}"


# ------------------------------------------------------------------------------------------------ ASL
def per_entry_asymmetric(
    logits: Tensor,
    targets: Tensor,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    detach_focusing: bool = False,
) -> Tensor:
    """Asymmetric loss of each entry (Ridnik et al. 2021, eq. 7), as in the authors' ``AsymmetricLoss``.

    Positives: ``-(1 - p)^gamma_pos log p``; negatives: ``-p_m^gamma_neg log(1 - p_m)`` with the shifted
    probability ``p_m = max(p - clip, 0)`` that discards very easy negatives. ``detach_focusing`` treats the
    focusing weight as a constant in backpropagation (the authors' ``disable_torch_grad_focal_loss``).
    """
    probs = torch.sigmoid(logits)
    probs_neg = 1.0 - probs
    if clip > 0:
        probs_neg = (probs_neg + clip).clamp(max=1.0)
    losses = targets * torch.log(probs.clamp(min=eps)) + (1.0 - targets) * torch.log(probs_neg.clamp(min=eps))
    if gamma_pos > 0 or gamma_neg > 0:
        p_t = probs * targets + probs_neg * (1.0 - targets)
        exponent = gamma_pos * targets + gamma_neg * (1.0 - targets)
        focusing = (1.0 - p_t).clamp(min=torch.finfo(losses.dtype).tiny).pow(exponent)
        losses = losses * (focusing.detach() if detach_focusing else focusing)
    return -losses


@register_loss("asl", aliases=("asymmetric_loss", "asymmetric"))
class AsymmetricLoss(MultiLabelLoss):
    """Asymmetric loss for multi-label classification (Ridnik et al. 2021): focusing and clipping of negatives.

    ``gamma_neg > gamma_pos`` down-weights the many easy negatives; ``clip`` shifts the negative probability
    (``p_m = max(p - clip, 0)``) so negatives with ``p < clip`` are discarded. Defaults are the paper's
    (gamma_pos=0, gamma_neg=4, clip=0.05). ``detach_focusing=True`` stops the gradient through the
    focusing weight, as the authors' training script does (``disable_torch_grad_focal_loss``). The
    authors' code returns the *sum* over entries; this loss is that sum divided by the number of
    non-ignored entries. ``label_smoothing`` (absent from the authors' and timm's multi-label loss) feeds the
    formula the targets ``t (1 - eps) + eps / 2``: timm's ``AsymmetricLossSingleLabel`` convention
    ``eps / num_classes`` with each entry a two-class problem; the smoothed targets also interpolate the
    focusing exponent and ``p_t``, exactly as the authors' formula treats soft targets.
    """

    summary = "Asymmetric loss (ASL): separate focusing gamma_pos/gamma_neg and probability clip for negatives."
    reference = "Ridnik et al. 2021, Asymmetric Loss For Multi-Label Classification (ICCV)"

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_focusing: bool = False,
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        owner = self._label()
        self.label_smoothing = check_number(owner, "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        self.gamma_pos = check_number(owner, "gamma_pos", gamma_pos, minimum=0.0)
        self.gamma_neg = check_number(owner, "gamma_neg", gamma_neg, minimum=0.0)
        self.clip = check_number(owner, "clip", clip, minimum=0.0, maximum=1.0)
        self.eps = check_number(owner, "eps", eps, minimum=0.0, maximum=1.0, strict=True)
        if self.eps == 1.0:
            raise ValueError(
                f"{owner}: `eps` must be in (0, 1), got 1 (it floors the probabilities inside the logs: with eps=1 "
                f"every term is log 1 = 0, a loss identically 0); the paper's 1e-8 is the default."
            )
        self.detach_focusing = check_bool(owner, "detach_focusing", detach_focusing)

    def per_entry(self, logits: Tensor, targets: Tensor) -> Tensor:
        return per_entry_asymmetric(
            logits, targets, self.gamma_pos, self.gamma_neg, self.clip, self.eps, self.detach_focusing
        )

    def extra_repr(self) -> str:
        return (
            f"gamma_pos={self.gamma_pos:g}, gamma_neg={self.gamma_neg:g}, clip={self.clip:g}, eps={self.eps:g}, "
            f"{f'label_smoothing={self.label_smoothing:g}, ' if self.label_smoothing else ''}{super().extra_repr()}"
        )
