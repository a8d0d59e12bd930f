"""How ``(logits, labels)`` are read from a model's outputs for each task, as transformers' own heads read them.

A :class:`Task` answers three questions for :class:`~hf_losses.trainers.LossTrainer`:

* :meth:`Task.read`: the logits and labels to hand to an hf-losses loss (token classification flattened,
  causal LM shifted, segmentation logits upsampled to the label size, regression targets shaped like the logits);
* :meth:`Task.loss_labels`: the labels alone, exactly as :meth:`Task.read` gives them, so that the trainer can
  count the items of a whole accumulation window before any forward pass;
* :meth:`Task.model_loss_items`: how many items the model's *own* loss averages over (``loss_type="auto"``), so
  that its per-batch mean can be turned into an exact global mean.

This module needs torch only; the model is seen through its ``config`` and class name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import shift_causal_weights
from hf_losses.losses.language import shift_causal_labels
from hf_losses.suggestions import did_you_mean

#: batch entries that are labels, not model inputs
LABEL_KEYS = ("labels", "shift_labels")

TASKS = (
    "auto",
    "sequence_classification",
    "multi_label",
    "token_classification",
    "causal_lm",
    "semantic_segmentation",
    "regression",
    "seq2seq_lm",
)
PROBLEM_TYPES = {
    "single_label_classification": "sequence_classification",
    "multi_label_classification": "multi_label",
    "regression": "regression",
}

# Class-name suffixes of transformers' heads, in the order they are tried.
_HEAD_SUFFIXES = (
    ("ForTokenClassification", "token_classification"),
    ("ForCausalLM", "causal_lm"),
    ("LMHeadModel", "causal_lm"),
    ("ForSemanticSegmentation", "semantic_segmentation"),
    ("ForSequenceClassification", "sequence_classification"),
    ("ForImageClassification", "sequence_classification"),
    ("ForAudioClassification", "sequence_classification"),
    ("ForVideoClassification", "sequence_classification"),
    ("ForMultipleChoice", "sequence_classification"),
)


def unwrap(model: Any) -> Any:
    """The transformers model inside DDP/DeepSpeed (``.module``) and PEFT (``.base_model.model``) wrappers."""
    for _ in range(4):
        if hasattr(model, "module") and not hasattr(model, "config"):
            model = model.module
    base = getattr(getattr(model, "base_model", None), "model", None)
    if type(model).__name__.startswith("Peft") and base is not None:
        model = base
    return model


def infer_task(model: Any) -> str | None:
    """The task of a transformers head from its class name (then ``config.architectures``); None if unknown."""
    model = unwrap(model)
    config = getattr(model, "config", None)
    names = [type(model).__name__] + list(getattr(config, "architectures", None) or [])
    for name in names:
        for suffix, task in _HEAD_SUFFIXES:
            if name.endswith(suffix):
                return task
    # T5, BART, Marian...: the decoder predicts the labels as given (the model shifts its decoder inputs itself);
    # decoder-only "ForConditionalGeneration" models (LLaVA...) shift labels like a causal LM and are not matched
    if getattr(config, "is_encoder_decoder", False) and any(n.endswith("ForConditionalGeneration") for n in names):
        return "seq2seq_lm"
    return None


def _logits(outputs: Any) -> Tensor:
    if isinstance(outputs, Mapping):
        if outputs.get("logits") is not None:
            return outputs["logits"]
        raise ValueError(
            f"The model returned no `logits` (keys: {', '.join(outputs.keys())}); hf-losses needs the "
            f"logits to compute the loss."
        )
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    return outputs


@dataclass
class Task:
    """Base task: logits ``(N, C, ...)`` and labels read as they are."""

    name: str = "unknown"
    #: "index" (integer class ids), "binary" (multi-hot float targets), "target" (regression targets), None
    #: (decided per batch); see ``hf_losses.losses.base.LabelKind``
    label_kind: str | None = "index"
    #: the loss's ignore index (labels reach the loss with this value on ignored entries)
    ignore_index: int = IGNORE_INDEX

    def loss_labels(self, inputs: Mapping[str, Any]) -> Tensor:
        """The labels exactly as :meth:`read` hands them to the loss (for counting a window's items)."""
        return inputs["labels"]

    def model_inputs(self, model: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The model's keyword inputs for an hf-losses loss: the batch without its labels (so the model does not
        compute a loss of its own) and its data-weight columns."""
        return {key: value for key, value in inputs.items() if key not in LABEL_KEYS and key not in WEIGHT_COLUMNS}

    def read(self, outputs: Any, inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """``(logits, labels)`` for the loss, from the model's outputs and the batch holding the labels."""
        return _logits(outputs), self.loss_labels(inputs)

    def loss_weights(self, inputs: Mapping[str, Any]) -> Tensor | None:
        """The batch's data weights aligned with :meth:`loss_labels`: ``(N,)`` per example, or label-shaped when
        the batch has per-token weights (None without weight columns)."""
        weight = raw_data_weight(inputs)
        if weight is None or weight.dim() == 1:
            return weight
        return weight.reshape(self.loss_labels(inputs).shape)

    def model_loss_items(self, inputs: Mapping[str, Any]) -> Tensor:
        """How many items the model's own loss averages over in this batch. For a head hf-losses does not know
        (e.g. a seq2seq ``ForConditionalGeneration``): integer labels are taken as a cross-entropy mean over the
        entries that are not -100, float labels as a mean over every entry (MSE/BCE)."""
        labels = inputs["labels"]
        if labels.is_floating_point():
            return torch.tensor(labels.numel(), device=labels.device)
        return (labels != IGNORE_INDEX).sum()


@dataclass
class SequenceClassificationTask(Task):
    """``problem_type`` picks single-label (CE), multi-label (BCE) or regression (MSE), as
    ``BertForSequenceClassification`` does; unset, ``num_labels == 1`` means regression, integer labels
    single-label and float labels multi-label (decided per batch)."""

    problem_type: str | None = None
    num_labels: int | None = None

    def resolved(self, labels: Tensor) -> str:
        if self.problem_type is not None:
            return self.problem_type
        if self.num_labels == 1:
            return "regression"
        if labels.dtype in (torch.long, torch.int):
            return "single_label_classification"
        return "multi_label_classification"

    def loss_labels(self, inputs: Mapping[str, Any]) -> Tensor:
        labels = inputs["labels"]
        return labels if self.resolved(labels) == "single_label_classification" else labels.float()

    def read(self, outputs: Any, inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        logits, labels = _logits(outputs), self.loss_labels(inputs)
        if self.resolved(inputs["labels"]) == "regression":
            labels = labels.reshape(logits.shape)
        return logits, labels

    def model_loss_items(self, inputs: Mapping[str, Any]) -> Tensor:
        labels = inputs["labels"]
        if self.resolved(labels) == "single_label_classification":
            return (labels != IGNORE_INDEX).sum()
        return torch.tensor(labels.numel(), device=labels.device)  # MSE / BCE average over every entry


@dataclass
class TokenClassificationTask(Task):
    """Logits ``(N, T, C)`` and labels ``(N, T)``, flattened to ``(N*T, C)`` and ``(N*T,)``."""

    def loss_labels(self, inputs: Mapping[str, Any]) -> Tensor:
        return inputs["labels"].reshape(-1)

    def read(self, outputs: Any, inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        logits = _logits(outputs)
        return logits.reshape(-1, logits.shape[-1]), self.loss_labels(inputs)

    def loss_weights(self, inputs: Mapping[str, Any]) -> Tensor | None:
        return _per_label_entry(raw_data_weight(inputs), inputs["labels"])

    def model_loss_items(self, inputs: Mapping[str, Any]) -> Tensor:
        return (inputs["labels"] != IGNORE_INDEX).sum()


@dataclass
class Seq2SeqLMTask(TokenClassificationTask):
    """An encoder-decoder's decoder logits ``(N, T, V)``: position ``t`` predicts ``labels[t]`` (no shift; the model
    shifts its decoder inputs itself). Without labels the model needs ``decoder_input_ids``: they are made from the
    labels with the model's own ``prepare_decoder_input_ids_from_labels``, as ``DataCollatorForSeq2Seq`` does."""

    def model_inputs(self, model: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        model_inputs = super().model_inputs(model, inputs)
        if "decoder_input_ids" not in model_inputs and "decoder_inputs_embeds" not in model_inputs:
            prepare = getattr(unwrap(model), "prepare_decoder_input_ids_from_labels", None)
            if prepare is None:
                raise ValueError(
                    f"seq2seq_lm: the batch has no `decoder_input_ids` and {type(unwrap(model)).__name__} "
                    f"cannot make them from labels; use DataCollatorForSeq2Seq(tokenizer, model=model)."
                )
            model_inputs["decoder_input_ids"] = prepare(labels=inputs["labels"])
        return model_inputs


#: the batch columns holding data weights: one float per example, and one per label entry (token, pixel)
SAMPLE_WEIGHT_COLUMN = "sample_weight"
TOKEN_WEIGHT_COLUMN = "token_weight"
WEIGHT_COLUMNS = (SAMPLE_WEIGHT_COLUMN, TOKEN_WEIGHT_COLUMN)


def raw_data_weight(inputs: Mapping[str, Any]) -> Tensor | None:
    """The batch's data weights as the collator gives them: ``token_weight * sample_weight`` (label-shaped) when
    there are per-token weights, else ``sample_weight`` ``(N,)``; None without weight columns."""
    sample, token = inputs.get(SAMPLE_WEIGHT_COLUMN), inputs.get(TOKEN_WEIGHT_COLUMN)
    if token is None:
        return None if sample is None else sample.reshape(-1)
    token = token.float() if not token.is_floating_point() else token
    if sample is None:
        return token
    return token * sample.reshape((token.shape[0],) + (1,) * (token.dim() - 1)).to(token)


def _per_label_entry(weight: Tensor | None, labels: Tensor) -> Tensor | None:
    """Weights for flattened ``(N*T,)`` labels: per-example weights repeated over each example's entries."""
    if weight is None:
        return None
    if weight.dim() == 1:
        weight = weight.reshape((labels.shape[0],) + (1,) * (labels.dim() - 1)).expand(labels.shape)
    return weight.reshape(-1)


def next_token_labels(inputs: Mapping[str, Any], ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Targets ``(N, T)``: ``shift_labels`` when the collator gives them, else ``labels`` shifted left by one and
    padded with ``ignore_index`` (as transformers' ``ForCausalLMLoss``, which pads rather than cutting the logits)."""
    if inputs.get("shift_labels") is not None:
        return inputs["shift_labels"]
    return shift_causal_labels(inputs["labels"], ignore_index)


@dataclass
class CausalLMTask(Task):
    """Logits ``(N, T, V)``; position ``t`` predicts label ``t + 1`` (or ``shift_labels[t]``); flattened."""

    def loss_labels(self, inputs: Mapping[str, Any]) -> Tensor:
        return next_token_labels(inputs, self.ignore_index).reshape(-1)

    def read(self, outputs: Any, inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        logits = _logits(outputs)
        return logits.reshape(-1, logits.shape[-1]), self.loss_labels(inputs)

    def loss_weights(self, inputs: Mapping[str, Any]) -> Tensor | None:
        weight = raw_data_weight(inputs)
        if weight is not None and weight.dim() > 1 and inputs.get("shift_labels") is None:
            weight = shift_causal_weights(weight)  # token weights sit on the labels: shifted with them
        return _per_label_entry(weight, next_token_labels(inputs, self.ignore_index))

    def model_loss_items(self, inputs: Mapping[str, Any]) -> Tensor:
        return (next_token_labels(inputs, IGNORE_INDEX) != IGNORE_INDEX).sum()


@dataclass
class SemanticSegmentationTask(Task):
    """Logits ``(N, C, h, w)`` upsampled (bilinear, ``align_corners=False``, as SegFormer does) to the label size
    ``(N, H, W)``. Label values equal to the model's ``config.semantic_loss_ignore_index`` (255 for SegFormer) reach
    the loss as its own ``ignore_index``."""

    data_ignore_index: int | None = None
    num_labels: int | None = None

    def loss_labels(self, inputs: Mapping[str, Any]) -> Tensor:
        labels = inputs["labels"]
        if self.data_ignore_index is not None and self.data_ignore_index != self.ignore_index:
            labels = labels.masked_fill(labels == self.data_ignore_index, self.ignore_index)
        return labels

    def read(self, outputs: Any, inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        logits, labels = _logits(outputs), self.loss_labels(inputs)
        if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return logits, labels

    def model_loss_items(self, inputs: Mapping[str, Any]) -> Tensor:
        labels = inputs["labels"]
        if self.num_labels == 1:  # SegFormer's one-channel head: masked BCE averaged over every pixel
            return torch.tensor(labels.numel(), device=labels.device)
        ignore = IGNORE_INDEX if self.data_ignore_index is None else self.data_ignore_index
        return (labels != ignore).sum()


@dataclass
class RegressionTask(Task):
    """Predictions ``(N, K)``; float targets reshaped to the predictions' shape (the model's MSE: every entry)."""

    label_kind: str | None = "target"

    def loss_labels(self, inputs: Mapping[str, Any]) -> Tensor:
        return inputs["labels"].float()

    def read(self, outputs: Any, inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        logits = _logits(outputs)
        return logits, self.loss_labels(inputs).reshape(logits.shape)

    def model_loss_items(self, inputs: Mapping[str, Any]) -> Tensor:
        labels = inputs["labels"]
        return torch.tensor(labels.numel(), device=labels.device)


@dataclass
class MultiLabelTask(RegressionTask):
    """Logits ``(N, C)`` and multi-hot float targets ``(N, C)`` (the model's BCE: every entry)."""

    label_kind: str | None = "binary"


def build_task(task: str, model: Any = None, ignore_index: int = IGNORE_INDEX) -> Task:
    """The :class:`Task` for ``task`` (``"auto"``: from the model's class and ``config.problem_type``), handing
    labels to a loss whose ignore index is ``ignore_index``."""
    if task not in TASKS:
        raise ValueError(f"Unknown loss_task {task!r}.{did_you_mean(task, TASKS)} Choose one of {list(TASKS)}.")
    config = getattr(unwrap(model), "config", None)
    problem_type = getattr(config, "problem_type", None)
    num_labels = getattr(config, "num_labels", None)
    if task == "auto":
        task = infer_task(model) if model is not None else None
        if task is None:
            return Task(name="unknown", label_kind=None, ignore_index=ignore_index)
    if task == "sequence_classification" and problem_type in ("multi_label_classification", "regression"):
        task = PROBLEM_TYPES[problem_type]
    if task == "sequence_classification":
        kind = "index" if problem_type == "single_label_classification" else None
        return SequenceClassificationTask(
            name=task, label_kind=kind, ignore_index=ignore_index, problem_type=problem_type, num_labels=num_labels
        )
    if task == "multi_label":
        return MultiLabelTask(name=task, ignore_index=ignore_index)
    if task == "regression":
        return RegressionTask(name=task, ignore_index=ignore_index)
    if task == "token_classification":
        return TokenClassificationTask(name=task, ignore_index=ignore_index)
    if task == "seq2seq_lm":
        return Seq2SeqLMTask(name=task, ignore_index=ignore_index)
    if task == "causal_lm":
        return CausalLMTask(name=task, ignore_index=ignore_index)
    return SemanticSegmentationTask(
        name=task,
        ignore_index=ignore_index,
        data_ignore_index=getattr(config, "semantic_loss_ignore_index", None),
        num_labels=num_labels,
    )
