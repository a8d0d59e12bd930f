"""The trainers users instantiate: :class:`LossTrainer` (``Trainer``) and :class:`LossSeq2SeqTrainer`
(``Seq2SeqTrainer``), each the :class:`~hf_losses.trainers.mixin.LossTrainerMixin` before the transformers class."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import Seq2SeqTrainer, Trainer

from hf_losses.trainers.mixin import LossTrainerMixin


class LossTrainer(LossTrainerMixin, Trainer):
    """``transformers.Trainer`` whose loss is named by ``LossTrainingArguments.loss_type`` (or given as ``loss=``).

    Use it as the stock Trainer: ``LossTrainer(model=model, args=LossTrainingArguments(..., loss_type="focal"),
    train_dataset=...)``. With plain ``TrainingArguments`` it trains the model's own loss, exactly.
    """


class LossSeq2SeqTrainer(LossTrainerMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` with the loss named by ``LossSeq2SeqTrainingArguments.loss_type``, computed on
    the decoder's logits and labels (token by token, ``-100`` ignored); ``predict_with_generate`` works as before."""

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """With ``predict_with_generate`` the stock step reports the model's own loss: report ours instead (one
        more forward pass, evaluation only), so ``eval_loss`` is the training loss as for every other trainer."""
        loss, generated, labels = super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
        )
        generating = self.args.predict_with_generate and not prediction_loss_only
        if generating and self.loss is not None and loss is not None:
            self._predicting = True
            try:
                with torch.no_grad():
                    loss = self.compute_loss(model, self._prepare_inputs(inputs)).detach()
            finally:
                self._predicting = False
        return loss, generated, labels
