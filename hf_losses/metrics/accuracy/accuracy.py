"""Accuracy as an `evaluate` module that loads offline: ``evaluate.load(hf_losses.metrics.metric_path("accuracy"))``."""

import datasets
import evaluate

from hf_losses.metrics.functional import IGNORE_INDEX, accuracy

_DESCRIPTION = "Fraction of predictions equal to the reference class; references equal to ignore_index are dropped."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    ignore_index (int): references with this value are dropped (default -100).
    Other keyword arguments are ignored, so that `evaluate.combine` can pass options meant for other modules.
Returns:
    accuracy (float): in [0, 1].
Examples:
    >>> metric = evaluate.load(metric_path("accuracy"))
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, ignore_index=IGNORE_INDEX, **unused):
        return {"accuracy": accuracy(predictions, references, ignore_index)}
