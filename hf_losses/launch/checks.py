"""Launch-configuration checks run at the end of ``LossTrainingArguments.__post_init__``.

Upstream, a DeepSpeed config that contradicts ``TrainingArguments`` is only reported once training starts, from
inside ``trainer_config_finalize`` or as a DeepSpeed assertion ("train_batch_size is not equal to
micro_batch_per_gpu * gradient_acc_step * world_size"); fp16 on CPU is silently ignored by the Trainer; FSDP with
``use_cpu`` silently becomes DDP; a single-process DeepSpeed run started with plain ``python`` dies asking for
``mpi4py``. :func:`check_launch_config` turns each of these into one early error that names both values, or fixes
what can be fixed without guessing (the single-process rendezvous variables).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from hf_losses.launch.cpu import set_single_process_rendezvous

logger = logging.getLogger(__name__)

#: (DeepSpeed key, TrainingArguments attribute(s) shown to the user, function of args giving the value)
_DEEPSPEED_TRAINER_KEYS: tuple[tuple[str, str, Any], ...] = (
    ("train_micro_batch_size_per_gpu", "per_device_train_batch_size", lambda a: a.per_device_train_batch_size),
    ("gradient_accumulation_steps", "gradient_accumulation_steps", lambda a: a.gradient_accumulation_steps),
    (
        "train_batch_size",
        "world_size x per_device_train_batch_size x gradient_accumulation_steps",
        lambda a: a.world_size * a.per_device_train_batch_size * a.gradient_accumulation_steps,
    ),
    ("gradient_clipping", "max_grad_norm", lambda a: a.max_grad_norm),
    ("optimizer.params.lr", "learning_rate", lambda a: a.learning_rate),
    ("optimizer.params.betas", "adam_beta1, adam_beta2", lambda a: [a.adam_beta1, a.adam_beta2]),
    ("optimizer.params.eps", "adam_epsilon", lambda a: a.adam_epsilon),
    ("optimizer.params.weight_decay", "weight_decay", lambda a: a.weight_decay),
    ("scheduler.params.warmup_max_lr", "learning_rate", lambda a: a.learning_rate),
)
_BATCH_KEYS = ("train_micro_batch_size_per_gpu", "train_batch_size")


class LaunchConfigError(ValueError):
    """The launch configuration (DeepSpeed JSON, Accelerate config, device) contradicts the training arguments."""


def check_launch_config(args: Any) -> None:
    """Raise :class:`LaunchConfigError` listing every contradiction between the launch setup and ``args``.

    Checked: DeepSpeed values that are not ``"auto"`` (batch sizes, gradient accumulation, ``gradient_clipping``,
    fp16/bf16, optimizer hyper-parameters) against the training arguments, whether the config comes from
    ``args.deepspeed`` or from ``accelerate launch`` with a DeepSpeed YAML; the processes DeepSpeed will see
    against ``args.world_size``; fp16 without a GPU; FSDP without a GPU. A DeepSpeed run in a single process
    started with plain ``python`` gets the rendezvous variables it needs (``RANK=0``, ``WORLD_SIZE=1``, ...).
    """
    problems: list[str] = []
    deepspeed_source, deepspeed_dict = deepspeed_config_of(args)
    uses_deepspeed = deepspeed_source is not None
    device_type = _device_type(args)

    if deepspeed_dict is not None:
        problems += deepspeed_contradictions(deepspeed_dict, args, deepspeed_source)
    if uses_deepspeed:
        problems += _deepspeed_precision_from_launcher(args)
        problems += _deepspeed_world_size(args)
    problems += _fp16_on_cpu(args, device_type)
    problems += _fsdp_on_cpu(args, device_type)
    if problems:
        raise LaunchConfigError(
            "The launch configuration contradicts the training arguments:\n"
            + "\n".join(f"- {problem}" for problem in problems)
        )
    if uses_deepspeed:
        set_single_process_rendezvous()


def deepspeed_config_of(args: Any) -> tuple[str | None, dict[str, Any] | None]:
    """``(where it comes from, the user's config as written)`` for the DeepSpeed config this run will use.

    ``args.deepspeed`` (path, JSON text or dict) wins; else ``accelerate launch`` with a DeepSpeed YAML, which
    passes ``ACCELERATE_DEEPSPEED_CONFIG_FILE`` or, for inline YAML values, ``ACCELERATE_GRADIENT_*`` variables.
    ``(None, None)`` when DeepSpeed is not used.
    """
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    if getattr(args, "deepspeed", None):
        source = (
            args.deepspeed
            if isinstance(args.deepspeed, str) and os.path.exists(args.deepspeed)
            else ("the `deepspeed` training argument")
        )
        return str(source), HfDeepSpeedConfig(args.deepspeed).config
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None, None
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if config_file != "none":
        config = HfDeepSpeedConfig(config_file).config
        # Accelerate fills a missing gradient_accumulation_steps with 1 (DeepSpeedPlugin.__post_init__)
        config.setdefault("gradient_accumulation_steps", 1)
        return config_file, config
    inline: dict[str, Any] = {}
    steps = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "auto")
    inline["gradient_accumulation_steps"] = int(steps) if steps.isdigit() else steps
    clipping = os.environ.get("ACCELERATE_GRADIENT_CLIPPING")
    if clipping not in (None, "auto", "none"):
        inline["gradient_clipping"] = float(clipping)
    return "the accelerate config's deepspeed_config", inline


def deepspeed_contradictions(config: dict[str, Any], args: Any, source: str | None = None) -> list[str]:
    """One line per DeepSpeed value (not ``"auto"``) that differs from the training arguments."""
    where = f" ({source})" if source else ""
    problems = []
    for key, arg_names, arg_value in _DEEPSPEED_TRAINER_KEYS:
        if key in _BATCH_KEYS and getattr(args, "auto_find_batch_size", False):
            continue
        found, value = _lookup(config, key)
        if not found or value is None or value == "auto":
            continue
        expected = arg_value(args)
        if not _same(value, expected):
            problems.append(
                f"DeepSpeed config{where} has {key}={value!r} but TrainingArguments give "
                f'{arg_names}={expected!r}; set {key} to "auto" or make the two agree.'
            )
    flags = {
        "fp16": bool(getattr(args, "fp16", False) or getattr(args, "fp16_full_eval", False)),
        "bf16": bool(getattr(args, "bf16", False) or getattr(args, "bf16_full_eval", False)),
    }
    for precision, wanted in flags.items():
        found, enabled = _lookup(config, f"{precision}.enabled")
        if not found or enabled is None or enabled == "auto":
            continue
        if _as_bool(enabled) != wanted:
            problems.append(
                f"DeepSpeed config{where} has {precision}.enabled={enabled!r} but TrainingArguments give "
                f"fp16={getattr(args, 'fp16', False)}, bf16={getattr(args, 'bf16', False)}; set "
                f'{precision}.enabled to "auto" or pass the matching --fp16/--bf16.'
            )
    return problems


# ------------------------------------------------------------------ helpers
def _deepspeed_precision_from_launcher(args: Any) -> list[str]:
    # `accelerate launch --mixed_precision bf16` makes TrainingArguments.mixed_precision bf16 without --bf16;
    # Accelerate then writes bf16.enabled=true into the DeepSpeed config and the Trainer rejects it much later.
    mixed_precision = str(getattr(args, "mixed_precision", "no") or "no")
    if mixed_precision in ("fp16", "bf16") and not getattr(args, mixed_precision, False):
        return [
            f"accelerate launch asks for mixed_precision={mixed_precision} (ACCELERATE_MIXED_PRECISION) but "
            f"TrainingArguments give {mixed_precision}={getattr(args, mixed_precision, False)}; with DeepSpeed "
            f'pass --{mixed_precision} to the script instead (the JSON\'s "auto" follows it).'
        ]
    return []


def _deepspeed_world_size(args: Any) -> list[str]:
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    seen = int(getattr(args, "world_size", 1) or 1)
    if launched > 1 and seen != launched:
        return [
            f"the launcher started WORLD_SIZE={launched} processes but TrainingArguments see world_size={seen}: "
            f"DeepSpeed would fail with 'train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step "
            f'* world_size\'. Without CUDA the processes need ddp_backend="gloo" and, when DeepSpeed comes from '
            f"the `deepspeed` argument rather than an accelerate DeepSpeed config, use_cpu=True (now ddp_backend="
            f"{getattr(args, 'ddp_backend', None)!r}, use_cpu={getattr(args, 'use_cpu', None)!r})."
        ]
    return []


def _fp16_on_cpu(args: Any, device_type: str) -> list[str]:
    if device_type == "cpu" and getattr(args, "fp16", False):
        return [
            "fp16=True in TrainingArguments, but this run has no GPU (device cpu): the Trainer would silently "
            "train in float32 (no autocast, no loss scaling) and DeepSpeed refuses fp16 on CPU. Use --bf16 on "
            "CPU, or run fp16 on a GPU."
        ]
    return []


def _fsdp_on_cpu(args: Any, device_type: str) -> list[str]:
    use_cpu = getattr(args, "use_cpu", False)
    if _uses_fsdp(args) and (use_cpu or device_type == "cpu"):
        return [
            f"FSDP is requested ({_fsdp_source(args)}) but the run is on CPU (use_cpu={use_cpu}, device "
            f"{device_type}): Accelerate would silently train with DDP instead. FSDP needs GPUs; on CPU use "
            "configs/accelerate/cpu_multiprocess.yaml (DDP) or DeepSpeed ZeRO-3 "
            "(configs/accelerate/deepspeed_zero3.yaml)."
        ]
    return []


def _uses_fsdp(args: Any) -> bool:
    return bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _fsdp_source(args: Any) -> str:
    return f"fsdp={args.fsdp!r}" if getattr(args, "fsdp", None) else "ACCELERATE_USE_FSDP=true from accelerate launch"


def _device_type(args: Any) -> str:
    try:
        return str(args.device.type)
    except Exception:  # arguments that cannot set up a device have other errors to report
        return "unknown"


def _lookup(config: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _same(value: Any, expected: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(value) == len(expected) and all(_same(v, e) for v, e in zip(value, expected))
    try:
        return math.isclose(float(value), float(expected), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return value == expected


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)
