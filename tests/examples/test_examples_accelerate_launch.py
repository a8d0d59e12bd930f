"""An example under `accelerate launch` with 2 CPU processes (gloo): real DDP, optuna trials broadcast to both
ranks, one results table written by the main process, and DDP not asked to search for unused parameters (the
model uses them all: the example sets ``ddp_find_unused_parameters=False``)."""

from __future__ import annotations

import re

import pytest
from example_runs import example_script
from launching import REPO_ROOT, launch

#: what DDP's reducer prints on every rank when find_unused_parameters=True finds no unused parameter
UNUSED_PARAMETERS_WARNING = (
    "find_unused_parameters=True was specified in DDP constructor, but did not find any unused parameters"
)


@pytest.mark.multiprocess
def test_medical_example_under_accelerate_launch_with_two_processes_and_tuning(tmp_path):
    result = launch(
        example_script("medical_diagnosis"),
        "--output_dir",
        str(tmp_path),
        "--max_train_samples",
        "64",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--eval_strategy",
        "no",
        "--disable_tqdm",
        "True",
        "--tune_trials",
        "2",
        "--save_models",
        "False",
        nproc=2,
        launcher="accelerate",
        accelerate_config=REPO_ROOT / "configs" / "accelerate" / "cpu_multiprocess.yaml",
        timeout=600,
    )
    output = result.stdout
    assert UNUSED_PARAMETERS_WARNING not in result.stdout + result.stderr
    runs = re.findall(r"=== trained with (.+?): [\d.]+ s, world size (\d+), model run as (\w+)", output)
    assert [(world, wrapper) for _, world, wrapper in runs] == [("2", "DistributedDataParallel")] * 2
    assert runs[1][0].startswith("tuned fn_penalty(fn_cost=")
    assert output.count("| loss | sensitivity |") == 1  # printed by the main process only
    results = (tmp_path / "results.md").read_text()
    assert runs[1][0] in results and "Tuning (optuna" in results
