"""``nonfinite_loss`` with 2 real processes (torchrun, gloo, DDP): a NaN loss on one rank only is seen by both.
``raise`` stops both ranks before the optimizer step; ``skip`` drops that step's update on both, and the ranks'
weights stay identical (equal to the weights before the step)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launching import launch, read_json_lines

pytestmark = pytest.mark.multiprocess
WORKER = Path(__file__).resolve().parent / "workers" / "nonfinite_worker.py"


@pytest.fixture(scope="module")
def records():
    lines = read_json_lines(launch(WORKER, nproc=2, timeout=600).stdout)
    assert sorted((line["mode"], line["rank"]) for line in lines) == [
        ("raise", 0),
        ("raise", 1),
        ("skip", 0),
        ("skip", 1),
    ]
    for line in lines:
        assert line["world_size"] == 2 and line["wrapper"] == "DistributedDataParallel", line
    return {(line["mode"], line["rank"]): line for line in lines}


def test_raise_stops_every_rank_before_the_step(records):
    for rank in (0, 1):
        record = records[("raise", rank)]
        assert record["raised"] is not None and "not finite at optimizer step 2" in record["raised"]
        assert len(record["snapshots"]) == 1  # only step 1 was taken, on both ranks
    assert "rank 1;" in records[("raise", 1)]["raised"]  # the rank that saw it names itself
    assert "6 of 6 logits" in records[("raise", 1)]["raised"]


def test_skip_drops_the_update_on_every_rank_and_keeps_them_in_sync(records):
    zero, one = records[("skip", 0)], records[("skip", 1)]
    assert zero["raised"] is None and one["raised"] is None
    assert zero["skipped"] == one["skipped"] == 1
    first, second, third = (torch.tensor(values) for values in zero["snapshots"])
    assert torch.equal(first, second) and not torch.equal(second, third) and torch.isfinite(third).all()
    assert zero["snapshots"] == one["snapshots"]  # identical weights on both ranks after every step
