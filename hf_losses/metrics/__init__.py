"""Metrics shipped as `evaluate` modules inside the package, so they load offline.

``evaluate.load("accuracy")`` fetches its script from the Hugging Face Hub; these load from a local folder::

    from hf_losses.metrics import load_metric
    import evaluate
    metrics = evaluate.combine([load_metric("accuracy"), load_metric("macro_f1"), load_metric("per_class_recall")])
    metrics.compute(predictions=[0, 1, 1], references=[0, 1, 0])

The formulas live in :mod:`hf_losses.metrics.functional` (numpy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_losses.suggestions import did_you_mean

METRICS_DIR = Path(__file__).resolve().parent
#: name -> what it returns
METRICS: dict[str, str] = {
    "accuracy": "accuracy",
    "macro_f1": "macro_f1 (and f1_<class> with per_class=True)",
    "per_class_recall": "recall_<class> for each class, balanced_accuracy",
    "expected_cost": "sensitivity, specificity, expected_cost (cost_matrix=[[...]])",
    "dice_iou": "dice, iou (foreground means), dice_<c>, iou_<c>",
}


def metric_path(name: str) -> str:
    """Folder of the shipped metric ``name``: what ``evaluate.load`` takes."""
    if name not in METRICS:
        raise ValueError(
            f"Unknown hf-losses metric '{name}'.{did_you_mean(name, METRICS)} Available: {', '.join(METRICS)}."
        )
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs: Any) -> Any:
    """``evaluate.load(metric_path(name), **kwargs)``: works with HF_HUB_OFFLINE=1."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRICS", "load_metric", "metric_path"]
