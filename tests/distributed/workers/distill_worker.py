"""2-process worker of ``tests/distributed/test_distillation_multiprocess.py``: one optimizer step (2 processes x batch
2 x accumulation 2 = the 8 samples of the single-process reference) of each distillation loss with a teacher.

``accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml distill_worker.py ddp`` (MULTI_CPU, gloo)
or ``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml distill_worker.py deepspeed`` (ZeRO-2,
then ZeRO-3 under the zero3 YAML's settings in the same processes); rank 0 prints one ``RESULT {json}`` line per
case: what really ran (world size, wrappers of student and teacher, ZeRO stages, partitioning, dtypes, frozen teacher)
and the gradient.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from distillation_models import CASES, LOSS_KWARGS, NUM_SAMPLES, student_and_teacher
from tiny_tasks import GradientCapture, build_dataset, training_arguments

REPO = Path(__file__).resolve().parents[3]


def _use_accelerate_config(name: str) -> None:
    """The DeepSpeed environment ``accelerate launch --config_file configs/accelerate/<name>.yaml`` sets."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = config.deepspeed_config["deepspeed_config_file"]
    os.environ["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = str(config.deepspeed_config["zero3_init_flag"]).lower()


def _deepspeed_gradient_probe(trainer: Any, gradients: list) -> None:
    """The student's full gradient at the accumulation boundary, read before DeepSpeed's step (collective under
    ZeRO-3)."""
    from transformers import TrainerCallback

    class _Attach(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            from deepspeed.utils import safe_get_full_grad

            engine, model = trainer.model_wrapped, trainer.model
            original_step = engine.step

            def step(*step_args: Any, **step_kwargs: Any) -> Any:
                if engine.is_gradient_accumulation_boundary():
                    gradients.append(
                        torch.cat(
                            [
                                safe_get_full_grad(p).detach().reshape(-1).double().cpu()
                                for _, p in model.named_parameters()
                                if p.requires_grad
                            ]
                        )
                    )
                return original_step(*step_args, **step_kwargs)

            engine.step = step

    trainer.add_callback(_Attach())


def _zero_stage(engine: Any) -> int | None:
    stage = getattr(engine, "zero_optimization_stage", None)
    return None if stage is None else int(stage())


def run_case(config: str, loss_type: str, output_dir: str) -> dict:
    from hf_losses import LossTrainer
    from hf_losses.tasks import unwrap
    from hf_losses.trainers.teacher import is_partitioned

    task = CASES[loss_type][0]
    deepspeed = config != "ddp"
    overrides = dict(use_cpu=False, optim="adamw_torch", max_steps=1) if deepspeed else {}
    args = training_arguments(
        os.path.join(output_dir, f"{config}_{loss_type}"),
        2,
        2,
        loss_type=loss_type,
        loss_kwargs=LOSS_KWARGS[loss_type],
        loss_task=task,
        **overrides,
    )
    student, teacher = student_and_teacher(loss_type)
    teacher_calls: list[bool] = []  # grad mode of every teacher forward
    teacher.register_forward_hook(lambda module, inputs, output: teacher_calls.append(torch.is_grad_enabled()))
    capture = GradientCapture()
    trainer = LossTrainer(
        model=student,
        args=args,
        train_dataset=build_dataset(task, NUM_SAMPLES),
        callbacks=[] if deepspeed else [capture],
        teacher_model=teacher,
    )
    gradients = capture.gradients
    if deepspeed:
        gradients = []
        _deepspeed_gradient_probe(trainer, gradients)
    trainer.train()
    teacher_parameter = next(unwrap(trainer.teacher_model).parameters())
    return {
        "config": config,
        "loss_type": loss_type,
        "world_size": trainer.args.world_size,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "wrapper": type(trainer.model_wrapped).__name__,
        "teacher_wrapper": type(trainer.teacher_model).__name__,
        "teacher_inner": type(unwrap(trainer.teacher_model)).__name__,
        "student_zero_stage": _zero_stage(trainer.model_wrapped) if deepspeed else None,
        "teacher_zero_stage": _zero_stage(trainer.teacher_model) if deepspeed else None,
        "student_partitioned": is_partitioned(trainer.model),
        "teacher_partitioned": is_partitioned(trainer.teacher_model),
        "teacher_dtype": str(getattr(teacher_parameter, "ds_tensor", teacher_parameter).dtype).replace("torch.", ""),
        "teacher_training": bool(unwrap(trainer.teacher_model).training),
        "teacher_requires_grad": any(p.requires_grad for p in unwrap(trainer.teacher_model).parameters()),
        "teacher_forwards": len(teacher_calls),
        "teacher_forwards_with_grad": sum(teacher_calls),
        "teacher_in_student": any(m is unwrap(trainer.teacher_model) for m in trainer.model.modules()),
        "steps": len(gradients),
        "gradient": gradients[0].tolist() if gradients else [],
    }


def worker(mode: str) -> None:
    torch.set_num_threads(1)
    configs = ["ddp"] if mode == "ddp" else ["zero2", "zero3"]
    with tempfile.TemporaryDirectory() as output_dir:
        for config in configs:
            if config != "ddp":
                _use_accelerate_config("deepspeed_zero2" if config == "zero2" else "deepspeed_zero3")
            for loss_type in CASES:
                record = run_case(config, loss_type, output_dir)
                if int(os.environ.get("RANK", "0")) == 0:
                    print("RESULT " + json.dumps(record), flush=True)
    from hf_losses.distributed import shut_down

    shut_down()


if __name__ == "__main__":
    worker(sys.argv[1])
