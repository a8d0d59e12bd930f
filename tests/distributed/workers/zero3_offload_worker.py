"""2-process DeepSpeed ZeRO-3 with CPU offload, on CPU with gloo, launched by
``tests/distributed/test_zero3_offload.py`` exactly as a user launches it: ``accelerate launch --config_file
configs/accelerate/deepspeed_zero3_offload.yaml --num_processes 2 <this file>`` (the shipped
``configs/deepspeed/zero3_offload.json``: parameters and optimizer states offloaded to CPU, DeepSpeed's CPU Adam,
compiled on first use).

Two cases in the same processes:

- ``gradient``: one optimizer step over the 8 examples with lr 0: the full gradient at the accumulation boundary
  (before ``engine.step``) and the plain single-process reference gradient of the same 8 examples.
- ``train``: 6 optimizer steps with lr 1e-2 over the same 8 examples: the logged training losses.

Every rank prints one ``RESULT {json}`` line per case saying what ran: distributed type, world size, wrapper,
ZeRO stage, offload devices, the optimizer DeepSpeed steps with, whether parameters are sharded.
"""

from __future__ import annotations

import os
import tempfile
import time

import deepspeed_support as support
import torch

from hf_losses.distributed import shut_down

TASK = "token_classification"


def device_name(device: object) -> str:
    return str(getattr(device, "value", device))  # OffloadDeviceEnum.cpu -> "cpu"


def offload_description(trainer) -> dict:
    """What the engine really does with parameters and optimizer states (not what the JSON asks for)."""
    engine = trainer.model_wrapped
    zero = engine.optimizer  # DeepSpeedZeroOptimizer_Stage3
    optimizer_offload, param_offload = engine.zero_offload_optimizer(), engine.zero_offload_param()
    parameter = next(trainer.model.parameters())
    return {
        "offload_optimizer_device": None if optimizer_offload is None else device_name(optimizer_offload.device),
        "offload_param_device": None if param_offload is None else device_name(param_offload.device),
        "optimizer_offloaded": bool(getattr(zero, "offload_optimizer", False)),
        "parameters_offloaded": bool(getattr(zero, "offload_param", False)),
        "inner_optimizer": type(zero.optimizer).__name__,  # DeepSpeedCPUAdam with offload
        "partition_device": str(parameter.ds_tensor.device),
    }


def run_case(name: str, output_dir: str, **overrides: object) -> dict:
    from hf_losses import LossTrainer

    # the JSON's optimizer block (DeepSpeed's CPU Adam, "auto" hyper-parameters) replaces the Trainer's optimizer
    args = support.training_arguments(os.path.join(output_dir, name), loss_type="cross_entropy", **overrides)
    trainer = LossTrainer(model=support.build_model(TASK), args=args, train_dataset=support.build_dataset(TASK))
    probe = support.DeepSpeedProbe()
    probe.attach(trainer)
    started = time.perf_counter()
    trainer.train()
    record = {
        "case": name,
        "seconds": round(time.perf_counter() - started, 2),
        **support.describe_run(trainer),
        **offload_description(trainer),
        "steps": len(probe.gradients),
        "losses": support.logged(trainer, "loss"),
    }
    if name == "gradient":
        reference = support.reference_gradient(TASK, "cross_entropy")
        record["relative_error"] = support.relative_error(probe.gradients[0], reference)
    return record


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as output_dir:
        # 2 processes x batch 2 x accumulation 2 = the 8 examples in one optimizer step; weights kept (lr 0)
        records = [run_case("gradient", output_dir, per_device_train_batch_size=2, gradient_accumulation_steps=2)]
        # 2 processes x batch 4: one step per epoch over the 8 examples, 6 epochs, lr 1e-2: it must learn
        records.append(
            run_case(
                "train",
                output_dir,
                per_device_train_batch_size=4,
                gradient_accumulation_steps=1,
                max_steps=6,
                learning_rate=1e-2,
            )
        )
    for record in records:
        support.emit(record)


if __name__ == "__main__":
    main()
    shut_down()
