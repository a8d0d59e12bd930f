"""Macro-averaged F1 (and per-class F1) as an `evaluate` module that loads offline."""

import datasets
import evaluate

from hf_losses.metrics.functional import IGNORE_INDEX, confusion_matrix, macro_f1, per_class_f1

_DESCRIPTION = (
    "Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN): every class counts the same, so a "
    "model that ignores a rare class is penalised (scikit-learn f1_score(average='macro'))."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    num_classes (int, optional): average over classes 0..num_classes-1; default: the classes that occur in the
        references or the predictions (as scikit-learn).
    label_names (list of str, optional): names for the per-class keys `f1_<name>`; default: class ids.
    per_class (bool): also return `f1_<class>` for each class (default False).
    ignore_index (int): references with this value are dropped (default -100).
    Other keyword arguments are ignored, so that `evaluate.combine` can pass options meant for other modules.
Returns:
    macro_f1 (float), and f1_<class> (float) when per_class is True.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(
        self,
        predictions,
        references,
        num_classes=None,
        label_names=None,
        per_class=False,
        ignore_index=IGNORE_INDEX,
        **unused,
    ):
        if num_classes is None and label_names is not None:
            num_classes = len(label_names)
        matrix = confusion_matrix(predictions, references, num_classes, ignore_index)
        labels = None if num_classes is None else range(num_classes)
        result = {"macro_f1": macro_f1(matrix, labels)}
        if per_class:
            names = label_names if label_names is not None else range(matrix.shape[0])
            result.update({f"f1_{name}": float(value) for name, value in zip(names, per_class_f1(matrix))})
        return result
