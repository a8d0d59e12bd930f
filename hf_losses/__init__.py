"""hf-losses: loss functions for Hugging Face training that stay exact under gradient accumulation,
several processes and mixed precision."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hf_losses.registry import describe_loss, get_loss, list_losses, register_loss

__version__ = "0.1.0"

__all__ = [
    "LossArgumentsMixin",
    "LossSeq2SeqTrainer",
    "LossSeq2SeqTrainingArguments",
    "LossTrainer",
    "LossTrainerMixin",
    "LossTrainingArguments",
    "__version__",
    "compute_loss_func",
    "describe_loss",
    "get_loss",
    "list_losses",
    "register_loss",
]

if TYPE_CHECKING:
    from hf_losses.trainers import (
        LossArgumentsMixin,
        LossSeq2SeqTrainer,
        LossSeq2SeqTrainingArguments,
        LossTrainer,
        LossTrainerMixin,
        LossTrainingArguments,
        compute_loss_func,
    )


#: names served by ``hf_losses.trainers`` (imported on first use)
_TRAINER_NAMES = tuple(name for name in __all__ if name.startswith("Loss")) + ("compute_loss_func",)


def __getattr__(name: str) -> Any:
    # transformers is imported only when the trainer is asked for: the losses work in a plain PyTorch loop.
    if name in _TRAINER_NAMES:
        from hf_losses import trainers

        return getattr(trainers, name)
    raise AttributeError(f"module 'hf_losses' has no attribute {name!r}")
