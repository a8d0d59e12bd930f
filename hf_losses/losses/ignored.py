"""Label entries marked ``ignore_index``: whether any can be present, and how many entries count.

On CPU one min/max pass over the labels is ~3x cheaper than a compare and a sum, and usually proves that nothing
is ignored; on a GPU the answer would cost a device sync, so the full mask is used there.
"""

from __future__ import annotations

from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.inputs import value_bounds


def may_contain(labels: Tensor, value: float) -> bool:
    """False when ``value`` provably does not occur in ``labels`` (one min/max pass, CPU only; no GPU sync)."""
    if labels.device.type != "cpu" or labels.numel() == 0:
        return labels.numel() > 0
    low, high = value_bounds(labels)  # shared with the label-range check of the same call
    return low <= value <= high


def count_valid(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor | int:
    """Number of label entries that are not ``ignore_index`` (the item count of the per-entry losses)."""
    if labels.numel() > 0 and not may_contain(labels, ignore_index):
        return labels.numel()
    return (labels != ignore_index).sum()
