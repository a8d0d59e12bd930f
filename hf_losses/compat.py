"""Every branch that depends on the installed version of transformers or torch, in one place.

Each shim tests for the feature (not the version number), names the versions that need it, and says when it can
go: when the lowest version declared in ``pyproject.toml`` has the feature. ``tests/test_compat.py`` runs every
branch, the old one included, against stand-ins of the old signatures.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["autocast_dtype", "call_trainer_log", "counts_items_in_hook", "declare_loss_scaling"]


# ------------------------------------------------------------------------------------------ transformers
def call_trainer_log(log: Callable[..., None], logs: dict[str, float], start_time: float | None) -> None:
    """``Trainer.log(logs, start_time)``; transformers < 4.47 has no ``start_time`` parameter.

    Can go when ``transformers>=4.47`` is the lower bound.
    """
    if "start_time" in inspect.signature(log).parameters:
        log(logs, start_time)
    else:
        log(logs)


def counts_items_in_hook(trainer_class: type) -> bool:
    """Whether the Trainer counts ``num_items_in_batch`` in ``_get_num_items_in_batch`` (transformers >= 4.57).

    Before 4.57 ``get_batch_samples`` counts inline (``labels != -100``, once), so ``LossTrainer`` replaces the
    count there. Can go (with ``LossTrainer.get_batch_samples``) when ``transformers>=4.57`` is the lower bound.
    """
    return hasattr(trainer_class, "_get_num_items_in_batch")


def declare_loss_scaling(trainer: Any, scaled_for_accumulation: bool) -> None:
    """Tell the Trainer whether ``compute_loss`` already returns the loss scaled for gradient accumulation.

    transformers >= 5.19 reads ``loss_is_scaled_for_ga``; older versions skip the division by the accumulation
    steps when ``model_accepts_loss_kwargs`` is true and a count is passed -- which ``LossTrainer`` passes exactly
    for decomposable losses. Setting both covers every version. ``model_accepts_loss_kwargs`` can stop being set
    here when ``transformers>=5.19`` is the lower bound.
    """
    trainer.loss_is_scaled_for_ga = scaled_for_accumulation
    trainer.model_accepts_loss_kwargs = True


# ------------------------------------------------------------------------------------------ torch
def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype on ``device_type`` when autocast is on there, else None.

    torch < 2.4 has per-device functions (``is_autocast_cpu_enabled``, ``get_autocast_gpu_dtype``) instead of
    ``is_autocast_enabled(device_type)`` / ``get_autocast_dtype(device_type)``. Can go when ``torch>=2.4`` is the
    lower bound.
    """
    try:
        enabled = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if enabled else None
    except (TypeError, RuntimeError, AttributeError):
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        return None
