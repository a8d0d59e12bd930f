"""Causal-LM token cross-entropy computed from the hidden states and the LM head, chunk by chunk.

The logits of a language model are ``tokens x vocabulary`` (8k x 128k is 4 GiB in float32), the largest tensor of
a fine-tuning step. This loss never materialises them: it takes the final hidden states ``(N, T, H)`` and the LM
head weight ``(V, H)``, and for each chunk of ``chunk_size`` tokens computes the chunk's logits, its loss and, in
the same pass, the gradients w.r.t. the chunk's hidden states and the head weight (the logits' gradient is the
softmax minus the target, known as soon as the log-sum-exp is). Backward then only scales the stored gradients,
so peak extra memory is ``O(chunk_size x V)`` in forward and backward, and the three matrix products are the same
as for the materialised logits (logits, grad w.r.t. hidden, grad w.r.t. weight), so it costs no extra time.

Same recipe as Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024) and Apple's Cut Cross-Entropy
(Wijmans et al. 2025), in plain PyTorch: it runs on CPU and GPU, under autocast (the matrix products in the
autocast dtype, log-sum-exp and softmax always in float32) and under DeepSpeed (the head weight is not needed in
backward). Options: label smoothing (PyTorch semantics), PaLM's z-loss ``z_loss * logsumexp^2`` (Chowdhery et al.
2022), Gemma-style logit soft-capping ``softcap * tanh(logits / softcap)`` and class weights over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from hf_losses.losses.base import IGNORE_INDEX, Loss, NumItems, reduce_by_items
from hf_losses.losses.checks import as_vector, check_number
from hf_losses.registry import register_loss


# ------------------------------------------------------------------------------------------ functional core
def shift_causal_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Targets for "token t predicts token t+1", as transformers' ``ForCausalLMLoss`` builds them.

    ``labels[..., 1:]`` padded with ``ignore_index`` at the end, so the targets are shaped like the labels and the
    last position (which has nothing to predict) is ignored.
    """
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)


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
    device_type = hidden_states.device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
        autocast_dtype = torch.get_autocast_dtype(device_type) if enabled else None
    except (TypeError, RuntimeError, AttributeError):  # torch < 2.4: per-device functions
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else (
            device_type == "cuda" and torch.is_autocast_enabled())
        autocast_dtype = (torch.get_autocast_cpu_dtype() if device_type == "cpu"
                          else torch.get_autocast_gpu_dtype()) if enabled else None
    if enabled:
        return autocast_dtype
    return torch.promote_types(hidden_states.dtype, weight.dtype)


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


def linear_cross_entropy(hidden_states: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                         class_weights: Tensor | None = None, label_smoothing: float = 0.0, z_loss: float = 0.0,
                         softcap: float | None = None, ignore_index: int = IGNORE_INDEX,
                         chunk_size: int | None = None, scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
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
        t is not None and t.requires_grad for t in (hidden_states, weight, bias))
    options = (class_weights, float(label_smoothing), float(z_loss), softcap, ignore_index, chunk_size, scale)
    if needs_grad:
        return _LinearCrossEntropy.apply(hidden_states, targets, weight, bias, options)
    total, z_total, _, _, _ = _linear_cross_entropy_chunks(hidden_states, targets, weight, bias, options,
                                                           (False, False, False))
    return total, z_total


def _linear_cross_entropy_chunks(hidden_states: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None,
                                 options: tuple, needs: tuple[bool, bool, bool]
                                 ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Scaled loss sums and (as asked by ``needs``) their gradients w.r.t. hidden states, weight and bias."""
    class_weights, label_smoothing, z_loss, softcap, ignore_index, chunk_size, scale = options
    need_hidden, need_weight, need_bias = needs
    need_any = need_hidden or need_weight or need_bias
    matmul_dtype = _matmul_dtype(hidden_states, weight)
    # "float32" means at least float32: gradcheck runs in float64.
    acc_dtype = torch.float64 if matmul_dtype == torch.float64 else torch.float32
    vocab_size, hidden_size = weight.shape
    device = hidden_states.device

    with torch.autocast(device_type=device.type, enabled=False):
        rows_all = hidden_states.reshape(-1, hidden_size)
        flat_targets = targets.reshape(-1).to(device)
        valid = (flat_targets != ignore_index).nonzero().squeeze(1)
        num_valid = valid.numel()
        # ignored positions (prompts, padding, the last token) cost nothing: each chunk gathers predicted rows
        # only (no copy of all rows: that would be O(N*T*H) more memory); without ignored rows, plain slices
        gather = num_valid < flat_targets.numel()
        weight_mm = weight.to(matmul_dtype)
        bias_mm = None if bias is None else bias.to(matmul_dtype)
        class_weights = None if class_weights is None else class_weights.to(device=device, dtype=acc_dtype)
        smooth_scale = label_smoothing / vocab_size
        # per token: loss = a_i * lse_i - (1-eps) w_y z_y - eps/V sum_c w_c z_c (+ z_loss lse^2), a_i as below
        smooth_weight_sum = float(vocab_size) if class_weights is None else class_weights.sum()
        scale = torch.as_tensor(scale, dtype=acc_dtype, device=device)

        total = torch.zeros((), dtype=acc_dtype, device=device)
        z_total = torch.zeros((), dtype=acc_dtype, device=device)
        grad_hidden = None
        if need_hidden:
            grad_hidden = torch.zeros_like(rows_all) if gather else torch.empty_like(rows_all)
        # float32 accumulation across chunks even for a bf16 head (its .grad is cast once, in backward)
        weight_grad_dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        grad_weight = torch.zeros(weight.shape, dtype=weight_grad_dtype, device=device) if need_weight else None
        grad_bias = torch.zeros(vocab_size, dtype=acc_dtype, device=device) if need_bias else None

        step = chunk_size or default_chunk_size(max(num_valid, 1), hidden_size, vocab_size)
        for start in range(0, num_valid, step):
            if gather:
                index = valid[start:start + step]
                rows, target = rows_all.index_select(0, index), flat_targets.index_select(0, index)
            else:
                rows, target = rows_all[start:start + step], flat_targets[start:start + step]
            rows = rows.to(matmul_dtype)
            if bias_mm is None:
                logits_mm = rows @ weight_mm.t()
            else:
                logits_mm = torch.addmm(bias_mm, rows, weight_mm.t())
            z = logits_mm.to(acc_dtype)  # no copy when the product already ran in float32
            del logits_mm
            tanh = None
            if softcap is not None:
                z.div_(softcap).tanh_()
                if need_any:
                    tanh = z.clone()
                z.mul_(softcap)
            target_logit = z.gather(1, target[:, None]).squeeze(1)
            target_weight = None if class_weights is None else class_weights.index_select(0, target)
            smooth_term = None
            if label_smoothing > 0:
                smooth_term = z.sum(1) if class_weights is None else z @ class_weights
            # log-sum-exp in place: z becomes exp(z - max), no second chunk x V buffer
            row_max = z.amax(1, keepdim=True)
            z.sub_(row_max).exp_()
            exp_sum = z.sum(1)
            lse = exp_sum.log() + row_max.squeeze(1)

            hard = 1.0 - label_smoothing
            coefficient = (hard * (1.0 if target_weight is None else target_weight)
                           + smooth_scale * smooth_weight_sum)
            per_token = coefficient * lse - hard * (target_logit if target_weight is None
                                                    else target_weight * target_logit)
            if smooth_term is not None:
                per_token = per_token - smooth_scale * smooth_term
            if z_loss > 0:
                z_part = z_loss * lse.square()
                z_total += z_part.sum()
                per_token = per_token + z_part
            total += per_token.sum()
            if not need_any:
                del z
                continue

            # d loss_i / d z_c = p_c (a_i + 2 z_loss lse_i) - (1-eps) w_y [c = y] - eps/V w_c, times `scale`
            row_scale = (coefficient + 2.0 * z_loss * lse) if z_loss > 0 else coefficient
            grad = z.mul_((row_scale * scale / exp_sum)[:, None])
            hard_grad = hard * scale * (1.0 if target_weight is None else target_weight)
            grad.scatter_add_(1, target[:, None], -hard_grad.expand_as(target_logit)[:, None])
            if label_smoothing > 0:
                smooth_grad = smooth_scale * scale
                grad.sub_(smooth_grad if class_weights is None else smooth_grad * class_weights[None, :])
            if tanh is not None:
                grad.mul_(tanh.mul_(tanh).neg_().add_(1.0))  # d softcap*tanh(x/softcap) / dx = 1 - tanh^2
                del tanh
            grad_mm = grad.to(matmul_dtype)
            if need_hidden:
                if gather:
                    grad_hidden.index_copy_(0, index, (grad_mm @ weight_mm).to(grad_hidden.dtype))
                elif grad_hidden.dtype == matmul_dtype:
                    torch.mm(grad_mm, weight_mm, out=grad_hidden[start:start + step])
                else:
                    grad_hidden[start:start + step] = grad_mm @ weight_mm
            if need_weight:
                _accumulate_weight_grad(grad_weight, grad, grad_mm, rows)
            if need_bias:
                grad_bias += grad.sum(0)
            del grad, grad_mm, z

        if grad_hidden is not None:
            grad_hidden = grad_hidden.view(hidden_states.shape)
    return total * scale, z_total * scale, grad_hidden, grad_weight, grad_bias


class _LinearCrossEntropy(torch.autograd.Function):
    """Gradients are computed chunk by chunk in forward; backward scales them by the incoming gradient.

    The stored gradients are returned as they are when the incoming gradient is 1 (a plain ``loss.backward()``:
    no copy, and autograd can take them as ``.grad``), else multiplied out of place, so a second backward through
    a retained graph (gradcheck does that) still gives the right answer.
    """

    @staticmethod
    def forward(ctx: Any, hidden_states: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None,
                options: tuple) -> tuple[Tensor, Tensor]:
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], bias is not None and ctx.needs_input_grad[3])
        total, z_total, grad_hidden, grad_weight, grad_bias = _linear_cross_entropy_chunks(
            hidden_states, targets, weight, bias, options, needs)
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


# ------------------------------------------------------------------------------------------ module
@register_loss("causal_lm", aliases=("chunked_causal_lm", "lm_cross_entropy", "linear_cross_entropy"))
class CausalLMLoss(Loss):
    """Shifted token cross-entropy from hidden states and the LM head, without materialising the logits.

    Call: ``loss(hidden_states (N, T, H), labels (N, T), weight=lm_head.weight (V, H), bias=None,
    num_items_in_batch=None, shift_labels=None)``. ``labels`` are unshifted, as transformers passes them (the
    loss shifts); a collator's ``shift_labels`` (already aligned with the positions) replace them when given.
    The result equals transformers' ``ForCausalLMLoss`` on ``hidden_states @ weight.T + bias`` (sum of token
    losses divided by ``num_items_in_batch``, else by the local count of non-ignored shifted labels).
    """

    summary = "Causal-LM token cross-entropy from hidden states in chunks (never materialises the logits)."
    reference = ("Liger-Kernel fused linear cross-entropy (Hsu et al. 2024); Cut Cross-Entropy (Wijmans et al. "
                 "2025); z-loss: PaLM (Chowdhery et al. 2022); soft-capping: Gemma 2 (2024)")
    item_unit = "label"
    label_kind = "index"
    #: the trainer passes the final hidden states and the head instead of logits
    takes_hidden_states: ClassVar[bool] = True

    def __init__(self, chunk_size: int | None = None, label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: float | None = None, class_weights: Sequence[float] | Tensor | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(ignore_index)
        owner = self._label()
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size < 1):
            raise ValueError(f"{owner}: `chunk_size` must be a positive int (tokens per chunk) or None for "
                             f"automatic, got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self.label_smoothing = check_number(owner, "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        self.z_loss = check_number(owner, "z_loss", z_loss, minimum=0.0)
        self.softcap = None if softcap is None else check_number(owner, "softcap", softcap, minimum=0.0, strict=True)
        self.register_buffer("class_weights", None if class_weights is None
                             else as_vector(owner, "class_weights", class_weights))
        #: detached parts of the last call's value (``cross_entropy``, ``z_loss``) when z_loss > 0, for logging
        self.last_components: dict[str, Tensor] = {}

    # ---------------------------------------------------------------- contract
    def targets(self, labels: Tensor | None, shift_labels: Tensor | None = None) -> Tensor:
        """The shifted targets: ``shift_labels`` when given, else ``labels`` shifted by one position."""
        if shift_labels is not None:
            return shift_labels
        if labels is None:
            raise ValueError(f"{self._label()}: give `labels` (unshifted) or `shift_labels`.")
        return shift_causal_labels(labels, self.ignore_index)

    def num_items(self, labels: Tensor | None, shift_labels: Tensor | None = None) -> dict[str, Tensor]:
        """Count of predicted tokens: non-ignored *shifted* labels (``labels`` are the unshifted ``(N, T)``)."""
        return {self.item_unit: (self.targets(labels, shift_labels) != self.ignore_index).sum()}

    def forward(self, hidden_states: Tensor, labels: Tensor | None, weight: Tensor, bias: Tensor | None = None,
                num_items_in_batch: NumItems = None, shift_labels: Tensor | None = None) -> Tensor:
        targets = self.targets(labels, shift_labels)
        self.check_hidden_inputs(hidden_states, targets, weight, bias)
        count = (targets != self.ignore_index).sum()
        # 1 / (num_items_in_batch, else the local count), clamped to >= 1: the contract's reduction
        one = torch.ones((), dtype=torch.float64 if hidden_states.dtype == torch.float64 else torch.float32,
                         device=hidden_states.device)
        scale = reduce_by_items(one, count, num_items_in_batch, self.item_unit)
        loss, z_part = linear_cross_entropy(
            hidden_states, targets, weight, bias, class_weights=self.class_weights,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            ignore_index=self.ignore_index, chunk_size=self.chunk_size, scale=scale)
        # logged by the trainer as loss/<name>; only worth it when there are two parts
        self.last_components = {"cross_entropy": (loss - z_part).detach(), "z_loss": z_part} if self.z_loss > 0 else {}
        return loss

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        raise TypeError(f"{self._label()}: call it with hidden states and the LM head, "
                        f"loss(hidden_states, labels, weight=lm_head.weight), not with logits.")

    def check_hidden_inputs(self, hidden_states: Tensor, targets: Tensor, weight: Tensor,
                            bias: Tensor | None) -> None:
        """Shapes, dtypes and label range, with messages naming the loss and what it expects."""
        owner = self._label()
        for name, value in (("hidden_states", hidden_states), ("weight", weight)):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(f"{owner}: `{name}` must be a floating-point torch.Tensor, got "
                                f"{getattr(value, 'dtype', type(value).__name__)}.")
        if hidden_states.dim() < 2:
            raise ValueError(f"{owner}: `hidden_states` must be (N, T, H), got shape {tuple(hidden_states.shape)}.")
        if weight.dim() != 2 or weight.shape[1] != hidden_states.shape[-1]:
            raise ValueError(f"{owner}: `weight` is the LM head weight (V, H) with H={hidden_states.shape[-1]} "
                             f"(the hidden size), got shape {tuple(weight.shape)}.")
        vocab_size = weight.shape[0]
        if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (vocab_size,)):
            raise ValueError(f"{owner}: `bias` must be None or a ({vocab_size},) tensor, got "
                             f"{tuple(bias.shape) if isinstance(bias, Tensor) else bias!r}.")
        if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
            raise TypeError(f"{owner}: `labels`/`shift_labels` must be integer token ids (torch.long), got "
                            f"{getattr(targets, 'dtype', type(targets).__name__)}.")
        if tuple(targets.shape) != tuple(hidden_states.shape[:-1]):
            raise ValueError(f"{owner}: labels shape {tuple(targets.shape)} must equal hidden_states shape "
                             f"{tuple(hidden_states.shape)} without its last (hidden) dimension.")
        out_of_range = ((targets < 0) | (targets >= vocab_size)) & (targets != self.ignore_index)
        if out_of_range.any():
            bad = targets[out_of_range][0].item()
            raise ValueError(f"{owner}: labels must be token ids in [0, {vocab_size}) or "
                             f"ignore_index={self.ignore_index}; found {bad}.")
        if self.class_weights is not None and self.class_weights.numel() != vocab_size:
            raise ValueError(f"{owner}: `class_weights` has {self.class_weights.numel()} entries but the LM head "
                             f"has V={vocab_size} tokens; give one weight per vocabulary entry.")

    def extra_repr(self) -> str:
        return (f"chunk_size={self.chunk_size}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, ignore_index={self.ignore_index}")
