"""Distillation with a teacher in 2 real processes (gloo on CPU), for ``distillation`` (BERT classifier taught by a
wider, deeper BERT) and ``causal_lm_distillation`` (GPT-2 taught by a wider, deeper Llama):

* ``accelerate launch`` MULTI_CPU (DDP): 2 processes x batch 2 x accumulation 2 give the gradient of one process
  seeing the 8 samples as one batch (relative error <= 1e-5); the student is wrapped in DDP, the teacher is not;
* DeepSpeed ZeRO-2 and ZeRO-3: the same gradient; the teacher is a DeepSpeed engine of its own, ZeRO stage 0 beside
  ZeRO-2 and stage 3 -- its parameters really partitioned -- beside ZeRO-3; under bf16 it runs in bfloat16 like the
  student.

Everywhere the teacher stays frozen (eval mode, no parameter requiring a gradient, every forward without grad) and
outside the student. One launch per launcher (``workers/distill_worker.py``): process start-up is the slow part.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from distillation_models import CASES, TOLERANCE, reference_gradient
from tiny_tasks import relative_error

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "workers" / "distill_worker.py"

pytestmark = pytest.mark.multiprocess


def _launch(mode: str) -> list[dict]:
    from launching import launch, read_json_lines

    config = "cpu_multiprocess.yaml" if mode == "ddp" else "deepspeed_zero2.yaml"
    completed = launch(
        WORKER,
        mode,
        nproc=2,
        launcher="accelerate",
        accelerate_config=REPO / "configs" / "accelerate" / config,
        env={"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")},
        timeout=840,
    )
    return read_json_lines(completed.stdout)


def _check_frozen_teacher_outside_student(record: dict, micro_batches: int = 2) -> None:
    if record["teacher_by_path"]:  # loaded by the trainer with the student's Auto class, named by its path
        assert record["teacher_inner"] == "LlamaForCausalLM" and record["teacher_name"].endswith("teacher"), record
    else:  # built from a config: named by its class
        assert record["teacher_name"] == record["teacher_inner"], record
    assert record["teacher_training"] is False, record
    assert record["teacher_requires_grad"] is False, record
    assert record["teacher_forwards"] == micro_batches and record["teacher_forwards_with_grad"] == 0, record
    assert record["teacher_in_student"] is False, record


def _check_gradient(record: dict) -> None:
    assert record["steps"] == 1, record
    error = relative_error(
        torch.tensor(record["gradient"], dtype=torch.float64), reference_gradient(record["loss_type"])
    )
    assert error <= TOLERANCE, f"{record['config']} {record['loss_type']}: relative error {error:.2e}"


@pytest.mark.timeout(900)
def test_two_process_ddp_distillation_gradient_equals_single_process():
    records = _launch("ddp")
    assert sorted(record["loss_type"] for record in records) == sorted(CASES)
    for record in records:
        assert record["distributed_type"] == "MULTI_CPU" and record["world_size"] == record["num_processes"] == 2
        assert record["wrapper"] == "DistributedDataParallel", record
        # the teacher has no gradient to synchronise: never wrapped in DDP
        assert record["teacher_wrapper"] == record["teacher_inner"] != "DistributedDataParallel", record
        assert record["student_dtype"] == record["teacher_dtype"] == "float32"
        _check_frozen_teacher_outside_student(record)
        _check_gradient(record)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_process_deepspeed_zero2_and_zero3_distillation_partitions_the_teacher_under_zero3():
    pytest.importorskip("deepspeed")
    records = {(record["config"], record["loss_type"]): record for record in _launch("deepspeed")}
    expected = [(config, loss) for config in ("zero2", "zero3") for loss in CASES] + [("zero3_bf16", "distillation")]
    assert sorted(records) == sorted(expected)
    assert records[("zero3", "causal_lm_distillation")]["teacher_by_path"]
    for (config, _), record in records.items():
        stage = 2 if config == "zero2" else 3
        assert record["distributed_type"] == "DEEPSPEED" and record["world_size"] == record["num_processes"] == 2
        assert record["wrapper"] == record["teacher_wrapper"] == "DeepSpeedEngine", record
        assert record["student_zero_stage"] == stage, record
        # ZeRO-3: the teacher's parameters are partitioned like the student's; beside ZeRO-2 it is whole (stage 0)
        assert record["teacher_zero_stage"] == (3 if stage == 3 else 0), record
        assert record["student_partitioned"] is record["teacher_partitioned"] is (stage == 3), record
        if config == "zero3_bf16":  # 3 optimizer steps of 2 micro-batches at lr 1e-2
            _check_frozen_teacher_outside_student(record, micro_batches=6)
            assert record["student_dtype"] == record["teacher_dtype"] == "bfloat16", record
            assert len(record["losses"]) == 3 and all(math.isfinite(value) for value in record["losses"])
        else:
            _check_frozen_teacher_outside_student(record)
            assert record["student_dtype"] == record["teacher_dtype"] == "float32", record
            _check_gradient(record)
