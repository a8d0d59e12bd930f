"""Shared by the DeepSpeed and clipping/precision workers: tiny models, data with uneven item counts, a plain
PyTorch reference gradient, and probes that read what the run really did (gradients before DeepSpeed's step,
the gradient norm the optimizer sees, the wrapper, the parameter dtype).

Workers are launched as scripts, so this folder is on ``sys.path``; they print ``RESULT {json}`` lines that the
tests read with ``tests/helpers/launching.py::read_json_lines``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from tiny_tasks import sequential_sampling
from torch import nn

NUM_LABELS = 3
VOCAB_SIZE = 24
SEQUENCE_LENGTH = 6
NUM_SAMPLES = 8


def build_model(task: str, seed: int = 0) -> nn.Module:
    """A tiny BERT (dropout 0) for ``task``; the same seed gives the same weights in every process."""
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        num_labels=NUM_LABELS,
    )
    if task == "token_classification":
        return BertForTokenClassification(config)
    if task == "sequence_classification":
        config.problem_type = "single_label_classification"
        return BertForSequenceClassification(config)
    raise ValueError(task)


def build_columns(task: str, num_samples: int = NUM_SAMPLES, seed: int = 0) -> dict[str, list]:
    """Examples whose label counts differ per sample (padding of varying length, ignored labels), so a wrong
    normalisation across processes or accumulation steps changes the gradient."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB_SIZE, (num_samples, SEQUENCE_LENGTH), generator=generator)
    lengths = [2 + (i * 5) % (SEQUENCE_LENGTH - 1) for i in range(num_samples)]
    attention_mask = torch.zeros(num_samples, SEQUENCE_LENGTH, dtype=torch.long)
    for i, length in enumerate(lengths):
        attention_mask[i, :length] = 1
    if task == "token_classification":
        labels = torch.randint(0, NUM_LABELS, (num_samples, SEQUENCE_LENGTH), generator=generator)
        labels[attention_mask == 0] = -100
        labels[:, 0] = -100
    else:
        labels = torch.randint(0, NUM_LABELS, (num_samples,), generator=generator)
        labels[torch.arange(num_samples) % 4 == 3] = -100
    return {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(), "labels": labels.tolist()}


def build_dataset(task: str, num_samples: int = NUM_SAMPLES, seed: int = 0) -> Any:
    import datasets

    return datasets.Dataset.from_dict(build_columns(task, num_samples, seed))


def reference_gradient(
    task: str, loss_type: str, loss_kwargs: dict | None = None, num_samples: int = NUM_SAMPLES
) -> torch.Tensor:
    """Gradient of the mean loss over all examples as ONE batch, one process, plain PyTorch (no Trainer, no DDP)."""
    from hf_losses import get_loss

    model = build_model(task)
    model.train()
    batch = {key: torch.tensor(value) for key, value in build_columns(task, num_samples).items()}
    if loss_type == "auto":
        model(**batch).loss.backward()  # the model's own mean over non-ignored labels
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        if task == "token_classification":
            logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        get_loss(loss_type, **(loss_kwargs or {}))(logits, labels).backward()
    return flat_grad(model)


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).double()
            for _, p in model.named_parameters()
            if p.requires_grad
        ]
    )


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm().clamp(min=1e-30))


def training_arguments(output_dir: str, **overrides: Any) -> Any:
    """LossTrainingArguments for ONE optimizer step over the 8 examples, weights kept (lr 0), sequential data."""
    from hf_losses import LossTrainingArguments

    values = dict(
        output_dir=output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=0.0,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        **sequential_sampling(),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return LossTrainingArguments(**values)


def describe_run(trainer: Any) -> dict[str, Any]:
    """What actually ran: distributed type, world size, the wrapper around the model, parameter dtype."""
    model = trainer.model
    parameter = next(model.parameters())
    dtype = getattr(parameter, "ds_tensor", parameter).dtype  # ZeRO-3 keeps the real data in ds_tensor
    return {
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "world_size": trainer.args.world_size,
        "num_processes": trainer.accelerator.num_processes,
        "wrapper": type(trainer.model_wrapped).__name__,
        "parameter_dtype": str(dtype).replace("torch.", ""),
        "zero_stage": _zero_stage(trainer),
        "optimizer": type(getattr(trainer.model_wrapped, "optimizer", None) or trainer.optimizer).__name__,
        # ZeRO-3 shards the parameters themselves: a process holds only part of each large tensor
        "parameters_sharded": any(
            getattr(p, "ds_tensor", None) is not None and p.ds_tensor.numel() < p.ds_numel for p in model.parameters()
        ),
        "rank": trainer.args.process_index,
    }


def _zero_stage(trainer: Any) -> int | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


class DeepSpeedProbe:
    """Reads a DeepSpeed run from inside: the full gradient at the accumulation boundary before ``engine.step``
    (``deepspeed.utils.safe_get_full_grad``, collective under ZeRO-3), the norm of the (clipped) gradient the
    wrapped torch optimizer sees when it steps, and DeepSpeed's own pre-clipping global norm."""

    def __init__(self) -> None:
        self.gradients: list[torch.Tensor] = []
        self.seen_norms: list[float] = []
        self.raw_norms: list[float] = []
        self._squares: list[torch.Tensor] = []

    def attach(self, trainer: Any) -> None:
        from transformers import TrainerCallback

        probe = self

        class _Attach(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                probe._wrap(trainer.model_wrapped, trainer.model)

        trainer.add_callback(_Attach())

    def _wrap(self, engine: Any, model: nn.Module) -> None:
        from deepspeed.utils import safe_get_full_grad

        original_step = engine.step
        inner = engine.optimizer.optimizer  # the torch optimizer inside ZeRO
        original_inner_step = inner.step

        def inner_step(*args: Any, **kwargs: Any) -> Any:
            # ZeRO calls it once per parameter group, with that group's fp32 partition holding the clipped grad
            for group in inner.param_groups:
                for parameter in group["params"]:
                    if parameter.grad is not None:
                        self._squares.append(parameter.grad.detach().double().pow(2).sum())
            return original_inner_step(*args, **kwargs)

        def step(*args: Any, **kwargs: Any) -> Any:
            if engine.is_gradient_accumulation_boundary():
                self.gradients.append(
                    torch.cat(
                        [
                            safe_get_full_grad(p).detach().reshape(-1).double().cpu()
                            for _, p in model.named_parameters()
                            if p.requires_grad
                        ]
                    )
                )
            self._squares = []
            result = original_step(*args, **kwargs)
            if self._squares:
                local = torch.stack(self._squares).sum().reshape(1)
                torch.distributed.all_reduce(local)  # partitions: sum of squares over ranks
                self.seen_norms.append(float(local.sqrt()))
                raw = engine.get_global_grad_norm()
                self.raw_norms.append(float(raw) if raw is not None else math.nan)
            return result

        inner.step = inner_step
        engine.step = step


class ClippedNormProbe:
    """DDP / single process: the norm of the model's gradient in ``on_pre_optimizer_step`` (after the Trainer's
    clipping, after DDP's all-reduce), and the pre-clipping norm the Trainer logs as ``grad_norm``."""

    def __init__(self) -> None:
        self.seen_norms: list[float] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        probe = self

        class _Probe(TrainerCallback):
            def on_pre_optimizer_step(
                self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
            ) -> None:
                probe.seen_norms.append(float(flat_grad(model).norm()))

        return _Probe()


def logged(trainer: Any, key: str) -> list[float]:
    return [float(entry[key]) for entry in trainer.state.log_history if key in entry]


def emit(record: dict[str, Any]) -> None:
    """Print one result line (rank 0 only unless the record says otherwise)."""
    print("RESULT " + json.dumps(record), flush=True)


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
