"""Data weights across 2 real processes (torchrun, gloo): 2 processes x batch 2 x GA 2 give the gradient of the
plain-PyTorch weighted mean over the same 8 examples -- per-example, per-token and class weights, normalize="count"
and "weight" (the weight sum summed across processes like the counts). One launch runs every case."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launching import launch, read_json_lines
from tiny_tasks import relative_error
from weighted_data import CASES, weighted_reference_gradient

pytestmark = pytest.mark.multiprocess

TOLERANCE = 1e-5
WORKER = Path(__file__).resolve().parent / "workers" / "data_weights_worker.py"


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("weights") / "gradients.pt"
    result = launch(WORKER, str(output), nproc=2, timeout=900)
    return torch.load(output, weights_only=False), read_json_lines(result.stdout)


def test_ran_data_parallel_on_two_processes_in_float32(two_process_run):
    _, lines = two_process_run
    assert sorted(line["rank"] for line in lines) == [0, 1]
    for line in lines:
        assert line["world_size"] == 2 and line["process_group"] == 2
        assert line["wrapper"] == "DistributedDataParallel"
        assert line["distributed_type"].endswith("MULTI_CPU")
        assert line["dtype"] == "torch.float32"
        assert line["cases"] == len(CASES)


@pytest.mark.parametrize(("loss_type", "task", "kinds", "normalize", "class_weights"), CASES)
def test_two_processes_match_the_weighted_mean(two_process_run, loss_type, task, kinds, normalize, class_weights):
    gradients, _ = two_process_run
    key = f"{loss_type}|{task}|{'+'.join(kinds)}|{normalize}|{class_weights is not None}"
    reference = weighted_reference_gradient(loss_type, task, kinds, normalize, class_weights, 0, 8)
    error = relative_error(gradients[key], reference)
    print(f"{key}: 2 processes x 2 x 2 relative error {error:.2e}")
    assert error <= TOLERANCE
