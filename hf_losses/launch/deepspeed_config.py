"""The DeepSpeed JSON of a launch: ZeRO settings per stage, with everything ``TrainingArguments`` decides left
``"auto"`` (batch sizes, gradient accumulation, clipping, precision, optimizer hyper-parameters).

fp16 uses DeepSpeed's dynamic loss scaling (``loss_scale: 0``), spelled out in the JSON.
"""

from __future__ import annotations

import copy
from typing import Any

from hf_losses.launch.choices import MIXED_PRECISIONS, ZERO_STAGES, MixedPrecision, ZeroStage, check_choice

#: DeepSpeed's dynamic loss scaling for fp16: start at 2**16, halve on overflow (the step is skipped) once the
#: ``hysteresis`` budget of consecutive overflows is used, double after ``loss_scale_window`` clean steps,
#: never below ``min_loss_scale``. ``loss_scale: 0`` selects dynamic scaling (a positive value is a fixed scale).
FP16_DYNAMIC_LOSS_SCALING: dict[str, Any] = {
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "consecutive_hysteresis": False,
    "min_loss_scale": 1,
}

#: ``zero_optimization`` entries after ``stage``, for ZeRO-1/2 and for ZeRO-3
ZERO_1_2_SETTINGS: dict[str, Any] = {
    "allgather_partitions": True,
    "allgather_bucket_size": 200_000_000,
    "overlap_comm": True,
    "reduce_scatter": True,
    "reduce_bucket_size": "auto",
    "contiguous_gradients": True,
}
ZERO_3_SETTINGS: dict[str, Any] = {
    "overlap_comm": True,
    "contiguous_gradients": True,
    "sub_group_size": 1_000_000_000,
    "reduce_bucket_size": "auto",
    "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto",
    "stage3_max_live_parameters": 1_000_000_000,
    "stage3_max_reuse_distance": 1_000_000_000,
    "stage3_gather_16bit_weights_on_model_save": True,
}

#: DeepSpeed's own (CPU) AdamW, written only with offload; ``"auto"`` = ``--learning_rate``, ``--adam_beta1`` ...
OFFLOAD_OPTIMIZER: dict[str, Any] = {
    "type": "AdamW",
    "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
}

#: what the Trainer fills in from TrainingArguments, and DeepSpeed's own logging kept quiet
TRAINER_FILLED_SETTINGS: dict[str, Any] = {
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "steps_per_print": 1_000_000,
    "wall_clock_breakdown": False,
}


def deepspeed_config(
    zero_stage: ZeroStage = 2, *, offload: bool = False, mixed_precision: MixedPrecision = "auto"
) -> dict[str, Any]:
    """A DeepSpeed config dict whose batch sizes, accumulation, clipping and precision follow TrainingArguments.

    ``offload`` moves optimizer states (ZeRO-2/3) and parameters (ZeRO-3) to CPU memory and selects DeepSpeed's
    CPU Adam (an optimizer block with ``"auto"`` hyper-parameters, filled from ``--learning_rate`` etc.); without
    offload no optimizer block is written, so the Trainer's own optimizer (``--optim``) is used.
    """
    check_choice("zero_stage", zero_stage, ZERO_STAGES)
    check_choice("mixed_precision", mixed_precision, MIXED_PRECISIONS)
    if offload and zero_stage not in (2, 3):
        raise ValueError(f"config writer: `offload` needs zero_stage 2 or 3, got zero_stage={zero_stage}.")
    fp16_enabled, bf16_enabled = _precision_flags(mixed_precision)
    config: dict[str, Any] = {
        "fp16": {"enabled": fp16_enabled, **FP16_DYNAMIC_LOSS_SCALING},
        "bf16": {"enabled": bf16_enabled},
        "zero_optimization": zero_optimization(zero_stage, offload=offload),
    }
    if offload:
        config["optimizer"] = copy.deepcopy(OFFLOAD_OPTIMIZER)
    config.update(TRAINER_FILLED_SETTINGS)
    return config


def zero_optimization(zero_stage: int, *, offload: bool = False) -> dict[str, Any]:
    """The ``zero_optimization`` block: the stage, its bucket settings, and CPU offload when asked."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage in (1, 2):
        zero.update(ZERO_1_2_SETTINGS)
    elif zero_stage == 3:
        zero.update(ZERO_3_SETTINGS)
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return zero


def _precision_flags(mixed_precision: str) -> tuple[Any, Any]:
    """``(fp16.enabled, bf16.enabled)``: ``"auto"`` for both, or the explicit choice."""
    if mixed_precision == "auto":
        return "auto", "auto"
    return mixed_precision == "fp16", mixed_precision == "bf16"
