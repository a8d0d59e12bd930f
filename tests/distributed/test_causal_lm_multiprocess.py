"""The chunked ``causal_lm`` loss under LossTrainer in 2 real processes: DDP and DeepSpeed ZeRO-2/3 (gloo on CPU)
give the gradient of the single-process stock loss on the same 8 samples, and the LM head never computes full
logits (ZeRO-3 really shards it). The worker is ``workers/causal_lm_worker.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from causal_lm_models import DISTRIBUTED_CASES, TOLERANCE, stock_gradient
from tiny_tasks import relative_error

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "workers" / "causal_lm_worker.py"


def _launch(mode: str) -> list[dict]:
    from launching import launch, read_json_lines

    env = {"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "OMP_NUM_THREADS": "1"}
    if mode == "ddp":
        completed = launch(WORKER, "ddp", nproc=2, env=env, timeout=600)
    else:
        completed = launch(
            WORKER,
            "deepspeed",
            nproc=2,
            launcher="accelerate",
            env=env,
            accelerate_config=REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml",
            timeout=840,
        )
    return read_json_lines(completed.stdout)


def _check_records(records: list[dict], expected_cases: list[tuple[str, ...]]) -> None:
    assert sorted((r["config"], r["model"]) for r in records) == sorted(expected_cases)
    for record in records:
        assert record["world_size"] == 2, record
        reference = stock_gradient(record["model"])
        error = relative_error(torch.tensor(record["gradient"], dtype=torch.float64), reference)
        assert error <= TOLERANCE, f"{record['config']} {record['model']}: relative error {error:.2e}"
        assert record["head_shapes"] and all(shape[-2] == 0 for shape in record["head_shapes"])


@pytest.mark.multiprocess
@pytest.mark.timeout(700)
def test_two_process_ddp_gradient_equals_single_process():
    pytest.importorskip("peft")
    records = _launch("ddp")
    for record in records:
        assert record["wrapper"] == "DistributedDataParallel", record
    _check_records(records, [("ddp", model) for model, _, _ in DISTRIBUTED_CASES])


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_process_deepspeed_zero2_and_zero3_gradient_equals_single_process():
    pytest.importorskip("deepspeed")
    records = _launch("deepspeed")
    for record in records:
        assert record["distributed_type"] == "DEEPSPEED" and record["wrapper"] == "DeepSpeedEngine", record
        assert record["zero_stage"] == int(record["config"][-1])
    zero3 = [r for r in records if r["config"] == "zero3"]
    assert zero3 and all(r["head_partitioned"] for r in zero3)  # ZeRO-3 really shards the LM head
    _check_records(records, [(config, "gpt2_tied") for config in ("zero2", "zero3")] + [("zero3", "llama")])
