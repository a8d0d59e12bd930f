"""Batch losses are exact across processes: 2 processes x 4 (and 5 + 3) samples give the loss and the
gradients of 1 process x 8, for dice / tversky / generalized_dice / focal_tversky / lovasz with
``per_image=False`` and for info_nce (one-way and symmetric), through the differentiable collectives of
``hf_losses.distributed`` (one torchrun launch, gloo; the worker asserts the world size and the DDP wrapper).

Gradients checked: the DDP-averaged gradient of a tiny linear model's parameters (equal to the single-process
gradient) and the gradient w.r.t. each rank's own loss inputs (equal to W times the single-process gradient,
the factor DDP's averaging removes; see the docstring of hf_losses/distributed.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launching import launch, read_json_lines

from hf_losses.distributed import (
    all_gather_with_grad,
    all_reduce_sum_with_grad,
    gather_across_processes,
    is_distributed,
    mean_across_processes,
    process_sizes,
    rank,
    sum_across_processes,
    world_size,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "workers" / "batch_losses_worker.py"
TOLERANCE = 1e-5
SEGMENTATION = ("dice", "tversky", "generalized_dice", "focal_tversky", "lovasz")
EXPECTED_CASES = {f"{name}_{split}" for name in SEGMENTATION for split in ("4+4", "5+3")} | {
    f"info_nce_{kind}_{split}" for kind in ("one_way", "symmetric") for split in ("4+4", "5+3")
}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    completed = launch(WORKER, nproc=2, launcher="torchrun", timeout=300)
    return read_json_lines(completed.stdout)


@pytest.mark.multiprocess
def test_worker_ran_every_case_on_two_ranks(records):
    cases = {(r["case"], r["rank"]) for r in records if r["case"] != "collectives"}
    assert cases == {(case, rank) for case in EXPECTED_CASES for rank in (0, 1)}
    assert all(r["world_size"] == 2 for r in records)


@pytest.mark.multiprocess
def test_autograd_collectives_match_torch_distributed_nn_and_helpers_reduce(records):
    assert sorted(r["rank"] for r in records if r["case"] == "collectives" and r["ok"]) == [0, 1]


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", sorted(EXPECTED_CASES))
def test_two_processes_equal_one_process(records, case):
    for record in (r for r in records if r["case"] == case):
        assert record["value"] == pytest.approx(record["reference"], rel=TOLERANCE), record
        assert record["leaf_value"] == pytest.approx(record["reference"], rel=1e-3), record  # other inputs
        assert record["parameter_error"] <= TOLERANCE, record
        assert record["input_error"] <= TOLERANCE, record
        # control: the local batch's statistics alone give a visibly different gradient
        assert record["local_only_parameter_error"] > 1e-3, record


def test_collectives_are_identity_without_a_process_group():
    assert not is_distributed() and world_size() == 1 and rank() == 0
    tensor = torch.randn(3, 2, requires_grad=True)
    assert all_reduce_sum_with_grad(tensor) is tensor
    assert all_gather_with_grad(tensor) is tensor
    assert process_sizes(3) == [3]
    torch.testing.assert_close(sum_across_processes(tensor), tensor.detach())
    assert not sum_across_processes(tensor).requires_grad
    assert sum_across_processes(5).item() == 5
    assert mean_across_processes(4).item() == 4.0
    torch.testing.assert_close(gather_across_processes(tensor), tensor.detach())
