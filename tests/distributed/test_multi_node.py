"""A 2-machine job on this host, started the way a cluster job is: one ``accelerate launch --num_machines 2
--machine_rank r`` per machine, both at once, one CPU process per machine, gloo (``launching.launch_machines``).

- DDP with the shipped ``configs/accelerate/multi_node.yaml`` as it is, only the lines it marks ``CHANGE PER``
  overridden on the command line (``--num_machines 2 --machine_rank 0|1 --num_processes 2 --main_process_ip
  127.0.0.1 --main_process_port <free port>``; no ``--cpu``, which would make each machine train alone).
- DeepSpeed ZeRO-2 with the 2-machine config ``hf-losses config --num_machines 2 --deepspeed 2`` writes
  (``write_launch_config``: it adds ``deepspeed_multinode_launcher: standard``, so the machines join one torchrun
  rendezvous instead of each starting a pdsh job of its own).

Each run must really be one world of 2 processes on 2 machines (world size, process group, torchrun's machine
rank, 1 process per machine), wrapped as asked (DistributedDataParallel as MULTI_CPU / DeepSpeedEngine with ZeRO
stage 2), and its one optimizer step over the 8 samples must take the gradient of ONE process seeing the same 8
samples (a single-process LossTrainer run; relative error <= 1e-5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launching import REPO_ROOT, launch_machines, read_json_lines
from tiny_tasks import relative_error, trainer_gradients

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(600)]

WORKER = Path(__file__).resolve().parent / "workers" / "multi_node_worker.py"
#: the worker's cases: (case, task, loss_type)
CASES = (
    ("token_ce_2x2", "token_classification", "cross_entropy"),
    ("sequence_auto_4x1", "sequence_classification", "auto"),
)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def single_process_gradients(tmp_path_factory) -> dict[str, torch.Tensor]:
    """One process, no launcher: one optimizer step over the 8 samples as one batch."""
    gradients = {}
    for case, task, loss_type in CASES:
        steps, trainer = trainer_gradients(task, loss_type, {}, 8, 8, 1, str(tmp_path_factory.mktemp(case)))
        assert len(steps) == 1 and trainer.args.world_size == 1
        assert type(trainer.model_wrapped).__name__ != "DistributedDataParallel"
        gradients[case] = steps[0]
    return gradients


def run_two_machines(mode: str, accelerate_config: Path, output: Path, **kwargs) -> list[dict]:
    outputs = launch_machines(
        WORKER, mode, str(output), accelerate_config=accelerate_config, num_machines=2, timeout=540, **kwargs
    )
    records = []
    for machine, completed in enumerate(outputs):
        (record,) = read_json_lines(completed.stdout)  # one process on each machine
        assert record["machine"] == machine, completed.stdout[-2000:]
        records.append(record)
    return records


def assert_one_world_over_two_machines(records: list[dict]) -> None:
    assert sorted(record["rank"] for record in records) == [0, 1]
    for record in records:
        assert record["process_group"] == 2 and record["backend"] == "gloo"
        assert record["machines"] == 2 and record["processes_per_machine"] == 1


def test_ddp_over_two_machines_with_the_shipped_multi_node_config(tmp_path, single_process_gradients):
    output = tmp_path / "gradients.pt"
    records = run_two_machines("ddp", REPO_ROOT / "configs" / "accelerate" / "multi_node.yaml", output)
    assert_one_world_over_two_machines(records)
    for record in records:
        for case, _, _ in CASES:
            seen = record["cases"][case]
            assert seen["world_size"] == seen["num_processes"] == 2, seen
            assert seen["wrapper"] == "DistributedDataParallel", seen
            assert seen["distributed_type"] == "MULTI_CPU", seen
            assert seen["use_cpu"] is True and seen["ddp_backend"] == "gloo", seen
            assert seen["zero_stage"] is None
    gradients = torch.load(output, weights_only=False)
    for case, _, _ in CASES:
        assert relative_error(gradients[case], single_process_gradients[case]) <= TOLERANCE, case


@pytest.mark.parametrize("source", ["written", "shipped"])
def test_deepspeed_zero2_over_two_machines(tmp_path, single_process_gradients, source):
    """``written``: ``hf-losses config --num_machines 2 --deepspeed 2``; ``shipped``: the single-node
    ``configs/accelerate/deepspeed_zero2.yaml`` with ``--num_machines 2`` on the command line (its
    ``deepspeed_multinode_launcher: standard`` makes the machines one job)."""
    pytest.importorskip("deepspeed")
    from hf_losses.launch.config_writer import write_launch_config

    if source == "written":
        files = write_launch_config(tmp_path / "config", num_processes=2, num_machines=2, zero_stage=2)
        assert files.distributed_type == "DEEPSPEED"
        config = files.accelerate_config
    else:
        config = REPO_ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml"
    output = tmp_path / "gradients.pt"
    records = run_two_machines(
        "deepspeed",
        config,
        output,
        env={"TORCH_EXTENSIONS_DIR": str(REPO_ROOT / ".cache" / "torch_extensions")},
    )
    assert_one_world_over_two_machines(records)
    for record in records:
        for case, _, _ in CASES:
            seen = record["cases"][case]
            assert seen["world_size"] == seen["num_processes"] == 2, seen
            assert seen["wrapper"] == "DeepSpeedEngine", seen
            assert seen["distributed_type"] == "DEEPSPEED", seen
            assert seen["zero_stage"] == 2, seen
    gradients = torch.load(output, weights_only=False)
    for case, _, _ in CASES:
        assert relative_error(gradients[case], single_process_gradients[case]) <= TOLERANCE, case
