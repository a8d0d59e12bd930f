"""Recall of every class (and their mean, balanced accuracy) as an `evaluate` module that loads offline."""

import datasets
import evaluate

from hf_losses.metrics.functional import IGNORE_INDEX, confusion_matrix, per_class_recall

_DESCRIPTION = (
    "Recall TP_c / (TP_c + FN_c) of each class c -- the number that shows whether a rare class is "
    "found at all -- and their unweighted mean (balanced accuracy)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    num_classes (int, optional): report classes 0..num_classes-1 (default: up to the largest id seen).
    label_names (list of str, optional): names used in the keys `recall_<name>`; default: class ids.
    ignore_index (int): references with this value are dropped (default -100).
    Other keyword arguments are ignored, so that `evaluate.combine` can pass options meant for other modules.
Returns:
    recall_<class> (float) per class (0 for a class without true entries), balanced_accuracy (float).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PerClassRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(
        self, predictions, references, num_classes=None, label_names=None, ignore_index=IGNORE_INDEX, **unused
    ):
        if num_classes is None and label_names is not None:
            num_classes = len(label_names)
        matrix = confusion_matrix(predictions, references, num_classes, ignore_index)
        recall = per_class_recall(matrix)
        names = label_names if label_names is not None else range(matrix.shape[0])
        result = {f"recall_{name}": float(value) for name, value in zip(names, recall)}
        present = matrix.sum(axis=1) > 0
        result["balanced_accuracy"] = float(recall[present].mean()) if present.any() else 0.0
        return result
