"""Dice and IoU for semantic segmentation as an `evaluate` module that loads offline."""

import datasets
import evaluate

from hf_losses.metrics.functional import IGNORE_INDEX, dice_iou

_DESCRIPTION = (
    "Per-class Dice 2|P∩R| / (|P|+|R|) and IoU |P∩R| / |P∪R| pooled over all pixels of all images, "
    "and their means over the foreground classes (class 0 is background unless include_background). "
    "A class absent from both prediction and truth scores 1."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of 2-D int masks, or flattened 1-D masks): predicted class per pixel.
    references (same shapes): true class per pixel.
    num_classes (int, optional): default: up to the largest id seen.
    include_background (bool): include class 0 in the means (default False).
    ignore_index (int): reference pixels with this value are dropped (default -100).
    Other keyword arguments are ignored, so that `evaluate.combine` can pass options meant for other modules.
Returns:
    dice, iou (mean over the reported classes), dice_<c>, iou_<c> per class.
"""

_MASK_2D = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
_MASK_1D = datasets.Sequence(datasets.Value("int64"))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DiceIou(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Dice, 'Measures of the amount of ecologic association between species', Ecology 1945.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": _MASK_2D, "references": _MASK_2D}),
                datasets.Features({"predictions": _MASK_1D, "references": _MASK_1D}),
            ],
        )

    def _compute(
        self, predictions, references, num_classes=None, include_background=False, ignore_index=IGNORE_INDEX, **unused
    ):
        import numpy as np

        predictions = np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1) for p in predictions])
        references = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1) for r in references])
        dice, iou = dice_iou(predictions, references, num_classes, ignore_index)
        first = 0 if include_background or dice.size == 1 else 1
        result = {"dice": float(dice[first:].mean()), "iou": float(iou[first:].mean())}
        for c in range(dice.size):
            result[f"dice_{c}"] = float(dice[c])
            result[f"iou_{c}"] = float(iou[c])
        return result
