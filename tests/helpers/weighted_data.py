"""Data weights for the exactness tests of ``sample_weight`` / ``token_weight`` columns: fixed weights with a whole
micro-batch of zeros (examples 2 and 3), and plain-PyTorch reference gradients of the weighted mean computed with
torch's own functional losses (not with hf-losses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from tiny_tasks import build_columns, build_model, flat_grad

#: per-example weights; examples 2 and 3 (one micro-batch at batch 2) weigh 0
SAMPLE_WEIGHTS = [0.5, 2.0, 0.0, 0.0, 1.5, 1.0, 0.25, 3.0, 0.75, 1.25]
CLASS_WEIGHTS = [1.0, 2.5, 0.5]

#: (loss, task, weight columns, normalize, class weights)
CASES = [
    ("cross_entropy", "sequence_classification", ("sample",), "count", None),
    ("cross_entropy", "sequence_classification", ("sample",), "weight", CLASS_WEIGHTS),
    ("cross_entropy", "token_classification", ("sample", "token"), "weight", CLASS_WEIGHTS),
    ("focal", "sequence_classification", ("sample",), "weight", None),
    ("focal", "token_classification", ("token",), "count", CLASS_WEIGHTS),
    ("bce", "multi_label", ("sample", "token"), "weight", None),
    ("bce", "multi_label", ("token",), "count", None),
    ("causal_lm", "causal_lm", ("sample", "token"), "weight", None),
    ("causal_lm", "causal_lm", ("token",), "count", None),
]


def token_weights(task: str, num_samples: int) -> list:
    """Per-label-entry weights in [0, 2) with zeros, shaped like the task's labels."""
    labels = torch.tensor(build_columns(task, num_samples)["labels"])
    generator = torch.Generator().manual_seed(7)
    weights = torch.rand(labels.shape, generator=generator) * 2
    weights[weights < 0.3] = 0.0
    return weights.tolist()


def weight_columns(task: str, kinds: tuple[str, ...], num_samples: int = 10) -> dict[str, list]:
    columns: dict[str, list] = {}
    if "sample" in kinds:
        columns["sample_weight"] = SAMPLE_WEIGHTS[:num_samples]
    if "token" in kinds:
        columns["token_weight"] = token_weights(task, num_samples)
    return columns


def per_item_weights(
    task: str, kinds: tuple[str, ...], start: int, stop: int, labels_shape: torch.Size
) -> torch.Tensor:
    """The product of the columns' weights for examples ``start:stop``, broadcast to the labels' shape."""
    weight = torch.ones(labels_shape)
    if "sample" in kinds:
        sample = torch.tensor(SAMPLE_WEIGHTS[start:stop])
        weight = weight * sample.reshape((-1,) + (1,) * (len(labels_shape) - 1))
    if "token" in kinds:
        weight = weight * torch.tensor(token_weights(task, stop)[start:stop])
    return weight


def weighted_reference_gradient(
    loss_type: str,
    task: str,
    kinds: tuple[str, ...],
    normalize: str,
    class_weights: list[float] | None,
    start: int,
    stop: int,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Gradient of ``sum_i w_i l_i / D`` over examples ``start:stop`` as one batch, D = the count of non-ignored
    items (normalize="count") or ``sum_i w_i c[y_i]`` (normalize="weight"), with torch's functional losses."""
    columns = build_columns(task, stop)
    examples = {key: torch.tensor(value)[start:stop] for key, value in columns.items()}
    model = build_model(task)
    model.train()
    outputs = model(**{k: v for k, v in examples.items() if k != "labels"})
    logits, labels = outputs.logits.float(), examples["labels"]
    weight = per_item_weights(task, kinds, start, stop, labels.shape)
    if task == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
        weight = weight[:, 1:]
    cw = None if class_weights is None else torch.tensor(class_weights)
    if loss_type in ("cross_entropy", "focal", "causal_lm"):
        flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        weight = weight.reshape(-1)
        valid = flat_labels != -100
        items = F.cross_entropy(flat_logits, flat_labels, reduction="none", ignore_index=-100)
        if loss_type == "focal":
            items = (1 - torch.exp(-items)) ** gamma * items
        class_factor = torch.ones_like(items) if cw is None else torch.where(valid, cw[flat_labels.clamp(min=0)], 0.0)
        items = items * class_factor
    elif loss_type == "bce":
        valid = labels != -100
        items = F.binary_cross_entropy_with_logits(logits, labels.clamp(0, 1).float(), reduction="none") * valid
        class_factor = valid.float()
    else:
        raise ValueError(loss_type)
    total = (items * weight).sum()
    denominator = (class_factor * weight * valid).sum() if normalize == "weight" else valid.sum()
    (total / denominator.clamp(min=1e-30)).backward()
    return flat_grad(model)


def loss_kwargs(loss_type: str, normalize: str, class_weights: list[float] | None) -> Mapping[str, Any]:
    kwargs: dict[str, Any] = {"normalize": normalize}
    if class_weights is not None:
        kwargs["weight" if loss_type == "cross_entropy" else "alpha"] = class_weights
    return kwargs
