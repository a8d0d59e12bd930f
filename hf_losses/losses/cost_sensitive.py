"""Cost-sensitive classification: a cost matrix (what each mistake costs), its loss and its metric.

``cost_matrix[i][j]`` is the cost of predicting class ``j`` when the truth is ``i`` (Elkan 2001); the
diagonal is usually 0. Training minimises cross-entropy plus ``cost_weight`` times the expected cost under
the softmax, ``sum_j p_j * cost_matrix[y][j]``, so probability mass on expensive mistakes is pushed away
first. Item unit: one non-ignored label entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import LogitsLoss, LossBase, Normalize, Reduction
from hf_losses.losses.checks import check_choice, check_finite, check_number
from hf_losses.losses.ignored import count_valid
from hf_losses.registry import register_loss


def as_cost_matrix(owner: str, cost_matrix: Any) -> Tensor:
    """A finite, non-negative, square C x C float32 tensor (C >= 2) from nested lists, an array or a tensor."""
    try:
        matrix = torch.as_tensor(cost_matrix, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{owner}: `cost_matrix` must be a C x C list of lists of numbers or a tensor, got {cost_matrix!r}."
        ) from error
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(
            f"{owner}: `cost_matrix` must be a square C x C matrix with C >= 2 "
            f"(cost_matrix[true][predicted]), got shape {tuple(matrix.shape)}."
        )
    check_finite(owner, "cost_matrix", matrix)
    if (matrix < 0).any():
        raise ValueError(
            f"{owner}: every entry of `cost_matrix` must be >= 0 (a cost, not a reward), got {matrix.tolist()}."
        )
    return matrix


def per_item_cost_sensitive(
    logits: Tensor, labels: Tensor, cost_matrix: Tensor, cost_weight: float = 1.0, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``-log p_y + cost_weight * sum_j p_j cost_matrix[y, j]`` per label entry (0 at ignored entries)."""
    valid = labels != ignore_index
    index = labels.masked_fill(~valid, 0)
    log_probs = F.log_softmax(logits, dim=1)
    ce = -log_probs.gather(1, index.unsqueeze(1)).squeeze(1)
    # the cost row of each entry's true class, moved to the class dimension: (N, C, d1, ...)
    cost_rows = cost_matrix.to(logits)[index].movedim(-1, 1)
    expected = (log_probs.exp() * cost_rows).sum(dim=1)
    return torch.where(valid, ce + cost_weight * expected, 0.0)


@register_loss("cost_sensitive", aliases=("cost_sensitive_ce",))
class CostSensitiveLoss(LogitsLoss):
    """Cross-entropy plus ``cost_weight`` x the expected misclassification cost under the softmax.

    Per label entry: ``-log p_y + cost_weight * sum_j p_j * cost_matrix[y][j]`` where ``cost_matrix[i][j]``
    is the cost of predicting ``j`` when the truth is ``i`` (C x C, non-negative, diagonal usually 0).
    ``cost_weight`` is the lambda that trades likelihood against expected cost (0: plain cross-entropy);
    the cross-entropy term keeps the model calibrated while the cost term moves probability away from
    expensive mistakes. Evaluate with :func:`expected_cost`.
    """

    summary = "CE + cost_weight * expected cost sum_j p_j C[y][j] under a C x C cost matrix (C[true][pred])."
    reference = "Elkan 2001, The Foundations of Cost-Sensitive Learning (IJCAI); expected-cost term under the softmax"

    def __init__(
        self,
        cost_matrix: Sequence[Sequence[float]] | Tensor,
        cost_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        self.cost_weight = check_number(self._label(), "cost_weight", cost_weight, minimum=0.0)
        self.register_buffer("cost_matrix", as_cost_matrix(self._label(), cost_matrix))

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        num_classes = self.cost_matrix.shape[0]
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"{self._label()}: `cost_matrix` is {num_classes} x {num_classes} but the logits "
                f"have C={logits.shape[1]} classes; give a C x C matrix."
            )

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        return per_item_cost_sensitive(logits, labels, self.cost_matrix, self.cost_weight, self.ignore_index)

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | int]:
        return self.loss_items(logits, labels).sum(), count_valid(labels, self.ignore_index)

    def extra_repr(self) -> str:
        return f"cost_weight={self.cost_weight:g}, cost_matrix={self.cost_matrix.tolist()}, {super().extra_repr()}"


def fn_cost_matrix(fn_cost: float, positive_class: int) -> list[list[float]]:
    """2 x 2 cost matrix: a missed positive costs ``fn_cost``, a false alarm 1, correct answers 0."""
    matrix = [[0.0, 1.0], [1.0, 0.0]]
    matrix[positive_class][1 - positive_class] = fn_cost
    return matrix


@register_loss("fn_penalty", aliases=("false_negative_penalty",))
class FalseNegativePenaltyLoss(CostSensitiveLoss):
    """Binary cost-sensitive loss where a missed positive (false negative) costs ``fn_cost`` times a false alarm.

    The shortcut for ``cost_sensitive`` with the 2 x 2 matrix ``cost[positive][negative] = fn_cost``,
    ``cost[negative][positive] = 1`` (e.g. calling a sick patient healthy costs ``fn_cost`` times calling a
    healthy one sick). Logits are ``(N, 2, ...)``; ``positive_class`` is the index of the positive class.
    """

    summary = "Binary CE + cost_weight * expected cost where a missed positive costs fn_cost x a false alarm."
    reference = "Elkan 2001, The Foundations of Cost-Sensitive Learning (IJCAI)"

    def __init__(
        self,
        fn_cost: float = 5.0,
        positive_class: int = 1,
        cost_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        owner = self._label()  # before nn.Module.__init__: the name is a class attribute
        fn_cost = check_number(owner, "fn_cost", fn_cost, minimum=0.0)
        positive_class = check_choice(owner, "positive_class", positive_class, (0, 1))
        super().__init__(
            fn_cost_matrix(fn_cost, positive_class), cost_weight, ignore_index, reduction=reduction, normalize=normalize
        )
        self.fn_cost = fn_cost
        self.positive_class = positive_class

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        if logits.dim() >= 2 and logits.shape[1] != 2:
            raise ValueError(
                f"{self._label()} is for binary tasks: the logits must have C=2 classes "
                f"(N, 2, ...), got shape {tuple(logits.shape)}; use 'cost_sensitive' for C > 2."
            )
        super().check_inputs(logits, labels)

    def extra_repr(self) -> str:
        return (
            f"fn_cost={self.fn_cost:g}, positive_class={self.positive_class}, cost_weight={self.cost_weight:g}, "
            f"{LossBase.extra_repr(self)}"
        )


def expected_cost(probs_or_preds: Any, labels: Any, cost_matrix: Any, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean misclassification cost, a metric: ``cost_matrix[y][pred]`` or ``sum_j p_j cost_matrix[y][j]``.

    ``probs_or_preds`` is either integer predictions shaped like ``labels`` (hard decisions) or class
    probabilities ``(N, C, d1, ...)`` whose rows sum to 1 (the expected cost of the soft prediction).
    Accepts tensors, numpy arrays or lists; entries whose label is ``ignore_index`` are skipped; an empty
    or all-ignored set gives 0.0.
    """
    owner = "expected_cost"
    matrix = as_cost_matrix(owner, cost_matrix).to(torch.float64)
    predictions = torch.as_tensor(probs_or_preds)
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{owner}: `labels` must be integer class indices, got dtype {labels.dtype}.")
    num_classes = matrix.shape[0]
    valid = labels != ignore_index
    if (((labels < 0) | (labels >= num_classes)) & valid).any():
        raise ValueError(f"{owner}: `labels` must be in [0, {num_classes}) or ignore_index={ignore_index}.")
    truth = labels.masked_fill(~valid, 0).long()
    if predictions.is_floating_point():
        expected_shape = (labels.shape[0], num_classes) + tuple(labels.shape[1:]) if labels.dim() else None
        if tuple(predictions.shape) != expected_shape:
            raise ValueError(
                f"{owner}: probabilities must have shape {expected_shape} (N, C, d1, ...) for labels "
                f"{tuple(labels.shape)} and a {num_classes} x {num_classes} cost matrix, got "
                f"{tuple(predictions.shape)}."
            )
        probs = predictions.to(torch.float64)
        sums = probs.sum(dim=1)
        if (probs < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise ValueError(
                f"{owner}: float predictions must be probabilities summing to 1 over dim 1; "
                f"apply softmax to logits, or pass argmax predictions."
            )
        costs = (probs * matrix[truth].movedim(-1, 1)).sum(dim=1)
    else:
        if tuple(predictions.shape) != tuple(labels.shape):
            raise ValueError(
                f"{owner}: predictions shape {tuple(predictions.shape)} must equal labels shape {tuple(labels.shape)}."
            )
        if ((predictions < 0) | (predictions >= num_classes)).any():
            raise ValueError(f"{owner}: predictions must be class indices in [0, {num_classes}).")
        costs = matrix[truth, predictions.long()]
    count = int(valid.sum())
    return float(costs[valid].sum() / count) if count else 0.0
