"""Linear cross-entropy: the token cross-entropy of ``hidden_states @ weight.T + bias``, chunk by chunk.

The functional core of the ``causal_lm`` loss (:mod:`hf_losses.losses.language` holds the module that shifts the
labels and reduces by the item count). The logits of a language model are ``tokens x vocabulary`` (8k x 128k is
4 GiB in float32), the largest tensor of a fine-tuning step. This kernel never materialises them: for each chunk of
``chunk_size`` tokens it computes the chunk's logits, its loss and, in the same pass, the gradients w.r.t. the
chunk's hidden states and the head weight (the logits' gradient is the softmax minus the target, known as soon as
the log-sum-exp is). Backward then only scales the stored gradients, so peak extra memory is ``O(chunk_size x V)``
in forward and backward, and the three matrix products are the same as for the materialised logits (logits, grad
w.r.t. hidden, grad w.r.t. weight), so it costs no extra time.

Same recipe as Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024) and Apple's Cut Cross-Entropy
(Wijmans et al. 2025), in plain PyTorch: it runs on CPU and GPU, under autocast (the matrix products in the
autocast dtype, log-sum-exp and softmax always in float32) and under DeepSpeed (the head weight is not needed in
backward). Options: label smoothing (PyTorch semantics), PaLM's z-loss ``z_loss * logsumexp^2`` (Chowdhery et al.
2022), Gemma-style logit soft-capping ``softcap * tanh(logits / softcap)`` and class weights over the vocabulary.

One pass (:func:`_linear_cross_entropy_chunks`) is: the set-up shared by all chunks (:class:`_ChunkPlan`) and the
zeroed accumulators, then per chunk its rows, its logits (:func:`_chunk_logits`), its loss
(:func:`_chunk_loss`, which turns the logits into ``exp(z - max)`` in place), the gradient w.r.t. its logits
(:func:`_chunk_grad_logits`, in the same buffer) and the products of that gradient (:func:`_add_chunk_grads`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from hf_losses.compat import autocast_dtype
from hf_losses.constants import IGNORE_INDEX


def default_chunk_size(num_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Tokens per chunk such that a chunk's logits are about as large as the hidden states (Liger-Kernel's rule).

    The next power of two of ``num_tokens * hidden_size / vocab_size``, within [256, 4096]: smaller chunks make
    the matrix products inefficient (measured on CPU; 256 rows also fill a GPU's tiles), larger ones stop
    saving memory.
    """
    target = -(-num_tokens * hidden_size // max(vocab_size, 1))
    return int(min(4096, max(256, 1 << (target - 1).bit_length())))


def _matmul_dtype(hidden_states: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the head's matrix product runs in: the autocast dtype when autocast is on, else the inputs'."""
    dtype = autocast_dtype(hidden_states.device.type)
    return dtype if dtype is not None else torch.promote_types(hidden_states.dtype, weight.dtype)


#: whether ``torch.addmm(..., out_dtype=float32)`` works here (checked on first use)
_CUDA_OUT_DTYPE = True


def _accumulate_weight_grad(accumulator: Tensor, grad_logits: Tensor, grad_logits_mm: Tensor, rows: Tensor) -> None:
    """``accumulator += grad_logits^T @ rows`` with float32 accumulation across chunks.

    On CUDA with half-precision products, cuBLAS writes the bf16 x bf16 product straight into the float32
    accumulator (``out_dtype``); elsewhere the float32 gradient is multiplied by the upcast chunk.
    """
    if accumulator.dtype == grad_logits_mm.dtype:
        accumulator.addmm_(grad_logits_mm.t(), rows)
        return
    if accumulator.is_cuda:
        global _CUDA_OUT_DTYPE
        if _CUDA_OUT_DTYPE:
            try:
                torch.addmm(accumulator, grad_logits_mm.t(), rows, out_dtype=accumulator.dtype, out=accumulator)
                return
            except (RuntimeError, TypeError):  # torch without the out_dtype overload for these dtypes
                _CUDA_OUT_DTYPE = False
        # half-precision product (fast tensor cores), then a float32 add
        accumulator.add_(grad_logits_mm.t() @ rows)
        return
    accumulator.addmm_(grad_logits.t(), rows.to(accumulator.dtype))


def linear_cross_entropy(
    hidden_states: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    class_weights: Tensor | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    scale: Tensor | float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``scale`` x the sum over tokens of ``cross_entropy(hidden_states @ weight.T + bias, targets)``, chunked.

    Args:
        hidden_states: ``(..., H)`` final hidden states (the LM head's input), any float dtype.
        targets: ``(...)`` integer token ids already aligned with ``hidden_states`` (shifted), or ``ignore_index``.
        weight: ``(V, H)`` LM head weight; ``bias``: ``(V,)`` or None.
        class_weights: ``(V,)`` per-token-id weights ``w`` (as ``F.cross_entropy``'s ``weight``).
        label_smoothing: ``eps``; per token ``(1-eps) w_y (lse - z_y) + eps/V sum_c w_c (lse - z_c)``.
        z_loss: coefficient of PaLM's auxiliary ``lse^2`` term (not class-weighted).
        softcap: ``z = softcap * tanh(logits / softcap)`` before the softmax (Gemma 2).
        chunk_size: tokens per chunk (default :func:`default_chunk_size`).
        scale: multiplies the sum (``1 / num_items_in_batch``); applied inside, so the gradients stored in
            forward are final and backward returns them without a copy when the incoming gradient is 1.

    Returns ``(scale * loss_sum, scale * z_loss_sum)``: the summed per-token losses (z-loss included;
    differentiable w.r.t. ``hidden_states``, ``weight`` and ``bias``) and the z-loss part alone (detached).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden_states, weight, bias)
    )
    options = (class_weights, float(label_smoothing), float(z_loss), softcap, ignore_index, chunk_size, scale)
    if needs_grad:
        return _LinearCrossEntropy.apply(hidden_states, targets, weight, bias, options)
    total, z_total, _, _, _ = _linear_cross_entropy_chunks(
        hidden_states, targets, weight, bias, options, (False, False, False)
    )
    return total, z_total


def _linear_cross_entropy_chunks(
    hidden_states: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    options: tuple,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Scaled loss sums and (as asked by ``needs``) their gradients w.r.t. hidden states, weight and bias."""
    need_any = any(needs)
    matmul_dtype = _matmul_dtype(hidden_states, weight)  # read before autocast is switched off
    with torch.autocast(device_type=hidden_states.device.type, enabled=False):
        plan = _ChunkPlan(hidden_states, targets, weight, bias, options, matmul_dtype)
        total, z_total, grad_hidden, grad_weight, grad_bias = _zero_accumulators(plan, weight, needs)
        for start in range(0, plan.num_valid, plan.step):
            rows, target, index = plan.chunk(start)
            z, tanh = _chunk_logits(plan, rows, need_any)
            stats = _chunk_loss(plan, z, target, total, z_total)  # z becomes exp(z - max)
            if not need_any:
                del z, stats
                continue
            grad = _chunk_grad_logits(plan, z, target, stats, tanh)  # in z's buffer
            del tanh, stats
            _add_chunk_grads(plan, grad, rows, index, start, (grad_hidden, grad_weight, grad_bias))
            del grad, z

        if grad_hidden is not None:
            grad_hidden = grad_hidden.view(hidden_states.shape)
    return total * plan.scale, z_total * plan.scale, grad_hidden, grad_weight, grad_bias


class _ChunkPlan:
    """What every chunk of one pass shares: the flattened inputs, the predicted positions, dtypes and constants."""

    def __init__(
        self,
        hidden_states: Tensor,
        targets: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        options: tuple,
        matmul_dtype: torch.dtype,
    ) -> None:
        class_weights, label_smoothing, z_loss, softcap, ignore_index, chunk_size, scale = options
        self.label_smoothing, self.z_loss, self.softcap = label_smoothing, z_loss, softcap
        self.matmul_dtype = matmul_dtype
        # "float32" means at least float32: gradcheck runs in float64.
        self.acc_dtype = acc_dtype = torch.float64 if matmul_dtype == torch.float64 else torch.float32
        vocab_size, hidden_size = weight.shape
        device = hidden_states.device
        self.rows_all = hidden_states.reshape(-1, hidden_size)
        self.flat_targets = targets.reshape(-1).to(device)
        self.valid = (self.flat_targets != ignore_index).nonzero().squeeze(1)
        self.num_valid = self.valid.numel()
        # ignored positions (prompts, padding, the last token) cost nothing: each chunk gathers predicted rows
        # only (no copy of all rows: that would be O(N*T*H) more memory); without ignored rows, plain slices
        self.gather = self.num_valid < self.flat_targets.numel()
        self.weight_mm = weight.to(matmul_dtype)
        self.bias_mm = None if bias is None else bias.to(matmul_dtype)
        self.class_weights = None if class_weights is None else class_weights.to(device=device, dtype=acc_dtype)
        self.hard = 1.0 - label_smoothing
        self.smooth_scale = label_smoothing / vocab_size
        # per token: loss = a_i * lse_i - (1-eps) w_y z_y - eps/V sum_c w_c z_c (+ z_loss lse^2), a_i as below
        self.smooth_weight_sum = float(vocab_size) if self.class_weights is None else self.class_weights.sum()
        self.scale = torch.as_tensor(scale, dtype=acc_dtype, device=device)
        self.step = chunk_size or default_chunk_size(max(self.num_valid, 1), hidden_size, vocab_size)

    def chunk(self, start: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The chunk's rows (in the matmul dtype), its targets and, when gathering, the rows' positions."""
        if self.gather:
            index = self.valid[start : start + self.step]
            rows, target = self.rows_all.index_select(0, index), self.flat_targets.index_select(0, index)
        else:
            index = None
            rows, target = self.rows_all[start : start + self.step], self.flat_targets[start : start + self.step]
        return rows.to(self.matmul_dtype), target, index


def _zero_accumulators(
    plan: _ChunkPlan, weight: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Loss sums, and the gradients asked for: w.r.t. the rows (filled chunk by chunk), the weight and the bias."""
    need_hidden, need_weight, need_bias = needs
    device = plan.rows_all.device
    total = torch.zeros((), dtype=plan.acc_dtype, device=device)
    z_total = torch.zeros((), dtype=plan.acc_dtype, device=device)
    grad_hidden = None
    if need_hidden:
        grad_hidden = torch.zeros_like(plan.rows_all) if plan.gather else torch.empty_like(plan.rows_all)
    # float32 accumulation across chunks even for a bf16 head (its .grad is cast once, in backward); float64 when
    # the products run in float64 (float64 hidden states with a float32 head)
    weight_grad_dtype = torch.promote_types(
        weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32, plan.acc_dtype
    )
    grad_weight = torch.zeros(weight.shape, dtype=weight_grad_dtype, device=device) if need_weight else None
    grad_bias = torch.zeros(weight.shape[0], dtype=plan.acc_dtype, device=device) if need_bias else None
    return total, z_total, grad_hidden, grad_weight, grad_bias


def _chunk_logits(plan: _ChunkPlan, rows: Tensor, need_any: bool) -> tuple[Tensor, Tensor | None]:
    """The chunk's logits ``z`` in the accumulation dtype (soft-capped), and ``tanh`` of the cap when a gradient
    will need it."""
    if plan.bias_mm is None:
        logits_mm = rows @ plan.weight_mm.t()
    else:
        logits_mm = torch.addmm(plan.bias_mm, rows, plan.weight_mm.t())
    z = logits_mm.to(plan.acc_dtype)  # no copy when the product already ran in float32
    del logits_mm
    tanh = None
    if plan.softcap is not None:
        z.div_(plan.softcap).tanh_()
        if need_any:
            tanh = z.clone()
        z.mul_(plan.softcap)
    return z, tanh


class _ChunkStats(NamedTuple):
    """Per-token quantities of a chunk that its gradient needs."""

    target_logit: Tensor
    target_weight: Tensor | None
    lse: Tensor
    exp_sum: Tensor
    coefficient: Tensor | float


def _chunk_loss(plan: _ChunkPlan, z: Tensor, target: Tensor, total: Tensor, z_total: Tensor) -> _ChunkStats:
    """Add the chunk's loss to ``total`` (and its z-loss part to ``z_total``); ``z`` becomes ``exp(z - max)``."""
    class_weights = plan.class_weights
    target_logit = z.gather(1, target[:, None]).squeeze(1)
    target_weight = None if class_weights is None else class_weights.index_select(0, target)
    smooth_term = None
    if plan.label_smoothing > 0:
        smooth_term = z.sum(1) if class_weights is None else z @ class_weights
    # log-sum-exp in place: z becomes exp(z - max), no second chunk x V buffer
    row_max = z.amax(1, keepdim=True)
    z.sub_(row_max).exp_()
    exp_sum = z.sum(1)
    lse = exp_sum.log() + row_max.squeeze(1)

    hard = plan.hard
    coefficient = hard * (1.0 if target_weight is None else target_weight) + plan.smooth_scale * plan.smooth_weight_sum
    per_token = coefficient * lse - hard * (target_logit if target_weight is None else target_weight * target_logit)
    if smooth_term is not None:
        per_token = per_token - plan.smooth_scale * smooth_term
    if plan.z_loss > 0:
        z_part = plan.z_loss * lse.square()
        z_total += z_part.sum()
        per_token = per_token + z_part
    total += per_token.sum()
    return _ChunkStats(target_logit, target_weight, lse, exp_sum, coefficient)


def _chunk_grad_logits(plan: _ChunkPlan, z: Tensor, target: Tensor, stats: _ChunkStats, tanh: Tensor | None) -> Tensor:
    """Gradient of the scaled loss w.r.t. the chunk's logits, written into ``z`` (which holds ``exp(z - max)``)."""
    target_logit, target_weight, lse, exp_sum, coefficient = stats
    z_loss, scale, hard = plan.z_loss, plan.scale, plan.hard
    # d loss_i / d z_c = p_c (a_i + 2 z_loss lse_i) - (1-eps) w_y [c = y] - eps/V w_c, times `scale`
    row_scale = (coefficient + 2.0 * z_loss * lse) if z_loss > 0 else coefficient
    grad = z.mul_((row_scale * scale / exp_sum)[:, None])
    hard_grad = hard * scale * (1.0 if target_weight is None else target_weight)
    grad.scatter_add_(1, target[:, None], -hard_grad.expand_as(target_logit)[:, None])
    if plan.label_smoothing > 0:
        smooth_grad = plan.smooth_scale * scale
        grad.sub_(smooth_grad if plan.class_weights is None else smooth_grad * plan.class_weights[None, :])
    if tanh is not None:
        grad.mul_(tanh.mul_(tanh).neg_().add_(1.0))  # d softcap*tanh(x/softcap) / dx = 1 - tanh^2
    return grad


def _add_chunk_grads(
    plan: _ChunkPlan,
    grad: Tensor,
    rows: Tensor,
    index: Tensor | None,
    start: int,
    grads: tuple[Tensor | None, Tensor | None, Tensor | None],
) -> None:
    """The chunk's rows of the hidden-state gradient, and its share of the weight and bias gradients."""
    grad_hidden, grad_weight, grad_bias = grads
    matmul_dtype, weight_mm = plan.matmul_dtype, plan.weight_mm
    grad_mm = grad.to(matmul_dtype)
    if grad_hidden is not None:
        if index is not None:
            grad_hidden.index_copy_(0, index, (grad_mm @ weight_mm).to(grad_hidden.dtype))
        elif grad_hidden.dtype == matmul_dtype:
            torch.mm(grad_mm, weight_mm, out=grad_hidden[start : start + plan.step])
        else:
            grad_hidden[start : start + plan.step] = grad_mm @ weight_mm
    if grad_weight is not None:
        _accumulate_weight_grad(grad_weight, grad, grad_mm, rows)
    if grad_bias is not None:
        grad_bias += grad.sum(0)


class _LinearCrossEntropy(torch.autograd.Function):
    """Gradients are computed chunk by chunk in forward; backward scales them by the incoming gradient.

    The stored gradients are returned as they are when the incoming gradient is 1 (a plain ``loss.backward()``:
    no copy, and autograd can take them as ``.grad``), else multiplied out of place, so a second backward through
    a retained graph (gradcheck does that) still gives the right answer.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden_states: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, options: tuple
    ) -> tuple[Tensor, Tensor]:
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], bias is not None and ctx.needs_input_grad[3])
        total, z_total, grad_hidden, grad_weight, grad_bias = _linear_cross_entropy_chunks(
            hidden_states, targets, weight, bias, options, needs
        )
        ctx.dtypes = (hidden_states.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(z_total)
        return total, z_total

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_z: Tensor | None) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        unit = bool((grad_total == 1).all())  # one host sync per step, as Liger's kernel does
        outputs = []
        for grad, dtype in ((grad_hidden, hidden_dtype), (grad_weight, weight_dtype), (grad_bias, bias_dtype)):
            if grad is None:
                outputs.append(None)
                continue
            if not unit:
                grad = grad * grad_total.to(grad.dtype)
            outputs.append(grad if grad.dtype == dtype else grad.to(dtype))
        return outputs[0], None, outputs[1], outputs[2], None
