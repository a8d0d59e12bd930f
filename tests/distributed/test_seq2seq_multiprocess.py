"""LossSeq2SeqTrainer in 2 real processes (torchrun, gloo, DDP): 2 x batch 2 x GA 2 gives the gradient of plain
PyTorch on the same 8 samples as one batch, for label-smoothed CE, focal, balanced class weights and the model's
own loss, on tiny T5 and BART."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launching import launch, read_json_lines
from seq2seq_models import reference_gradient
from tiny_tasks import relative_error

from hf_losses import get_loss

pytestmark = pytest.mark.multiprocess
WORKER = Path(__file__).resolve().parent / "workers" / "seq2seq_worker.py"


def test_two_processes_give_the_single_process_gradient():
    records = read_json_lines(launch(WORKER, nproc=2, timeout=600).stdout)
    assert len(records) == 4
    for record in records:
        name, loss_type, loss_kwargs, class_weights = record["case"]
        assert record["world_size"] == 2 and record["wrapper"] == "DistributedDataParallel", record["case"]
        assert record["task"] == "seq2seq_lm" and record["steps"] == 1
        if class_weights is not None:
            loss_kwargs = {**loss_kwargs, "weight": record["class_weight_values"]}
        loss = None if loss_type == "auto" else get_loss(loss_type, **loss_kwargs)
        error = relative_error(torch.tensor(record["gradient"], dtype=torch.float64), reference_gradient(name, loss, 8))
        assert error <= 1e-5, (record["case"], error)
