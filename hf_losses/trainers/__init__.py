"""Trainer integration: the loss flags (``LossTrainingArguments``, ``LossSeq2SeqTrainingArguments``, or
``LossArgumentsMixin`` for your own arguments) and the trainers (``LossTrainer``, ``LossSeq2SeqTrainer``, or
``LossTrainerMixin`` before your own Trainer subclass), and ``compute_loss_func`` for the stock Trainer."""

from hf_losses.trainers.arguments import LossArgumentsMixin, LossSeq2SeqTrainingArguments, LossTrainingArguments
from hf_losses.trainers.loss_function import compute_loss_func
from hf_losses.trainers.mixin import LossTrainerMixin
from hf_losses.trainers.trainer import LossSeq2SeqTrainer, LossTrainer

__all__ = [
    "LossArgumentsMixin",
    "LossSeq2SeqTrainer",
    "LossSeq2SeqTrainingArguments",
    "LossTrainer",
    "LossTrainerMixin",
    "LossTrainingArguments",
    "compute_loss_func",
]
