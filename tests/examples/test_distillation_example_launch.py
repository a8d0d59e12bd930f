"""examples/distillation under ``accelerate launch`` with 2 CPU processes (DDP over gloo), smoke size: the teacher
is trained on both ranks and saved once, every student is taught by it through the saved folder on both ranks, the
main process alone measures and writes one table."""

from __future__ import annotations

import json
import re

import pytest
from example_runs import SMOKE_FLAGS, example_script
from launching import REPO_ROOT, launch

pytestmark = pytest.mark.multiprocess

#: "=== trained with <label>: <s> s, world size <n>, model run as <wrapper>" (printed by the main process)
TRAINED = r"=== trained with (.+?): [\d.]+ s, world size (\d+), model run as (\w+)"
CPU_MULTIPROCESS = REPO_ROOT / "configs" / "accelerate" / "cpu_multiprocess.yaml"
#: one optimizer step per run: the launch checks the wiring, the python smoke tests check the table's values
ONE_STEP = ["--max_steps", "1"]


def launch_example(file: str, output_dir, *script_args: str):
    return launch(
        example_script("distillation", file),
        "--output_dir",
        str(output_dir),
        *script_args,
        *SMOKE_FLAGS,
        *ONE_STEP,  # after SMOKE_FLAGS' --max_steps 2: the last flag wins
        nproc=2,
        launcher="accelerate",
        accelerate_config=CPU_MULTIPROCESS,
        timeout=600,
    )


def test_classification_distillation_with_two_processes(tmp_path):
    result = launch_example(
        "classification",
        tmp_path,
        "--max_train_samples",
        "16",
        "--max_eval_samples",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--max_length",
        "16",
        "--timing_repeats",
        "1",
    )
    runs = re.findall(TRAINED, result.stdout)
    assert [label.split(":")[0] for label, _, _ in runs] == ["teacher", *["student (2 layers)"] * 3]
    assert {(world, wrapper) for _, world, wrapper in runs} == {("2", "DistributedDataParallel")}
    assert result.stdout.count("| loss | accuracy | macro-F1 |") == 1  # printed by the main process only
    results = (tmp_path / "results.md").read_text()
    assert "world size 2" in results and results.count("| student (2 layers): ") == 3
    loss_config = json.loads(
        (
            tmp_path / "student_distillation_temperature_2_alpha_0.9_balanced_class_weights" / "loss_config.json"
        ).read_text()
    )
    assert loss_config["teacher_model"] == str(tmp_path / "teacher")


def test_causal_lm_distillation_with_two_processes(tmp_path):
    result = launch_example(
        "causal_lm",
        tmp_path,
        "--max_train_samples",
        "8",
        "--max_eval_samples",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--vocab_size",
        "300",
        "--block_size",
        "32",
    )
    runs = re.findall(TRAINED, result.stdout)
    assert [label.split(":")[0] for label, _, _ in runs] == ["teacher (4x128)", "student (2x64)", "student (2x64)"]
    assert {(world, wrapper) for _, world, wrapper in runs} == {("2", "DistributedDataParallel")}
    assert result.stdout.count("| loss | held-out NLL (nats/token) |") == 1
    results = (tmp_path / "results.md").read_text()
    assert "world size 2" in results and "| student (2x64): causal_lm_distillation(" in results
    loss_config = json.loads(
        (tmp_path / "student_causal_lm_distillation_temperature_1_alpha_0.5" / "loss_config.json").read_text()
    )
    assert loss_config["teacher_model"] == str(tmp_path / "teacher")
