"""Write an Accelerate YAML (and, for DeepSpeed, the DeepSpeed JSON it points at) for a given machine shape.

The files in ``configs/`` are this module's output (``write_shipped_configs``; a test checks they are equal), so
a config written for another number of GPUs, nodes, ZeRO stage or precision follows the same rules:

- Precision, gradient clipping, batch sizes and gradient accumulation come from ``TrainingArguments``
  (``--bf16``/``--fp16``, ``--max_grad_norm``, ``--per_device_train_batch_size``,
  ``--gradient_accumulation_steps``): the YAML says ``mixed_precision: 'no'`` and the DeepSpeed JSON says
  ``"auto"``, which the Trainer fills in. Passing ``mixed_precision="fp16"``/``"bf16"`` writes them explicitly
  instead; the training arguments must then agree (``check_launch_config`` says so before training starts).
- A DeepSpeed YAML names only ``deepspeed_config_file``: Accelerate refuses ``gradient_accumulation_steps`` or
  ``gradient_clipping`` inline next to a config file, and inline values would contradict ``TrainingArguments``.
- fp16 uses DeepSpeed's dynamic loss scaling (``loss_scale: 0``), spelled out in the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
ZeroStage = Literal[0, 1, 2, 3]

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


@dataclass(frozen=True)
class LaunchConfigFiles:
    """What :func:`write_launch_config` wrote."""

    accelerate_config: Path
    deepspeed_config: Path | None
    #: the YAML's distributed_type
    distributed_type: str
    #: what the training processes run as (MULTI_CPU for CPU processes)
    runs_as: str


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


def deepspeed_config(zero_stage: ZeroStage = 2, *, offload: bool = False,
                     mixed_precision: MixedPrecision = "auto") -> dict[str, Any]:
    """A DeepSpeed config dict whose batch sizes, accumulation, clipping and precision follow TrainingArguments.

    ``offload`` moves optimizer states (ZeRO-2/3) and parameters (ZeRO-3) to CPU memory and selects DeepSpeed's
    CPU Adam (an optimizer block with ``"auto"`` hyper-parameters, filled from ``--learning_rate`` etc.); without
    offload no optimizer block is written, so the Trainer's own optimizer (``--optim``) is used.
    """
    _check_choice("zero_stage", zero_stage, (0, 1, 2, 3))
    _check_choice("mixed_precision", mixed_precision, ("auto", "no", "fp16", "bf16"))
    if offload and zero_stage not in (2, 3):
        raise ValueError(f"config writer: `offload` needs zero_stage 2 or 3, got zero_stage={zero_stage}.")
    if mixed_precision == "auto":
        fp16_enabled: Any = "auto"
        bf16_enabled: Any = "auto"
    else:
        fp16_enabled = mixed_precision == "fp16"
        bf16_enabled = mixed_precision == "bf16"

    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage in (1, 2):
        zero.update({
            "allgather_partitions": True,
            "allgather_bucket_size": 200_000_000,
            "overlap_comm": True,
            "reduce_scatter": True,
            "reduce_bucket_size": "auto",
            "contiguous_gradients": True,
        })
    elif zero_stage == 3:
        zero.update({
            "overlap_comm": True,
            "contiguous_gradients": True,
            "sub_group_size": 1_000_000_000,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict[str, Any] = {
        "fp16": {"enabled": fp16_enabled, **FP16_DYNAMIC_LOSS_SCALING},
        "bf16": {"enabled": bf16_enabled},
        "zero_optimization": zero,
    }
    if offload:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    config.update({
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    })
    return config


def accelerate_config(*, num_processes: int = 1, num_machines: int = 1, use_cpu: bool = False,
                      zero_stage: ZeroStage | None = None, fsdp: bool = False,
                      mixed_precision: MixedPrecision = "auto", deepspeed_config_file: str | None = None,
                      main_process_ip: str | None = None, main_process_port: int | None = None) -> dict[str, Any]:
    """The Accelerate config dict (what ``accelerate config`` would save) for these settings."""
    _check_shape(num_processes, num_machines, use_cpu, zero_stage, fsdp)
    _check_choice("mixed_precision", mixed_precision, ("auto", "no", "fp16", "bf16"))
    distributed_type = distributed_type_for(num_processes=num_processes, use_cpu=use_cpu, zero_stage=zero_stage,
                                            fsdp=fsdp)
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": distributed_type,
    }
    if distributed_type == "DEEPSPEED":
        if deepspeed_config_file is None:
            raise ValueError("config writer: a DeepSpeed config needs `deepspeed_config_file` (the JSON's path).")
        config["deepspeed_config"] = {
            "deepspeed_config_file": deepspeed_config_file,
            "zero3_init_flag": zero_stage == 3,
        }
        if num_machines > 1:
            config["deepspeed_config"]["deepspeed_multinode_launcher"] = "standard"
    if distributed_type == "FSDP":
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_activation_checkpointing": False,
        }
    config.update({
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
        "machine_rank": 0,
        "main_training_function": "main",
        "num_machines": num_machines,
        "num_processes": num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": use_cpu,
    })
    if distributed_type != "DEEPSPEED":
        # next to a deepspeed_config_file Accelerate refuses mixed_precision: the JSON holds the precision
        config["mixed_precision"] = "no" if mixed_precision == "auto" else mixed_precision
    if not use_cpu:
        config["gpu_ids"] = "all"
    if num_machines > 1:
        config["main_process_ip"] = main_process_ip or "10.0.0.1"
        config["main_process_port"] = main_process_port or 29500
    elif main_process_port is not None:
        config["main_process_port"] = main_process_port
    return dict(sorted(config.items()))


def render_yaml(config: Mapping[str, Any], header: str = "", comments: Mapping[str, str] | None = None) -> str:
    """YAML text for an accelerate config: a ``#`` header, then one key per line with optional ``# why`` notes.

    ``comments`` maps a top-level key (or ``"parent.child"``) to a note written on the line above it.
    """
    comments = comments or {}
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()] if header.strip() else []

    def emit(key: str, value: Any, indent: str, path: str) -> None:
        if path in comments:
            lines.extend(f"{indent}# {line}".rstrip() for line in comments[path].strip().splitlines())
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key}:")
            for child_key, child_value in value.items():
                emit(child_key, child_value, indent + "  ", f"{path}.{child_key}")
        else:
            lines.append(f"{indent}{key}: {_yaml_scalar(value)}")

    for key, value in config.items():
        emit(key, value, "", key)
    return "\n".join(lines) + "\n"


def render_json(config: Mapping[str, Any]) -> str:
    """JSON text as shipped: two-space indent, trailing newline."""
    return json.dumps(config, indent=2) + "\n"


def write_launch_config(output_dir: str | Path, *, num_processes: int = 1, num_machines: int = 1,
                        use_cpu: bool = False, zero_stage: ZeroStage | None = None, offload: bool = False,
                        fsdp: bool = False, mixed_precision: MixedPrecision = "auto", name: str | None = None,
                        deepspeed_config_file: str | None = None, main_process_ip: str | None = None,
                        main_process_port: int | None = None) -> LaunchConfigFiles:
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
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = name or _default_name(num_processes=num_processes, num_machines=num_machines, use_cpu=use_cpu,
                                 zero_stage=zero_stage, offload=offload, fsdp=fsdp)
    json_path = None
    if zero_stage is not None:
        json_path = output_dir / f"{stem}.json"
        json_path.write_text(render_json(deepspeed_config(zero_stage, offload=offload,
                                                          mixed_precision=mixed_precision)))
        if deepspeed_config_file is None:
            deepspeed_config_file = str(json_path.resolve())
    elif offload:
        raise ValueError("config writer: `offload` needs DeepSpeed (zero_stage 2 or 3).")
    config = accelerate_config(num_processes=num_processes, num_machines=num_machines, use_cpu=use_cpu,
                               zero_stage=zero_stage, fsdp=fsdp, mixed_precision=mixed_precision,
                               deepspeed_config_file=deepspeed_config_file, main_process_ip=main_process_ip,
                               main_process_port=main_process_port)
    yaml_path = output_dir / f"{stem}.yaml"
    yaml_path.write_text(render_yaml(config, _header(config, zero_stage=zero_stage, offload=offload,
                                                     mixed_precision=mixed_precision),
                                     _comments(config)))
    return LaunchConfigFiles(yaml_path, json_path, config["distributed_type"],
                             runs_as(config["distributed_type"], use_cpu=use_cpu))


# ------------------------------------------------------------------ the files shipped in configs/
#: name in configs/accelerate -> write_launch_config arguments (DeepSpeed JSONs go to configs/deepspeed)
SHIPPED_ACCELERATE_CONFIGS: dict[str, dict[str, Any]] = {
    "cpu_multiprocess": {"num_processes": 2, "use_cpu": True},
    "single_gpu": {"num_processes": 1},
    "multi_gpu_ddp": {"num_processes": 8},
    "fsdp": {"num_processes": 8, "fsdp": True},
    "deepspeed_zero2": {"num_processes": 8, "zero_stage": 2, "json": "zero2"},
    "deepspeed_zero3": {"num_processes": 8, "zero_stage": 3, "json": "zero3"},
    "deepspeed_zero3_offload": {"num_processes": 8, "zero_stage": 3, "offload": True, "json": "zero3_offload"},
    "multi_node": {"num_processes": 16, "num_machines": 2, "main_process_ip": "10.0.0.1",
                   "main_process_port": 29500},
}


def shipped_config_texts() -> dict[str, str]:
    """``{relative path under configs/: text}`` for every shipped file, as the writer renders them."""
    texts: dict[str, str] = {}
    for name, settings in SHIPPED_ACCELERATE_CONFIGS.items():
        settings = dict(settings)
        json_name = settings.pop("json", None)
        zero_stage = settings.get("zero_stage")
        deepspeed_file = None
        if zero_stage is not None:
            deepspeed_file = f"configs/deepspeed/{json_name}.json"
            texts[f"deepspeed/{json_name}.json"] = render_json(
                deepspeed_config(zero_stage, offload=settings.get("offload", False)))
        config = accelerate_config(
            **{k: v for k, v in settings.items() if k != "offload"}, deepspeed_config_file=deepspeed_file)
        texts[f"accelerate/{name}.yaml"] = render_yaml(
            config, _header(config, zero_stage=zero_stage, offload=settings.get("offload", False),
                            mixed_precision="auto", shipped_name=name),
            _comments(config))
    return texts


def write_shipped_configs(config_root: str | Path) -> list[Path]:
    """Regenerate ``configs/`` (``python -m hf_losses.launch.config_writer configs``)."""
    written = []
    for relative, text in shipped_config_texts().items():
        path = Path(config_root) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


# ------------------------------------------------------------------ helpers
def _check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"config writer: `{name}` must be one of {list(allowed)}, got {value!r}.")


def _check_shape(num_processes: int, num_machines: int, use_cpu: bool, zero_stage: int | None, fsdp: bool) -> None:
    for label, value in (("num_processes", num_processes), ("num_machines", num_machines)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config writer: `{label}` must be an int >= 1, got {value!r}.")
    if num_processes % num_machines:
        raise ValueError(f"config writer: `num_processes` ({num_processes}) counts processes over all machines and "
                         f"must be a multiple of `num_machines` ({num_machines}).")
    if zero_stage is not None and fsdp:
        raise ValueError("config writer: choose DeepSpeed (`zero_stage`) or `fsdp`, not both.")
    if zero_stage is not None and use_cpu:
        raise ValueError("config writer: DeepSpeed with `use_cpu=True` would not start DeepSpeed at all; leave "
                         "use_cpu False: on a machine without GPUs DeepSpeed runs on CPU with the gloo backend "
                         "that LossTrainingArguments selects.")
    if fsdp and use_cpu:
        raise ValueError("config writer: FSDP with `use_cpu=True` silently runs DDP in Accelerate; FSDP needs GPUs.")


def _default_name(*, num_processes: int, num_machines: int, use_cpu: bool, zero_stage: int | None, offload: bool,
                  fsdp: bool) -> str:
    if zero_stage is not None:
        return f"deepspeed_zero{zero_stage}" + ("_offload" if offload else "")
    if fsdp:
        return "fsdp"
    if num_machines > 1:
        return "multi_node"
    if num_processes > 1:
        return "cpu_multiprocess" if use_cpu else "multi_gpu_ddp"
    return "cpu" if use_cpu else "single_gpu"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, str):
        # quote what YAML would read back as something else ('no' is a boolean in YAML 1.1)
        plain_ok = value and value != "all" and yaml.safe_load(value) == value and ": " not in value
        return value if plain_ok else "'" + value.replace("'", "''") + "'"
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _header(config: Mapping[str, Any], *, zero_stage: int | None, offload: bool, mixed_precision: str,
            shipped_name: str | None = None) -> str:
    kind = config["distributed_type"]
    processes, machines = config["num_processes"], config["num_machines"]
    what = {
        "NO": "one process (one GPU, or the CPU when none is present)",
        "MULTI_GPU": (f"DDP over {processes} CPU processes on this machine, gloo backend (no GPU needed)"
                      if config.get("use_cpu") else
                      f"DDP over {processes} GPUs" + (f" on {machines} machines" if machines > 1 else "")),
        "FSDP": f"PyTorch FSDP2 over {processes} GPUs (full sharding; needs GPUs: with use_cpu Accelerate runs DDP)",
        "DEEPSPEED": f"DeepSpeed ZeRO-{zero_stage}{' with CPU offload' if offload else ''} over {processes} "
                     f"processes (GPUs; on a machine without GPUs: CPU + gloo)",
    }[kind]
    lines = [
        f"Accelerate config: {what}.",
        "Written by hf_losses.launch.config_writer" + (f" (preset '{shipped_name}')." if shipped_name else "."),
        "Run: accelerate launch --config_file <this file> train.py --output_dir out ...",
    ]
    if kind != "NO":
        lines.append("`--num_processes N` on the command line overrides num_processes below.")
    if kind == "MULTI_GPU" and config.get("use_cpu"):
        lines += [
            "distributed_type is MULTI_GPU on purpose: only then does accelerate launch start the local processes",
            "(torchrun); its MULTI_CPU type needs mpirun and otherwise starts ONE process. The processes run as",
            "MULTI_CPU (DDP over gloo) because LossTrainingArguments picks use_cpu=True and ddp_backend=gloo when",
            "the machine has no GPU. On a machine with GPUs, or with the stock TrainingArguments, pass",
            "--use_cpu --ddp_backend gloo to the training script (accelerate does not forward use_cpu here).",
        ]
    if kind == "DEEPSPEED":
        lines.append("Batch sizes, gradient accumulation, clipping and precision live in the JSON" + (
            ' as "auto": they come' if mixed_precision == "auto" else ""))
        if mixed_precision == "auto":
            lines.append("from TrainingArguments (--per_device_train_batch_size, --gradient_accumulation_steps,")
            lines.append("--max_grad_norm, --fp16/--bf16).")
        lines.append("Do not add mixed_precision, gradient_accumulation_steps or gradient_clipping to this file:")
        lines.append("Accelerate refuses them next to deepspeed_config_file. The path is relative to the directory")
        lines.append("you launch from (the repository root for the shipped files).")
        lines.append("Without GPUs DeepSpeed runs on CPU with gloo, which LossTrainingArguments selects by itself.")
    elif mixed_precision == "auto":
        lines.append("Precision comes from TrainingArguments (--bf16 / --fp16), so mixed_precision stays 'no' here.")
    return "\n".join(lines)


def _comments(config: Mapping[str, Any]) -> dict[str, str]:
    notes: dict[str, str] = {}
    if config["num_machines"] > 1:
        notes.update({
            "machine_rank": "CHANGE PER NODE: 0 on the main node, 1 .. num_machines-1 on the others.",
            "main_process_ip": "CHANGE PER CLUSTER: address of the machine_rank 0 node, reachable from every node.",
            "main_process_port": "CHANGE PER CLUSTER: a free TCP port on the main node, the same on every node.",
            "num_machines": "CHANGE PER CLUSTER: number of nodes.",
            "num_processes": "CHANGE PER CLUSTER: total processes = GPUs per node x num_machines.",
            "same_network": "false if the nodes are not on one local network (then also set rdzv_backend: c10d).",
        })
    if config["distributed_type"] == "FSDP":
        notes["fsdp_config.fsdp_auto_wrap_policy"] = (
            "wraps each block listed in the model's _no_split_modules; add fsdp_transformer_layer_cls_to_wrap to "
            "name them yourself.")
    if config.get("use_cpu"):
        notes["use_cpu"] = "documents the intent; the training arguments decide (see the header)."
    return notes


if __name__ == "__main__":  # python -m hf_losses.launch.config_writer configs
    import sys

    for written_path in write_shipped_configs(sys.argv[1] if len(sys.argv) > 1 else "configs"):
        print(written_path)
