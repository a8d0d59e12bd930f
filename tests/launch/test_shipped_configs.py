"""The shipped Accelerate YAML / DeepSpeed JSON files in ``configs/``: exactly the writer's output, and read
through the libraries that will consume them (Accelerate's ``load_config_from_file``, transformers'
``HfTrainerDeepSpeedConfig.trainer_config_process``, DeepSpeed's ``DeepSpeedConfig``) they say what a hand-written
table says they are meant to."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from launching import REPO_ROOT

from hf_losses.launch import shipped_configs

CONFIGS = REPO_ROOT / "configs"

# name -> (distributed_type, num_processes, num_machines, use_cpu, mixed_precision, DeepSpeed JSON or None)
# (cpu_multiprocess says MULTI_GPU so that `accelerate launch` starts 2 local processes; they run as MULTI_CPU,
# which tests/distributed/test_clipping_precision.py asserts on the real run)
ACCELERATE_TABLE = {
    "cpu_multiprocess": ("MULTI_GPU", 2, 1, True, "no", None),
    "single_gpu": ("NO", 1, 1, False, "no", None),
    "multi_gpu_ddp": ("MULTI_GPU", 8, 1, False, "no", None),
    "fsdp": ("FSDP", 8, 1, False, "no", None),
    "deepspeed_zero2": ("DEEPSPEED", 8, 1, False, None, "configs/deepspeed/zero2.json"),
    "deepspeed_zero3": ("DEEPSPEED", 8, 1, False, None, "configs/deepspeed/zero3.json"),
    "deepspeed_zero3_offload": ("DEEPSPEED", 8, 1, False, None, "configs/deepspeed/zero3_offload.json"),
    "multi_node": ("MULTI_GPU", 16, 2, False, "no", None),
}

# name -> (ZeRO stage, optimizer offload device, parameter offload device, DeepSpeed's own optimizer block)
DEEPSPEED_TABLE = {
    "zero2": (2, None, None, False),
    "zero3": (3, None, None, False),
    "zero3_offload": (3, "cpu", "cpu", True),
}


# ------------------------------------------------------------------ shipped files == writer output
def test_shipped_files_are_exactly_what_the_writer_produces():
    expected = shipped_configs.shipped_config_texts()
    on_disk = {
        str(p.relative_to(CONFIGS)): p.read_text()
        for p in sorted(CONFIGS.glob("accelerate/*.yaml")) + sorted(CONFIGS.glob("deepspeed/*.json"))
    }
    assert sorted(on_disk) == sorted(expected), "configs/ holds files the writer does not produce, or misses some"
    for relative, text in expected.items():
        assert on_disk[relative] == text, (
            f"configs/{relative} differs from the writer (regenerate with "
            f"`python -m hf_losses.launch.shipped_configs configs`)"
        )


def test_regenerating_writes_every_shipped_file(tmp_path, capsys):
    shipped_configs.main([str(tmp_path)])
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(shipped_configs.shipped_config_texts())
    assert len(capsys.readouterr().out.splitlines()) == len(written)


def test_every_table_entry_names_a_shipped_file():
    assert {p.stem for p in CONFIGS.glob("accelerate/*.yaml")} == set(ACCELERATE_TABLE)
    assert {p.stem for p in CONFIGS.glob("deepspeed/*.json")} == set(DEEPSPEED_TABLE)


# ------------------------------------------------------------------ accelerate's own parser
@pytest.mark.parametrize("name", sorted(ACCELERATE_TABLE))
def test_accelerate_yaml_maps_to_intended_settings(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    distributed_type, processes, machines, use_cpu, mixed_precision, deepspeed_file = ACCELERATE_TABLE[name]
    config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == distributed_type
    assert (config.num_processes, config.num_machines, config.use_cpu) == (processes, machines, use_cpu)
    assert config.mixed_precision == mixed_precision
    if deepspeed_file is None:
        assert not config.deepspeed_config
    else:
        # the file, the init flag and the multi-node launcher: accelerate refuses inline GA / clipping / precision
        # next to a file; without "standard", --num_machines N falls back to pdsh and each machine trains alone
        assert config.deepspeed_config["deepspeed_config_file"] == deepspeed_file
        assert set(config.deepspeed_config) == {
            "deepspeed_config_file",
            "zero3_init_flag",
            "deepspeed_multinode_launcher",
        }
        assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
        assert (REPO_ROOT / deepspeed_file).is_file()
        assert config.deepspeed_config["zero3_init_flag"] == ("zero3" in name)
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_offload_params"] is False
    if name == "multi_node":
        assert config.main_process_ip and config.main_process_port == 29500
        text = (CONFIGS / "accelerate" / "multi_node.yaml").read_text()
        for key in ("machine_rank", "main_process_ip", "num_processes", "num_machines"):
            assert "CHANGE PER" in text.split(f"\n{key}:")[0].rsplit("\n", 1)[-1], f"{key} lacks its comment"


def test_deepspeed_yaml_passes_accelerates_config_file_check(monkeypatch):
    # what `accelerate launch` exports for each DeepSpeed YAML must pass DeepSpeedPlugin's own check
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    for name in ("deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"):
        config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
        monkeypatch.chdir(REPO_ROOT)
        monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(config.deepspeed_config).lower())
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", config.deepspeed_config["deepspeed_config_file"])
        plugin = DeepSpeedPlugin()
        assert plugin.zero_stage == DEEPSPEED_TABLE[name.replace("deepspeed_", "")][0]


# ------------------------------------------------------------------ transformers' and DeepSpeed's parsers
@pytest.mark.parametrize("name", sorted(DEEPSPEED_TABLE))
@pytest.mark.parametrize("precision", ["no", "fp16", "bf16"])
def test_deepspeed_json_fills_auto_from_training_arguments(trainer_args, name, precision):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    stage, optimizer_offload, param_offload, own_optimizer = DEEPSPEED_TABLE[name]
    args = trainer_args(fp16=precision == "fp16", bf16=precision == "bf16")
    hf_config = HfTrainerDeepSpeedConfig(str(CONFIGS / "deepspeed" / f"{name}.json"))
    try:
        hf_config.trainer_config_process(args)
        model = SimpleNamespace(config=SimpleNamespace(hidden_size=16))
        hf_config.trainer_config_finalize(args, model, num_training_steps=10)  # raises on any mismatch
        filled = hf_config.config
        assert "auto" not in json.dumps(filled), "an 'auto' value was left unfilled"
        assert filled["train_micro_batch_size_per_gpu"] == 4
        assert filled["gradient_accumulation_steps"] == 3
        assert filled["train_batch_size"] == 12
        assert filled["gradient_clipping"] == 0.7
        assert hf_config.dtype() == {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

        ds = DeepSpeedConfig(filled)
        assert ds.zero_optimization_stage == stage
        assert ds.gradient_clipping == 0.7
        assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == (12, 4, 3)
        assert ds.float16_config.enabled == (precision == "fp16")
        assert ds.bfloat16_config.enabled == (precision == "bf16")
        # dynamic loss scaling spelled out: loss_scale 0 = dynamic, start 2**16, window 1000, hysteresis 2, min 1
        fp16 = ds.float16_config
        assert (
            fp16.loss_scale,
            fp16.initial_scale_power,
            fp16.loss_scale_window,
            fp16.hysteresis,
            fp16.min_loss_scale,
        ) == (0, 16, 1000, 2, 1)
        offload_optimizer = ds.zero_config.offload_optimizer
        offload_param = ds.zero_config.offload_param
        assert (
            str(getattr(offload_optimizer.device, "value", offload_optimizer.device)) if offload_optimizer else None
        ) == optimizer_offload
        assert (
            str(getattr(offload_param.device, "value", offload_param.device)) if offload_param else None
        ) == param_offload
        if own_optimizer:
            assert filled["optimizer"]["params"] == {
                "lr": 2e-4,
                "betas": [0.9, 0.98],
                "eps": 1e-7,
                "weight_decay": 0.01,
            }
        else:
            assert "optimizer" not in filled  # the Trainer's --optim is used
    finally:
        unset_hf_deepspeed_config()
