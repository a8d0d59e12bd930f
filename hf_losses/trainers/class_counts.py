"""Class counts of a training set, for class weights (``hf_losses.losses.class_weights``) and for losses that take
counts (``samples_per_class`` of ``class_balanced`` and ``ldam``).

Counts come from the label column of a ``datasets.Dataset`` with Arrow column operations (nested label lists,
e.g. token labels, are flattened by Arrow; ``-100`` and other negative values are ignored), so counting a
million-row dataset takes no Python loop over rows. The same counts feed losses that take them directly
(``samples_per_class`` of ``class_balanced`` and ``ldam``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hf_losses.tasks import build_task, unwrap

LABEL_COLUMNS = ("labels", "label", "label_ids")


def label_column_of(dataset: Any, label_names: Sequence[str] | None = None) -> str:
    """The first of ``label_names`` / ``labels`` / ``label`` / ``label_ids`` that the dataset has."""
    columns = list(getattr(dataset, "column_names", None) or [])
    for name in list(label_names or []) + list(LABEL_COLUMNS):
        if name in columns:
            return name
    raise ValueError(
        f"class weights: the train dataset has no label column (looked for "
        f"{list(label_names or []) + list(LABEL_COLUMNS)}; columns: {columns}). "
        f"Rename it, or pass explicit numbers to `class_weights`."
    )


def class_counts(
    dataset: Any,
    num_classes: int | None = None,
    label_column: str | None = None,
    label_kind: str = "index",
    ignore_value: int | None = None,
) -> np.ndarray:
    """Number of label entries of each class in ``dataset`` (a ``datasets.Dataset``), as int64 ``(C,)``.

    ``label_kind="index"``: integer labels, possibly nested lists (tokens, pixels); negative values (``-100``)
    and ``ignore_value`` (e.g. SegFormer's ``semantic_loss_ignore_index`` 255) are not counted.
    ``label_kind="binary"``: multi-hot rows ``(C,)``; the count of class ``c`` is its number of positive entries.
    """
    if not hasattr(dataset, "with_format") or not hasattr(dataset, "column_names"):
        raise TypeError(
            f"class weights from the training data need a `datasets.Dataset`, got "
            f"{type(dataset).__name__}; pass explicit numbers to `class_weights` instead."
        )
    label_column = label_column or label_column_of(dataset)
    values, num_rows = _flat_label_values(dataset, label_column)
    if label_kind == "binary":
        return _multi_hot_counts(values, num_rows, num_classes, label_column)
    return _index_counts(values, num_classes, label_column, ignore_value)


def _flat_label_values(dataset: Any, label_column: str) -> tuple[np.ndarray, int]:
    """Every label entry of the column, nested lists flattened by Arrow, and the number of rows."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError as error:  # pragma: no cover - datasets depends on pyarrow
        raise ImportError("class weights from a dataset need `datasets` (pyarrow).") from error
    column = dataset.with_format("arrow")[label_column]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    num_rows = len(column)
    while (
        pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type)
    ):
        column = pc.list_flatten(column)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise TypeError(
            f"class weights: cannot count labels of type {column.type} in column '{label_column}' "
            f"(images must be decoded first); pass explicit numbers to `class_weights`."
        )
    return column.to_numpy(zero_copy_only=False), num_rows


def _multi_hot_counts(values: np.ndarray, num_rows: int, num_classes: int | None, label_column: str) -> np.ndarray:
    """Positive entries per class of multi-hot rows."""
    if num_rows == 0 or values.size % num_rows:
        raise ValueError(f"class weights: multi-label rows of '{label_column}' must all have the same length.")
    matrix = values.astype(np.float64).reshape(num_rows, -1)
    counts = (matrix > 0.5).sum(axis=0).astype(np.int64)
    if num_classes is not None and counts.shape[0] != num_classes:
        raise ValueError(
            f"class weights: multi-label rows have {counts.shape[0]} entries but the model has {num_classes} labels."
        )
    return counts


def _index_counts(
    values: np.ndarray, num_classes: int | None, label_column: str, ignore_value: int | None
) -> np.ndarray:
    """Entries per class of integer labels; negative values and ``ignore_value`` are not counted."""
    values = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    values = values.astype(np.int64)
    valid = values >= 0
    if ignore_value is not None:
        valid &= values != ignore_value
    values = values[valid]
    if num_classes is not None and values.size and values.max() >= num_classes:
        raise ValueError(
            f"class weights: label {int(values.max())} found in '{label_column}' but the model has "
            f"{num_classes} classes."
        )
    return np.bincount(values, minlength=num_classes or 0).astype(np.int64)


def read_class_counts(
    dataset: Any, model: Any, loss_task: str, label_names: Sequence[str] | None, loss_type: str
) -> list[int]:
    """Class counts of the training set's label column for ``model``'s classes (its vocabulary for a causal LM)."""
    if dataset is None:
        raise ValueError(
            f"LossTrainer: loss '{loss_type}' needs class counts from the training data "
            f"(class weights or samples_per_class) but no train_dataset was given."
        )
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    task = build_task(loss_task, model)
    label_kind = "binary" if task.name in ("multi_label", "regression") else "index"
    if task.name in ("causal_lm", "seq2seq_lm"):  # classes = the vocabulary
        embeddings = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        num_classes = embeddings.weight.shape[0] if embeddings is not None else getattr(config, "vocab_size", None)
    else:
        num_classes = getattr(config, "num_labels", None)
    column = label_column_of(dataset, label_names)
    counts = class_counts(
        dataset, num_classes, column, label_kind, ignore_value=getattr(config, "semantic_loss_ignore_index", None)
    )
    return [int(c) for c in counts]
