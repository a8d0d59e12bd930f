"""Tiny models (built from configs, dropout 0) and small datasets for every task, plus the gradient capture used
by the exactness tests (single-process here, 2 processes in ``workers/``; DeepSpeed tests reuse it).

Labels are deliberately uneven -- ignored entries (-100, SegFormer's 255), padding of varying length -- so that
micro-batches hold different numbers of items: that is what exposes a wrong reduction under gradient
accumulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    TrainerCallback,
)

NUM_LABELS = 3
SEQUENCE_LENGTH = 6
VOCAB_SIZE = 24
IMAGE_SIZE = 8
INDEX_TASKS = ("sequence_classification", "token_classification", "causal_lm", "semantic_segmentation")
BINARY_TASKS = ("multi_label", "regression")
ALL_TASKS = INDEX_TASKS + BINARY_TASKS


def _bert_config(**overrides: Any) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        **overrides,
    )


def build_model(task: str, seed: int = 0, num_labels: int = NUM_LABELS) -> torch.nn.Module:
    """A freshly initialised tiny model for ``task`` (same seed, same weights)."""
    torch.manual_seed(seed)
    if task == "sequence_classification":
        return BertForSequenceClassification(
            _bert_config(num_labels=num_labels, problem_type="single_label_classification")
        )
    if task == "multi_label":
        return BertForSequenceClassification(
            _bert_config(num_labels=num_labels, problem_type="multi_label_classification")
        )
    if task == "regression":
        return BertForSequenceClassification(_bert_config(num_labels=1, problem_type="regression"))
    if task == "token_classification":
        return BertForTokenClassification(_bert_config(num_labels=num_labels))
    if task == "causal_lm":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB_SIZE,
                n_embd=8,
                n_layer=1,
                n_head=2,
                n_positions=16,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
        )
    if task == "semantic_segmentation":
        config = SegformerConfig(
            num_channels=3,
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[4, 8],
            patch_sizes=[3, 3],
            strides=[2, 2],
            num_attention_heads=[1, 1],
            mlp_ratios=[2, 2],
            decoder_hidden_size=8,
            num_labels=num_labels,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            classifier_dropout_prob=0.0,
            drop_path_rate=0.0,
        )
        model = SegformerForSemanticSegmentation(config)
        # BatchNorm makes a gradient depend on how the batch is split (its statistics are per micro-batch), for
        # any loss and any trainer; exactness tests need a model without it
        model.decode_head.batch_norm = torch.nn.Identity()
        return model
    raise ValueError(task)


POOL_SIZE = 16


def build_columns(
    task: str, num_samples: int, seed: int = 0, ignored: bool = True, num_labels: int = NUM_LABELS
) -> dict[str, Any]:
    """Column dict of the first ``num_samples`` examples of a fixed pool for ``task`` (so 8 samples are the first 8
    of 10); ``ignored`` puts -100 (255 for segmentation) into some labels."""
    columns = _pool_columns(task, max(num_samples, POOL_SIZE), seed, ignored, num_labels)
    return {key: value[:num_samples] for key, value in columns.items()}


def _pool_columns(task: str, num_samples: int, seed: int, ignored: bool, num_labels: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    if task == "semantic_segmentation":
        pixels = torch.randn(num_samples, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        labels = torch.randint(0, num_labels, (num_samples, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
        if ignored:
            for i in range(num_samples):  # an ignored band of varying height per image (all of image 3)
                labels[i, : (i * 3) % (IMAGE_SIZE + 1)] = 255
        return {"pixel_values": pixels.tolist(), "labels": labels.tolist()}
    input_ids = torch.randint(1, VOCAB_SIZE, (num_samples, SEQUENCE_LENGTH), generator=generator)
    lengths = [2 + (i * 5) % (SEQUENCE_LENGTH - 1) for i in range(num_samples)]  # 2..6, uneven
    attention_mask = torch.zeros(num_samples, SEQUENCE_LENGTH, dtype=torch.long)
    for i, length in enumerate(lengths):
        attention_mask[i, :length] = 1
    columns: dict[str, Any] = {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist()}
    if task == "sequence_classification":
        labels = torch.randint(0, num_labels, (num_samples,), generator=generator)
        if ignored:
            labels[torch.arange(num_samples) % 4 == 3] = -100
        columns["labels"] = labels.tolist()
    elif task in ("multi_label", "regression"):
        shape = (num_samples, num_labels) if task == "multi_label" else (num_samples,)
        labels = torch.randint(0, 2, shape, generator=generator).float()
        if ignored:
            flat = labels.view(-1)
            flat[torch.arange(flat.numel()) % 5 == 2] = -100.0
        columns["labels"] = labels.tolist()
    elif task == "token_classification":
        labels = torch.randint(0, num_labels, (num_samples, SEQUENCE_LENGTH), generator=generator)
        labels[attention_mask == 0] = -100
        if ignored:
            labels[:, 0] = -100
        columns["labels"] = labels.tolist()
    elif task == "causal_lm":
        labels = input_ids.clone()
        labels[attention_mask == 0] = -100
        if ignored:
            labels[1::3, :3] = -100  # masked prompts
        columns["labels"] = labels.tolist()
    else:
        raise ValueError(task)
    return columns


def build_dataset(
    task: str, num_samples: int, seed: int = 0, ignored: bool = True, num_labels: int = NUM_LABELS
) -> Any:
    """A ``datasets.Dataset`` of the first ``num_samples`` examples."""
    import datasets

    return datasets.Dataset.from_dict(build_columns(task, num_samples, seed, ignored, num_labels))


def as_batch(
    task: str, num_samples: int, seed: int = 0, ignored: bool = True, num_labels: int = NUM_LABELS
) -> dict[str, torch.Tensor]:
    """The same examples as one batch of tensors (what the default collator makes of the whole dataset)."""
    batch = {}
    for key, value in build_columns(task, num_samples, seed, ignored, num_labels).items():
        tensor = torch.tensor(value)
        batch[key] = tensor.float() if tensor.is_floating_point() else tensor
    return batch


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    """All parameter gradients of the model (not of an attached loss), concatenated, float64."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).double()
            for name, p in model.named_parameters()
            if p.requires_grad and not name.startswith("hf_losses_loss.")
        ]
    )


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm().clamp(min=1e-30))


class GradientCapture(TrainerCallback):
    """Records the model's gradient before every optimizer step (after clipping, after DDP's reduction)."""

    def __init__(self) -> None:
        self.gradients: list[torch.Tensor] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.gradients.append(flat_grad(model).cpu())


def reference_gradient(
    task: str,
    loss: torch.nn.Module | None,
    examples: Mapping[str, torch.Tensor],
    seed: int = 0,
    loss_task: str | None = None,
    num_labels: int = NUM_LABELS,
) -> torch.Tensor:
    """Plain-PyTorch gradient of the mean loss over ``examples`` seen as one batch (no Trainer)."""
    from hf_losses.tasks import build_task

    model = build_model(task, seed, num_labels)
    model.train()
    if loss is None:
        model(**examples).loss.backward()
    else:
        inputs = {k: v for k, v in examples.items() if k != "labels"}
        reader = build_task(loss_task or task, model, ignore_index=getattr(loss, "ignore_index", -100))
        logits, labels = reader.read(model(**inputs), examples)
        loss(logits, labels).backward()
    return flat_grad(model)


def training_arguments(
    output_dir: str, batch_size: int, accumulation: int, arguments_class: Any = None, **overrides: Any
) -> Any:
    """LossTrainingArguments (or ``arguments_class``) for one SGD step with lr 0 (weights stay put), no clipping,
    sequential data."""
    from hf_losses import LossTrainingArguments

    defaults = dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=0.0,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        num_train_epochs=1,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    defaults.update(overrides)
    if not SEQUENTIAL_SAMPLING_OPTION:
        defaults.pop("train_sampling_strategy", None)  # transformers < 5: see use_sequential_sampling
    return (arguments_class or LossTrainingArguments)(**defaults)


def _sequential_sampling_option() -> bool:
    from transformers import TrainingArguments

    return "train_sampling_strategy" in TrainingArguments.__dataclass_fields__


#: transformers >= 5 has ``train_sampling_strategy="sequential"``; older versions shuffle the training data
SEQUENTIAL_SAMPLING_OPTION = _sequential_sampling_option()


def use_sequential_sampling() -> None:
    """On transformers < 5 (the minimum-versions CI job), make every Trainer read the training data in order, as
    ``train_sampling_strategy="sequential"`` does on 5.x: the tests compare per-step gradients with references
    over known samples."""
    if SEQUENTIAL_SAMPLING_OPTION:
        return
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    Trainer._get_train_sampler = lambda self, *args, **kwargs: SequentialSampler(self.train_dataset)


use_sequential_sampling()


def sequential_sampling() -> dict[str, str]:
    """``{"train_sampling_strategy": "sequential"}`` where TrainingArguments has it (``**`` into the arguments)."""
    return {"train_sampling_strategy": "sequential"} if SEQUENTIAL_SAMPLING_OPTION else {}


def trainer_gradients(
    task: str,
    loss_type: str,
    loss_kwargs: Mapping[str, Any] | None,
    num_samples: int,
    batch_size: int,
    accumulation: int,
    output_dir: str,
    ignored: bool = True,
    loss_task: str = "auto",
    trainer_class: Callable[..., Any] | None = None,
    num_labels: int = NUM_LABELS,
    extra_columns: Mapping[str, list] | None = None,
    **overrides: Any,
) -> tuple[list[torch.Tensor], Any]:
    """Gradients of every optimizer step of one epoch over ``num_samples`` examples (plus ``extra_columns``, e.g.
    data weights), and the trainer."""
    from hf_losses import LossTrainer

    args = training_arguments(
        output_dir,
        batch_size,
        accumulation,
        loss_type=loss_type,
        loss_kwargs=dict(loss_kwargs or {}),
        loss_task=loss_task,
        **overrides,
    )
    capture = GradientCapture()
    trainer = (trainer_class or LossTrainer)(
        model=build_model(task, num_labels=num_labels),
        args=args,
        train_dataset=_with_columns(
            build_dataset(task, num_samples, ignored=ignored, num_labels=num_labels), extra_columns
        ),
        callbacks=[capture],
    )
    trainer.train()
    return capture.gradients, trainer


def _with_columns(dataset: Any, columns: Mapping[str, list] | None) -> Any:
    for name, values in (columns or {}).items():
        dataset = dataset.add_column(name, list(values[: len(dataset)]))
    return dataset


def max_steps_for(num_samples: int, batch_size: int, accumulation: int, processes: int = 1) -> int:
    return math.ceil(math.ceil(num_samples / (batch_size * processes)) / accumulation)
