"""Multi-objective losses under LossTrainer: learned (uncertainty) weights move the right way with 1 and 2 processes,
DWA stays in step across processes, schedules follow the global step, and all of it survives resume_from_checkpoint.

The problem (``workers/multiobjective_problem.py``): two linear regression tasks on the same features, task ``b``
with ~7x the noise std of task ``a``; composite ``task_a_mse + task_b_mse``, full-batch training.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from launching import launch, read_json_lines  # noqa: E402
from multiobjective_problem import NOISE_STD, summary, train  # noqa: E402

WORKER = Path(__file__).resolve().parents[1] / "distributed" / "workers" / "multiobjective_worker.py"
STEPS = 60
A, B = "task_a_mse", "task_b_mse"


@pytest.fixture(scope="module")
def uncertainty_run(tmp_path_factory):
    return summary(train(str(tmp_path_factory.mktemp("uncertainty")), "uncertainty", STEPS))


@pytest.fixture(scope="module")
def dwa_run(tmp_path_factory):
    return summary(train(str(tmp_path_factory.mktemp("dwa")), "dwa", STEPS))


def _assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol
    )


def _flat(model):
    return [value for parameter in model for value in parameter]


def test_uncertainty_weight_of_noisier_task_falls(uncertainty_run):
    first, last = uncertainty_run["logged"][0], uncertainty_run["logged"][-1]
    # logged after the optimizer step: one Adam step (lr 0.1) away from the initial exp(0) = 1
    assert first[f"loss_weight/{A}"] == pytest.approx(1.0, abs=0.15)
    assert first[f"loss_weight/{B}"] == pytest.approx(1.0, abs=0.15)
    # Kendall et al.: exp(-s) tends to 1 / L; task b's irreducible MSE is 4, task a's 0.09
    assert last[f"loss_weight/{B}"] < 0.5 < 2.0 < last[f"loss_weight/{A}"]
    weights_b = [entry[f"loss_weight/{B}"] for entry in uncertainty_run["logged"]]
    assert max(weights_b[STEPS // 4 :]) < 0.5 * weights_b[0]  # falls early and stays down
    # the logged per-component losses are the plain MSEs, the noisier task's larger
    assert last[f"loss/{B}"] > 10 * last[f"loss/{A}"]
    assert last[f"loss/{B}"] == pytest.approx(NOISE_STD[1] ** 2, rel=0.35)
    assert last[f"loss_weight/{A}"] == pytest.approx(1 / last[f"loss/{A}"], rel=0.5)
    assert uncertainty_run["world_size"] == 1


def test_uncertainty_training_is_the_same_with_gradient_accumulation(uncertainty_run, tmp_path):
    """The regulariser s_i is counted once per optimizer step, not once per micro-batch."""
    accumulated = summary(train(str(tmp_path), "uncertainty", STEPS, accumulation=4))
    _assert_close(
        accumulated["loss_state"]["weighting.log_variances"],
        uncertainty_run["loss_state"]["weighting.log_variances"],
        rtol=1e-4,
    )
    _assert_close(_flat(accumulated["model"]), _flat(uncertainty_run["model"]), rtol=1e-4, atol=1e-5)


@pytest.mark.multiprocess
def test_two_processes_learn_the_same_weights_and_keep_them_in_sync(uncertainty_run, dwa_run):
    result = launch(WORKER, str(STEPS), nproc=2, timeout=900)
    runs = read_json_lines(result.stdout)
    assert sorted((run["run"], run["rank"]) for run in runs) == sorted(
        (name, rank) for name in ("uncertainty-1", "uncertainty-2", "dwa-1") for rank in (0, 1)
    )
    for run in runs:
        assert run["world_size"] == 2 and run["process_group_size"] == 2
        assert run["wrapper"] == "DistributedDataParallel"
        assert run["same_state_on_all_ranks"], run["run"]
        reference = dwa_run if run["run"].startswith("dwa") else uncertainty_run
        for key, values in reference["loss_state"].items():
            _assert_close(run["loss_state"][key], values, rtol=1e-4, atol=1e-5)
        _assert_close(_flat(run["model"]), _flat(reference["model"]), rtol=1e-4, atol=1e-5)
        if run["run"].startswith("uncertainty"):
            assert run["weights"][B] < 0.5 < 2.0 < run["weights"][A]


def test_dwa_weights_change_and_round_trip_through_resume(dwa_run, tmp_path):
    lambdas = dwa_run["loss_state"]["weighting.dwa_lambdas"]
    assert lambdas != [1.0, 1.0] and sum(lambdas) == pytest.approx(2.0)
    # resume in the middle of a DWA period (periods of 3 steps): same end state as the uninterrupted run
    output = str(tmp_path)
    train(output, "dwa", 7, save_steps=7)
    resumed = summary(train(output, "dwa", STEPS, resume_from_checkpoint=os.path.join(output, "checkpoint-7")))
    for key, values in dwa_run["loss_state"].items():
        _assert_close(resumed["loss_state"][key], values)
    _assert_close(_flat(resumed["model"]), _flat(dwa_run["model"]))


SCHEDULE = {B: {"schedule": "linear", "start_value": 0.0, "end_value": 1.0, "start_step": 2, "end_step": 8}}


def _schedule_value(step):
    return min(max((step - 2) / 6, 0.0), 1.0)


def test_schedule_follows_global_step_and_resumes_mid_schedule(tmp_path):
    uninterrupted = summary(train(str(tmp_path / "full"), "fixed", 10, schedules=SCHEDULE, weights={A: 0.5}))
    # a log at step s reports the weights of the step just taken (the forward ran at global step s - 1)
    for entry in uninterrupted["logged"]:
        assert entry[f"loss_weight/{B}"] == pytest.approx(_schedule_value(entry["step"] - 1))
        assert entry[f"loss_weight/{A}"] == 0.5
    output = str(tmp_path / "resumed")
    train(output, "fixed", 10, schedules=SCHEDULE, weights={A: 0.5}, save_steps=4)
    state = torch.load(os.path.join(output, "checkpoint-4", "loss_state.pt"), weights_only=True)
    assert int(state["weighting.step"]) == 3
    resumed = summary(
        train(
            output,
            "fixed",
            10,
            schedules=SCHEDULE,
            weights={A: 0.5},
            resume_from_checkpoint=os.path.join(output, "checkpoint-4"),
        )
    )
    # log_history is restored with the checkpoint: steps 1-4 come from the first run
    assert [entry["step"] for entry in resumed["logged"]] == list(range(1, 11))
    for entry in resumed["logged"][4:]:
        assert entry[f"loss_weight/{B}"] == pytest.approx(_schedule_value(entry["step"] - 1))
    _assert_close(_flat(resumed["model"]), _flat(uninterrupted["model"]))


def test_uncertainty_state_round_trips_through_a_checkpoint_and_is_not_a_model_weight(uncertainty_run, tmp_path):
    output = str(tmp_path)
    train(output, "uncertainty", 40, save_steps=40)
    checkpoint = os.path.join(output, "checkpoint-40")
    state = torch.load(os.path.join(checkpoint, "loss_state.pt"), weights_only=True)
    assert set(state) == {"weighting.log_variances", "weighting.step"}
    assert state["weighting.log_variances"][1] > 0 > state["weighting.log_variances"][0]
    from safetensors.torch import load_file

    model_weights = load_file(os.path.join(checkpoint, "model.safetensors"))
    assert sorted(model_weights) == ["linear.bias", "linear.weight"]
    resumed = summary(train(output, "uncertainty", STEPS, resume_from_checkpoint=checkpoint))
    _assert_close(
        resumed["loss_state"]["weighting.log_variances"], uncertainty_run["loss_state"]["weighting.log_variances"]
    )
    _assert_close(_flat(resumed["model"]), _flat(uncertainty_run["model"]))


@pytest.mark.multiprocess
@pytest.mark.slow
def test_deepspeed_zero2_trains_the_learned_weights(uncertainty_run):
    pytest.importorskip("deepspeed")
    repository = Path(__file__).resolve().parents[2]
    result = launch(
        WORKER.parent / "multiobjective_deepspeed_worker.py",
        str(STEPS),
        nproc=2,
        launcher="accelerate",
        accelerate_config=repository / "configs" / "accelerate" / "deepspeed_zero2.yaml",
        env={"TORCH_EXTENSIONS_DIR": str(repository / ".cache" / "torch_extensions")},
        timeout=900,
    )
    runs = read_json_lines(result.stdout)
    assert sorted(run["rank"] for run in runs) == [0, 1]
    for run in runs:
        assert run["distributed_type"] == "DistributedType.DEEPSPEED" or run["distributed_type"] == "DEEPSPEED"
        assert run["engine"] == "DeepSpeedEngine" and run["zero_stage"] == 2 and run["world_size"] == 2
        assert run["same_state_on_all_ranks"]
        assert run["weights"][B] < 0.5 < 2.0 < run["weights"][A]
        _assert_close(
            run["loss_state"]["weighting.log_variances"],
            uncertainty_run["loss_state"]["weighting.log_variances"],
            rtol=1e-3,
            atol=1e-4,
        )
