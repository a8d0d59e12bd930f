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


#: bf16 on CPU under DeepSpeed (TrainingArguments accept bf16 without a GPU only with use_cpu=True): both models in
#: bfloat16, a few steps that learn
BF16_SETTINGS = dict(
    bf16=True, use_cpu=True, learning_rate=1e-2, max_steps=3, logging_strategy="steps", logging_steps=1
)


def _inner(model: Any) -> Any:
    """The module inside a DeepSpeed engine or DDP."""
    return getattr(model, "module", model)


def run_case(config: str, loss_type: str, output_dir: str, teacher_by_path: bool = False, **settings: Any) -> dict:
    """One run; ``teacher_by_path``: the teacher is saved and given as a path, so the trainer loads it itself (with
    the student's Auto class) before DeepSpeed partitions it."""
    from hf_losses import LossTrainer
    from hf_losses.trainers.teacher import is_partitioned

    task = CASES[loss_type][0]
    run_dir = os.path.join(output_dir, f"{config}_{loss_type}")
    deepspeed = config != "ddp"
    overrides = dict(use_cpu=False, optim="adamw_torch", max_steps=1) if deepspeed else {}
    overrides.update(settings)
    args = training_arguments(
        run_dir,
        2,
        2,
        loss_type=loss_type,
        loss_kwargs=LOSS_KWARGS[loss_type],
        loss_task=task,
        **overrides,
    )
    student, teacher = student_and_teacher(loss_type)
    if teacher_by_path:
        teacher = _save_teacher(teacher, os.path.join(run_dir, "teacher"))
    capture = GradientCapture()
    trainer = LossTrainer(
        model=student,
        args=args,
        train_dataset=build_dataset(task, NUM_SAMPLES),
        callbacks=[] if deepspeed else [capture],
        teacher_model=teacher,
    )
    teacher_calls: list[bool] = []  # grad mode of every teacher forward
    _inner(trainer.teacher_model).register_forward_hook(
        lambda module, inputs, output: teacher_calls.append(torch.is_grad_enabled())
    )
    gradients = capture.gradients
    if deepspeed:
        gradients = []
        _deepspeed_gradient_probe(trainer, gradients)
    trainer.train()
    teacher_module = _inner(trainer.teacher_model)
    student_parameter, teacher_parameter = next(trainer.model.parameters()), next(teacher_module.parameters())
    return {
        "config": config + ("_bf16" if settings.get("bf16") else ""),
        "loss_type": loss_type,
        "teacher_by_path": teacher_by_path,
        "teacher_name": trainer._loss_config.get("teacher_model"),
        "world_size": trainer.args.world_size,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "wrapper": type(trainer.model_wrapped).__name__,
        "teacher_wrapper": type(trainer.teacher_model).__name__,
        "teacher_inner": type(teacher_module).__name__,
        "student_zero_stage": _zero_stage(trainer.model_wrapped) if deepspeed else None,
        "teacher_zero_stage": _zero_stage(trainer.teacher_model) if deepspeed else None,
        "student_partitioned": is_partitioned(trainer.model),
        "teacher_partitioned": is_partitioned(trainer.teacher_model),
        "student_dtype": _dtype(student_parameter),
        "teacher_dtype": _dtype(teacher_parameter),
        "teacher_training": teacher_module.training,
        "teacher_requires_grad": any(p.requires_grad for p in teacher_module.parameters()),
        "teacher_forwards": len(teacher_calls),
        "teacher_forwards_with_grad": sum(teacher_calls),
        "teacher_in_student": any(m is teacher_module for m in trainer.model.modules()),
        "losses": [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry],
        "steps": len(gradients),
        "gradient": gradients[0].tolist() if gradients else [],
    }


def _save_teacher(teacher: torch.nn.Module, folder: str) -> str:
    """Each process saves its own copy (same seed, same weights) into its own folder: ``save_pretrained`` writes on
    rank 0 only once torch.distributed is up."""
    from safetensors.torch import save_model

    teacher.config.save_pretrained(folder)
    save_model(teacher, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return folder


def _dtype(parameter: torch.Tensor) -> str:
    """The dtype of a parameter's data (ZeRO-3 keeps it in ``ds_tensor``)."""
    return str(getattr(parameter, "ds_tensor", parameter).dtype).replace("torch.", "")


def worker(mode: str) -> None:
    torch.set_num_threads(1)
    configs = ["ddp"] if mode == "ddp" else ["zero2", "zero3"]
    with tempfile.TemporaryDirectory() as output_dir:
        for config in configs:
            if config != "ddp":
                _use_accelerate_config("deepspeed_zero2" if config == "zero2" else "deepspeed_zero3")
            for loss_type in CASES:
                # under ZeRO-3 the trainer loads one teacher from a path (a Llama for a GPT-2 student)
                by_path = config == "zero3" and loss_type == "causal_lm_distillation"
                _emit(run_case(config, loss_type, output_dir, teacher_by_path=by_path))
        if mode != "ddp":  # ZeRO-3 still set: bf16 for both models
            _emit(run_case("zero3", "distillation", output_dir, **BF16_SETTINGS))
    from hf_losses.distributed import shut_down

    shut_down()


def _emit(record: dict) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(record), flush=True)


if __name__ == "__main__":
    worker(sys.argv[1])
