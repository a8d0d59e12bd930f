"""hf_losses.launch.config_writer: what it writes parses (through Accelerate) to the requested settings, and
settings that cannot work are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_losses.launch import config_writer

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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(zero_stage=2, use_cpu=True), "use_cpu"),
        (dict(fsdp=True, use_cpu=True), "silently runs DDP"),
        (dict(zero_stage=2, fsdp=True), "not both"),
        (dict(num_processes=6, num_machines=4), "multiple of `num_machines`"),
        (dict(num_processes=0), "`num_processes` must be an int >= 1"),
        (dict(offload=True), "needs DeepSpeed"),
        (dict(zero_stage=0, offload=True), "needs zero_stage 2 or 3"),
        (dict(zero_stage=4), "`zero_stage` must be one of"),
        (dict(mixed_precision="fp8"), "`mixed_precision` must be one of"),
    ],
)
def test_writer_rejects_settings_that_cannot_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config_writer.write_launch_config(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # nothing written


def test_writer_output_is_valid_yaml_with_comments(tmp_path):
    written = config_writer.write_launch_config(tmp_path, num_processes=16, num_machines=2)
    text = written.accelerate_config.read_text()
    assert text.startswith("# Accelerate config")
    assert "# CHANGE PER NODE" in text
    assert yaml.safe_load(text)["mixed_precision"] == "no"  # 'no' quoted, not YAML's boolean False
