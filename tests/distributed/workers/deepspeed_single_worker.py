"""DeepSpeed ZeRO-2 in ONE process started with plain ``python`` (no launcher, no RANK/WORLD_SIZE...).

Upstream this dies asking for ``mpi4py``; ``check_launch_config`` (run by ``LossTrainingArguments``) sets the
one-process rendezvous variables instead. Launched by tests/distributed/test_deepspeed.py.
"""

from __future__ import annotations

import os
import tempfile

import deepspeed_support as support
import torch

from hf_losses.distributed import shut_down


def main() -> None:
    from hf_losses import LossTrainer

    torch.set_num_threads(1)
    absent_before = [
        name for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ
    ]
    task = "token_classification"
    with tempfile.TemporaryDirectory() as output_dir:
        args = support.training_arguments(
            output_dir,
            deepspeed="configs/deepspeed/zero2.json",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            loss_type="cross_entropy",
        )
        trainer = LossTrainer(model=support.build_model(task), args=args, train_dataset=support.build_dataset(task))
        probe = support.DeepSpeedProbe()
        probe.attach(trainer)
        trainer.train()
    reference = support.reference_gradient(task, "cross_entropy")
    support.emit(
        {
            "case": "single_process_plain_python",
            **support.describe_run(trainer),
            "absent_before": absent_before,
            "world_size_env": os.environ.get("WORLD_SIZE"),
            "steps": len(probe.gradients),
            "relative_error": support.relative_error(probe.gradients[0], reference),
        }
    )


if __name__ == "__main__":
    main()
    shut_down()
