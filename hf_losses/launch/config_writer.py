"""Write an Accelerate YAML (and, for DeepSpeed, the DeepSpeed JSON it points at) for a given machine shape.

The files in ``configs/`` are this module's output (:mod:`hf_losses.launch.shipped_configs`; a test checks they
are equal), so a config written for another number of GPUs, nodes, ZeRO stage or precision follows the same rules:

- Precision, gradient clipping, batch sizes and gradient accumulation come from ``TrainingArguments``
  (``--bf16``/``--fp16``, ``--max_grad_norm``, ``--per_device_train_batch_size``,
  ``--gradient_accumulation_steps``): the YAML says ``mixed_precision: 'no'`` and the DeepSpeed JSON says
  ``"auto"``, which the Trainer fills in. Passing ``mixed_precision="fp16"``/``"bf16"`` writes them explicitly
  instead; the training arguments must then agree (``check_launch_config`` says so before training starts).
- A DeepSpeed YAML names only ``deepspeed_config_file``: Accelerate refuses ``gradient_accumulation_steps`` or
  ``gradient_clipping`` inline next to a config file, and inline values would contradict ``TrainingArguments``.
- fp16 uses DeepSpeed's dynamic loss scaling (``loss_scale: 0``), spelled out in the JSON.

The parts: :mod:`~hf_losses.launch.accelerate_config` and :mod:`~hf_losses.launch.deepspeed_config` (the dicts),
:mod:`~hf_losses.launch.config_comments` (what the YAML's comments say), :mod:`~hf_losses.launch.rendering`
(the text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hf_losses.launch.accelerate_config import accelerate_config, runs_as
from hf_losses.launch.choices import MixedPrecision, ZeroStage
from hf_losses.launch.config_comments import header, key_comments
from hf_losses.launch.deepspeed_config import deepspeed_config
from hf_losses.launch.rendering import render_json, render_yaml


@dataclass(frozen=True)
class LaunchConfigFiles:
    """What :func:`write_launch_config` wrote."""

    accelerate_config: Path
    deepspeed_config: Path | None
    #: the YAML's distributed_type
    distributed_type: str
    #: what the training processes run as (MULTI_CPU for CPU processes)
    runs_as: str


@dataclass(frozen=True)
class LaunchConfigTexts:
    """The text of a launch config: the accelerate YAML and, for DeepSpeed, the JSON it points at."""

    accelerate_yaml: str
    deepspeed_json: str | None
    distributed_type: str
    runs_as: str


def write_launch_config(
    output_dir: str | Path,
    *,
    num_processes: int = 1,
    num_machines: int = 1,
    use_cpu: bool = False,
    zero_stage: ZeroStage | None = None,
    offload: bool = False,
    fsdp: bool = False,
    mixed_precision: MixedPrecision = "auto",
    name: str | None = None,
    deepspeed_config_file: str | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
) -> LaunchConfigFiles:
    """Write ``<name>.yaml`` (and ``<name>.json`` for DeepSpeed) into ``output_dir`` and return their paths.

    Args:
        output_dir: folder to write into (created if missing).
        num_processes: total processes over all machines (GPUs, or CPU processes with ``use_cpu``).
        num_machines: nodes; ``num_processes`` must be a multiple of it.
        use_cpu: CPU processes with gloo (run as ``MULTI_CPU``); not with DeepSpeed (which finds the CPU by itself and
            needs ``ddp_backend="gloo"``, chosen by ``LossTrainingArguments``) nor FSDP (Accelerate would
            silently run DDP).
        zero_stage: ``None`` = no DeepSpeed; 0, 1, 2 or 3 = DeepSpeed with that ZeRO stage.
        offload: ZeRO-2/3 optimizer states (and ZeRO-3 parameters) in CPU memory.
        fsdp: PyTorch FSDP2 instead of DDP (GPUs only).
        mixed_precision: ``"auto"`` (default) = take ``--fp16``/``--bf16`` from the training arguments;
            ``"no"``, ``"fp16"``, ``"bf16"`` = write it into the files (the arguments must agree).
        name: file stem; default ``"accelerate"`` / ``"deepspeed"``-style names from the settings.
        deepspeed_config_file: how the YAML refers to the JSON; default its absolute path, so the YAML works
            from any working directory.
        main_process_ip, main_process_port: rank-0 address for several machines.

    Returns:
        :class:`LaunchConfigFiles` with the written paths and the distributed type.
    """
    output_dir = Path(output_dir)
    stem = name or default_name(
        num_processes=num_processes,
        num_machines=num_machines,
        use_cpu=use_cpu,
        zero_stage=zero_stage,
        offload=offload,
        fsdp=fsdp,
    )
    json_path = output_dir / f"{stem}.json" if zero_stage is not None else None
    if json_path is not None and deepspeed_config_file is None:
        deepspeed_config_file = str(json_path.resolve())
    texts = launch_config_texts(
        num_processes=num_processes,
        num_machines=num_machines,
        use_cpu=use_cpu,
        zero_stage=zero_stage,
        offload=offload,
        fsdp=fsdp,
        mixed_precision=mixed_precision,
        deepspeed_config_file=deepspeed_config_file,
        main_process_ip=main_process_ip,
        main_process_port=main_process_port,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    if json_path is not None and texts.deepspeed_json is not None:
        json_path.write_text(texts.deepspeed_json)
    yaml_path = output_dir / f"{stem}.yaml"
    yaml_path.write_text(texts.accelerate_yaml)
    return LaunchConfigFiles(yaml_path, json_path, texts.distributed_type, texts.runs_as)


def launch_config_texts(
    *,
    num_processes: int = 1,
    num_machines: int = 1,
    use_cpu: bool = False,
    zero_stage: ZeroStage | None = None,
    offload: bool = False,
    fsdp: bool = False,
    mixed_precision: MixedPrecision = "auto",
    deepspeed_config_file: str | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
    shipped_name: str | None = None,
) -> LaunchConfigTexts:
    """The YAML (and DeepSpeed JSON) text for these settings; ``shipped_name`` names a preset in the header.

    Raises ``ValueError`` for settings that cannot work, before anything is written.
    """
    deepspeed_json = None
    if zero_stage is not None:
        deepspeed_json = render_json(deepspeed_config(zero_stage, offload=offload, mixed_precision=mixed_precision))
    elif offload:
        raise ValueError("config writer: `offload` needs DeepSpeed (zero_stage 2 or 3).")
    config = accelerate_config(
        num_processes=num_processes,
        num_machines=num_machines,
        use_cpu=use_cpu,
        zero_stage=zero_stage,
        fsdp=fsdp,
        mixed_precision=mixed_precision,
        deepspeed_config_file=deepspeed_config_file,
        main_process_ip=main_process_ip,
        main_process_port=main_process_port,
    )
    comments = header(
        config, zero_stage=zero_stage, offload=offload, mixed_precision=mixed_precision, shipped_name=shipped_name
    )
    accelerate_yaml = render_yaml(config, comments, key_comments(config))
    distributed_type = config["distributed_type"]
    return LaunchConfigTexts(
        accelerate_yaml, deepspeed_json, distributed_type, runs_as(distributed_type, use_cpu=use_cpu)
    )


def default_name(
    *, num_processes: int, num_machines: int, use_cpu: bool, zero_stage: int | None, offload: bool, fsdp: bool
) -> str:
    """The file stem for these settings, e.g. ``deepspeed_zero3_offload`` or ``cpu_multiprocess``."""
    if zero_stage is not None:
        return f"deepspeed_zero{zero_stage}" + ("_offload" if offload else "")
    if fsdp:
        return "fsdp"
    if num_machines > 1:
        return "multi_node"
    if num_processes > 1:
        return "cpu_multiprocess" if use_cpu else "multi_gpu_ddp"
    return "cpu" if use_cpu else "single_gpu"
