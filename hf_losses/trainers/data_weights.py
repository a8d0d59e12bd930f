"""Weights from the data: a ``sample_weight`` column (one float per example) and a ``token_weight`` column (one float
per label entry: token, pixel), carried through ``remove_unused_columns`` and the data collator to the loss.

The collator the user chose never sees the weight columns: :class:`DataWeightsCollator` takes them out of each
example, calls it, then adds them to the batch as float32 tensors -- per-token weights padded with 0 (a padded
position weighs nothing) on the side the labels were padded. The values are checked there, on the CPU, where that
costs no device synchronisation: shape (one per label entry), finite, non-negative; errors name the column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from hf_losses.tasks import SAMPLE_WEIGHT_COLUMN, TOKEN_WEIGHT_COLUMN, WEIGHT_COLUMNS

__all__ = [
    "WEIGHT_COLUMNS",
    "DataWeightsCollator",
    "check_weight_column",
    "raise_model_loss_weights",
    "weight_columns_of",
]


def weight_columns_of(dataset: Any) -> list[str]:
    """The weight columns a dataset has (``column_names`` of a ``datasets.Dataset``; keys of a first example)."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        try:
            first = dataset[0]
        except Exception:  # an iterable dataset, or one that cannot be indexed: nothing to learn up front
            return []
        names = list(first) if isinstance(first, Mapping) else []
    if isinstance(names, Mapping):  # a DatasetDict
        names = [name for split in names.values() for name in split]
    return [column for column in WEIGHT_COLUMNS if column in names]


def check_weight_column(name: str, values: Tensor, where: str = "the batch") -> Tensor:
    """Finite, >= 0 float32 weights; the message names the column and the first bad value."""
    values = torch.as_tensor(values, dtype=torch.float32)
    bad = ~torch.isfinite(values) | (values < 0)
    if bad.any():
        raise ValueError(
            f"LossTrainer: column `{name}` must hold finite weights >= 0 (0 leaves an item out); {where} has "
            f"{values[bad][0].item():g}."
        )
    return values


class DataWeightsCollator:
    """Wraps a data collator: weight columns are taken out of the examples, checked, and added back as tensors."""

    def __init__(self, collator: Callable[[list], Any], padding_side: str | None = None) -> None:
        self.collator = collator
        self.padding_side = padding_side or _padding_side(collator)

    def __call__(self, features: list) -> Any:
        if not features or not isinstance(features[0], Mapping) or not any(c in features[0] for c in WEIGHT_COLUMNS):
            return self.collator(features)
        weights = {column: [f.get(column) for f in features] for column in WEIGHT_COLUMNS if column in features[0]}
        features = [{k: v for k, v in f.items() if k not in WEIGHT_COLUMNS} for f in features]
        batch = self.collator(features)
        if SAMPLE_WEIGHT_COLUMN in weights:
            batch[SAMPLE_WEIGHT_COLUMN] = self._sample_weights(weights[SAMPLE_WEIGHT_COLUMN])
        if TOKEN_WEIGHT_COLUMN in weights:
            batch[TOKEN_WEIGHT_COLUMN] = self._token_weights(weights[TOKEN_WEIGHT_COLUMN], batch.get("labels"))
        return batch

    @staticmethod
    def _sample_weights(values: list) -> Tensor:
        for index, value in enumerate(values):
            if value is None or (isinstance(value, (list, tuple)) and len(value) != 1):
                raise ValueError(
                    f"LossTrainer: column `{SAMPLE_WEIGHT_COLUMN}` must hold one number per example; example {index} "
                    f"of the batch has {value!r}."
                )
        flat = [float(torch.as_tensor(v).reshape(-1)[0]) for v in values]
        return check_weight_column(SAMPLE_WEIGHT_COLUMN, torch.tensor(flat, dtype=torch.float32))

    def _token_weights(self, values: list, labels: Tensor | None) -> Tensor:
        """Each example's weights padded with 0 to its labels' padded shape; the lengths must match the labels'."""
        if labels is None:
            raise ValueError(
                f"LossTrainer: column `{TOKEN_WEIGHT_COLUMN}` weighs label entries, but the collated batch has no "
                f"`labels`."
            )
        rows = [torch.as_tensor(v, dtype=torch.float32) for v in values]
        shape = tuple(labels.shape[1:])
        if len(shape) != 1:  # images: no padding, one weight per pixel
            for index, row in enumerate(rows):
                if tuple(row.shape) != shape:
                    raise ValueError(
                        f"LossTrainer: column `{TOKEN_WEIGHT_COLUMN}` of example {index} has shape {tuple(row.shape)}"
                        f", its labels {shape}: give one weight per label entry."
                    )
            return check_weight_column(TOKEN_WEIGHT_COLUMN, torch.stack(rows) if rows else torch.zeros(labels.shape))
        length = shape[0]
        out = torch.zeros((len(rows), length), dtype=torch.float32)
        for index, row in enumerate(rows):
            row = row.reshape(-1)
            if row.numel() > length:
                raise ValueError(
                    f"LossTrainer: column `{TOKEN_WEIGHT_COLUMN}` of example {index} has {row.numel()} weights but "
                    f"its labels {length} entries after padding: give one weight per label entry."
                )
            if self.padding_side == "left":
                out[index, length - row.numel() :] = row
            else:
                out[index, : row.numel()] = row
        return check_weight_column(TOKEN_WEIGHT_COLUMN, out)


def _padding_side(collator: Any) -> str:
    """The side the collator pads on: its tokenizer's ``padding_side``, else right."""
    for attribute in ("tokenizer", "processing_class"):
        tokenizer = getattr(collator, attribute, None)
        side = getattr(tokenizer, "padding_side", None)
        if side in ("left", "right"):
            return side
    return "right"


def raise_model_loss_weights(inputs: Mapping[str, Any]) -> None:
    """The model's own loss (``loss_type="auto"``) cannot weigh items: refuse weight columns rather than drop them."""
    columns = [column for column in WEIGHT_COLUMNS if column in inputs]
    raise ValueError(
        f"LossTrainer: the batch has data-weight column(s) {columns}, but loss_type='auto' trains the model's own "
        f"loss, which cannot weigh items; name a loss (e.g. loss_type='cross_entropy') or remove the column(s)."
    )
