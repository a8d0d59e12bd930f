"""How the trainer calls a loss, chosen once by the loss's type: what a batch holds for it (its item counts) and
how a training or evaluation step turns the model's forward pass into its value.

* :class:`ModelLossCall` -- ``loss_type="auto"``: the model's own (per-batch mean) loss, rescaled to its share of
  the step's global mean;
* :class:`LogitsLossCall` -- a :class:`~hf_losses.losses.base.LogitsLoss` (or any loss module on logits): the
  task reads ``(logits, labels)`` from the model's outputs;
* :class:`HiddenStatesLossCall` -- a :class:`~hf_losses.losses.base.HiddenStatesLoss`: the model runs with its LM
  head intercepted, and the loss gets the hidden states and the head's weight instead of the logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hf_losses.losses.base import HiddenStatesLoss
from hf_losses.tasks import Task, raw_data_weight
from hf_losses.trainers.hidden_states import lm_hidden_states_and_head

#: ``num_items_in_batch`` unit used for the model's own loss (``loss_type="auto"``)
MODEL_LOSS_UNIT = "model_loss_items"


class LossCall:
    """The interface: ``num_items(batch)`` before the step, ``call(model, inputs, num_items_in_batch)`` in it."""

    def __init__(self, loss: nn.Module | None, task: Task) -> None:
        self.loss = loss
        self.task = task

    def num_items(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Local item count per unit of one micro-batch (summed by the trainer over the window and processes)."""
        raise NotImplementedError

    def call(self, model: nn.Module, inputs: Mapping[str, Any], num_items_in_batch: Any) -> tuple[Tensor, Any]:
        """``(loss, model outputs)`` for one micro-batch."""
        raise NotImplementedError

    def loss_inputs(self, model: nn.Module, inputs: Mapping[str, Any], model_inputs: Mapping[str, Any]) -> dict:
        """Keyword inputs of the loss beyond the model's outputs and the labels: the batch's data weights
        (``sample_weight`` / ``token_weight`` columns); subclasses add theirs (a teacher's outputs)."""
        weight = self.data_weight(inputs)
        return {} if weight is None else {"sample_weight": weight}

    def data_weight(self, inputs: Mapping[str, Any]) -> Tensor | None:
        """The batch's data weights as the loss takes them (hidden-state losses: as the collator gives them)."""
        return raw_data_weight(inputs)


class ModelLossCall(LossCall):
    """The model's own loss: a mean over the batch's items, turned into ``local sum / global count``."""

    def num_items(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {MODEL_LOSS_UNIT: self.task.model_loss_items(batch)}

    def call(self, model: nn.Module, inputs: Mapping[str, Any], num_items_in_batch: Any) -> tuple[Tensor, Any]:
        outputs = model(**inputs)  # num_items_in_batch is not passed: every model then returns a local mean
        if isinstance(outputs, Mapping):
            if outputs.get("loss") is None:
                raise ValueError(
                    f"LossTrainer: loss_type='auto' but the model returned no loss (keys: "
                    f"{', '.join(outputs.keys())}); give it labels, or name a loss with `loss_type`."
                )
            loss = outputs["loss"]
        else:
            loss = outputs[0]
        if num_items_in_batch is None:
            return loss, outputs
        local = self.task.model_loss_items(inputs).to(device=loss.device, dtype=torch.float32)
        total = num_items_in_batch[MODEL_LOSS_UNIT].to(device=loss.device, dtype=torch.float32).clamp(min=1.0)
        # a micro-batch with no item has a NaN mean (0/0) and zero gradient: it contributes 0
        loss = torch.where(local > 0, loss.float() * (local / total), torch.zeros_like(loss, dtype=torch.float32))
        return loss, outputs


class LogitsLossCall(LossCall):
    """A loss on the logits the task reads from the model's outputs."""

    def data_weight(self, inputs: Mapping[str, Any]) -> Tensor | None:
        """Aligned with the labels the task hands the loss (flattened, shifted for a causal LM)."""
        return self.task.loss_weights(inputs)

    def num_items(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        weight = self.data_weight(batch)
        if weight is None:
            return dict(self.loss.num_items(self.task.loss_labels(batch)))
        return dict(self.loss.num_items(self.task.loss_labels(batch), sample_weight=weight))

    def call(self, model: nn.Module, inputs: Mapping[str, Any], num_items_in_batch: Any) -> tuple[Tensor, Any]:
        model_inputs = self.task.model_inputs(model, inputs)
        outputs = model(**model_inputs)
        logits, labels = self.task.read(outputs, inputs)
        extra = self.loss_inputs(model, inputs, model_inputs)
        return self.loss(logits, labels, num_items_in_batch=num_items_in_batch, **extra), outputs


class HiddenStatesLossCall(LossCall):
    """A loss on the final hidden states and the LM head; the full logits are never computed."""

    def num_items(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        weight = self.data_weight(batch)
        extra = {} if weight is None else {"sample_weight": weight}
        return dict(self.loss.num_items(batch.get("labels"), shift_labels=batch.get("shift_labels"), **extra))

    def call(self, model: nn.Module, inputs: Mapping[str, Any], num_items_in_batch: Any) -> tuple[Tensor, Any]:
        model_inputs = self.task.model_inputs(model, inputs)
        hidden_states, weight, bias = lm_hidden_states_and_head(model, model_inputs, loss=self.loss)
        loss = self.loss(
            hidden_states,
            inputs.get("labels"),
            weight=weight,
            bias=bias,
            num_items_in_batch=num_items_in_batch,
            shift_labels=inputs.get("shift_labels"),
            **self.loss_inputs(model, inputs, model_inputs),
        )
        return loss, {"last_hidden_state": hidden_states}


def loss_call_for(loss: nn.Module | None, task: Task, teacher: Any = None) -> LossCall:
    """The one dispatch on the loss's type, and on whether it distils from a ``teacher``
    (:class:`~hf_losses.trainers.teacher.Teacher`)."""
    if teacher is not None or getattr(loss, "needs_teacher", False):
        from hf_losses.trainers.teacher import teacher_loss_call  # teacher.py builds on the calls above

        return teacher_loss_call(loss, task, teacher)
    if loss is None:
        return ModelLossCall(loss, task)
    if isinstance(loss, HiddenStatesLoss):
        return HiddenStatesLossCall(loss, task)
    return LogitsLossCall(loss, task)
