"""2-process DeepSpeed worker: ZeRO-2 and ZeRO-3 gradients and clipping with LossTrainer, on CPU with gloo.

Launched ONCE by tests/distributed/test_deepspeed.py as
``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 2 <this file>``.
The ZeRO-3 cases run in the same processes under the environment ``configs/accelerate/deepspeed_zero3.yaml``
gives (``ACCELERATE_DEEPSPEED_CONFIG_FILE``, ``ACCELERATE_DEEPSPEED_ZERO3_INIT``), read from that YAML with
Accelerate's own parser, because starting processes is the slow part on a 2-core CI machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import deepspeed_support as support
import torch

from hf_losses.distributed import shut_down

# (name, task, loss_type, loss_kwargs, per-device batch, accumulation steps)
GRADIENT_CASES = [
    ("token_ce_2x2x2", "token_classification", "cross_entropy", {}, 2, 2),
    ("token_focal_2x4x1", "token_classification", "focal", {"gamma": 2.0}, 4, 1),
    ("sequence_auto_2x2x2", "sequence_classification", "auto", {}, 2, 2),
]
# (name, task, loss_type, max_grad_norm): tiny max_grad_norm clips, huge does not
CLIPPING_CASES = [
    ("clip_small", "token_classification", "cross_entropy", 0.05),
    ("clip_none_needed", "token_classification", "cross_entropy", 1000.0),
]


def use_accelerate_config(name: str) -> None:
    """Set the DeepSpeed environment ``accelerate launch --config_file configs/accelerate/<name>.yaml`` sets."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join("configs", "accelerate", f"{name}.yaml"))
    os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = config.deepspeed_config["deepspeed_config_file"]
    os.environ["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = str(config.deepspeed_config["zero3_init_flag"]).lower()


# bf16 on CPU: TrainingArguments accept bf16 without a GPU only with use_cpu=True; DeepSpeed still runs (measured)
BF16_SETTINGS = dict(
    bf16=True,
    use_cpu=True,
    learning_rate=1e-2,
    max_steps=3,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=1,
)


def run_case(
    stage_config: str,
    name: str,
    task: str,
    loss_type: str,
    loss_kwargs: dict,
    batch: int,
    accumulation: int,
    max_grad_norm: float,
    output_dir: str,
    **overrides: object,
) -> dict:
    from hf_losses import LossTrainer

    settings = dict(
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=max_grad_norm,
        loss_type=loss_type,
        loss_kwargs=loss_kwargs,
    )
    settings.update(overrides)
    args = support.training_arguments(os.path.join(output_dir, name), **settings)
    trainer = LossTrainer(model=support.build_model(task), args=args, train_dataset=support.build_dataset(task))
    probe = support.DeepSpeedProbe()
    probe.attach(trainer)
    started = time.perf_counter()
    trainer.train()
    record = {
        "case": name,
        "config": stage_config,
        "seconds": round(time.perf_counter() - started, 2),
        **support.describe_run(trainer),
        "steps": len(probe.gradients),
        "seen_norms": probe.seen_norms,
        "raw_norms": probe.raw_norms,
        "logged_grad_norm": support.logged(trainer, "grad_norm"),
        "losses": support.logged(trainer, "loss"),
    }
    reference = support.reference_gradient(task, loss_type, loss_kwargs)
    record["reference_norm"] = float(reference.norm())
    if probe.gradients and not overrides:  # one fp32 step at the initial weights: comparable to the reference
        record["relative_error"] = support.relative_error(probe.gradients[0], reference)
    return record


def main() -> None:
    torch.set_num_threads(1)
    only = sys.argv[1:]  # optional case names, for debugging
    with tempfile.TemporaryDirectory() as output_dir:
        for stage_config in ("deepspeed_zero2", "deepspeed_zero3"):
            use_accelerate_config(stage_config)
            for name, task, loss_type, loss_kwargs, batch, accumulation in GRADIENT_CASES:
                if only and name not in only:
                    continue
                record = run_case(
                    stage_config, name, task, loss_type, loss_kwargs, batch, accumulation, 0.0, output_dir
                )
                if support.is_main():
                    support.emit(record)
            for name, task, loss_type, max_grad_norm in CLIPPING_CASES:
                if only and name not in only:
                    continue
                record = run_case(stage_config, name, task, loss_type, {}, 2, 2, max_grad_norm, output_dir)
                record["max_grad_norm"] = max_grad_norm
                if support.is_main():
                    support.emit(record)
            if not only or "bf16_train" in only:
                record = run_case(
                    stage_config,
                    "bf16_train",
                    "token_classification",
                    "cross_entropy",
                    {},
                    2,
                    1,
                    1.0,
                    output_dir,
                    **BF16_SETTINGS,
                )
                if support.is_main():
                    support.emit(record)


if __name__ == "__main__":
    main()
    shut_down()
