"""Trainer integration: ``LossTrainingArguments`` (loss flags) and ``LossTrainer`` (exact loss scaling)."""

from hf_losses.trainers.arguments import LossTrainingArguments
from hf_losses.trainers.trainer import LossTrainer

__all__ = ["LossTrainer", "LossTrainingArguments"]
