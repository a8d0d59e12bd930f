"""LossTrainer under DeepSpeed ZeRO-2 and ZeRO-3, 2 CPU processes with gloo, launched the way users launch:
``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml`` (ZeRO-3 under the zero3 YAML's
settings in the same processes, see the worker).

Properties: the gradient DeepSpeed holds at the accumulation boundary equals the plain single-process gradient of
the global mean loss over the same 8 examples (relative error <= 1e-5), for losses with uneven item counts per
process and for the model's own loss; clipping makes the norm the optimizer sees equal ``max_grad_norm``; and the
run really was DeepSpeed (distributed type, world size, engine, ZeRO stage, sharding, parameter dtype). bf16 on CPU
trains with bfloat16 parameters and finite losses.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from launching import launch, read_json_lines

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "workers" / "deepspeed_worker.py"
GRADIENT_CASES = ("token_ce_2x2x2", "token_focal_2x4x1", "sequence_auto_2x2x2")
STAGES = {"deepspeed_zero2": 2, "deepspeed_zero3": 3}

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], dict]:
    pytest.importorskip("deepspeed")
    completed = launch(
        WORKER,
        nproc=2,
        launcher="accelerate",
        accelerate_config=REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml",
        env={"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")},
        timeout=840,
    )
    records = read_json_lines(completed.stdout)
    by_case = {(record["config"], record["case"]): record for record in records}
    assert len(by_case) == len(records) == 12, completed.stdout[-3000:]
    return by_case


@pytest.mark.parametrize("config", sorted(STAGES))
def test_run_really_is_deepspeed_with_two_processes(results, config):
    for case in GRADIENT_CASES:
        record = results[(config, case)]
        assert record["distributed_type"] == "DEEPSPEED"
        assert record["world_size"] == record["num_processes"] == 2
        assert record["wrapper"] == "DeepSpeedEngine"
        assert record["zero_stage"] == STAGES[config]
        assert record["parameter_dtype"] == "float32"
        assert record["steps"] == 1
    optimizer = results[(config, GRADIENT_CASES[0])]["optimizer"]
    sharded = results[(config, GRADIENT_CASES[0])]["parameters_sharded"]
    if STAGES[config] == 3:
        assert optimizer == "DeepSpeedZeroOptimizer_Stage3" and sharded
    else:
        assert optimizer == "DeepSpeedZeroOptimizer" and not sharded


@pytest.mark.parametrize("case", GRADIENT_CASES)
@pytest.mark.parametrize("config", sorted(STAGES))
def test_gradient_equals_single_process_gradient(results, config, case):
    record = results[(config, case)]
    assert record["relative_error"] <= 1e-5, record


@pytest.mark.parametrize("config", sorted(STAGES))
def test_deepspeed_clips_gradient_norm_to_max_grad_norm(results, config):
    clipped = results[(config, "clip_small")]
    # the raw norm is the single-process reference norm and exceeds max_grad_norm
    assert clipped["raw_norms"][0] == pytest.approx(clipped["reference_norm"], rel=1e-5)
    assert clipped["raw_norms"][0] > 10 * clipped["max_grad_norm"]
    # the torch optimizer inside ZeRO sees a gradient of norm max_grad_norm
    assert clipped["seen_norms"][0] == pytest.approx(clipped["max_grad_norm"], rel=1e-5)
    # the Trainer logs the pre-clipping norm
    assert clipped["logged_grad_norm"][0] == pytest.approx(clipped["raw_norms"][0], rel=1e-6)


@pytest.mark.parametrize("config", sorted(STAGES))
def test_deepspeed_leaves_gradient_below_max_grad_norm_unchanged(results, config):
    unclipped = results[(config, "clip_none_needed")]
    assert unclipped["raw_norms"][0] < unclipped["max_grad_norm"]
    assert unclipped["seen_norms"][0] == pytest.approx(unclipped["raw_norms"][0], rel=1e-5)
    assert unclipped["seen_norms"][0] == pytest.approx(unclipped["reference_norm"], rel=1e-5)


@pytest.mark.parametrize("config", sorted(STAGES))
def test_losses_are_finite_and_equal_across_stages(results, config):
    for case in GRADIENT_CASES:
        losses = results[(config, case)]["losses"]
        assert losses and all(abs(value) < 1e6 for value in losses)
    # same data, same weights: ZeRO-2 and ZeRO-3 report the same training loss
    for case in GRADIENT_CASES:
        assert results[(config, case)]["losses"] == pytest.approx(
            results[("deepspeed_zero2", case)]["losses"], rel=1e-5
        )


@pytest.mark.parametrize("config", sorted(STAGES))
def test_bf16_on_cpu_trains_with_bfloat16_parameters_and_finite_losses(results, config):
    record = results[(config, "bf16_train")]
    assert record["distributed_type"] == "DEEPSPEED" and record["wrapper"] == "DeepSpeedEngine"
    assert record["world_size"] == 2 and record["zero_stage"] == STAGES[config]
    assert record["parameter_dtype"] == "bfloat16"
    losses = record["losses"]
    assert len(losses) == 3 and all(math.isfinite(value) for value in losses)
    assert losses[-1] < losses[0]  # lr 1e-2 on the same 8 examples: it learns


def test_single_process_deepspeed_started_with_plain_python_runs():
    # upstream: "No module named 'mpi4py'"; LossTrainingArguments' launch check sets RANK=0, WORLD_SIZE=1, ...
    pytest.importorskip("deepspeed")
    completed = launch(
        HERE / "workers" / "deepspeed_single_worker.py",
        launcher="python",
        env={"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")},
        timeout=600,
    )
    (record,) = read_json_lines(completed.stdout)
    assert record["absent_before"] == ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
    assert record["world_size_env"] == "1"
    assert record["distributed_type"] == "DEEPSPEED" and record["wrapper"] == "DeepSpeedEngine"
    assert record["world_size"] == 1 and record["zero_stage"] == 2 and record["steps"] == 1
    assert record["relative_error"] <= 1e-5
