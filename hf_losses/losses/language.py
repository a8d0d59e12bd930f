"""Causal-LM token cross-entropy computed from the hidden states and the LM head, never materialising the logits.

:class:`CausalLMLoss` is a :class:`~hf_losses.losses.base.HiddenStatesLoss`: it shifts the labels
(:func:`shift_causal_labels`, as transformers' ``ForCausalLMLoss`` does), checks its inputs and reduces by the item
count; the chunked computation itself is :func:`hf_losses.losses.linear_cross_entropy.linear_cross_entropy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import HiddenStatesLoss, Normalize, NumItems
from hf_losses.losses.checks import as_vector, check_number
from hf_losses.losses.inputs import check_in_range, check_same_device, index_labels
from hf_losses.losses.linear_cross_entropy import linear_cross_entropy
from hf_losses.registry import register_loss

#: dtypes the LM head's matrix product takes (hidden states, weight and bias may mix them)
MATMUL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shift_causal_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Targets for "token t predicts token t+1", as transformers' ``ForCausalLMLoss`` builds them.

    ``labels[..., 1:]`` padded with ``ignore_index`` at the end, so the targets are shaped like the labels and the
    last position (which has nothing to predict) is ignored.
    """
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)


@register_loss("causal_lm", aliases=("chunked_causal_lm", "lm_cross_entropy", "linear_cross_entropy"))
class CausalLMLoss(HiddenStatesLoss):
    """Shifted token cross-entropy from hidden states and the LM head, without materialising the logits.

    Call: ``loss(hidden_states (N, T, H), labels (N, T), weight=lm_head.weight (V, H), bias=None,
    num_items_in_batch=None, shift_labels=None)``. ``labels`` are unshifted, as transformers passes them (the
    loss shifts); a collator's ``shift_labels`` (already aligned with the positions) replace them when given.
    The result equals transformers' ``ForCausalLMLoss`` on ``hidden_states @ weight.T + bias`` (sum of token
    losses divided by ``num_items_in_batch``, else by the local count of non-ignored shifted labels).
    """

    summary = "Causal-LM token cross-entropy from hidden states in chunks (never materialises the logits)."
    reference = (
        "Liger-Kernel fused linear cross-entropy (Hsu et al. 2024); Cut Cross-Entropy (Wijmans et al. "
        "2025); z-loss: PaLM (Chowdhery et al. 2022); soft-capping: Gemma 2 (2024)"
    )

    def __init__(
        self,
        chunk_size: int | None = None,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, normalize=normalize)
        owner = self._label()
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"{owner}: `chunk_size` must be a positive int (tokens per chunk) or None for "
                f"automatic, got {chunk_size!r}."
            )
        self.chunk_size = chunk_size
        self.label_smoothing = check_number(owner, "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        self.z_loss = check_number(owner, "z_loss", z_loss, minimum=0.0)
        self.softcap = None if softcap is None else check_number(owner, "softcap", softcap, minimum=0.0, strict=True)
        self.register_buffer(
            "class_weights", None if class_weights is None else as_vector(owner, "class_weights", class_weights)
        )
        #: detached parts of the last call's value (``cross_entropy``, ``z_loss``) when z_loss > 0, for logging
        self.last_components: dict[str, Tensor] = {}

    def targets(self, labels: Tensor | None, shift_labels: Tensor | None = None) -> Tensor:
        """The shifted targets: ``shift_labels`` when given, else ``labels`` shifted by one position (int64)."""
        if shift_labels is not None:
            return self._token_ids("shift_labels", shift_labels)
        if labels is None:
            raise ValueError(f"{self._label()}: give `labels` (unshifted) or `shift_labels`.")
        return shift_causal_labels(self._token_ids("labels", labels), self.ignore_index)

    def item_weights(self, targets: Tensor) -> Tensor:
        """``class_weights[target]`` (1 without), 0 at ignored targets: the denominator of ``normalize="weight"``."""
        valid = targets != self.ignore_index
        if self.class_weights is None:
            return valid.to(torch.float32)
        return torch.where(valid, self.class_weights.to(torch.float32)[targets.masked_fill(~valid, 0)], 0.0)

    def _token_ids(self, name: str, ids: Tensor) -> Tensor:
        """Integer token ids of any integer dtype, as int64 (converted once)."""
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(
                f"{self._label()}: `{name}` must be integer token ids (torch.long), got "
                f"{getattr(ids, 'dtype', type(ids).__name__)}."
            )
        if ids.dim() < 1:
            raise ValueError(f"{self._label()}: `{name}` must be (N, T) token ids, got a scalar.")
        return index_labels(ids)

    def forward(
        self,
        hidden_states: Tensor,
        labels: Tensor | None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        num_items_in_batch: NumItems = None,
        shift_labels: Tensor | None = None,
        sample_weight: Tensor | None = None,
    ) -> Tensor:
        """``sample_weight``: ``(N,)`` per sequence or ``(N, T)`` per token, aligned with ``labels`` (with
        ``shift_labels``: with them); it multiplies each token's loss inside the kernel."""
        if weight is None:
            raise TypeError(
                f"{self._label()}: works from hidden states and the LM head; call "
                f"loss(hidden_states, labels, weight=model.get_output_embeddings().weight), not loss(logits, labels) "
                f"(for logits use 'cross_entropy')."
            )
        self.check_head(hidden_states, weight, bias)
        targets = self.targets(labels, shift_labels)
        self.check_targets(hidden_states, targets, weight.shape[0])
        token_weight = local_weights = None
        if sample_weight is not None:
            token_weight = self.data_weights(targets, sample_weight, shifted=shift_labels is None)
            local_weights = self.item_weights(targets) * token_weight
            token_weight = token_weight.reshape(-1)
        # 1 / (num_items_in_batch, else the local count or weight sum): the contract's reduction
        scale = self.reduction_scale(hidden_states, targets, num_items_in_batch, local_weights)
        extra = {} if token_weight is None else {"token_weight": token_weight}
        loss, z_part = linear_cross_entropy(
            hidden_states,
            targets,
            weight,
            bias,
            class_weights=self.class_weights,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            ignore_index=self.ignore_index,
            chunk_size=self.chunk_size,
            scale=scale,
            **extra,
        )
        # logged by the trainer as loss/<name>; only worth it when there are two parts
        self.last_components = {"cross_entropy": (loss - z_part).detach(), "z_loss": z_part} if self.z_loss > 0 else {}
        return loss

    def check_head(self, hidden_states: Tensor, weight: Tensor, bias: Tensor | None) -> None:
        """The hidden states ``(..., H)`` and the LM head ``weight (V, H)`` / ``bias (V,)``: shapes, dtypes, device."""
        owner = self._label()
        for name, value in (("hidden_states", hidden_states), ("weight", weight)):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(
                    f"{owner}: `{name}` must be a floating-point torch.Tensor, got "
                    f"{getattr(value, 'dtype', type(value).__name__)}."
                )
        if bias is not None and not isinstance(bias, Tensor):
            raise ValueError(f"{owner}: `bias` must be None or a ({weight.shape[0]},) tensor, got {bias!r}.")
        for name, value in (("hidden_states", hidden_states), ("weight", weight), ("bias", bias)):
            if value is not None and value.is_floating_point() and value.dtype not in MATMUL_DTYPES:
                raise TypeError(
                    f"{owner}: `{name}` has dtype {value.dtype}, which the head's matrix product cannot take; "
                    f"give it in one of {[str(d) for d in MATMUL_DTYPES]}."
                )
        if hidden_states.dim() < 2:
            raise ValueError(f"{owner}: `hidden_states` must be (N, T, H), got shape {tuple(hidden_states.shape)}.")
        if weight.dim() != 2 or weight.shape[1] != hidden_states.shape[-1]:
            partitioned = (
                " (an empty weight is a DeepSpeed ZeRO-3 partition: gather it first, with "
                "deepspeed.zero.GatheredParameters)"
                if weight.numel() == 0
                else ""
            )
            raise ValueError(
                f"{owner}: `weight` is the LM head weight (V, H) with H={hidden_states.shape[-1]} "
                f"(the hidden size): pass model.get_output_embeddings().weight, got shape "
                f"{tuple(weight.shape)}{partitioned}."
            )
        vocab_size = weight.shape[0]
        if vocab_size < 2:
            raise ValueError(
                f"{owner}: `weight` must score V >= 2 tokens, got shape {tuple(weight.shape)}: a softmax over one "
                f"token is 1, so the loss would be identically 0."
            )
        if bias is not None and tuple(bias.shape) != (vocab_size,):
            raise ValueError(f"{owner}: `bias` must be None or a ({vocab_size},) tensor, got {tuple(bias.shape)}.")
        check_same_device(owner, {"hidden_states": hidden_states, "weight": weight, "bias": bias})

    def check_targets(self, hidden_states: Tensor, targets: Tensor, vocab_size: int) -> None:
        """Targets shaped like the hidden states without H, token ids in ``[0, V)`` or ``ignore_index``."""
        owner = self._label()
        if tuple(targets.shape) != tuple(hidden_states.shape[:-1]):
            raise ValueError(
                f"{owner}: labels shape {tuple(targets.shape)} must equal hidden_states shape "
                f"{tuple(hidden_states.shape)} without its last (hidden) dimension."
            )
        # read on the CPU; an asynchronous device assert elsewhere (no device sync)
        message = f"{owner}: labels must be token ids in [0, {vocab_size}) or ignore_index={self.ignore_index}"
        check_in_range(targets, 0, vocab_size, self.ignore_index, message)
        if self.class_weights is not None and self.class_weights.numel() != vocab_size:
            raise ValueError(
                f"{owner}: `class_weights` has {self.class_weights.numel()} entries but the LM head "
                f"has V={vocab_size} tokens; give one weight per vocabulary entry."
            )

    def extra_repr(self) -> str:
        return (
            f"chunk_size={self.chunk_size}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}, ignore_index={self.ignore_index}"
        )
