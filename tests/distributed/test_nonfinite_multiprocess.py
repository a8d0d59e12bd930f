"""``nonfinite_loss`` with 2 real processes (torchrun, gloo, DDP): a NaN loss on one rank only is seen by both.
``raise`` stops both ranks before the optimizer step; ``skip`` drops that step's update on both, and the ranks'
weights stay identical (equal to the weights before the step); ``ignore`` trains on as transformers does (the
NaN reaches every rank's weights through DDP's gradient average)."""

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
    modes = [(mode, rank) for mode in ("ignore", "raise", "skip") for rank in (0, 1)]
    assert sorted((line["mode"], line["rank"]) for line in lines) == modes
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


def test_ignore_trains_on_and_the_nan_reaches_every_rank(records):
    for rank in (0, 1):
        record = records[("ignore", rank)]
        assert record["raised"] is None and record["skipped"] == 0 and len(record["snapshots"]) == 3
        first, second = (torch.tensor(values) for values in record["snapshots"][:2])
        assert torch.isfinite(first).all() and torch.isnan(second).any()
