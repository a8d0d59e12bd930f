"""Every branch that depends on the installed version of transformers or torch, in one place.

Each shim tests for the feature (not the version number), names the versions that need it, and says when it can
go: when the lowest version declared in ``pyproject.toml`` has the feature. ``tests/test_compat.py`` runs every
branch, the old one included, against stand-ins of the old signatures; ``scripts/test_min_versions.sh`` runs the
trainer tests on the lowest declared versions (transformers 4.57, accelerate 1.4, datasets 3.0).

Gone with ``transformers>=4.57``: the ``Trainer.log(logs)`` signature without ``start_time`` (< 4.47) and the item
count inside ``get_batch_samples`` without the ``_get_num_items_in_batch`` hook (< 4.57).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["autocast_dtype", "declare_loss_scaling"]


# ------------------------------------------------------------------------------------------ transformers
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
