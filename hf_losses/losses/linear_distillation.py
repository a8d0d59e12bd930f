"""Linear distillation: the distillation loss of a student and a teacher language model, computed from both models'
final hidden states and LM heads chunk by chunk, so that neither ``tokens x vocabulary`` logits tensor exists.

The functional core of the ``causal_lm_distillation`` loss (:mod:`hf_losses.losses.distillation` holds the module
that shifts the labels, checks the inputs and reduces by the item count). Per predicted token ``i``, with the
student's logits ``z = h W^T + b`` and the teacher's ``u = h' W'^T + b'`` (each model its own hidden width),

    loss_i = r_i * (alpha * T^2 * D_beta(softmax(u / T), softmax(z / T)) + (1 - alpha) * CE(z, y_i))

where ``D_beta`` is TRL's generalized Jensen-Shannon divergence (:func:`hf_losses.losses.distillation.divergence`),
``CE`` the (class-weighted, label-smoothed) cross-entropy at temperature 1 and ``r_i`` a per-token data weight.

Same recipe as :mod:`hf_losses.losses.linear_cross_entropy`: for each chunk of predicted tokens the kernel computes
both models' logits for the chunk, the loss and, in the same pass, the gradient w.r.t. the student's logits (known
in closed form once both log-softmaxes are), then its products with the student's head and hidden states. Backward
only scales the stored gradients; the teacher gets none. Peak extra memory is a few ``chunk x V`` float32 buffers
(the log-softmaxes are taken in place), against ~6 ``tokens x V`` tensors for autograd on the full logits, and the
four matrix products are the ones the full logits need (student and teacher logits, the student's two gradients):
TRL's ``ChunkedDivergenceFunction`` recomputes both models' products in backward, six in all.

Gradient of ``D_beta`` w.r.t. the student's tempered logits ``s = z / T`` (``p``, ``q``: student and teacher
probabilities, ``m = (1 - beta) p + beta q``): ``p - q`` (beta = 0), ``p (log p - log q - KL(p||q))`` (beta = 1),
``(1 - beta) p (log p - log m - KL(p||m))`` (in between); the chain rule through ``s = z / T`` gives the ``1 / T``.
Softmaxes, log-softmaxes and the divergence are in float32 whatever the autocast dtype; the products run in it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.inputs import values_are_free
from hf_losses.losses.linear_cross_entropy import _accumulate_weight_grad, _matmul_dtype, default_chunk_size


class DistillationOptions(NamedTuple):
    """The loss's constants (see :func:`linear_distillation`)."""

    temperature: float = 1.0
    alpha: float = 0.5
    beta: float = 0.0
    class_weights: Tensor | None = None
    label_smoothing: float = 0.0
    ignore_index: int = IGNORE_INDEX
    chunk_size: int | None = None


def linear_distillation(
    hidden_states: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher_hidden_states: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None = None,
    *,
    row_weights: Tensor | None = None,
    options: DistillationOptions | None = None,
    scale: Tensor | float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``scale`` x the sum over predicted tokens of ``r_i * loss_i`` (module docstring), chunked.

    Args:
        hidden_states: ``(..., H)`` the student's final hidden states (its LM head's input), any float dtype.
        targets: ``(...)`` integer token ids aligned with the positions (already shifted), or ``ignore_index``:
            ignored positions cost nothing and count for neither part of the loss.
        weight: ``(V, H)`` the student's LM head weight; ``bias``: ``(V,)`` or None.
        teacher_hidden_states: ``(..., H')`` the teacher's, position by position (``H'`` may differ from ``H``).
        teacher_weight: ``(V, H')`` the teacher's LM head weight (same vocabulary); ``teacher_bias``: ``(V,)``.
            The teacher's tensors get no gradient.
        row_weights: ``(...)`` per-position data weights ``r_i`` (1 when None).
        options: temperature, alpha, beta, class weights and label smoothing of the CE part, chunk size (None:
            the defaults of :class:`DistillationOptions`).
        scale: multiplies the sum (``1 / num_items_in_batch``), applied inside so the stored gradients are final.

    Returns ``(scale * loss_sum, scale * distillation_sum)``: the loss (differentiable w.r.t. the student's hidden
    states, weight and bias) and its ``alpha * T^2 * D_beta`` part alone (detached, for logging).
    """
    options = options or DistillationOptions()
    teacher = tuple(None if t is None else t.detach() for t in (teacher_hidden_states, teacher_weight, teacher_bias))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden_states, weight, bias)
    )
    if needs_grad:
        return _LinearDistillation.apply(hidden_states, weight, bias, *teacher, targets, row_weights, options, scale)
    total, distillation_total, _, _, _ = _linear_distillation_chunks(
        (hidden_states, weight, bias), teacher, targets, row_weights, options, scale, (False, False, False)
    )
    return total, distillation_total


def _linear_distillation_chunks(
    student: tuple[Tensor, Tensor, Tensor | None],
    teacher: tuple[Tensor, Tensor, Tensor | None],
    targets: Tensor,
    row_weights: Tensor | None,
    options: DistillationOptions,
    scale: Tensor | float,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Scaled loss sums and (as asked by ``needs``) their gradients w.r.t. the student's hidden states, weight, bias."""
    hidden_states, weight, bias = student
    need_any = any(needs)
    # read before autocast is switched off
    matmul_dtypes = (_matmul_dtype(hidden_states, weight), _matmul_dtype(teacher[0], teacher[1]))
    with torch.autocast(device_type=hidden_states.device.type, enabled=False):
        plan = _ChunkPlan(student, teacher, targets, row_weights, options, scale, matmul_dtypes)
        total = torch.zeros((), dtype=plan.acc_dtype, device=plan.device)
        distillation_total = torch.zeros((), dtype=plan.acc_dtype, device=plan.device)
        grad_hidden, grad_weight, grad_bias = _zero_grads(plan, weight, needs)
        for start in range(0, plan.num_valid, plan.step):
            chunk = plan.chunk(start)
            loss_sum, distillation_sum, grad = _chunk_loss(plan, chunk, need_any)
            total += loss_sum
            distillation_total += distillation_sum
            if grad is not None:
                _add_chunk_grads(plan, grad, chunk, start, (grad_hidden, grad_weight, grad_bias))
            del chunk, grad
        if grad_hidden is not None:
            grad_hidden = grad_hidden.view(hidden_states.shape)
    return total * plan.scale, distillation_total * plan.scale, grad_hidden, grad_weight, grad_bias


class _Chunk(NamedTuple):
    """One chunk's rows (student's and teacher's, in their matmul dtypes), targets, data weights and positions."""

    rows: Tensor
    teacher_rows: Tensor | None  # None when alpha = 0 (cross-entropy alone)
    target: Tensor
    row_weight: Tensor | None
    index: Tensor | None


class _ChunkPlan:
    """What every chunk of one pass shares: the flattened inputs, the predicted positions, dtypes and constants."""

    def __init__(
        self,
        student: tuple[Tensor, Tensor, Tensor | None],
        teacher: tuple[Tensor, Tensor, Tensor | None],
        targets: Tensor,
        row_weights: Tensor | None,
        options: DistillationOptions,
        scale: Tensor | float,
        matmul_dtypes: tuple[torch.dtype, torch.dtype],
    ) -> None:
        (hidden_states, weight, bias), (teacher_hidden, teacher_weight, teacher_bias) = student, teacher
        self.temperature, self.alpha, self.beta = options.temperature, options.alpha, options.beta
        self.label_smoothing = options.label_smoothing
        self.matmul_dtype, self.teacher_matmul_dtype = matmul_dtypes
        # "float32" means at least float32: gradcheck runs in float64
        self.acc_dtype = torch.float64 if torch.float64 in matmul_dtypes else torch.float32
        vocab_size, hidden_size = weight.shape
        self.device = device = hidden_states.device
        self.rows_all = hidden_states.reshape(-1, hidden_size)
        self.teacher_rows_all = teacher_hidden.reshape(-1, teacher_weight.shape[1])
        self.flat_targets = targets.reshape(-1).to(device)
        self.row_weights = None if row_weights is None else row_weights.reshape(-1).to(device, self.acc_dtype)
        self.ignore_index = options.ignore_index
        # On the CPU ignored positions (prompts, padding, the last token) cost nothing: each chunk gathers the
        # predicted rows, whose positions are free to read there. On an accelerator reading them is a device->host
        # sync: every row goes through the chunks, an ignored one with weight 0 (as linear_cross_entropy).
        self.valid = None
        self.num_valid = self.flat_targets.numel()
        if values_are_free(self.flat_targets):
            valid = (self.flat_targets != options.ignore_index).nonzero().squeeze(1)
            if valid.numel() < self.num_valid:
                self.valid, self.num_valid = valid, valid.numel()
        self.gather = self.valid is not None
        self.weight_mm = weight.to(self.matmul_dtype)
        self.bias_mm = None if bias is None else bias.to(self.matmul_dtype)
        self.teacher_weight_mm = teacher_weight.to(self.teacher_matmul_dtype)
        self.teacher_bias_mm = None if teacher_bias is None else teacher_bias.to(self.teacher_matmul_dtype)
        class_weights = options.class_weights
        self.class_weights = None if class_weights is None else class_weights.to(device=device, dtype=self.acc_dtype)
        # CE part per token: -(1-eps) w_y log p_y - eps/V sum_c w_c log p_c (F.cross_entropy's weighted smoothing)
        self.hard = 1.0 - self.label_smoothing
        self.smooth_scale = self.label_smoothing / vocab_size
        self.smooth_weight_sum = float(vocab_size) if self.class_weights is None else self.class_weights.sum()
        self.scale = torch.as_tensor(scale, dtype=self.acc_dtype, device=device)
        self.step = options.chunk_size or default_chunk_size(
            max(self.num_valid, 1), hidden_size, vocab_size, device_type=device.type
        )

    def chunk(self, start: int) -> _Chunk:
        """The chunk of predicted positions starting at ``start`` (among the valid ones)."""
        stop = start + self.step
        if self.gather:
            index = self.valid[start:stop]

            def take(tensor: Tensor | None) -> Tensor | None:
                return None if tensor is None else tensor.index_select(0, index)
        else:
            index = None

            def take(tensor: Tensor | None) -> Tensor | None:
                return None if tensor is None else tensor[start:stop]

        rows, target, row_weight = take(self.rows_all), take(self.flat_targets), take(self.row_weights)
        teacher_rows = None if self.alpha == 0.0 else take(self.teacher_rows_all)
        if not self.gather and not values_are_free(target):
            # every row goes through: an ignored one weighs 0, targets token 0, and its hidden states (H wide, not
            # V) are zeroed so that a NaN there (a padded position) cannot reach a sum or a gradient through 0 * NaN
            valid = target != self.ignore_index
            row_weight = valid.to(self.acc_dtype) if row_weight is None else row_weight * valid
            target = target.masked_fill(~valid, 0)
            rows = rows.masked_fill(~valid[:, None], 0)
            teacher_rows = None if teacher_rows is None else teacher_rows.masked_fill(~valid[:, None], 0)
        return _Chunk(
            rows.to(self.matmul_dtype),
            None if teacher_rows is None else teacher_rows.to(self.teacher_matmul_dtype),
            target,
            row_weight,
            index,
        )


def _zero_grads(
    plan: _ChunkPlan, weight: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients asked for: w.r.t. the student's rows (filled chunk by chunk), its head weight and bias."""
    need_hidden, need_weight, need_bias = needs
    grad_hidden = None
    if need_hidden:
        grad_hidden = torch.zeros_like(plan.rows_all) if plan.gather else torch.empty_like(plan.rows_all)
    # float32 accumulation across chunks even for a bf16 head (cast once, in backward), as linear_cross_entropy
    weight_grad_dtype = torch.promote_types(
        weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32, plan.acc_dtype
    )
    grad_weight = torch.zeros(weight.shape, dtype=weight_grad_dtype, device=plan.device) if need_weight else None
    grad_bias = torch.zeros(weight.shape[0], dtype=plan.acc_dtype, device=plan.device) if need_bias else None
    return grad_hidden, grad_weight, grad_bias


def _logits(rows: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``rows @ weight.T + bias`` in the rows' dtype, then in ``dtype`` (no copy when already in it)."""
    product = rows @ weight.t() if bias is None else torch.addmm(bias, rows, weight.t())
    return product.to(dtype)


def _log_softmax_(logits: Tensor) -> Tensor:
    """Log-softmax over the last dimension, written over its input (no second ``chunk x V`` buffer).

    The out= form of the fused kernel: it reads a row entirely (max, sum of exponentials) before writing it, so
    writing over the input is exact on CPU and CUDA (checked against ``F.log_softmax`` by the tests).
    """
    return torch._log_softmax(logits, 1, False, out=logits)


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(1)`` without a ``chunk x V`` temporary (``linalg.vecdot`` makes one on CPU)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _divergence(beta: float, log_p: Tensor, log_q: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``D_beta`` per row from the student's and the teacher's tempered log-probabilities, and its gradient w.r.t.
    the student's tempered logits. ``log_p`` is kept; ``log_q`` is overwritten (it may hold the gradient)."""
    if beta == 0.0:  # forward KL(q || p) = sum q (log q - log p); gradient p - q
        q = log_q.exp()
        difference = log_q.sub_(log_p)
        divergence = _row_dot(q, difference)
        grad = torch.exp(log_p, out=difference).sub_(q) if need_grad else None
        return divergence, grad
    if beta == 1.0:  # reverse KL(p || q) = sum p (log p - log q); gradient p (log p - log q - KL)
        p = log_p.exp()
        difference = torch.sub(log_p, log_q, out=log_q)
        divergence = _row_dot(p, difference)
        grad = difference.sub_(divergence[:, None]).mul_(p) if need_grad else None
        return divergence, grad
    # generalized JSD: beta KL(q || m) + (1 - beta) KL(p || m), log m = logaddexp(log p + log(1-beta), log q + log beta)
    log_m = torch.add(log_q, math.log(beta))
    torch.logaddexp(log_m, log_p + math.log1p(-beta), out=log_m)
    q = log_q.exp()
    kl_teacher = _row_dot(q, log_q.sub_(log_m))
    del q
    p = torch.exp(log_p, out=log_q)
    difference = torch.sub(log_p, log_m, out=log_m)
    kl_student = _row_dot(p, difference)
    divergence = beta * kl_teacher + (1.0 - beta) * kl_student
    if not need_grad:
        return divergence, None
    return divergence, difference.sub_(kl_student[:, None]).mul_(p).mul_(1.0 - beta)


def _chunk_loss(plan: _ChunkPlan, chunk: _Chunk, need_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """The chunk's weighted loss sum, its distillation part, and (when asked) the gradient of the scaled loss w.r.t.
    the student's logits."""
    temperature, alpha = plan.temperature, plan.alpha
    rows_count = chunk.target.shape[0]
    row_scale = plan.scale.expand(rows_count) if chunk.row_weight is None else plan.scale * chunk.row_weight
    z = _logits(chunk.rows, plan.weight_mm, plan.bias_mm, plan.acc_dtype)
    per_token = torch.zeros(rows_count, dtype=plan.acc_dtype, device=plan.device)
    distillation = per_token
    grad = None
    ce_log_probs = None  # log-softmax of the untempered student logits, for the CE part
    if alpha < 1.0 and alpha > 0.0 and temperature != 1.0:
        ce_log_probs = torch.log_softmax(z, 1)
    if alpha > 0.0:
        if temperature != 1.0:
            z.div_(temperature)
        log_p = _log_softmax_(z)
        log_q = _logits(chunk.teacher_rows, plan.teacher_weight_mm, plan.teacher_bias_mm, plan.acc_dtype)
        if temperature != 1.0:
            log_q.div_(temperature)
        divergence, grad = _divergence(plan.beta, log_p, _log_softmax_(log_q), need_grad)
        del log_q
        distillation = (alpha * temperature**2) * divergence
        per_token = per_token + distillation
        if grad is not None:
            # d(T^2 D)/dz = T^2 (dD/ds) / T
            grad.mul_(((alpha * temperature) * row_scale)[:, None])
        if ce_log_probs is None and alpha < 1.0:
            ce_log_probs = log_p  # temperature 1: the same log-softmax
    elif alpha < 1.0:
        ce_log_probs = _log_softmax_(z)
    if alpha < 1.0:
        per_token = per_token + (1.0 - alpha) * _chunk_cross_entropy(plan, ce_log_probs, chunk.target)
        if need_grad:
            grad = _add_cross_entropy_grad(plan, grad, ce_log_probs, chunk.target, (1.0 - alpha) * row_scale)
    if chunk.row_weight is not None:
        per_token = per_token * chunk.row_weight
        distillation = distillation * chunk.row_weight
    return per_token.sum(), distillation.sum(), grad


def _chunk_cross_entropy(plan: _ChunkPlan, log_probs: Tensor, target: Tensor) -> Tensor:
    """Per-token ``-(1-eps) w_y log p_y - eps/V sum_c w_c log p_c``."""
    target_log_prob = log_probs.gather(1, target[:, None]).squeeze(1)
    if plan.class_weights is not None:
        target_log_prob = target_log_prob * plan.class_weights.index_select(0, target)
    loss = -plan.hard * target_log_prob
    if plan.label_smoothing > 0:
        smooth = log_probs.sum(1) if plan.class_weights is None else log_probs @ plan.class_weights
        loss = loss - plan.smooth_scale * smooth
    return loss


def _add_cross_entropy_grad(
    plan: _ChunkPlan, grad: Tensor | None, log_probs: Tensor, target: Tensor, row_scale: Tensor
) -> Tensor:
    """``grad + row_scale * (a_i p - (1-eps) w_y onehot(y) - eps/V w)``, ``a_i = (1-eps) w_y + eps/V sum_c w_c``
    (the CE part's gradient w.r.t. the logits); ``log_probs`` becomes ``p`` (it is not needed after this)."""
    target_weight = None if plan.class_weights is None else plan.class_weights.index_select(0, target)
    hard_weight = plan.hard if target_weight is None else plan.hard * target_weight
    coefficient = hard_weight + plan.smooth_scale * plan.smooth_weight_sum
    probs = log_probs.exp_()
    if grad is None:
        grad = probs.mul_((coefficient * row_scale)[:, None])
    else:
        grad.addcmul_(probs, (coefficient * row_scale)[:, None])
    del probs
    grad.scatter_add_(1, target[:, None], -(hard_weight * row_scale)[:, None])
    if plan.label_smoothing > 0:
        if plan.class_weights is None:
            grad.sub_((plan.smooth_scale * row_scale)[:, None])
        else:
            grad.addr_(row_scale, plan.class_weights, alpha=-plan.smooth_scale)
    return grad


def _add_chunk_grads(
    plan: _ChunkPlan,
    grad: Tensor,
    chunk: _Chunk,
    start: int,
    grads: tuple[Tensor | None, Tensor | None, Tensor | None],
) -> None:
    """The chunk's rows of the student's hidden-state gradient, and its share of the weight and bias gradients."""
    grad_hidden, grad_weight, grad_bias = grads
    grad_mm = grad.to(plan.matmul_dtype)
    if grad_hidden is not None:
        rows_grad = grad_mm @ plan.weight_mm
        if chunk.index is not None:
            grad_hidden.index_copy_(0, chunk.index, rows_grad.to(grad_hidden.dtype))
        else:
            grad_hidden[start : start + plan.step] = rows_grad
    if grad_weight is not None:
        _accumulate_weight_grad(grad_weight, grad, grad_mm, chunk.rows, False)  # adds to the zeroed accumulator
    if grad_bias is not None:
        grad_bias += grad.sum(0)


class _LinearDistillation(torch.autograd.Function):
    """Gradients are computed chunk by chunk in forward; backward scales them by the incoming gradient (as
    :class:`hf_losses.losses.linear_cross_entropy._LinearCrossEntropy` does)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden_states: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        teacher_hidden_states: Tensor,
        teacher_weight: Tensor,
        teacher_bias: Tensor | None,
        targets: Tensor,
        row_weights: Tensor | None,
        options: DistillationOptions,
        scale: Tensor | float,
    ) -> tuple[Tensor, Tensor]:
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        total, distillation_total, grad_hidden, grad_weight, grad_bias = _linear_distillation_chunks(
            (hidden_states, weight, bias),
            (teacher_hidden_states, teacher_weight, teacher_bias),
            targets,
            row_weights,
            options,
            scale,
            needs,
        )
        ctx.dtypes = (hidden_states.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(distillation_total)
        return total, distillation_total

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_distillation: Tensor | None) -> tuple[Tensor | None, ...]:
        grads = []
        unit = values_are_free(grad_total) and bool(grad_total == 1)  # read on the CPU only: no sync elsewhere
        for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            if grad is None:
                grads.append(None)
                continue
            if not unit:
                grad = grad * grad_total.to(grad.dtype)
            grads.append(grad if grad.dtype == dtype else grad.to(dtype))
        return (*grads, None, None, None, None, None, None, None)
