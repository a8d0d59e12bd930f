"""A synthetic two-task regression problem trained with ``LossTrainer`` and a ``composite`` loss, shared by
``test_multiobjective_trainer.py`` (1 process) and ``multiobjective_worker.py`` (2 processes).

Two linear targets of the same 4 features; task ``a`` has noise std 0.3, task ``b`` noise std 2.0. Each component
is a registered plug-in loss (``task_a_mse``, ``task_b_mse``: the MSE of one output column), so the composite can
weight them. Training is full-batch (every optimizer step sees all samples, whatever the split into processes and
accumulation steps), which makes runs with different layouts comparable step by step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import datasets
import torch
from torch import Tensor, nn

from hf_losses import register_loss
from hf_losses.losses.base import Loss

NUM_SAMPLES = 128
NOISE_STD = (0.3, 2.0)
COMPONENTS = ("task_a_mse", "task_b_mse")


class _ColumnMSE(Loss):
    """Squared error of one output column; item = one sample."""

    label_kind = "binary"
    column: ClassVar[int] = 0
    summary = "MSE of one output column (test plug-in)."

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        errors = (logits[:, self.column] - labels[:, self.column]) ** 2
        return errors.sum(), torch.tensor(labels.shape[0], device=labels.device)

    def num_items(self, labels: Tensor) -> dict[str, Tensor]:
        return {self.item_unit: torch.tensor(labels.shape[0], device=labels.device)}


def register_tasks() -> None:
    """Register ``task_a_mse`` / ``task_b_mse`` (idempotent)."""
    for index, name in enumerate(COMPONENTS):
        register_loss(name)(type(f"Column{index}MSE", (_ColumnMSE,), {"column": index, "name": name}))


class TwoHeadRegressor(nn.Module):
    """``features (N, 4) -> logits (N, 2)``: one output per task."""

    def __init__(self, seed: int = 0) -> None:
        from transformers import PretrainedConfig

        super().__init__()
        # DeepSpeed's "auto" bucket sizes are read from config.hidden_size
        self.config = PretrainedConfig(hidden_size=4)
        torch.manual_seed(seed)
        self.linear = nn.Linear(4, 2)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        return {"logits": self.linear(features)}


def build_dataset(seed: int = 0) -> datasets.Dataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(NUM_SAMPLES, 4, generator=generator)
    weights = torch.randn(4, 2, generator=generator)
    noise = torch.randn(NUM_SAMPLES, 2, generator=generator) * torch.tensor(NOISE_STD)
    labels = features @ weights + noise
    return datasets.Dataset.from_dict({"features": features.tolist(), "labels": labels.tolist()})


def train(
    output_dir: str,
    weighting: str,
    max_steps: int,
    processes: int = 1,
    accumulation: int = 1,
    resume_from_checkpoint: str | None = None,
    save_steps: int | None = None,
    schedules: Any = None,
    weights: Any = None,
    **overrides: Any,
) -> Any:
    """Train full-batch for ``max_steps`` and return the trainer."""
    from hf_losses import LossTrainer, LossTrainingArguments

    register_tasks()
    loss_kwargs: dict[str, Any] = {"components": {name: {} for name in COMPONENTS}, "weighting": weighting}
    if weighting == "dwa":
        loss_kwargs.update(dwa_period_steps=3, temperature=0.5)
    if schedules is not None:
        loss_kwargs["schedules"] = schedules
    if weights is not None:
        loss_kwargs["weights"] = weights
    settings: dict[str, Any] = dict(
        output_dir=output_dir,
        loss_type="composite",
        loss_kwargs=loss_kwargs,
        loss_task="regression",
        per_device_train_batch_size=NUM_SAMPLES // (processes * accumulation),
        gradient_accumulation_steps=accumulation,
        max_steps=max_steps,
        learning_rate=0.1,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        warmup_steps=0,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_only_model=False,
    )
    settings.update(overrides)
    args = LossTrainingArguments(**settings)
    trainer = LossTrainer(model=TwoHeadRegressor(), args=args, train_dataset=build_dataset())
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def summary(trainer: Any) -> dict[str, Any]:
    """What the tests compare: learned state, model weights, logged weights per step."""
    loss = trainer.loss
    state = {key: value.detach().cpu().double().reshape(-1).tolist() for key, value in loss.state_dict().items()}
    logged = [
        {key: value for key, value in entry.items() if key.startswith(("loss_weight/", "loss/"))}
        | {"step": entry["step"]}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    model = trainer.model
    return {
        "world_size": trainer.args.world_size,
        "wrapper": type(trainer.model_wrapped).__name__,
        "weights": loss.component_weights(),
        "loss_state": state,
        "model": [
            p.detach().cpu().double().reshape(-1).tolist()
            for n, p in model.named_parameters()
            if not n.startswith("hf_losses_loss.")
        ],
        "logged": logged,
    }
