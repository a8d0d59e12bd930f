"""hf_losses.launch.checks: a launch that contradicts the training arguments fails early, in one error that names
both values (DeepSpeed JSON, accelerate's DeepSpeed settings, precision, FSDP or fp16 on CPU, world size)."""

from __future__ import annotations

import json

import pytest
import torch
from launching import REPO_ROOT

from hf_losses.launch.checks import LaunchConfigError, check_launch_config, deepspeed_config_of

SHIPPED_DEEPSPEED = REPO_ROOT / "configs" / "deepspeed"


def _write_json(tmp_path, config):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


CONTRADICTIONS = [
    # DeepSpeed values, training-argument overrides, fragments the one error message must contain
    (
        {"bf16": {"enabled": True}},
        dict(fp16=True, use_cpu=False, device=torch.device("cuda")),
        ["bf16.enabled=True", "fp16=True, bf16=False"],
    ),
    ({"fp16": {"enabled": True}}, {}, ["fp16.enabled=True", "fp16=False, bf16=False"]),
    ({"gradient_clipping": 0.5}, dict(max_grad_norm=1.0), ["gradient_clipping=0.5", "max_grad_norm=1.0"]),
    ({"train_micro_batch_size_per_gpu": 8}, {}, ["train_micro_batch_size_per_gpu=8", "per_device_train_batch_size=4"]),
    ({"gradient_accumulation_steps": 2}, {}, ["gradient_accumulation_steps=2", "gradient_accumulation_steps=3"]),
    ({"train_batch_size": 16}, dict(world_size=2), ["train_batch_size=16", "=24"]),
    (
        {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}},
        {},
        ["optimizer.params.lr=0.001", "learning_rate=0.0002"],
    ),
]


@pytest.mark.parametrize("deepspeed, overrides, fragments", CONTRADICTIONS)
def test_contradicting_deepspeed_value_fails_naming_both_values(
    clean_launch_env, trainer_args, tmp_path, deepspeed, overrides, fragments
):
    config = {"zero_optimization": {"stage": 2}, **deepspeed}
    args = trainer_args(deepspeed=_write_json(tmp_path, config), **overrides)
    with pytest.raises(LaunchConfigError) as error:
        check_launch_config(args)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, message
    assert str(tmp_path / "ds.json") in message  # names the file too


def test_matching_explicit_values_and_auto_pass(clean_launch_env, trainer_args, tmp_path):
    config = {
        "zero_optimization": {"stage": 2},
        "gradient_clipping": 0.7,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 3,
        "train_batch_size": 12,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": False},
    }
    check_launch_config(trainer_args(deepspeed=_write_json(tmp_path, config)))
    check_launch_config(trainer_args(deepspeed=str(SHIPPED_DEEPSPEED / "zero3.json"), bf16=True))


def test_accelerate_launch_config_file_is_checked_too(clean_launch_env, trainer_args, tmp_path):
    # the path `accelerate launch --config_file deepspeed_*.yaml` takes: the JSON arrives through the environment
    clean_launch_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    clean_launch_env.setenv(
        "ACCELERATE_DEEPSPEED_CONFIG_FILE",
        _write_json(tmp_path, {"zero_optimization": {"stage": 2}, "gradient_clipping": 0.25}),
    )
    clean_launch_env.setenv("RANK", "0")
    assert deepspeed_config_of(trainer_args())[1]["gradient_clipping"] == 0.25
    with pytest.raises(LaunchConfigError, match=r"gradient_clipping=0.25 .* max_grad_norm=0.7"):
        check_launch_config(trainer_args())
    # a config file without gradient_accumulation_steps means 1 to Accelerate
    with pytest.raises(LaunchConfigError, match="gradient_accumulation_steps=1"):
        check_launch_config(trainer_args(max_grad_norm=0.25))


def test_inline_accelerate_deepspeed_values_are_checked(clean_launch_env, trainer_args):
    clean_launch_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    clean_launch_env.setenv("ACCELERATE_GRADIENT_CLIPPING", "2.0")
    clean_launch_env.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    clean_launch_env.setenv("RANK", "0")
    with pytest.raises(LaunchConfigError, match=r"gradient_clipping=2.0 .* max_grad_norm=0.7"):
        check_launch_config(trainer_args())


def test_launcher_mixed_precision_without_the_training_flag_fails_under_deepspeed(clean_launch_env, trainer_args):
    with pytest.raises(LaunchConfigError, match=r"mixed_precision=bf16 .* bf16=False"):
        check_launch_config(trainer_args(deepspeed=str(SHIPPED_DEEPSPEED / "zero2.json"), mixed_precision="bf16"))


def test_deepspeed_seeing_fewer_processes_than_launched_fails_naming_gloo(clean_launch_env, trainer_args):
    clean_launch_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchConfigError, match=r"WORLD_SIZE=2 .* world_size=1.*gloo"):
        check_launch_config(trainer_args(deepspeed=str(SHIPPED_DEEPSPEED / "zero2.json")))


def test_fp16_on_cpu_is_refused_not_ignored(clean_launch_env, trainer_args):
    with pytest.raises(LaunchConfigError, match=r"fp16=True .* no GPU .* --bf16"):
        check_launch_config(trainer_args(fp16=True))
    check_launch_config(trainer_args(bf16=True))  # bf16 on CPU is real


def test_fsdp_on_cpu_is_refused_not_silently_ddp(clean_launch_env, trainer_args):
    with pytest.raises(LaunchConfigError, match="silently train with DDP"):
        check_launch_config(trainer_args(fsdp="full_shard"))
    clean_launch_env.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(LaunchConfigError, match="ACCELERATE_USE_FSDP"):
        check_launch_config(trainer_args())


def test_all_contradictions_reported_in_one_error(clean_launch_env, trainer_args, tmp_path):
    config = {"zero_optimization": {"stage": 2}, "gradient_clipping": 5.0, "gradient_accumulation_steps": 9}
    with pytest.raises(LaunchConfigError) as error:
        check_launch_config(trainer_args(deepspeed=_write_json(tmp_path, config), fp16=True))
    assert str(error.value).count("\n- ") == 3


def test_real_training_arguments_with_contradicting_deepspeed_dict(clean_launch_env):
    # the same check on a real TrainingArguments object (what LossTrainingArguments.__post_init__ passes)
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    config = {"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5, "train_micro_batch_size_per_gpu": "auto"}
    args = TrainingArguments(output_dir="unused", deepspeed=config, max_grad_norm=1.0, report_to=[])
    try:
        with pytest.raises(
            LaunchConfigError,
            match=r"gradient_clipping=0.5 but TrainingArguments give "
            r"max_grad_norm=1.0",
        ):
            check_launch_config(args)
    finally:
        unset_hf_deepspeed_config()
