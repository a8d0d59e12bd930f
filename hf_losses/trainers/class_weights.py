"""Class counts of a training set and the class weights derived from them.

Counts come from the label column of a ``datasets.Dataset`` with Arrow column operations (nested label lists,
e.g. token labels, are flattened by Arrow; ``-100`` and other negative values are ignored), so counting a
million-row dataset takes no Python loop over rows. The same counts feed losses that take them directly
(``samples_per_class`` of ``class_balanced`` and ``ldam``).

Weights:

* ``"balanced"``: ``w_c = n / (C * n_c)`` (scikit-learn's ``compute_class_weight("balanced")``, King & Zeng 2001);
* ``"effective_num"``: ``w_c = (1 - beta) / (1 - beta^{n_c})`` normalised to sum to ``C`` (Cui et al. 2019,
  "Class-Balanced Loss Based on the Effective Number of Samples", eq. 4 and Sec. 4);
* explicit numbers, one per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

WEIGHT_METHODS = ("balanced", "effective_num")
LABEL_COLUMNS = ("labels", "label", "label_ids")


def label_column_of(dataset: Any, label_names: Sequence[str] | None = None) -> str:
    """The first of ``label_names`` / ``labels`` / ``label`` / ``label_ids`` that the dataset has."""
    columns = list(getattr(dataset, "column_names", None) or [])
    for name in list(label_names or []) + list(LABEL_COLUMNS):
        if name in columns:
            return name
    raise ValueError(f"class weights: the train dataset has no label column (looked for "
                     f"{list(label_names or []) + list(LABEL_COLUMNS)}; columns: {columns}). "
                     f"Rename it, or pass explicit numbers to `class_weights`.")


def class_counts(dataset: Any, num_classes: int | None = None, label_column: str | None = None,
                 label_kind: str = "index", ignore_value: int | None = None) -> np.ndarray:
    """Number of label entries of each class in ``dataset`` (a ``datasets.Dataset``), as int64 ``(C,)``.

    ``label_kind="index"``: integer labels, possibly nested lists (tokens, pixels); negative values (``-100``)
    and ``ignore_value`` (e.g. SegFormer's ``semantic_loss_ignore_index`` 255) are not counted.
    ``label_kind="binary"``: multi-hot rows ``(C,)``; the count of class ``c`` is its number of positive entries.
    """
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError as error:  # pragma: no cover - datasets depends on pyarrow
        raise ImportError("class weights from a dataset need `datasets` (pyarrow).") from error
    if not hasattr(dataset, "with_format") or not hasattr(dataset, "column_names"):
        raise TypeError(f"class weights from the training data need a `datasets.Dataset`, got "
                        f"{type(dataset).__name__}; pass explicit numbers to `class_weights` instead.")
    label_column = label_column or label_column_of(dataset)
    column = dataset.with_format("arrow")[label_column]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    num_rows = len(column)

    def is_list(arrow_type: Any) -> bool:
        return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or \
            pa.types.is_fixed_size_list(arrow_type)

    while is_list(column.type):
        column = pc.list_flatten(column)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise TypeError(f"class weights: cannot count labels of type {column.type} in column '{label_column}' "
                        f"(images must be decoded first); pass explicit numbers to `class_weights`.")
    values = column.to_numpy(zero_copy_only=False)
    if label_kind == "binary":
        if num_rows == 0 or values.size % num_rows:
            raise ValueError(f"class weights: multi-label rows of '{label_column}' must all have the same length.")
        matrix = values.astype(np.float64).reshape(num_rows, -1)
        counts = (matrix > 0.5).sum(axis=0).astype(np.int64)
        if num_classes is not None and counts.shape[0] != num_classes:
            raise ValueError(f"class weights: multi-label rows have {counts.shape[0]} entries but the model has "
                             f"{num_classes} labels.")
        return counts
    values = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    values = values.astype(np.int64)
    valid = values >= 0
    if ignore_value is not None:
        valid &= values != ignore_value
    values = values[valid]
    if num_classes is not None and values.size and values.max() >= num_classes:
        raise ValueError(f"class weights: label {int(values.max())} found in '{label_column}' but the model has "
                         f"{num_classes} classes.")
    return np.bincount(values, minlength=num_classes or 0).astype(np.int64)


def weights_from_counts(counts: Sequence[float] | np.ndarray, method: str, beta: float = 0.999) -> list[float]:
    """Class weights from counts by ``method`` (see the module docstring). Empty classes get weight 0 with
    ``"balanced"`` (nothing to weigh) and the largest weight with ``"effective_num"``."""
    counts = np.asarray(counts, dtype=np.float64)
    num_classes = counts.shape[0]
    if num_classes == 0 or counts.sum() <= 0:
        raise ValueError("class weights: the training labels contain no countable class.")
    if method == "balanced":
        weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1.0)), 0.0)
    elif method == "effective_num":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class weights: `class_weights_beta` must be in [0, 1), got {beta}.")
        effective = (1.0 - np.power(beta, counts)) / (1.0 - beta)
        weights = 1.0 / np.maximum(effective, 1e-12)
        weights = np.where(counts > 0, weights, weights[counts > 0].max())
        weights = weights / weights.sum() * num_classes
    else:
        raise ValueError(f"class weights: unknown method {method!r}; use one of {list(WEIGHT_METHODS)} or numbers.")
    return [float(w) for w in weights]


def parse_class_weights(value: Any) -> str | list[float] | None:
    """``None``, a method name, or numbers; a command-line string ``"1,2,3"`` / ``"[1, 2, 3]"`` becomes numbers."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none"):
            return None
        if text in WEIGHT_METHODS:
            return text
        try:
            numbers = [float(part) for part in text.strip("[]").split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"`class_weights` must be one of {list(WEIGHT_METHODS)} or numbers such as "
                             f"'1.0,5.0', got {value!r}.") from None
        value = numbers
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        numbers = list(value.tolist() if hasattr(value, "tolist") else value)
        if not numbers or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise ValueError(f"`class_weights` must be a non-empty list of numbers, got {value!r}.")
        if any(v < 0 or v != v for v in numbers):
            raise ValueError(f"`class_weights` must be >= 0, got {numbers}.")
        return [float(v) for v in numbers]
    raise TypeError(f"`class_weights` must be one of {list(WEIGHT_METHODS)}, a list of numbers or None, "
                    f"got {value!r}.")
