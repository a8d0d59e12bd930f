"""Sensitivity, specificity and expected cost under a cost matrix, as an `evaluate` module that loads offline."""

import datasets
import evaluate

from hf_losses.metrics.functional import IGNORE_INDEX, confusion_matrix, expected_cost, sensitivity_specificity

_DESCRIPTION = (
    "Decision metrics for cost-sensitive problems such as diagnosis: sensitivity (recall of the "
    "positive class), specificity (recall of the rest) and the mean cost per decision, "
    "sum_{t,p} count[t,p] * cost[t][p] / n, where cost[t][p] is the price of predicting p when the "
    "truth is t."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids (e.g. argmax of the logits: the default threshold).
    references (list of int): true class ids.
    cost_matrix (list of lists of float, optional): C x C, cost[true][predicted]; default 0/1 costs, for which
        the expected cost is the error rate.
    positive_label (int): the class whose recall is the sensitivity (default 1).
    num_classes (int, optional): default: the size of cost_matrix, else 2.
    ignore_index (int): references with this value are dropped (default -100).
    Other keyword arguments are ignored, so that `evaluate.combine` can pass options meant for other modules.
Returns:
    sensitivity, specificity, expected_cost (floats).
Examples:
    >>> metric = evaluate.load(metric_path("expected_cost"))
    >>> metric.compute(predictions=[0, 0, 1, 1], references=[1, 0, 1, 0], cost_matrix=[[0, 1], [10, 0]])
    {'sensitivity': 0.5, 'specificity': 0.5, 'expected_cost': 2.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExpectedCost(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Elkan, 'The Foundations of Cost-Sensitive Learning', IJCAI 2001.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(
        self,
        predictions,
        references,
        cost_matrix=None,
        positive_label=1,
        num_classes=None,
        ignore_index=IGNORE_INDEX,
        **unused,
    ):
        if num_classes is None:
            num_classes = len(cost_matrix) if cost_matrix is not None else 2
        if cost_matrix is None:
            cost_matrix = [[0.0 if t == p else 1.0 for p in range(num_classes)] for t in range(num_classes)]
        if not 0 <= positive_label < num_classes:
            raise ValueError(f"positive_label must be in [0, {num_classes}), got {positive_label}.")
        matrix = confusion_matrix(predictions, references, num_classes, ignore_index)
        sensitivity, specificity = sensitivity_specificity(matrix, positive_label)
        return {
            "sensitivity": sensitivity,
            "specificity": specificity,
            "expected_cost": expected_cost(matrix, cost_matrix),
        }
