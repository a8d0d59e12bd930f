"""Knowledge distillation from a teacher model: Hinton et al.'s temperature-scaled soft targets, with TRL's
generalized Jensen-Shannon divergence choosing between forward KL, reverse KL and the mixtures in between.

Per label entry ``i`` (entries labelled ``ignore_index`` count for neither part, so pure distillation, ``alpha=1``,
still skips padding and prompts):

    loss_i = alpha * T^2 * D_beta(softmax(teacher_i / T), softmax(student_i / T)) + (1 - alpha) * CE(student_i, y_i)

``T^2`` keeps the soft part's gradient on the scale of the hard part's as ``T`` changes (Hinton et al. 2015, sec. 2);
the cross-entropy is at temperature 1, class-weighted and label-smoothed as ``F.cross_entropy``. ``D_beta`` follows
TRL's ``generalized_jsd_loss`` (GKD, Agarwal et al. 2024) and its ``ChunkedDivergenceFunction`` exactly, with
``p = student``, ``q = teacher`` and the mixture ``m = (1 - beta) p + beta q``:

* ``beta = 0``: forward KL ``KL(q || p)`` (mean-seeking; the classic distillation loss),
* ``beta = 1``: reverse KL ``KL(p || q)`` (mode-seeking),
* otherwise ``beta * KL(q || m) + (1 - beta) * KL(p || m)`` (``beta = 0.5`` is the Jensen-Shannon divergence).

The ends are TRL's special cases, not limits: the generalized JSD itself tends to 0 as ``beta`` tends to 0 or 1.
(The GKD paper writes the mixture as ``beta p_teacher + (1 - beta) p_student`` too, so the names agree.) TRL does
not multiply by ``T^2``: ``temperature=1, alpha=1`` gives TRL's loss.

Two losses, by what they take (the trainer gives the teacher's outputs of the same kind, ``teacher_input``):

* ``distillation`` (:class:`DistillationLoss`): the student's and the teacher's logits, any task whose logits are
  ``(N, C)`` or ``(N, C, d1, ...)`` (token classification, causal and seq2seq LMs reach it flattened to ``(N*T, V)``);
* ``causal_lm_distillation`` (:class:`CausalLMDistillationLoss`): both models' final hidden states and LM heads,
  chunked (:mod:`hf_losses.losses.linear_distillation`), so neither ``tokens x vocabulary`` logits tensor exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import (
    HiddenStatesLoss,
    LogitsLoss,
    Normalize,
    NumItems,
    Reduction,
    compute_dtype,
    expand_sample_weight,
    reduce_by_items,
)
from hf_losses.losses.checks import as_vector, check_num_classes, check_number
from hf_losses.losses.classification import class_weight_per_item, per_item_cross_entropy
from hf_losses.losses.ignored import count_valid
from hf_losses.losses.inputs import check_same_device, index_labels
from hf_losses.losses.language import CausalLMLoss
from hf_losses.losses.linear_distillation import DistillationOptions, linear_distillation
from hf_losses.registry import register_loss

TeacherInput = Literal["logits", "hidden_states"]

SUMMARY = "alpha*T^2*D_beta(teacher, student) + (1-alpha)*CE(student, labels) at softmax(logits/T), per label"
REFERENCE = (
    "Hinton et al. 2015, Distilling the Knowledge in a Neural Network (T^2 scaling); D_beta as TRL's "
    "generalized_jsd_loss (GKD, Agarwal et al. 2024): beta=0 forward KL(teacher||student), beta=1 reverse "
    "KL(student||teacher), else beta*KL(teacher||M) + (1-beta)*KL(student||M), M = (1-beta)*student + beta*teacher"
)


def divergence(student_log_probs: Tensor, teacher_log_probs: Tensor, beta: float, dim: int = 1) -> Tensor:
    """``D_beta(q, p)`` along ``dim`` from log-probabilities ``log p`` (student) and ``log q`` (teacher), TRL's
    convention: ``beta=0`` is ``KL(q || p)``, ``beta=1`` is ``KL(p || q)``, else ``beta KL(q || m) + (1 - beta)
    KL(p || m)`` with ``m = (1 - beta) p + beta q`` (``log m`` by log-sum-exp, as TRL)."""
    log_p, log_q = student_log_probs, teacher_log_probs
    if beta == 0.0:
        return (log_q.exp() * (log_q - log_p)).sum(dim)
    if beta == 1.0:
        return (log_p.exp() * (log_p - log_q)).sum(dim)
    log_m = torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))
    kl_teacher = (log_q.exp() * (log_q - log_m)).sum(dim)
    kl_student = (log_p.exp() * (log_p - log_m)).sum(dim)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def per_item_distillation(
    logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    beta: float = 0.0,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """The two parts of the loss per label entry, 0 at ignored entries: ``alpha T^2 D_beta`` and ``(1 - alpha)
    w[y] CE`` (logits ``(N, C, d1, ...)``, classes along dim 1; the teacher's logits are taken as they are)."""
    zeros = torch.zeros(labels.shape, dtype=logits.dtype, device=logits.device)
    soft = hard = zeros
    if alpha > 0:
        log_p = F.log_softmax(logits / temperature, dim=1)
        log_q = F.log_softmax(teacher_logits / temperature, dim=1)
        soft = (alpha * temperature**2) * divergence(log_p, log_q, beta, dim=1)
        soft = soft.masked_fill(labels == ignore_index, 0.0)
    if alpha < 1:
        hard = (1.0 - alpha) * per_item_cross_entropy(logits, labels, weight, label_smoothing, ignore_index)
    return soft, hard


def check_mixing(owner: str, temperature: float, alpha: float, beta: float) -> tuple[float, float, float]:
    """``temperature`` > 0, ``alpha`` and ``beta`` in [0, 1]."""
    return (
        check_number(owner, "temperature", temperature, minimum=0.0, strict=True),
        check_number(owner, "alpha", alpha, minimum=0.0, maximum=1.0),
        check_number(owner, "beta", beta, minimum=0.0, maximum=1.0),
    )


def components_of(loss: Tensor, soft_sum: Tensor, hard_sum: Tensor) -> dict[str, Tensor]:
    """The loss split into its ``distillation`` and ``cross_entropy`` parts (detached), each reduced like the loss:
    the reduction divides both parts' sums by the same count, so the split follows their sums."""
    loss, soft_sum, hard_sum = loss.detach(), soft_sum.detach(), hard_sum.detach()
    total = soft_sum + hard_sum
    factor = torch.where(total != 0, loss / torch.where(total != 0, total, torch.ones_like(total)), 0.0)
    return {"distillation": soft_sum * factor, "cross_entropy": hard_sum * factor}


@register_loss("distillation", aliases=("knowledge_distillation", "kd"))
class DistillationLoss(LogitsLoss):
    """Knowledge distillation on logits: ``alpha T^2 D_beta(teacher, student) + (1 - alpha) CE(student, labels)``.

    Call: ``loss(logits, labels, num_items_in_batch=None, sample_weight=None, teacher_logits=...)`` with the
    teacher's logits shaped like the student's (read by the same task; detached here: the teacher gets no
    gradient). Per label entry, both distributions at ``softmax(logits / temperature)``; ``D_beta`` is TRL's
    generalized JSD (``beta=0`` forward KL(teacher || student), ``beta=1`` reverse KL(student || teacher), else
    ``beta KL(teacher || M) + (1 - beta) KL(student || M)`` with ``M = (1 - beta) student + beta teacher``; see
    the module docstring). The CE part is ``F.cross_entropy`` at temperature 1 with class weights ``weight`` (the
    trainer's ``class_weights`` fill it) and ``label_smoothing``; class weights weigh the CE part only.

    Reduction: ``sum_i loss_i / N`` over non-ignored label entries (``N``: ``num_items_in_batch``, else the local
    count), or as ``reduction`` / ``normalize`` say (``normalize="weight"`` divides by ``sum_i w[y_i]``).
    ``last_components`` holds the ``distillation`` and ``cross_entropy`` parts of the last value for the log.
    """

    summary = SUMMARY
    reference = REFERENCE
    #: the trainer runs a teacher model and passes its outputs (``teacher_input``) as ``teacher_<input>=``
    needs_teacher: ClassVar[bool] = True
    teacher_input: ClassVar[TeacherInput] = "logits"

    def __init__(
        self,
        temperature: float = 2.0,
        alpha: float = 0.5,
        beta: float = 0.0,
        weight: Sequence[float] | Tensor | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        owner = self._label()
        self.temperature, self.alpha, self.beta = check_mixing(owner, temperature, alpha, beta)
        self.label_smoothing = check_number(owner, "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        self.register_buffer("weight", None if weight is None else as_vector(owner, "weight", weight))
        self.last_components: dict[str, Tensor] = {}
        self._teacher_logits: Tensor | None = None  # set for the duration of one call
        self._parts: tuple[Tensor, Tensor] | None = None

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        num_items_in_batch: NumItems = None,
        sample_weight: Tensor | None = None,
        teacher_logits: Tensor | None = None,
    ) -> Tensor:
        labels = index_labels(labels)
        self.check_inputs(logits, labels)
        self.check_teacher(logits, teacher_logits)
        self._teacher_logits = teacher_logits.detach()
        try:
            loss = self._reduce_in_float32(logits, labels, num_items_in_batch, sample_weight)
            self.last_components = self._components(loss, sample_weight)
        finally:
            self._teacher_logits = self._parts = None
        return loss

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        check_num_classes(self._label(), "weight", self.weight, logits.shape[1])

    def check_teacher(self, logits: Tensor, teacher_logits: Tensor | None) -> None:
        """The teacher's logits: a floating-point tensor shaped like the student's, on its device."""
        owner = self._label()
        if teacher_logits is None:
            raise TypeError(
                f"{owner}: needs the teacher's logits: call loss(logits, labels, teacher_logits=teacher(**inputs)"
                f".logits), or give LossTrainer a teacher model."
            )
        if not isinstance(teacher_logits, Tensor) or not teacher_logits.is_floating_point():
            raise TypeError(
                f"{owner}: `teacher_logits` must be a floating-point tensor, got "
                f"{getattr(teacher_logits, 'dtype', type(teacher_logits).__name__)}."
            )
        if tuple(teacher_logits.shape) != tuple(logits.shape):
            disagree = (
                "student and teacher disagree on the number of classes/vocabulary (dim 1)"
                if teacher_logits.dim() == logits.dim()
                and teacher_logits.shape[0] == logits.shape[0]
                and tuple(teacher_logits.shape[2:]) == tuple(logits.shape[2:])
                else "the teacher's logits must be shaped like the student's"
            )
            raise ValueError(
                f"{owner}: {disagree}: logits {tuple(logits.shape)}, teacher_logits {tuple(teacher_logits.shape)}."
            )
        check_same_device(owner, {"logits": logits, "teacher_logits": teacher_logits})

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return self.loss_items(logits, labels).sum(), count_valid(labels, self.ignore_index)

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self._teacher_logits is None:
            raise TypeError(f"{self._label()}: call the loss itself, with `teacher_logits`, not its loss_items.")
        soft, hard = per_item_distillation(
            logits,
            self._teacher_logits.to(logits.dtype),
            labels,
            temperature=self.temperature,
            alpha=self.alpha,
            beta=self.beta,
            weight=self.weight,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )
        self._parts = (soft.detach(), hard.detach())
        return soft + hard

    def item_weights(self, labels: Tensor) -> Tensor:
        return class_weight_per_item(self.weight, labels, self.ignore_index)

    def _components(self, loss: Tensor, sample_weight: Tensor | None) -> dict[str, Tensor]:
        """Both parts, reduced like the loss, when there are two (``0 < alpha < 1``) and the loss is reduced."""
        if not 0.0 < self.alpha < 1.0 or self.reduction == "none" or self._parts is None:
            return {}
        soft, hard = self._parts
        if sample_weight is not None:
            weights = expand_sample_weight(self._label(), sample_weight, soft).to(soft)
            soft, hard = soft * weights, hard * weights
        return components_of(loss, soft.sum(), hard.sum())

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature:g}, alpha={self.alpha:g}, beta={self.beta:g}, "
            f"label_smoothing={self.label_smoothing:g}, {super().extra_repr()}"
        )


@register_loss("causal_lm_distillation", aliases=("lm_distillation", "chunked_causal_lm_distillation"))
class CausalLMDistillationLoss(HiddenStatesLoss):
    """Causal-LM distillation from both models' hidden states and LM heads, never materialising either's logits.

    Call: ``loss(hidden_states (N, T, H), labels (N, T), weight=student_head.weight (V, H), bias=None,
    num_items_in_batch=None, shift_labels=None, sample_weight=None, teacher_hidden_states=(N, T, H'),
    teacher_weight=teacher_head.weight (V, H'), teacher_bias=None)``. Per shifted token, the ``distillation``
    loss (``alpha T^2 D_beta(teacher, student) + (1 - alpha) CE``, TRL's ``D_beta``; see the module docstring)
    of ``hidden_states @ weight.T + bias`` against ``teacher_hidden_states @ teacher_weight.T + teacher_bias``;
    the teacher may be wider or narrower than the student (same vocabulary). ``labels`` are unshifted (the loss
    shifts) unless the collator's ``shift_labels`` are given. ``sample_weight``: ``(N,)`` per sequence, or one per
    token shaped like ``labels`` (shifted with them; taken as they are with ``shift_labels``), multiplies each
    token's loss. Gradients reach the student's hidden states, weight and bias only.

    Reduction: ``sum_i loss_i / N`` over non-ignored shifted labels (``N``: ``num_items_in_batch``, else the local
    count). ``class_weights`` (one per vocabulary entry) and ``label_smoothing`` apply to the CE part.
    """

    summary = (
        "Causal-LM distillation alpha*T^2*D_beta(teacher, student) + (1-alpha)*CE per shifted token, from both "
        "models' hidden states in chunks (never materialises the logits)"
    )
    reference = REFERENCE + "; chunking: Liger-Kernel (Hsu et al. 2024), TRL ChunkedDivergenceFunction"
    needs_teacher: ClassVar[bool] = True
    teacher_input: ClassVar[TeacherInput] = "hidden_states"

    # the student's labels, head and targets are checked exactly as causal_lm checks them
    targets = CausalLMLoss.targets
    _token_ids = CausalLMLoss._token_ids
    check_head = CausalLMLoss.check_head
    check_targets = CausalLMLoss.check_targets

    def __init__(
        self,
        temperature: float = 2.0,
        alpha: float = 0.5,
        beta: float = 0.0,
        class_weights: Sequence[float] | Tensor | None = None,
        label_smoothing: float = 0.0,
        chunk_size: int | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(ignore_index)
        owner = self._label()
        self.temperature, self.alpha, self.beta = check_mixing(owner, temperature, alpha, beta)
        self.label_smoothing = check_number(owner, "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"{owner}: `chunk_size` must be a positive int (tokens per chunk) or None for automatic, got "
                f"{chunk_size!r}."
            )
        self.chunk_size = chunk_size
        self.register_buffer(
            "class_weights", None if class_weights is None else as_vector(owner, "class_weights", class_weights)
        )
        #: detached parts of the last call's value (``distillation``, ``cross_entropy``) when 0 < alpha < 1
        self.last_components: dict[str, Tensor] = {}

    def num_items(
        self, labels: Tensor | None, shift_labels: Tensor | None = None, sample_weight: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Count of non-ignored shifted labels (data weights multiply losses; they do not change the count)."""
        return super().num_items(labels, shift_labels)

    def forward(
        self,
        hidden_states: Tensor,
        labels: Tensor | None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        num_items_in_batch: NumItems = None,
        shift_labels: Tensor | None = None,
        sample_weight: Tensor | None = None,
        teacher_hidden_states: Tensor | None = None,
        teacher_weight: Tensor | None = None,
        teacher_bias: Tensor | None = None,
    ) -> Tensor:
        if weight is None:
            raise TypeError(
                f"{self._label()}: works from hidden states and the LM heads; call loss(hidden_states, labels, "
                f"weight=model.get_output_embeddings().weight, teacher_hidden_states=..., teacher_weight=...), not "
                f"loss(logits, labels) (for logits use 'distillation')."
            )
        self.check_head(hidden_states, weight, bias)
        self.check_teacher(hidden_states, weight, teacher_hidden_states, teacher_weight, teacher_bias)
        targets = self.targets(labels, shift_labels)
        self.check_targets(hidden_states, targets, weight.shape[0])
        row_weights = self.token_weights(sample_weight, targets, shifted=shift_labels is None)
        count = self.valid_mask(targets).sum()
        # 1 / (num_items_in_batch, else the local count), clamped to >= 1: the contract's reduction
        one = torch.ones((), dtype=compute_dtype(hidden_states), device=hidden_states.device)
        scale = reduce_by_items(one, count, num_items_in_batch, self.item_unit, self._label())
        options = DistillationOptions(
            self.temperature,
            self.alpha,
            self.beta,
            self.class_weights,
            self.label_smoothing,
            self.ignore_index,
            self.chunk_size,
        )
        loss, soft = linear_distillation(
            hidden_states,
            targets,
            weight,
            bias,
            teacher_hidden_states,
            teacher_weight,
            teacher_bias,
            row_weights=row_weights,
            options=options,
            scale=scale,
        )
        self.last_components = (
            {"distillation": soft, "cross_entropy": (loss - soft).detach()} if 0.0 < self.alpha < 1.0 else {}
        )
        return loss

    def check_teacher(
        self,
        hidden_states: Tensor,
        weight: Tensor,
        teacher_hidden_states: Tensor | None,
        teacher_weight: Tensor | None,
        teacher_bias: Tensor | None,
    ) -> None:
        """The teacher's hidden states ``(N, T, H')`` at the student's positions and its head ``(V, H')`` over the
        student's vocabulary (``H'`` its own width), on the student's device."""
        owner = self._label()
        if teacher_hidden_states is None or teacher_weight is None:
            raise TypeError(
                f"{owner}: needs the teacher's final hidden states and LM head: call loss(..., "
                f"teacher_hidden_states=..., teacher_weight=teacher.get_output_embeddings().weight), or give "
                f"LossTrainer a teacher model."
            )
        for name, value in (("teacher_hidden_states", teacher_hidden_states), ("teacher_weight", teacher_weight)):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(
                    f"{owner}: `{name}` must be a floating-point torch.Tensor, got "
                    f"{getattr(value, 'dtype', type(value).__name__)}."
                )
        if tuple(teacher_hidden_states.shape[:-1]) != tuple(hidden_states.shape[:-1]):
            raise ValueError(
                f"{owner}: the teacher's hidden states must cover the student's positions: hidden_states "
                f"{tuple(hidden_states.shape)}, teacher_hidden_states {tuple(teacher_hidden_states.shape)} (they may "
                f"differ in the last, hidden, dimension only)."
            )
        if teacher_weight.dim() != 2 or teacher_weight.shape[1] != teacher_hidden_states.shape[-1]:
            raise ValueError(
                f"{owner}: `teacher_weight` is the teacher's LM head weight (V, H') with H'="
                f"{teacher_hidden_states.shape[-1]} (its hidden size), got shape {tuple(teacher_weight.shape)}."
            )
        if teacher_weight.shape[0] != weight.shape[0]:
            raise ValueError(
                f"{owner}: student and teacher disagree on the vocabulary: weight {tuple(weight.shape)} scores "
                f"V={weight.shape[0]} tokens, teacher_weight {tuple(teacher_weight.shape)} V={teacher_weight.shape[0]}."
            )
        if teacher_bias is not None and (
            not isinstance(teacher_bias, Tensor) or tuple(teacher_bias.shape) != (weight.shape[0],)
        ):
            raise ValueError(
                f"{owner}: `teacher_bias` must be None or a ({weight.shape[0]},) tensor, got "
                f"{getattr(teacher_bias, 'shape', teacher_bias)!r}."
            )
        check_same_device(
            owner,
            {
                "hidden_states": hidden_states,
                "teacher_hidden_states": teacher_hidden_states,
                "teacher_weight": teacher_weight,
                "teacher_bias": teacher_bias,
            },
        )

    def token_weights(self, sample_weight: Tensor | None, targets: Tensor, shifted: bool) -> Tensor | None:
        """Data weights per target position: ``(N,)`` repeated over each sequence, or per token (shifted with the
        labels when the loss shifted them); None without."""
        return None if sample_weight is None else self.data_weights(targets, sample_weight, shifted)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature:g}, alpha={self.alpha:g}, beta={self.beta:g}, "
            f"label_smoothing={self.label_smoothing:g}, chunk_size={self.chunk_size}, ignore_index={self.ignore_index}"
        )
