"""Linear cross-entropy: the token cross-entropy of ``hidden_states @ weight.T + bias``, chunk by chunk.

The functional core of the ``causal_lm`` loss (:mod:`hf_losses.losses.language` holds the module that shifts the
labels and reduces by the item count). The logits of a language model are ``tokens x vocabulary`` (8k x 128k is
4 GiB in float32), the largest tensor of a fine-tuning step. This kernel never materialises them: for each chunk of
tokens it computes the chunk's logits, its loss and, in the same pass, the gradients w.r.t. the chunk's hidden
states and the head weight (the logits' gradient is the softmax minus the target, known as soon as the log-sum-exp
is). Backward only scales the stored gradients, so the peak extra memory is one chunk's logits plus the
gradients themselves, and the three matrix products are those of the materialised logits (logits, gradient
w.r.t. hidden, gradient w.r.t. weight): no extra time.

The recipe of Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024) and TRL's chunked log-probabilities, in
plain PyTorch (cuBLAS / MKL products): the chunk's logits buffer becomes its log-softmax, then its gradient, in
place (:func:`softmax_gradient`); the weight gradient accumulates across chunks in float32 (for a bf16 head too:
cuBLAS writes the bf16 product straight into the float32 accumulator); on CUDA the per-chunk elementwise part is
compiled with ``torch.compile`` when Triton is there (one read of the logits for the statistics, one write of the
bf16 gradient). Options: label smoothing (PyTorch semantics), PaLM's z-loss ``z_loss * logsumexp^2`` (Chowdhery et
al. 2022), Gemma-style soft-capping ``softcap * tanh(logits / softcap)``, class weights over the vocabulary, and a
weight per token (``token_weight``: data weights, 0 leaves a token out).

No host synchronisation on an accelerator: on the CPU the ignored positions (prompts, padding) are skipped by
gathering the predicted rows (their indices cost nothing to read there); on a GPU every row goes through the
chunks and an ignored row's weight is 0, so the number of chunks never depends on the labels' values, and backward
scales the stored gradients by the incoming gradient on the device. Peer kernels (Liger, Cut Cross-Entropy) are
reached through ``backend`` (:mod:`hf_losses.losses.linear_cross_entropy_backends`).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from torch import Tensor

from hf_losses.compat import autocast_dtype
from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.inputs import values_are_free

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "auto", "liger", "cce")
__all__ = ["BACKENDS", "default_chunk_size", "linear_cross_entropy", "softmax_gradient"]


def default_chunk_size(num_tokens: int, hidden_size: int, vocab_size: int, device_type: str = "cuda") -> int:
    """Tokens per chunk.

    GPU: a chunk's logits about as large as the hidden states (Liger-Kernel's rule: the next power of two of
    ``tokens / ceil(vocab / hidden)``, within [256, 4096]); 256 rows fill the tensor-core tiles. CPU: about 64 MiB of
    float32 logits, within [256, 1024] rows: MKL's logits product runs ~25% slower on 128 rows than on 256 or more
    (measured single-threaded, H=1024, V=32000), and fewer chunks pass over the weight-gradient accumulator fewer
    times; beyond 1024 rows nothing is faster, only larger.
    """
    if device_type == "cpu":
        rows = (64 << 20) // (4 * max(vocab_size, 1))
        return int(min(1024, max(256, 1 << max(rows.bit_length() - 1, 0))))
    growth = -(-vocab_size // max(hidden_size, 1))
    target = max(-(-num_tokens // max(growth, 1)), 1)
    return int(min(4096, max(256, 1 << (target - 1).bit_length())))


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
    token_weight: Tensor | None = None,
    backend: str = "torch",
    compile: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """``scale`` x the sum over tokens of ``token_weight * cross_entropy(hidden_states @ weight.T + bias, targets)``.

    Args:
        hidden_states: ``(..., H)`` final hidden states (the LM head's input), any float dtype.
        targets: ``(...)`` integer token ids already aligned with ``hidden_states`` (shifted), or ``ignore_index``.
        weight: ``(V, H)`` LM head weight; ``bias``: ``(V,)`` or None.
        class_weights: ``(V,)`` per-token-id weights ``w`` (as ``F.cross_entropy``'s ``weight``).
        label_smoothing: ``eps``; per token ``(1-eps) w_y (lse - z_y) + eps/V sum_c w_c (lse - z_c)``.
        z_loss: coefficient of PaLM's auxiliary ``lse^2`` term (not class-weighted).
        softcap: ``z = softcap * tanh(logits / softcap)`` before the softmax (Gemma 2).
        chunk_size: tokens per chunk (default :func:`default_chunk_size`).
        scale: multiplies the sum (``1 / num_items_in_batch``; a number or a 0-d tensor on the device); applied
            inside, so the gradients stored in forward are final (backward only multiplies them by the incoming
            gradient, on the device; on the CPU not at all when it is 1).
        token_weight: ``(...)`` shaped like ``targets`` (or flat), on their device, >= 0 (not checked here: the
            caller checks data weights where that is free): multiplies each token's whole loss (z-loss and
            smoothing included) and its gradient; 0 leaves the token out. Not differentiated.
        backend: "torch" (this kernel), "liger" / "cce" (the peer kernel when installed, on CUDA, for the options
            it has; otherwise this kernel, with a log line), "auto" (a peer when one fits, else this kernel).
        compile: ``torch.compile`` the per-chunk elementwise part; None: on CUDA when Triton is installed.

    Returns ``(scale * loss_sum, scale * z_loss_sum)``: the summed per-token losses (z-loss included;
    differentiable w.r.t. ``hidden_states``, ``weight`` and ``bias``) and the z-loss part alone (detached).
    """
    if token_weight is not None:
        token_weight = _flat_token_weight(token_weight, targets, hidden_states.device)
    if backend not in BACKENDS:
        raise ValueError(f"linear_cross_entropy: `backend` must be one of {list(BACKENDS)}, got {backend!r}.")
    options = _Options(
        class_weights,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        ignore_index,
        chunk_size,
        scale,
        token_weight,
        compile,
    )
    if backend != "torch":
        from hf_losses.losses.linear_cross_entropy_backends import peer_linear_cross_entropy

        result = peer_linear_cross_entropy(backend, hidden_states, targets, weight, bias, options)
        if result is not None:
            return result
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden_states, weight, bias)
    )
    if needs_grad:
        return _LinearCrossEntropy.apply(hidden_states, targets, weight, bias, options)
    total, z_total, _, _, _ = _linear_cross_entropy_chunks(
        hidden_states, targets, weight, bias, options, (False, False, False)
    )
    return total, z_total


class _Options(NamedTuple):
    """The keyword options of :func:`linear_cross_entropy`, as one argument of the autograd function."""

    class_weights: Tensor | None
    label_smoothing: float
    z_loss: float
    softcap: float | None
    ignore_index: int
    chunk_size: int | None
    scale: Tensor | float
    token_weight: Tensor | None
    compile: bool | None


def _flat_token_weight(token_weight: Tensor, targets: Tensor, device: torch.device) -> Tensor:
    """``token_weight`` as a flat float tensor with one entry per target, on the hidden states' device."""
    if not isinstance(token_weight, Tensor) or token_weight.is_complex() or token_weight.dtype == torch.bool:
        raise TypeError(f"linear_cross_entropy: `token_weight` must be a real tensor, got {token_weight!r:.80}.")
    if token_weight.numel() != targets.numel() or token_weight.shape not in (targets.shape, (targets.numel(),)):
        raise ValueError(
            f"linear_cross_entropy: `token_weight` must be shaped like the targets {tuple(targets.shape)} (or flat, "
            f"({targets.numel()},)), got {tuple(token_weight.shape)}."
        )
    flat = token_weight.detach().reshape(-1).to(device)
    return flat if flat.is_floating_point() else flat.float()


# ------------------------------------------------------------------------------------------ one pass over the chunks
def _linear_cross_entropy_chunks(
    hidden_states: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    options: _Options,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Scaled loss sums and (as asked by ``needs``) their gradients w.r.t. hidden states, weight and bias."""
    need_any = any(needs)
    matmul_dtype = _matmul_dtype(hidden_states, weight)  # read before autocast is switched off
    with torch.autocast(device_type=hidden_states.device.type, enabled=False):
        plan = _ChunkPlan(hidden_states, targets, weight, bias, options, matmul_dtype)
        total, z_total, grad_hidden, grad_weight, grad_bias = _zero_accumulators(plan, weight, needs)
        for start in range(0, plan.num_rows, plan.step):
            rows, target, row_weight, index = plan.chunk(start)
            logits = _chunk_logits(plan, rows)
            per_token, z_part, grad = plan.loss_and_gradient(logits, target, row_weight, need_any)
            del logits
            total += per_token.sum()
            if z_part is not None:
                z_total += z_part.sum()
            if need_any:
                _add_chunk_grads(plan, grad, rows, index, start, (grad_hidden, grad_weight, grad_bias))
            del grad
        if plan.num_rows == 0:  # no chunk wrote the accumulators
            for grad in (grad_weight, grad_bias):
                if grad is not None:
                    grad.zero_()
        if grad_hidden is not None:
            grad_hidden = grad_hidden.view(hidden_states.shape)
    return total * plan.scale, z_total * plan.scale, grad_hidden, grad_weight, grad_bias


def as_device_scalar(value: Tensor | float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 0-d tensor on ``device``: a Python number is filled in by a kernel (``torch.tensor(x, device="cuda")``
    would copy it from pageable host memory, which waits for the stream)."""
    if isinstance(value, Tensor):
        return value.reshape(()).to(device=device, dtype=dtype)
    return torch.full((), float(value), dtype=dtype, device=device)


def _matmul_dtype(hidden_states: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the head's matrix product runs in: the autocast dtype when autocast is on, else the inputs'."""
    dtype = autocast_dtype(hidden_states.device.type)
    return dtype if dtype is not None else torch.promote_types(hidden_states.dtype, weight.dtype)


class _ChunkPlan:
    """What every chunk of one pass shares: the flattened inputs, the rows that go through, dtypes and constants."""

    def __init__(
        self,
        hidden_states: Tensor,
        targets: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        options: _Options,
        matmul_dtype: torch.dtype,
    ) -> None:
        vocab_size, hidden_size = weight.shape
        device = hidden_states.device
        self.matmul_dtype = matmul_dtype
        # "float32" means at least float32: gradcheck runs in float64.
        self.acc_dtype = acc_dtype = torch.float64 if matmul_dtype == torch.float64 else torch.float32
        self.rows_all = hidden_states.reshape(-1, hidden_size)
        self.flat_targets = targets.reshape(-1).to(device)
        self.token_weight = options.token_weight
        self.weight_mm = weight.to(matmul_dtype)
        self.bias_mm = None if bias is None else bias.to(matmul_dtype)
        self.scale = as_device_scalar(options.scale, acc_dtype, device)
        self.constants = _Constants.of(options, vocab_size, device, acc_dtype)
        use_compile = options.compile
        if use_compile is None:
            use_compile = device.type == "cuda" and _triton_available()
        self.compiled = _compiled_softmax_gradient() if use_compile else None
        self.index = None
        self.num_rows = self.flat_targets.numel()
        if values_are_free(self.flat_targets):
            # Rows that count (prompts and padding are ignored, a token weight may be 0) are gathered: reading
            # which ones costs nothing on the CPU. Not on a GPU (a device->host sync): there every row goes through.
            keep = self.flat_targets != options.ignore_index
            if self.token_weight is not None:
                keep &= self.token_weight != 0
            index = keep.nonzero().squeeze(1)
            if index.numel() < self.num_rows:
                self.index, self.num_rows = index, index.numel()
        self.step = options.chunk_size or default_chunk_size(
            max(self.num_rows, 1), hidden_size, vocab_size, device.type
        )
        self.ignore_index = options.ignore_index
        self._logits: Tensor | None = None

    def logits_buffer(self, rows: int) -> Tensor:
        """The first ``rows`` rows of the ``step x V`` float32 buffer shared by the chunks of this pass."""
        if self._logits is None:
            shape = (min(self.step, max(self.num_rows, 1)), self.weight_mm.shape[0])
            self._logits = torch.empty(shape, dtype=self.acc_dtype, device=self.rows_all.device)
        return self._logits[:rows]

    def chunk(self, start: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """The chunk's rows (in the matmul dtype), its targets (ignored ones as token 0), each row's weight (None:
        all 1) and, when gathering, the rows' positions."""
        index = None if self.index is None else self.index[start : start + self.step]
        if index is None:
            rows = self.rows_all[start : start + self.step]
            target = self.flat_targets[start : start + self.step]
            token_weight = None if self.token_weight is None else self.token_weight[start : start + self.step]
        else:
            rows, target = self.rows_all.index_select(0, index), self.flat_targets.index_select(0, index)
            token_weight = None if self.token_weight is None else self.token_weight.index_select(0, index)
        row_weight = token_weight
        if self.index is None and not values_are_free(target):  # every row goes through: an ignored one weighs 0
            valid = target != self.ignore_index
            row_weight = valid.to(self.acc_dtype) if token_weight is None else token_weight * valid
            target = target.masked_fill(~valid, 0)
            # an ignored row's hidden state zeroed (H wide, not V): a NaN there (a padded position whose attention
            # saw nothing) cannot reach the weight gradient through 0 * NaN
            rows = rows.masked_fill(~valid[:, None], 0)
        if row_weight is not None:
            row_weight = row_weight.to(self.acc_dtype)
        return rows.to(self.matmul_dtype), target, row_weight, index

    def loss_and_gradient(
        self, logits: Tensor, target: Tensor, row_weight: Tensor | None, need_grad: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """:func:`softmax_gradient` of the chunk: compiled when asked (eager from the first compiler failure on,
        with a log line), else eager and in place."""
        grad_dtype = self.matmul_dtype if need_grad else None
        if self.compiled is not None and _COMPILE_STATE["ok"]:
            try:
                return self.compiled(logits, target, row_weight, self.scale, self.constants, grad_dtype, False)
            except Exception as error:  # a compiler failure must not stop training
                _COMPILE_STATE["ok"] = False
                logger.warning("linear_cross_entropy: torch.compile failed (%s); using the eager kernel.", error)
        return softmax_gradient(logits, target, row_weight, self.scale, self.constants, grad_dtype, True)


class _Constants(NamedTuple):
    """Per-pass constants of the loss formula (see :func:`softmax_gradient`)."""

    hard: float  # 1 - eps
    smooth: float  # eps / V
    z_loss: float
    softcap: float | None
    class_weights: Tensor | None  # (V,) in the accumulation dtype
    class_weight_sum: Tensor | float  # sum_c w_c (V without class weights)

    @classmethod
    def of(cls, options: _Options, vocab_size: int, device: torch.device, dtype: torch.dtype) -> _Constants:
        weights = options.class_weights
        weights = None if weights is None else weights.to(device=device, dtype=dtype)
        return cls(
            1.0 - options.label_smoothing,
            options.label_smoothing / vocab_size,
            options.z_loss,
            options.softcap,
            weights,
            float(vocab_size) if weights is None else weights.sum(),
        )


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
        grad_hidden = torch.zeros_like(plan.rows_all) if plan.index is not None else torch.empty_like(plan.rows_all)
    # float32 accumulation across chunks even for a bf16 head (its .grad is cast once, in backward); float64 when
    # the products run in float64 (float64 hidden states with a float32 head)
    weight_grad_dtype = torch.promote_types(
        weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32, plan.acc_dtype
    )
    # not zeroed: the first chunk writes them (beta=0), which saves a pass over V x H (zeroed if no chunk runs)
    grad_weight = torch.empty(weight.shape, dtype=weight_grad_dtype, device=device) if need_weight else None
    grad_bias = torch.empty(weight.shape[0], dtype=plan.acc_dtype, device=device) if need_bias else None
    return total, z_total, grad_hidden, grad_weight, grad_bias


# ------------------------------------------------------------------------------------------ the chunk's products
#: whether cuBLAS takes ``out_dtype=float32`` for half-precision products here (checked on first use)
_CUDA_OUT_DTYPE = True


def _chunk_logits(plan: _ChunkPlan, rows: Tensor) -> Tensor:
    """The chunk's logits in the accumulation dtype (float32): on CUDA a half-precision product is written in
    float32 by cuBLAS itself (no rounding to bf16, no second buffer); elsewhere the product is upcast."""
    global _CUDA_OUT_DTYPE
    weight_t = plan.weight_mm.t()
    if rows.is_cuda and _CUDA_OUT_DTYPE and plan.matmul_dtype in (torch.float16, torch.bfloat16):
        try:
            logits = torch.mm(rows, weight_t, out_dtype=plan.acc_dtype)
            return logits if plan.bias_mm is None else logits.add_(plan.bias_mm)
        except (RuntimeError, TypeError):  # torch without the out_dtype overload
            _CUDA_OUT_DTYPE = False
    if plan.matmul_dtype == plan.acc_dtype and plan.compiled is None:
        # one buffer for every chunk (the eager kernel turns it into the gradient in place): no allocation and no
        # page faults per chunk on the CPU
        logits = plan.logits_buffer(rows.shape[0])
        if plan.bias_mm is None:
            return torch.mm(rows, weight_t, out=logits)
        return torch.addmm(plan.bias_mm, rows, weight_t, out=logits)
    logits = rows @ weight_t if plan.bias_mm is None else torch.addmm(plan.bias_mm, rows, weight_t)
    return logits.to(plan.acc_dtype)


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
    first = start == 0
    if grad_weight is not None:
        _accumulate_weight_grad(grad_weight, grad, grad_mm, rows, first)
    if grad_bias is not None:
        if first:
            torch.sum(grad, 0, dtype=grad_bias.dtype, out=grad_bias)
        else:
            grad_bias += grad.sum(0, dtype=grad_bias.dtype)


def _accumulate_weight_grad(
    accumulator: Tensor, grad_logits: Tensor, grad_logits_mm: Tensor, rows: Tensor, first: bool
) -> None:
    """``accumulator (+)= grad_logits^T @ rows`` with float32 accumulation across chunks (the first chunk writes).

    On CUDA with half-precision products, cuBLAS writes the bf16 x bf16 product straight into the float32
    accumulator (``out_dtype``); elsewhere the float32 gradient is multiplied by the upcast chunk.
    """
    global _CUDA_OUT_DTYPE
    beta = 0.0 if first else 1.0  # beta=0: the accumulator's (uninitialised) values are not read
    if accumulator.dtype == grad_logits_mm.dtype:
        accumulator.addmm_(grad_logits_mm.t(), rows, beta=beta)
        return
    if accumulator.is_cuda:
        if _CUDA_OUT_DTYPE:
            try:
                torch.addmm(
                    accumulator, grad_logits_mm.t(), rows, beta=beta, out_dtype=accumulator.dtype, out=accumulator
                )
                return
            except (RuntimeError, TypeError):  # torch without the out_dtype overload for these dtypes
                _CUDA_OUT_DTYPE = False
        # half-precision product (fast tensor cores), then a float32 add
        product = grad_logits_mm.t() @ rows
        if first:
            accumulator.copy_(product)
        else:
            accumulator.add_(product)
        return
    if grad_logits.dtype != accumulator.dtype:
        grad_logits = grad_logits.to(accumulator.dtype)
    accumulator.addmm_(grad_logits.t(), rows.to(accumulator.dtype), beta=beta)


# ------------------------------------------------------------------------------------- the chunk's elementwise part
def softmax_gradient(
    logits: Tensor,
    target: Tensor,
    row_weight: Tensor | None,
    scale: Tensor,
    constants: _Constants,
    grad_dtype: torch.dtype | None,
    in_place: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-token losses (times their row weight), their z-loss part, and the gradient of ``scale`` x their sum
    w.r.t. the logits (``grad_dtype``; None: no gradient).

    With ``p = softmax(z)``, ``logp = log_softmax(z)``, ``a = (1-eps) w_y + eps/V sum_c w_c`` and row weight ``r``:

        loss = r * (-(1-eps) w_y logp_y - eps/V sum_c w_c logp_c + z_loss lse^2)
        d loss / d z_c = scale * r * (p_c (a + 2 z_loss lse) - (1-eps) w_y [c = y] - eps/V w_c)

    times ``1 - tanh^2`` of the soft-cap. ``in_place``: the float32 ``logits`` buffer becomes the log-softmax and
    then the gradient (no second ``chunk x V`` buffer); False keeps it (the compiled version, which fuses the chain
    into one read of the logits and one write of the gradient).
    """
    hard, smooth, z_loss, softcap, class_weights, class_weight_sum = constants
    tanh = None
    if softcap is not None:
        tanh = (logits.div_(softcap) if in_place else logits / softcap).tanh_()
        logits = tanh * softcap
        if grad_dtype is None:
            tanh = None
    column = target[:, None]
    target_logit = logits.gather(1, column).squeeze(1)
    logp = _log_softmax_in_place(logits) if in_place else torch.log_softmax(logits, 1)
    target_logp = logp.gather(1, column).squeeze(1)
    lse = target_logit - target_logp
    target_weight = None if class_weights is None else class_weights.index_select(0, target)
    hard_weight = hard if target_weight is None else hard * target_weight
    per_token = -hard_weight * target_logp
    if smooth > 0:
        per_token = per_token - smooth * (logp.sum(1) if class_weights is None else logp @ class_weights)
    z_part = None
    if z_loss > 0:
        z_part = z_loss * lse.square()
        per_token = per_token + z_part
    if row_weight is not None:  # 0 where ignored: where() keeps a NaN in an ignored row out of the sum
        per_token = torch.where(row_weight != 0, per_token * row_weight, 0.0)
        z_part = None if z_part is None else torch.where(row_weight != 0, z_part * row_weight, 0.0)
    if grad_dtype is None:
        return per_token, z_part, None

    row_scale = scale if row_weight is None else scale * row_weight
    coefficient = hard_weight + smooth * class_weight_sum
    if z_loss > 0:
        coefficient = coefficient + 2.0 * z_loss * lse
    grad = logp.exp_() if in_place else logp.exp()
    grad.mul_((row_scale * coefficient).expand_as(target_logp)[:, None])
    grad.scatter_add_(1, column, -(row_scale * hard_weight).expand_as(target_logp)[:, None])
    if smooth > 0:
        smooth_row = (smooth * row_scale).expand_as(target_logp)
        if class_weights is None:
            grad.sub_(smooth_row[:, None])
        else:
            grad.addr_(smooth_row, class_weights, alpha=-1.0)
    if tanh is not None:
        grad.mul_(tanh.square_().neg_().add_(1.0))  # d softcap * tanh(x / softcap) / dx = 1 - tanh^2
    return per_token, z_part, grad if grad.dtype == grad_dtype else grad.to(grad_dtype)


def _log_softmax_in_place(logits: Tensor) -> Tensor:
    """``log_softmax(logits, 1)`` written over ``logits`` (each row is read before it is written)."""
    try:
        return torch._log_softmax(logits, 1, False, out=logits)
    except RuntimeError:  # a backend refusing the aliased output
        return torch.log_softmax(logits, 1)


_COMPILE_STATE: dict[str, Any] = {"ok": True, "function": None}


def _compiled_softmax_gradient() -> Any:
    """The compiled :func:`softmax_gradient` (one per process; dynamic shapes: the last chunk is shorter)."""
    if _COMPILE_STATE["function"] is None:
        _COMPILE_STATE["function"] = torch.compile(softmax_gradient, dynamic=None)
    return _COMPILE_STATE["function"]


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------ autograd
class _LinearCrossEntropy(torch.autograd.Function):
    """Gradients are computed chunk by chunk in forward; backward scales them by the incoming gradient.

    On the CPU the incoming gradient is read (free there): the stored gradients are returned as they are when it
    is 1 (a plain ``loss.backward()``: autograd takes them as ``.grad`` without a copy), else multiplied out of
    place, so a second backward through a retained graph (gradcheck does that) is still right. On an accelerator
    nothing is read: a bf16/fp16 weight gradient is scaled while it is cast from its float32 accumulator, the
    others are scaled in place (a second backward through a retained graph is then refused by autograd's
    version check, with the reason).
    """

    @staticmethod
    def forward(
        ctx: Any, hidden_states: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, options: _Options
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
        try:
            stored = ctx.saved_tensors
        except RuntimeError as error:
            if "inplace" not in str(error):
                raise
            raise RuntimeError(
                "linear_cross_entropy: a second backward through the same graph (retain_graph=True) is not "
                "supported on an accelerator: the first backward scaled the stored gradients in place, to avoid "
                "a device->host sync. Compute the loss again for a second backward."
            ) from error
        on_host = values_are_free(grad_total)
        unit = on_host and bool(grad_total == 1)  # free on the CPU
        outputs = []
        for grad, dtype in zip(stored, ctx.dtypes):
            if grad is None:
                outputs.append(None)
            elif unit:
                outputs.append(grad if grad.dtype == dtype else grad.to(dtype))
            elif grad.dtype != dtype:  # scaled while cast: one pass, no float32 copy
                outputs.append(torch.mul(grad, grad_total.to(grad.dtype), out=torch.empty_like(grad, dtype=dtype)))
            elif on_host:
                outputs.append(grad * grad_total.to(grad.dtype))
            else:
                outputs.append(grad.mul_(grad_total.to(grad.dtype)))
        return outputs[0], None, outputs[1], outputs[2], None
