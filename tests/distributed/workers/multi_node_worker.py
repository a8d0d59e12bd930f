"""One "machine" of a 2-machine run on this host (one process per machine, gloo on CPU), launched by
``tests/distributed/test_multi_node.py`` through ``launching.launch_machines``: ``accelerate launch --num_machines 2
--machine_rank 0|1 ...`` with DDP (``configs/accelerate/multi_node.yaml``) or DeepSpeed ZeRO-2 (a 2-machine config
from ``hf_losses.launch.config_writer``).

    multi_node_worker.py ddp|deepspeed <gradients.pt>

For each case: one optimizer step over the same 8 samples of ``tiny_tasks`` with lr 0, and the gradient it took
(after DDP's all-reduce; for DeepSpeed, the full gradient at the accumulation boundary before ``engine.step``).
Rank 0 saves ``{case: gradient}`` to ``argv[2]``; every rank prints one ``RESULT {json}`` line saying what it
ran with: world size, process-group size, the machine (torchrun's GROUP_RANK) and processes per machine, the
wrapper around the model, Accelerate's distributed type, the DeepSpeed ZeRO stage.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist

torch.set_num_threads(1)

import deepspeed_support  # noqa: E402
from tiny_tasks import build_dataset, build_model, trainer_gradients, training_arguments  # noqa: E402

from hf_losses.distributed import shut_down  # noqa: E402

#: (case, task, loss_type, per-device batch, accumulation steps): 2 processes x batch x accumulation = 8 samples
CASES = (
    ("token_ce_2x2", "token_classification", "cross_entropy", 2, 2),
    ("sequence_auto_4x1", "sequence_classification", "auto", 4, 1),
)


def ddp_case(task: str, loss_type: str, batch: int, accumulation: int, output_dir: str) -> tuple[torch.Tensor, object]:
    # use_cpu and ddp_backend left to LossTrainingArguments, as a user's script would
    gradients, trainer = trainer_gradients(task, loss_type, {}, 8, batch, accumulation, output_dir, use_cpu=False)
    assert len(gradients) == 1, f"{len(gradients)} optimizer steps, expected 1"
    return gradients[0], trainer


def deepspeed_case(
    task: str, loss_type: str, batch: int, accumulation: int, output_dir: str
) -> tuple[torch.Tensor, object]:
    from hf_losses import LossTrainer

    # ZeRO refuses an untested torch optimizer such as SGD: AdamW with lr 0 keeps the weights as well
    args = training_arguments(output_dir, batch, accumulation, loss_type=loss_type, optim="adamw_torch", use_cpu=False)
    trainer = LossTrainer(model=build_model(task), args=args, train_dataset=build_dataset(task, 8))
    probe = deepspeed_support.DeepSpeedProbe()
    probe.attach(trainer)
    trainer.train()
    assert len(probe.gradients) == 1, f"{len(probe.gradients)} optimizer steps, expected 1"
    return probe.gradients[0], trainer


def main() -> None:
    mode, output = sys.argv[1], sys.argv[2]
    run_case = {"ddp": ddp_case, "deepspeed": deepspeed_case}[mode]
    gradients: dict[str, torch.Tensor] = {}
    seen: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as directory:
        for case, task, loss_type, batch, accumulation in CASES:
            gradient, trainer = run_case(task, loss_type, batch, accumulation, os.path.join(directory, case))
            gradients[case] = gradient
            description = deepspeed_support.describe_run(trainer)
            seen[case] = {
                key: description[key] for key in ("distributed_type", "world_size", "num_processes", "wrapper")
            }
            seen[case]["zero_stage"] = description["zero_stage"]
            seen[case]["use_cpu"] = trainer.args.use_cpu
            seen[case]["ddp_backend"] = trainer.args.ddp_backend
    record = {
        "mode": mode,
        "rank": dist.get_rank(),
        "process_group": dist.get_world_size(),
        "backend": dist.get_backend(),
        "machine": int(os.environ["GROUP_RANK"]),
        "processes_per_machine": int(os.environ["LOCAL_WORLD_SIZE"]),
        "machines": int(os.environ.get("GROUP_WORLD_SIZE", "0") or 0),
        "cases": seen,
    }
    if dist.get_rank() == 0:
        torch.save(gradients, output)
    print("RESULT " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
    shut_down()
