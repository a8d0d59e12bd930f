"""hf-losses inside TRL's ``SFTTrainer``: :class:`LossSFTTrainer` and :class:`LossSFTConfig` (``pip install
hf-losses[trl]``; this module imports TRL, ``import hf_losses`` does not).

.. code-block:: python

    from hf_losses.integrations.trl import LossSFTConfig, LossSFTTrainer

    args = LossSFTConfig(output_dir="out", loss_type="causal_lm", loss_kwargs={"z_loss": 1e-4})
    trainer = LossSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)

``loss_type``. TRL's ``SFTConfig`` has a ``loss_type`` of its own (``"nll"``, ``"dft"``). :class:`LossSFTConfig`
keeps one field for both: TRL's values (and ``"auto"``, which means ``"nll"`` here: TRL's loss already is the
model's own token cross-entropy, exact under accumulation) select TRL's own loss, untouched -- the hf-losses mixin
steps aside as for ``loss_type="auto"`` with a ``compute_loss_func`` (it keeps only the non-finite guard and the
loss record). Any hf-losses name or expression selects that loss. The field always holds the real name (so
``to_dict()``, ``loss_config.json``, the model card and a hyper-parameter search see it); TRL's own checks, which
accept only ``"nll"``/``"dft"``, run inside :func:`trl_loss_type_view`, which shows TRL ``"nll"`` for the duration
of ``SFTConfig.__post_init__`` and ``SFTTrainer.__init__`` and restores the name afterwards. After ``__init__``
TRL reads ``loss_type`` only in its ``compute_loss``, which :class:`LossSFTTrainer` does not call for hf-losses
losses.

What keeps working with an hf-losses loss (e.g. ``causal_lm``): TRL's data preparation (language modelling,
prompt-completion and conversational data; ``completion_only_loss`` and ``assistant_only_loss``, which TRL 1.16
folds into ``labels`` when it prepares the dataset), its collator (padding-free rows with ``position_ids``,
packing), PEFT (``peft_config``), evaluation, TRL's model card. The hidden-state ``causal_lm`` loss intercepts the
LM head (:mod:`hf_losses.trainers.hidden_states`), so no ``(N, T, V)`` logits exist; TRL's ``entropy`` and
``mean_token_accuracy`` metrics are computed from the same hidden states, without gradient, over the labelled
positions only, in chunks of at most :data:`METRIC_CHUNK_ELEMENTS` logits (one more head product forward, no
backward); ``num_tokens`` as TRL counts it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from trl import SFTConfig, SFTTrainer

from hf_losses.constants import IGNORE_INDEX
from hf_losses.tasks import LABEL_KEYS, next_token_labels, unwrap
from hf_losses.trainers.arguments import LossArgumentsMixin
from hf_losses.trainers.mixin import LossTrainerMixin

__all__ = ["TRL_LOSS_TYPES", "LossSFTConfig", "LossSFTTrainer", "is_trl_loss_type", "trl_loss_type_view"]

#: ``loss_type`` values that select TRL's own loss ("chunked_nll": TRL's deprecated name of "nll")
TRL_LOSS_TYPES = ("nll", "dft", "chunked_nll")
#: at most this many logits (positions x vocabulary) exist at once while the SFT metrics are computed
METRIC_CHUNK_ELEMENTS = 1 << 22


def is_trl_loss_type(loss_type: Any) -> bool:
    """Whether ``loss_type`` selects TRL's own loss (``"nll"``, ``"dft"``) rather than an hf-losses loss."""
    return isinstance(loss_type, str) and loss_type.strip() in TRL_LOSS_TYPES


@contextlib.contextmanager
def trl_loss_type_view(args: Any) -> Iterator[None]:
    """While inside, ``args.loss_type`` is a value TRL accepts: TRL's own names as they are, ``"nll"`` for an
    hf-losses loss (TRL never computes that loss: :class:`LossSFTTrainer` does); the real name is restored on exit."""
    real = getattr(args, "loss_type", None)
    if real is None or is_trl_loss_type(real):
        yield
        return
    args.loss_type = "nll"
    try:
        yield
    finally:
        args.loss_type = real


class _SFTConfigSeeingTRLLossType(SFTConfig):
    """``SFTConfig`` whose ``__post_init__`` sees :func:`trl_loss_type_view`."""

    def __post_init__(self) -> None:
        with trl_loss_type_view(self):
            super().__post_init__()


@dataclass
class LossSFTConfig(LossArgumentsMixin, _SFTConfigSeeingTRLLossType):
    """TRL's ``SFTConfig`` with the hf-losses flags (``loss_kwargs``, ``class_weights``, ``nonfinite_loss``...).

    ``loss_type``: ``"nll"`` (default) or ``"dft"`` train with TRL's own loss, unchanged (``"auto"`` is read as
    ``"nll"``); any hf-losses name or expression (``"causal_lm"``, ``"0.9*causal_lm+..."``) trains with that loss.
    """

    loss_type: str = field(
        default="nll",
        metadata={
            "help": "Loss to train with: TRL's own 'nll' (default) or 'dft', or any hf-losses loss name or "
            "expression (see `hf-losses list`), e.g. 'causal_lm' (chunked token cross-entropy from the hidden "
            "states, with label_smoothing / z_loss / softcap / class_weights in loss_kwargs). 'auto' means 'nll'."
        },
    )

    def _validate_loss(self) -> None:
        """TRL's names are checked as hf-losses' ``"auto"`` (no ``loss_kwargs``, no ``class_weights``); every other
        value as an hf-losses loss."""
        value = self.loss_type.strip() if isinstance(self.loss_type, str) else self.loss_type
        if value != "auto" and not is_trl_loss_type(value):
            super()._validate_loss()
            return
        self.loss_type = "auto"
        try:
            super()._validate_loss()
        except ValueError as error:
            raise ValueError(f"{error} (loss_type={value!r} is TRL's own loss)") from None
        finally:
            self.loss_type = "nll" if value == "auto" else value


class _SFTTrainerSeeingTRLLossType(SFTTrainer):
    """``SFTTrainer`` whose ``__init__`` sees :func:`trl_loss_type_view` (the hf-losses mixin, before it in the
    MRO, resolves the real loss after this ``__init__`` returns)."""

    def __init__(self, model: Any = None, args: Any = None, *rest: Any, **kwargs: Any) -> None:
        with trl_loss_type_view(args) if args is not None else contextlib.nullcontext():
            super().__init__(model, args, *rest, **kwargs)


class LossSFTTrainer(LossTrainerMixin, _SFTTrainerSeeingTRLLossType):
    """TRL's ``SFTTrainer`` with the loss named by :class:`LossSFTConfig`'s ``loss_type`` (or given as ``loss=``),
    exact under gradient accumulation and several processes (see :mod:`hf_losses.trainers.mixin`).

    With TRL's own ``loss_type`` (``"nll"``, ``"dft"``; also a plain ``SFTConfig``) everything is TRL's; the
    non-finite guard (``nonfinite_loss``) still watches the loss.
    """

    # ------------------------------------------------------------------------------------------ set-up
    def _setup_loss(self, model: nn.Module) -> None:
        if not is_trl_loss_type(getattr(self.args, "loss_type", None)):
            super()._setup_loss(model)
            return
        # TRL's own loss: resolve as "auto" (no loss of ours), then leave every loss decision to SFTTrainer
        saved = {name: self.__dict__.get(name) for name in ("loss_is_scaled_for_ga", "model_accepts_loss_kwargs")}
        present = {name for name in saved if name in self.__dict__}
        trl_loss_type = self.args.loss_type
        self.args.loss_type = "auto"
        try:
            super()._setup_loss(model)
        finally:
            self.args.loss_type = trl_loss_type
        for name, value in saved.items():
            if name in present:
                setattr(self, name, value)
            else:
                self.__dict__.pop(name, None)
        self._stock = True
        self._loss_config = {**self._loss_config, "loss_type": f"trl:{trl_loss_type}"}

    # ------------------------------------------------------------------------------------------ loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, Any]:
        if self._stock:  # TRL's own loss (and metrics), under the mixin's non-finite guard
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False  # as SFTTrainer: no KV cache in training (and none with gradient checkpointing)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        self._record_sft_metrics(model, inputs, outputs)
        if return_outputs and not _has_logits(outputs):
            # compute_metrics / preprocess_logits_for_metrics want logits: one more forward pass, as SFTTrainer does
            with torch.no_grad():
                outputs = model(**{key: value for key, value in inputs.items() if key not in LABEL_KEYS})
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------ SFT metrics
    def _record_sft_metrics(self, model: nn.Module, inputs: Mapping[str, Any], outputs: Any) -> None:
        """TRL's ``entropy``, ``mean_token_accuracy`` and ``num_tokens`` for the step, from the logits when the
        loss had them, else from the final hidden states and the LM head in chunks (no full logits)."""
        mode = "train" if self.model.training else "eval"
        sums = _entropy_and_accuracy_sums(model, inputs, outputs, getattr(self.loss, "softcap", None))
        if sums is not None:
            gathered = self.accelerator.gather_for_metrics(sums.reshape(1, 3)).reshape(-1, 3).sum(0)
            num_valid, entropy_sum, num_correct = (float(v) for v in gathered)
            self._metrics[mode]["entropy"].append(entropy_sum / num_valid if num_valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append(num_correct / num_valid if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            elif "position_ids" in inputs:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            else:
                local = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


def _has_logits(outputs: Any) -> bool:
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    return isinstance(logits, Tensor) and logits.dim() == 3 and logits.shape[1] > 0


@torch.no_grad()
def _entropy_and_accuracy_sums(
    model: nn.Module, inputs: Mapping[str, Any], outputs: Any, softcap: float | None
) -> Tensor | None:
    """``[labelled positions, entropy sum, top-1 hits]`` (float64) of the next-token distributions, or None when
    neither logits nor a usable LM head weight are at hand (DeepSpeed ZeRO-3 partitions the head)."""
    if inputs.get("labels") is None and inputs.get("shift_labels") is None:
        return None
    targets = next_token_labels(inputs, IGNORE_INDEX)
    if _has_logits(outputs):
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
        rows, weight, bias = logits, None, None
    else:
        rows = outputs.get("last_hidden_state") if isinstance(outputs, Mapping) else None
        head = unwrap(model).get_output_embeddings() if rows is not None else None
        weight = getattr(head, "weight", None)
        if weight is None or weight.dim() != 2 or weight.numel() == 0 or weight.shape[1] != rows.shape[-1]:
            return None
        bias = getattr(head, "bias", None)
    if tuple(targets.shape) != tuple(rows.shape[:-1]):
        return None
    mask = targets != IGNORE_INDEX
    rows, labels = rows.detach()[mask], targets[mask].to(rows.device)
    vocab = rows.shape[-1] if weight is None else weight.shape[0]
    chunk = max(1, METRIC_CHUNK_ELEMENTS // max(vocab, 1))
    totals = torch.zeros(3, dtype=torch.float64, device=rows.device)
    totals[0] = labels.numel()
    for start in range(0, rows.shape[0], chunk):
        part = rows[start : start + chunk]
        if weight is not None:
            part = torch.nn.functional.linear(part.to(weight.dtype), weight, bias)
        part = part.float()
        if softcap is not None and weight is not None:
            part = softcap * torch.tanh(part / softcap)
        log_probs = torch.log_softmax(part, dim=-1)
        totals[1] += -(log_probs.exp() * log_probs).sum().double()
        totals[2] += (part.argmax(dim=-1) == labels[start : start + chunk]).sum().double()
    return totals
