"""The comments written into an accelerate YAML: a header that says what the file runs and why it looks the way
it does, and notes above the keys a user must change (per node, per cluster)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: header lines of a CPU multi-process YAML (written as MULTI_GPU, run as MULTI_CPU)
CPU_MULTIPROCESS_NOTE = [
    "distributed_type is MULTI_GPU on purpose: only then does accelerate launch start the local processes",
    "(torchrun); its MULTI_CPU type needs mpirun and otherwise starts ONE process. The processes run as",
    "MULTI_CPU (DDP over gloo) because LossTrainingArguments picks use_cpu=True and ddp_backend=gloo when",
    "the machine has no GPU. On a machine with GPUs, or with the stock TrainingArguments, pass",
    "--use_cpu --ddp_backend gloo to the training script (accelerate does not forward use_cpu here).",
]

#: notes above the keys of a several-machine YAML
MULTI_NODE_NOTES = {
    "machine_rank": "CHANGE PER NODE: 0 on the main node, 1 .. num_machines-1 on the others.",
    "main_process_ip": "CHANGE PER CLUSTER: address of the machine_rank 0 node, reachable from every node.",
    "main_process_port": "CHANGE PER CLUSTER: a free TCP port on the main node, the same on every node.",
    "num_machines": "CHANGE PER CLUSTER: number of nodes.",
    "num_processes": "CHANGE PER CLUSTER: total processes = GPUs per node x num_machines.",
    "same_network": "false if the nodes are not on one local network (then also set rdzv_backend: c10d).",
}


def header(
    config: Mapping[str, Any],
    *,
    zero_stage: int | None,
    offload: bool,
    mixed_precision: str,
    shipped_name: str | None = None,
) -> str:
    """The ``#`` header of an accelerate YAML: what it runs, how to launch it, where the precision comes from."""
    kind = config["distributed_type"]
    lines = [
        f"Accelerate config: {describe_shape(config, zero_stage=zero_stage, offload=offload)}.",
        "Written by hf_losses.launch.config_writer" + (f" (preset '{shipped_name}')." if shipped_name else "."),
        "Run: accelerate launch --config_file <this file> train.py --output_dir out ...",
    ]
    if kind != "NO":
        lines.append("`--num_processes N` on the command line overrides num_processes below.")
    if kind == "MULTI_GPU" and config.get("use_cpu"):
        lines += CPU_MULTIPROCESS_NOTE
    if kind == "DEEPSPEED":
        lines += _deepspeed_note(mixed_precision)
    elif mixed_precision == "auto":
        lines.append("Precision comes from TrainingArguments (--bf16 / --fp16), so mixed_precision stays 'no' here.")
    return "\n".join(lines)


def describe_shape(config: Mapping[str, Any], *, zero_stage: int | None, offload: bool) -> str:
    """``DDP over 8 GPUs`` / ``DeepSpeed ZeRO-3 with CPU offload over 8 processes (...)``: what the file runs."""
    kind = config["distributed_type"]
    processes, machines = config["num_processes"], config["num_machines"]
    if kind == "NO":
        return "one process (one GPU, or the CPU when none is present)"
    if kind == "MULTI_GPU" and config.get("use_cpu"):
        return f"DDP over {processes} CPU processes on this machine, gloo backend (no GPU needed)"
    if kind == "MULTI_GPU":
        return f"DDP over {processes} GPUs" + (f" on {machines} machines" if machines > 1 else "")
    if kind == "FSDP":
        return f"PyTorch FSDP2 over {processes} GPUs (full sharding; needs GPUs: with use_cpu Accelerate runs DDP)"
    if kind == "DEEPSPEED":
        return (
            f"DeepSpeed ZeRO-{zero_stage}{' with CPU offload' if offload else ''} over {processes} "
            f"processes (GPUs; on a machine without GPUs: CPU + gloo)"
        )
    raise KeyError(kind)


def key_comments(config: Mapping[str, Any]) -> dict[str, str]:
    """``{key or "parent.child": note}`` written above those keys of the YAML."""
    notes: dict[str, str] = {}
    if config["num_machines"] > 1:
        notes.update(MULTI_NODE_NOTES)
    if config["distributed_type"] == "FSDP":
        notes["fsdp_config.fsdp_auto_wrap_policy"] = (
            "wraps each block listed in the model's _no_split_modules; add fsdp_transformer_layer_cls_to_wrap to "
            "name them yourself."
        )
    if config["distributed_type"] == "DEEPSPEED":
        notes["deepspeed_config.deepspeed_multinode_launcher"] = (
            "read with --num_machines > 1 only: torchrun on each machine (without it, pdsh: each machine alone)."
        )
    if config.get("use_cpu"):
        notes["use_cpu"] = "documents the intent; the training arguments decide (see the header)."
    return notes


def _deepspeed_note(mixed_precision: str) -> list[str]:
    """Why a DeepSpeed YAML holds no precision, accumulation or clipping (the JSON does)."""
    auto = mixed_precision == "auto"
    lines = [
        "Batch sizes, gradient accumulation, clipping and precision live in the JSON"
        + (' as "auto": they come' if auto else "")
    ]
    if auto:
        lines += [
            "from TrainingArguments (--per_device_train_batch_size, --gradient_accumulation_steps,",
            "--max_grad_norm, --fp16/--bf16).",
        ]
    return lines + [
        "Do not add mixed_precision, gradient_accumulation_steps or gradient_clipping to this file:",
        "Accelerate refuses them next to deepspeed_config_file. The path is relative to the directory",
        "you launch from (the repository root for the shipped files).",
        "Without GPUs DeepSpeed runs on CPU with gloo, which LossTrainingArguments selects by itself.",
    ]
