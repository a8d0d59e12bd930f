"""Numpy cores of the metrics shipped as `evaluate` modules (accuracy, macro-F1, per-class recall,
sensitivity/specificity/expected cost from a cost matrix, Dice/IoU).

The `evaluate` wrappers in the sibling folders only collect predictions and call these functions, so the
formulas can be read (and tested against scikit-learn) in one place. ``ignore_index`` entries of the
references are dropped everywhere, as in the losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hf_losses.constants import IGNORE_INDEX


def _flat_pairs(predictions: Any, references: Any, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened integer (prediction, reference) pairs with the ignored references removed."""
    predictions = np.asarray(predictions).astype(np.int64).reshape(-1)
    references = np.asarray(references).astype(np.int64).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions ({predictions.size} entries) and references ({references.size} entries) "
            f"must have the same number of entries."
        )
    keep = references != ignore_index
    return predictions[keep], references[keep]


def confusion_matrix(
    predictions: Any, references: Any, num_classes: int | None = None, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """``(C, C)`` counts, rows = true class, columns = predicted class (scikit-learn's convention)."""
    predictions, references = _flat_pairs(predictions, references, ignore_index)
    if num_classes is None:
        num_classes = int(max(predictions.max(initial=-1), references.max(initial=-1))) + 1
    for name, values in (("predictions", predictions), ("references", references)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must be class ids in [0, {num_classes}), got values in [{values.min()}, {values.max()}]."
            )
    flat = references * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _divide(numerator: np.ndarray, denominator: np.ndarray, empty: float) -> np.ndarray:
    """Elementwise ratio with ``empty`` where the denominator is 0 (no NaN reaches a log or a JSON file)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(numerator.shape, float(empty))
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def accuracy(predictions: Any, references: Any, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of entries whose prediction equals the reference."""
    predictions, references = _flat_pairs(predictions, references, ignore_index)
    return float((predictions == references).mean()) if references.size else 0.0


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class, ``TP_c / (TP_c + FN_c)``; 0 for a class with no true entries (scikit-learn's
    ``zero_division=0``)."""
    return _divide(np.diag(matrix), matrix.sum(axis=1), empty=0.0)


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    """F1 of each class, ``2 TP / (2 TP + FP + FN)``; 0 when the class is neither true nor predicted."""
    true_positive = np.diag(matrix)
    return _divide(2 * true_positive, matrix.sum(axis=0) + matrix.sum(axis=1), empty=0.0)


def macro_f1(matrix: np.ndarray, labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: the classes that occur as truth or
    prediction, as scikit-learn's ``f1_score(average="macro")``)."""
    if labels is None:
        labels = np.flatnonzero(matrix.sum(axis=0) + matrix.sum(axis=1))
    labels = np.asarray(labels, dtype=np.int64)
    return float(per_class_f1(matrix)[labels].mean()) if labels.size else 0.0


def sensitivity_specificity(matrix: np.ndarray, positive_label: int = 1) -> tuple[float, float]:
    """Sensitivity (recall of ``positive_label``) and specificity (recall of "not positive"): the two
    numbers a diagnostic test is judged by."""
    true_positive = matrix[positive_label, positive_label]
    false_negative = matrix[positive_label].sum() - true_positive
    false_positive = matrix[:, positive_label].sum() - true_positive
    true_negative = matrix.sum() - true_positive - false_negative - false_positive
    sensitivity = _divide(true_positive, true_positive + false_negative, empty=0.0)
    specificity = _divide(true_negative, true_negative + false_positive, empty=0.0)
    return float(sensitivity), float(specificity)


def expected_cost(matrix: np.ndarray, cost_matrix: Any) -> float:
    """Mean cost per decision, ``sum_{t,p} count[t, p] * cost[t, p] / n`` (cost[t, p] = price of predicting
    ``p`` when the truth is ``t``)."""
    cost = np.asarray(cost_matrix, dtype=np.float64)
    if cost.shape != matrix.shape:
        raise ValueError(
            f"cost_matrix has shape {cost.shape} but there are {matrix.shape[0]} classes; give a "
            f"{matrix.shape[0]}x{matrix.shape[0]} matrix cost[true][predicted]."
        )
    total = matrix.sum()
    return float((matrix * cost).sum() / total) if total else 0.0


def dice_iou(
    predictions: Any,
    references: Any,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice ``2|P∩R| / (|P|+|R|)`` and IoU ``|P∩R| / |P∪R|`` pooled over all pixels of all images
    (dataset level, as transformers' mean_iou); a class absent from both prediction and truth scores 1."""
    matrix = confusion_matrix(predictions, references, num_classes, ignore_index)
    intersection = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    true = matrix.sum(axis=1)
    dice = _divide(2 * intersection, predicted + true, empty=1.0)
    iou = _divide(intersection, predicted + true - intersection, empty=1.0)
    return dice, iou
