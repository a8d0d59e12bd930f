"""Gradient clipping and precision with LossTrainer on CPU.

One 2-process launch through ``accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml``
(DDP over gloo) runs the clipping and bf16 cases; DeepSpeed's clipping and bf16 are in test_deepspeed.py (same
probes, DeepSpeed launch). The refusals (fp16 or FSDP without a GPU) are checked in-process on
``LossTrainingArguments``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from launching import launch, read_json_lines

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "workers" / "clipping_worker.py"


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    completed = launch(
        WORKER,
        nproc=2,
        launcher="accelerate",
        accelerate_config=REPO / "configs" / "accelerate" / "cpu_multiprocess.yaml",
        timeout=600,
    )
    records = read_json_lines(completed.stdout)
    by_case = {record["case"]: record for record in records}
    assert sorted(by_case) == ["ddp_bf16", "ddp_clip_none_needed", "ddp_clip_small"], completed.stdout[-3000:]
    return by_case


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", ["ddp_clip_small", "ddp_clip_none_needed", "ddp_bf16"])
def test_cpu_multiprocess_config_really_runs_ddp_over_two_cpu_processes(results, case):
    record = results[case]
    assert record["distributed_type"] == "MULTI_CPU"
    assert record["world_size"] == record["num_processes"] == 2
    assert record["wrapper"] == "DistributedDataParallel"
    assert record["parameter_dtype"] == "float32"


@pytest.mark.multiprocess
def test_ddp_clips_gradient_norm_to_max_grad_norm(results):
    record = results["ddp_clip_small"]
    raw = record["logged_grad_norm"][0]  # the Trainer logs the norm before clipping
    assert raw == pytest.approx(record["reference_norm"], rel=1e-5)  # = single-process plain PyTorch gradient
    assert raw > 10 * record["max_grad_norm"]
    # what the optimizer sees (on_pre_optimizer_step: after clipping and DDP's all-reduce)
    assert record["seen_norms"][0] == pytest.approx(record["max_grad_norm"], rel=1e-5)


@pytest.mark.multiprocess
def test_ddp_leaves_gradient_below_max_grad_norm_unchanged(results):
    record = results["ddp_clip_none_needed"]
    assert record["logged_grad_norm"][0] < record["max_grad_norm"]
    assert record["seen_norms"][0] == pytest.approx(record["reference_norm"], rel=1e-5)


@pytest.mark.multiprocess
def test_bf16_on_cpu_trains_with_bf16_autocast_and_finite_losses(results):
    record = results["ddp_bf16"]
    assert record["mixed_precision"] == "bf16"
    assert record["logits_dtypes"] == ["bfloat16"]  # the forward really ran in bf16 ...
    assert record["parameter_dtype"] == "float32"  # ... over float32 master weights
    losses = record["losses"]
    assert len(losses) == 3 and all(math.isfinite(value) for value in losses)
    assert losses[-1] < losses[0]
    assert record["weights_changed"] and record["weights_finite"]


# ------------------------------------------------------------------ refusals, in-process
def _cpu_only():
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the behaviour on a machine without GPUs")


def test_fp16_without_gpu_is_refused_with_an_actionable_message(tmp_path):
    _cpu_only()
    from hf_losses import LossTrainingArguments
    from hf_losses.launch.checks import LaunchConfigError

    with pytest.raises(LaunchConfigError, match=r"fp16=True .* silently train in float32 .* --bf16"):
        LossTrainingArguments(output_dir=str(tmp_path), fp16=True, use_cpu=True, report_to=[])


def test_fsdp_without_gpu_is_refused_instead_of_silent_ddp(tmp_path):
    _cpu_only()
    from hf_losses import LossTrainingArguments
    from hf_losses.launch.checks import LaunchConfigError

    with pytest.raises(LaunchConfigError, match="FSDP is requested .* silently train with DDP"):
        LossTrainingArguments(output_dir=str(tmp_path), fsdp="full_shard", use_cpu=True, report_to=[])


def test_deepspeed_json_contradicting_arguments_fails_at_construction(tmp_path):
    pytest.importorskip("deepspeed")
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from hf_losses import LossTrainingArguments
    from hf_losses.launch.checks import LaunchConfigError

    config = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}, "gradient_clipping": 0.5}
    try:
        with pytest.raises(LaunchConfigError) as error:
            LossTrainingArguments(
                output_dir=str(tmp_path), deepspeed=config, max_grad_norm=1.0, use_cpu=True, report_to=[]
            )
    finally:
        unset_hf_deepspeed_config()
    message = str(error.value)
    assert "bf16.enabled=True" in message and "bf16=False" in message
    assert "gradient_clipping=0.5" in message and "max_grad_norm=1.0" in message
