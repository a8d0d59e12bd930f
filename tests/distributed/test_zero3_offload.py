"""The shipped ``configs/deepspeed/zero3_offload.json`` trains: 2 CPU processes (gloo) launched as users launch it,
``accelerate launch --config_file configs/accelerate/deepspeed_zero3_offload.yaml --num_processes 2``.

Properties: the run really is DeepSpeed ZeRO-3 over 2 processes with parameters and optimizer states offloaded to
the CPU and DeepSpeed's CPU Adam stepping; its one optimizer step over the 8 examples takes the plain
single-process gradient of the same 8 examples (relative error <= 1e-5); 6 steps with lr 1e-2 give finite,
decreasing losses, the same on both ranks.

DeepSpeed compiles its CPU Adam op on first use (about 90 s on 2 cores; cached in ``.cache/torch_extensions``
afterwards, when the launch itself takes about 30 s).
"""

from __future__ import annotations

import math

import pytest
from launching import REPO_ROOT, launch, read_json_lines

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.timeout(900)]

WORKER = REPO_ROOT / "tests" / "distributed" / "workers" / "zero3_offload_worker.py"


@pytest.fixture(scope="module")
def records() -> dict[tuple[str, int], dict]:
    pytest.importorskip("deepspeed")
    completed = launch(
        WORKER,
        nproc=2,
        launcher="accelerate",
        accelerate_config=REPO_ROOT / "configs" / "accelerate" / "deepspeed_zero3_offload.yaml",
        env={"TORCH_EXTENSIONS_DIR": str(REPO_ROOT / ".cache" / "torch_extensions")},
        timeout=840,
    )
    found = read_json_lines(completed.stdout)
    by_case = {(record["case"], record["rank"]): record for record in found}
    assert len(by_case) == len(found) == 4, completed.stdout[-3000:]
    return by_case


@pytest.mark.parametrize("case", ["gradient", "train"])
def test_run_really_is_zero3_with_cpu_offload_over_two_processes(records, case):
    for rank in (0, 1):
        record = records[(case, rank)]
        assert record["distributed_type"] == "DEEPSPEED" and record["wrapper"] == "DeepSpeedEngine"
        assert record["world_size"] == record["num_processes"] == 2
        assert record["zero_stage"] == 3
        assert record["optimizer"] == "DeepSpeedZeroOptimizer_Stage3" and record["parameters_sharded"]
        assert record["offload_optimizer_device"] == record["offload_param_device"] == "cpu"
        assert record["optimizer_offloaded"] and record["parameters_offloaded"]
        assert record["inner_optimizer"] == "DeepSpeedCPUAdam"
        assert record["partition_device"] == "cpu"
        assert record["parameter_dtype"] == "float32"


def test_one_step_takes_the_single_process_gradient(records):
    for rank in (0, 1):
        record = records[("gradient", rank)]
        assert record["steps"] == 1
        assert record["relative_error"] <= 1e-5, record


def test_training_loss_is_finite_and_decreases(records):
    losses = records[("train", 0)]["losses"]
    assert len(losses) == 6 and all(math.isfinite(value) for value in losses), losses
    assert losses[-1] < losses[0] and min(losses[3:]) < min(losses[:3]), losses
    assert records[("train", 1)]["losses"] == pytest.approx(losses, rel=1e-6)
