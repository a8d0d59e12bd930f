"""The shipped Accelerate YAML / DeepSpeed JSON files, the config writer and the launch-configuration checks.

Each shipped file is read through the libraries that will consume it (Accelerate's ``load_config_from_file``,
transformers' ``HfTrainerDeepSpeedConfig.trainer_config_process``, DeepSpeed's ``DeepSpeedConfig``) and compared
with a hand-written table of what it is meant to say.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from hf_losses.launch import config_writer
from hf_losses.launch.checks import (
    LaunchConfigError,
    check_launch_config,
    deepspeed_config_of,
    set_single_process_rendezvous,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

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


def trainer_args(**overrides):
    """The attributes HfTrainerDeepSpeedConfig / check_launch_config read from TrainingArguments."""
    values = dict(world_size=1, per_device_train_batch_size=4, gradient_accumulation_steps=3, max_grad_norm=0.7,
                  learning_rate=2e-4, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-7, weight_decay=0.01,
                  fp16=False, bf16=False, fp16_full_eval=False, bf16_full_eval=False, save_on_each_node=False,
                  auto_find_batch_size=False, deepspeed=None, fsdp=None, use_cpu=True, mixed_precision="no",
                  ddp_backend=None, device=torch.device("cpu"), get_warmup_steps=lambda steps: 0)
    values.update(overrides)
    return SimpleNamespace(**values)


# ------------------------------------------------------------------ shipped files == writer output
def test_shipped_files_are_exactly_what_the_writer_produces():
    expected = config_writer.shipped_config_texts()
    on_disk = {str(p.relative_to(CONFIGS)): p.read_text()
               for p in sorted(CONFIGS.glob("accelerate/*.yaml")) + sorted(CONFIGS.glob("deepspeed/*.json"))}
    assert sorted(on_disk) == sorted(expected), "configs/ holds files the writer does not produce, or misses some"
    for relative, text in expected.items():
        assert on_disk[relative] == text, f"configs/{relative} differs from config_writer (regenerate with " \
                                          f"`python -m hf_losses.launch.config_writer configs`)"


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
        # only the file and the init flag: accelerate refuses inline GA / clipping / precision next to a file
        assert config.deepspeed_config["deepspeed_config_file"] == deepspeed_file
        assert set(config.deepspeed_config) == {"deepspeed_config_file", "zero3_init_flag"}
        assert (REPO / deepspeed_file).is_file()
        assert config.deepspeed_config["zero3_init_flag"] == ("zero3" in name)
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_offload_params"] is False
    if name == "multi_node":
        assert config.main_process_ip and config.main_process_port == 29500
        text = (CONFIGS / "accelerate" / "multi_node.yaml").read_text()
        for key in ("machine_rank", "main_process_ip", "num_processes", "num_machines"):
            assert f"CHANGE PER" in text.split(f"\n{key}:")[0].rsplit("\n", 1)[-1], f"{key} lacks its comment"


def test_deepspeed_yaml_passes_accelerates_config_file_check(monkeypatch):
    # what `accelerate launch` exports for each DeepSpeed YAML must pass DeepSpeedPlugin's own check
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    for name in ("deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"):
        config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
        monkeypatch.chdir(REPO)
        monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(config.deepspeed_config).lower())
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", config.deepspeed_config["deepspeed_config_file"])
        plugin = DeepSpeedPlugin()
        assert plugin.zero_stage == DEEPSPEED_TABLE[name.replace("deepspeed_", "")][0]


# ------------------------------------------------------------------ transformers' and DeepSpeed's parsers
@pytest.mark.parametrize("name", sorted(DEEPSPEED_TABLE))
@pytest.mark.parametrize("precision", ["no", "fp16", "bf16"])
def test_deepspeed_json_fills_auto_from_training_arguments(name, precision):
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
        assert (fp16.loss_scale, fp16.initial_scale_power, fp16.loss_scale_window, fp16.hysteresis,
                fp16.min_loss_scale) == (0, 16, 1000, 2, 1)
        offload_optimizer = ds.zero_config.offload_optimizer
        offload_param = ds.zero_config.offload_param
        assert (str(getattr(offload_optimizer.device, "value", offload_optimizer.device))
                if offload_optimizer else None) == optimizer_offload
        assert (str(getattr(offload_param.device, "value", offload_param.device))
                if offload_param else None) == param_offload
        if own_optimizer:
            assert filled["optimizer"]["params"] == {"lr": 2e-4, "betas": [0.9, 0.98], "eps": 1e-7,
                                                     "weight_decay": 0.01}
        else:
            assert "optimizer" not in filled  # the Trainer's --optim is used
    finally:
        unset_hf_deepspeed_config()


# ------------------------------------------------------------------ the writer
WRITER_TABLE = [
    # kwargs, distributed_type, writes JSON
    (dict(num_processes=2, use_cpu=True), "MULTI_GPU", False),
    (dict(num_processes=1), "NO", False),
    (dict(num_processes=4), "MULTI_GPU", False),
    (dict(num_processes=4, fsdp=True), "FSDP", False),
    (dict(num_processes=4, zero_stage=0), "DEEPSPEED", True),
    (dict(num_processes=4, zero_stage=2, mixed_precision="bf16"), "DEEPSPEED", True),
    (dict(num_processes=4, zero_stage=3, offload=True), "DEEPSPEED", True),
    (dict(num_processes=16, num_machines=2, zero_stage=3), "DEEPSPEED", True),
    (dict(num_processes=16, num_machines=4, mixed_precision="fp16"), "MULTI_GPU", False),
]


@pytest.mark.parametrize("kwargs, distributed_type, writes_json", WRITER_TABLE)
def test_writer_output_parses_to_requested_settings(tmp_path, kwargs, distributed_type, writes_json):
    from accelerate.commands.config.config_args import load_config_from_file

    written = config_writer.write_launch_config(tmp_path, **kwargs)
    assert written.distributed_type == distributed_type
    assert written.runs_as == ("MULTI_CPU" if kwargs.get("use_cpu") else distributed_type)
    config = load_config_from_file(str(written.accelerate_config))
    assert config.distributed_type.value == distributed_type
    assert config.num_processes == kwargs.get("num_processes", 1)
    assert config.num_machines == kwargs.get("num_machines", 1)
    assert (written.deepspeed_config is not None) == writes_json
    precision = kwargs.get("mixed_precision", "auto")
    if writes_json:
        assert Path(config.deepspeed_config["deepspeed_config_file"]) == written.deepspeed_config.resolve()
        assert config.mixed_precision is None  # accelerate refuses mixed_precision next to a config file
        ds = json.loads(written.deepspeed_config.read_text())
        assert ds["zero_optimization"]["stage"] == kwargs["zero_stage"]
        assert ds["gradient_clipping"] == ds["gradient_accumulation_steps"] == ds["train_batch_size"] == "auto"
        expected_fp16 = "auto" if precision == "auto" else precision == "fp16"
        expected_bf16 = "auto" if precision == "auto" else precision == "bf16"
        assert (ds["fp16"]["enabled"], ds["bf16"]["enabled"]) == (expected_fp16, expected_bf16)
        assert ("offload_optimizer" in ds["zero_optimization"]) == kwargs.get("offload", False)
    else:
        assert config.mixed_precision == ("no" if precision == "auto" else precision)
    if kwargs.get("num_machines", 1) > 1:
        assert config.main_process_ip and config.main_process_port


@pytest.mark.parametrize("kwargs, message", [
    (dict(zero_stage=2, use_cpu=True), "use_cpu"),
    (dict(fsdp=True, use_cpu=True), "silently runs DDP"),
    (dict(zero_stage=2, fsdp=True), "not both"),
    (dict(num_processes=6, num_machines=4), "multiple of `num_machines`"),
    (dict(num_processes=0), "`num_processes` must be an int >= 1"),
    (dict(offload=True), "needs DeepSpeed"),
    (dict(zero_stage=0, offload=True), "needs zero_stage 2 or 3"),
    (dict(zero_stage=4), "`zero_stage` must be one of"),
    (dict(mixed_precision="fp8"), "`mixed_precision` must be one of"),
])
def test_writer_rejects_settings_that_cannot_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("`", "`")):
        config_writer.write_launch_config(tmp_path, **kwargs)


def test_writer_output_is_valid_yaml_with_comments(tmp_path):
    written = config_writer.write_launch_config(tmp_path, num_processes=16, num_machines=2)
    text = written.accelerate_config.read_text()
    assert text.startswith("# Accelerate config")
    assert "# CHANGE PER NODE" in text
    assert yaml.safe_load(text)["mixed_precision"] == "no"  # 'no' quoted, not YAML's boolean False


# ------------------------------------------------------------------ the launch checks
def _write_json(tmp_path, config):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture
def clean_launch_env(monkeypatch):
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_GRADIENT_CLIPPING",
                 "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_USE_FSDP", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE",
                 "PMIX_RANK"):
        # set first so that monkeypatch records the original state and undoes what check_launch_config sets
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    return monkeypatch


CONTRADICTIONS = [
    # DeepSpeed values, training-argument overrides, fragments the one error message must contain
    ({"bf16": {"enabled": True}}, dict(fp16=True, use_cpu=False, device=torch.device("cuda")),
     ["bf16.enabled=True", "fp16=True, bf16=False"]),
    ({"fp16": {"enabled": True}}, {}, ["fp16.enabled=True", "fp16=False, bf16=False"]),
    ({"gradient_clipping": 0.5}, dict(max_grad_norm=1.0), ["gradient_clipping=0.5", "max_grad_norm=1.0"]),
    ({"train_micro_batch_size_per_gpu": 8}, {}, ["train_micro_batch_size_per_gpu=8",
                                                  "per_device_train_batch_size=4"]),
    ({"gradient_accumulation_steps": 2}, {}, ["gradient_accumulation_steps=2", "gradient_accumulation_steps=3"]),
    ({"train_batch_size": 16}, dict(world_size=2), ["train_batch_size=16", "=24"]),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}, {}, ["optimizer.params.lr=0.001",
                                                                     "learning_rate=0.0002"]),
]


@pytest.mark.parametrize("deepspeed, overrides, fragments", CONTRADICTIONS)
def test_contradicting_deepspeed_value_fails_naming_both_values(clean_launch_env, tmp_path, deepspeed, overrides,
                                                                 fragments):
    config = {"zero_optimization": {"stage": 2}, **deepspeed}
    args = trainer_args(deepspeed=_write_json(tmp_path, config), **overrides)
    with pytest.raises(LaunchConfigError) as error:
        check_launch_config(args)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, message
    assert str(tmp_path / "ds.json") in message  # names the file too


def test_matching_explicit_values_and_auto_pass(clean_launch_env, tmp_path):
    config = {"zero_optimization": {"stage": 2}, "gradient_clipping": 0.7, "train_micro_batch_size_per_gpu": 4,
              "gradient_accumulation_steps": 3, "train_batch_size": 12, "bf16": {"enabled": "auto"},
              "fp16": {"enabled": False}}
    check_launch_config(trainer_args(deepspeed=_write_json(tmp_path, config)))
    check_launch_config(trainer_args(deepspeed=str(CONFIGS / "deepspeed" / "zero3.json"), bf16=True))


def test_accelerate_launch_config_file_is_checked_too(clean_launch_env, tmp_path):
    # the path `accelerate launch --config_file deepspeed_*.yaml` takes: the JSON arrives through the environment
    clean_launch_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    clean_launch_env.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", _write_json(tmp_path, {
        "zero_optimization": {"stage": 2}, "gradient_clipping": 0.25}))
    clean_launch_env.setenv("RANK", "0")
    assert deepspeed_config_of(trainer_args())[1]["gradient_clipping"] == 0.25
    with pytest.raises(LaunchConfigError, match=r"gradient_clipping=0.25 .* max_grad_norm=0.7"):
        check_launch_config(trainer_args())
    # a config file without gradient_accumulation_steps means 1 to Accelerate
    with pytest.raises(LaunchConfigError, match="gradient_accumulation_steps=1"):
        check_launch_config(trainer_args(max_grad_norm=0.25))


def test_inline_accelerate_deepspeed_values_are_checked(clean_launch_env):
    clean_launch_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    clean_launch_env.setenv("ACCELERATE_GRADIENT_CLIPPING", "2.0")
    clean_launch_env.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    clean_launch_env.setenv("RANK", "0")
    with pytest.raises(LaunchConfigError, match=r"gradient_clipping=2.0 .* max_grad_norm=0.7"):
        check_launch_config(trainer_args())


def test_launcher_mixed_precision_without_the_training_flag_fails_under_deepspeed(clean_launch_env):
    with pytest.raises(LaunchConfigError, match=r"mixed_precision=bf16 .* bf16=False"):
        check_launch_config(trainer_args(deepspeed=str(CONFIGS / "deepspeed" / "zero2.json"),
                                         mixed_precision="bf16"))


def test_deepspeed_seeing_fewer_processes_than_launched_fails_naming_gloo(clean_launch_env):
    clean_launch_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchConfigError, match=r"WORLD_SIZE=2 .* world_size=1.*gloo"):
        check_launch_config(trainer_args(deepspeed=str(CONFIGS / "deepspeed" / "zero2.json")))


def test_fp16_on_cpu_is_refused_not_ignored(clean_launch_env):
    with pytest.raises(LaunchConfigError, match=r"fp16=True .* no GPU .* --bf16"):
        check_launch_config(trainer_args(fp16=True))
    check_launch_config(trainer_args(bf16=True))  # bf16 on CPU is real


def test_fsdp_on_cpu_is_refused_not_silently_ddp(clean_launch_env):
    with pytest.raises(LaunchConfigError, match="silently train with DDP"):
        check_launch_config(trainer_args(fsdp="full_shard"))
    clean_launch_env.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(LaunchConfigError, match="ACCELERATE_USE_FSDP"):
        check_launch_config(trainer_args())


def test_all_contradictions_reported_in_one_error(clean_launch_env, tmp_path):
    config = {"zero_optimization": {"stage": 2}, "gradient_clipping": 5.0, "gradient_accumulation_steps": 9}
    with pytest.raises(LaunchConfigError) as error:
        check_launch_config(trainer_args(deepspeed=_write_json(tmp_path, config), fp16=True))
    assert str(error.value).count("\n- ") == 3


def test_single_process_deepspeed_gets_rendezvous_variables(clean_launch_env):
    check_launch_config(trainer_args(deepspeed=str(CONFIGS / "deepspeed" / "zero2.json")))
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("0", "0", "1")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0


def test_launch_check_leaves_no_rendezvous_variables_behind_after_the_tests():
    # the fixture's undo must remove what check_launch_config set (a stray RANK would make Accelerate think
    # every later test runs distributed)
    assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ


def test_rendezvous_left_alone_under_a_launcher_or_without_deepspeed(clean_launch_env):
    clean_launch_env.setenv("RANK", "3")
    assert set_single_process_rendezvous() == {}
    clean_launch_env.delenv("RANK")
    check_launch_config(trainer_args())  # no DeepSpeed: nothing set
    assert "WORLD_SIZE" not in os.environ


def test_real_training_arguments_with_contradicting_deepspeed_dict(clean_launch_env):
    # the same check on a real TrainingArguments object (what LossTrainingArguments.__post_init__ passes)
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    config = {"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5, "train_micro_batch_size_per_gpu": "auto"}
    args = TrainingArguments(output_dir="unused", deepspeed=config, max_grad_norm=1.0, report_to=[])
    try:
        with pytest.raises(LaunchConfigError, match=r"gradient_clipping=0.5 but TrainingArguments give "
                                                    r"max_grad_norm=1.0"):
            check_launch_config(args)
    finally:
        unset_hf_deepspeed_config()
