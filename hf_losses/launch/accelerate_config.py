"""The Accelerate YAML of a launch (what ``accelerate config`` would save): the machine shape only.

Precision, gradient clipping, batch sizes and gradient accumulation come from ``TrainingArguments``: the YAML says
``mixed_precision: 'no'`` unless a precision is asked for explicitly (the training arguments must then agree,
``check_launch_config`` says so before training starts). A DeepSpeed YAML names only ``deepspeed_config_file``:
Accelerate refuses ``gradient_accumulation_steps``, ``gradient_clipping`` or ``mixed_precision`` inline next to a
config file, and inline values would contradict ``TrainingArguments``.
"""

from __future__ import annotations

import copy
from typing import Any

from hf_losses.launch.choices import MIXED_PRECISIONS, MixedPrecision, ZeroStage, check_choice

#: ``fsdp_config`` of an FSDP YAML: FSDP2, full sharding, one unit per transformer block
FSDP2_SETTINGS: dict[str, Any] = {
    "fsdp_version": 2,
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "fsdp_cpu_ram_efficient_loading": True,
    "fsdp_offload_params": False,
    "fsdp_reshard_after_forward": True,
    "fsdp_state_dict_type": "FULL_STATE_DICT",
    "fsdp_activation_checkpointing": False,
}

#: rank-0 address written for several machines when none is given (a placeholder to change per cluster)
DEFAULT_MAIN_PROCESS_IP = "10.0.0.1"
DEFAULT_MAIN_PROCESS_PORT = 29500


def distributed_type_for(*, num_processes: int, use_cpu: bool, zero_stage: int | None, fsdp: bool) -> str:
    """The ``distributed_type`` written into the accelerate YAML (DEEPSPEED, FSDP, MULTI_GPU or NO).

    Several CPU processes are written as MULTI_GPU with ``use_cpu: true``: ``accelerate launch`` starts local
    processes (through torchrun) only for multi-GPU-type configs -- its MULTI_CPU type launches through
    ``mpirun`` and otherwise starts ONE process. The processes then run as MULTI_CPU with gloo because
    ``LossTrainingArguments`` selects ``use_cpu`` and gloo on a machine without GPUs (see :func:`runs_as`).
    """
    if zero_stage is not None:
        return "DEEPSPEED"
    if fsdp:
        return "FSDP"
    if num_processes > 1:
        return "MULTI_GPU"
    return "NO"


def runs_as(distributed_type: str, *, use_cpu: bool) -> str:
    """The distributed type the training processes get at run time (``Accelerator.distributed_type``)."""
    return "MULTI_CPU" if distributed_type == "MULTI_GPU" and use_cpu else distributed_type


def accelerate_config(
    *,
    num_processes: int = 1,
    num_machines: int = 1,
    use_cpu: bool = False,
    zero_stage: ZeroStage | None = None,
    fsdp: bool = False,
    mixed_precision: MixedPrecision = "auto",
    deepspeed_config_file: str | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
) -> dict[str, Any]:
    """The Accelerate config dict (what ``accelerate config`` would save) for these settings, keys sorted."""
    check_shape(num_processes, num_machines, use_cpu, zero_stage, fsdp)
    check_choice("mixed_precision", mixed_precision, MIXED_PRECISIONS)
    distributed_type = distributed_type_for(
        num_processes=num_processes, use_cpu=use_cpu, zero_stage=zero_stage, fsdp=fsdp
    )
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": distributed_type,
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
        "machine_rank": 0,
        "main_training_function": "main",
        "num_machines": num_machines,
        "num_processes": num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": use_cpu,
    }
    if distributed_type == "DEEPSPEED":
        config["deepspeed_config"] = _deepspeed_section(zero_stage, num_machines, deepspeed_config_file)
    else:
        # next to a deepspeed_config_file Accelerate refuses mixed_precision: the JSON holds the precision
        config["mixed_precision"] = "no" if mixed_precision == "auto" else mixed_precision
    if distributed_type == "FSDP":
        config["fsdp_config"] = copy.deepcopy(FSDP2_SETTINGS)
    if not use_cpu:
        config["gpu_ids"] = "all"
    config.update(_main_process_address(num_machines, main_process_ip, main_process_port))
    return dict(sorted(config.items()))


def check_shape(num_processes: int, num_machines: int, use_cpu: bool, zero_stage: int | None, fsdp: bool) -> None:
    """Raise ``ValueError`` for a machine shape that cannot work (or would silently run as something else)."""
    for label, value in (("num_processes", num_processes), ("num_machines", num_machines)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config writer: `{label}` must be an int >= 1, got {value!r}.")
    if num_processes % num_machines:
        raise ValueError(
            f"config writer: `num_processes` ({num_processes}) counts processes over all machines and "
            f"must be a multiple of `num_machines` ({num_machines})."
        )
    if zero_stage is not None and fsdp:
        raise ValueError("config writer: choose DeepSpeed (`zero_stage`) or `fsdp`, not both.")
    if zero_stage is not None and use_cpu:
        raise ValueError(
            "config writer: DeepSpeed with `use_cpu=True` would not start DeepSpeed at all; leave "
            "use_cpu False: on a machine without GPUs DeepSpeed runs on CPU with the gloo backend "
            "that LossTrainingArguments selects."
        )
    if fsdp and use_cpu:
        raise ValueError("config writer: FSDP with `use_cpu=True` silently runs DDP in Accelerate; FSDP needs GPUs.")


def _deepspeed_section(zero_stage: int | None, num_machines: int, deepspeed_config_file: str | None) -> dict[str, Any]:
    """``deepspeed_config`` of a DeepSpeed YAML: the JSON's path, the ZeRO-3 init flag and the multi-node launcher.

    The launcher is always ``standard`` (torchrun on each machine): Accelerate reads it only with several machines,
    and without it ``--num_machines N`` on a shipped single-node file falls back to pdsh, where each machine
    trains alone without an error.
    """
    if deepspeed_config_file is None:
        raise ValueError("config writer: a DeepSpeed config needs `deepspeed_config_file` (the JSON's path).")
    return {
        "deepspeed_config_file": deepspeed_config_file,
        "deepspeed_multinode_launcher": "standard",
        "zero3_init_flag": zero_stage == 3,
    }


def _main_process_address(num_machines: int, ip: str | None, port: int | None) -> dict[str, Any]:
    """Rank 0's address: always for several machines (placeholders if not given), else only a given port."""
    if num_machines > 1:
        return {
            "main_process_ip": ip or DEFAULT_MAIN_PROCESS_IP,
            "main_process_port": port or DEFAULT_MAIN_PROCESS_PORT,
        }
    return {} if port is None else {"main_process_port": port}
