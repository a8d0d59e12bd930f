"""2-process worker of ``tests/distributed/test_causal_lm_multiprocess.py``: ``torchrun ... causal_lm_worker.py ddp``
or ``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml causal_lm_worker.py deepspeed``; rank 0
prints one ``RESULT {json}`` line per case (world size, wrapper, ZeRO stage, gradient, LM-head output shapes).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from causal_lm_models import DISTRIBUTED_CASES, NUM_SAMPLES, HeadOutputShapes, build_model
from tiny_tasks import GradientCapture, build_dataset, training_arguments

REPO = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------------ worker
def _use_accelerate_config(name: str) -> None:
    """The DeepSpeed environment ``accelerate launch --config_file configs/accelerate/<name>.yaml`` sets."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = config.deepspeed_config["deepspeed_config_file"]
    os.environ["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = str(config.deepspeed_config["zero3_init_flag"]).lower()


def _deepspeed_gradient_probe(trainer: Any, gradients: list) -> None:
    """The full gradient at the accumulation boundary, read before DeepSpeed's step (collective under ZeRO-3)."""
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


def _worker_case(config: str, name: str, batch_size: int, accumulation: int, output_dir: str) -> dict:
    from hf_losses import LossTrainer

    deepspeed = config != "ddp"
    overrides = dict(use_cpu=False, optim="adamw_torch", max_steps=1) if deepspeed else {}
    args = training_arguments(
        os.path.join(output_dir, f"{config}_{name}"),
        batch_size,
        accumulation,
        loss_type="causal_lm",
        loss_task="causal_lm",
        **overrides,
    )
    model = build_model(name)
    shapes = HeadOutputShapes(model)
    capture = GradientCapture()
    trainer = LossTrainer(
        model=model,
        args=args,
        train_dataset=build_dataset("causal_lm", NUM_SAMPLES),
        callbacks=[] if deepspeed else [capture],
    )
    gradients = capture.gradients
    if deepspeed:
        gradients = []
        _deepspeed_gradient_probe(trainer, gradients)
    trainer.train()
    head_weight = (
        trainer.model.get_output_embeddings().weight if hasattr(trainer.model, "get_output_embeddings") else None
    )
    return {
        "config": config,
        "model": name,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "wrapper": type(trainer.model_wrapped).__name__,
        "zero_stage": getattr(getattr(trainer.accelerator.state, "deepspeed_plugin", None), "zero_stage", None),
        "head_partitioned": bool(
            head_weight is not None
            and getattr(head_weight, "ds_tensor", None) is not None
            and head_weight.ds_tensor.numel() < head_weight.ds_numel
        ),
        "steps": len(gradients),
        "gradient": gradients[0].tolist() if gradients else [],
        "head_shapes": shapes.shapes,
    }


def worker(mode: str) -> None:
    torch.set_num_threads(1)
    cases = []
    if mode == "ddp":
        cases = [("ddp", name, batch, accumulation) for name, batch, accumulation in DISTRIBUTED_CASES]
    else:
        cases = [("zero2", "gpt2_tied", 2, 2), ("zero3", "gpt2_tied", 2, 2), ("zero3", "llama", 4, 1)]
    with tempfile.TemporaryDirectory() as output_dir:
        for config, name, batch, accumulation in cases:
            if mode != "ddp":
                _use_accelerate_config("deepspeed_zero2" if config == "zero2" else "deepspeed_zero3")
            record = _worker_case(config, name, batch, accumulation, output_dir)
            if int(os.environ.get("RANK", "0")) == 0:
                print("RESULT " + json.dumps(record), flush=True)
    from hf_losses.distributed import shut_down

    shut_down()


if __name__ == "__main__":
    worker(sys.argv[1])
