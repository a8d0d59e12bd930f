"""The gradient-equality matrix: every decomposable registered loss x every task it applies to (+ the model's own
loss, ``auto``), shared by the single-process test and the 2-process worker.

A loss with required parameters needs an entry in ``LOSS_KWARGS``; ``test_every_decomposable_loss_is_covered``
fails for a newly registered loss without one. ``TASK_LIMITS`` narrows the tasks of losses that only make sense
for some (the default is every task of the loss's label kind).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tiny_tasks import BINARY_TASKS, INDEX_TASKS, NUM_LABELS, VOCAB_SIZE

from hf_losses import describe_loss, list_losses

#: parameters for losses with required ones (or whose defaults do not fit the tiny tasks), as functions of the
#: number of classes C (3, or the vocabulary for causal_lm)
LOSS_KWARGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "class_balanced": lambda c: {"samples_per_class": [c + 2 - i for i in range(c)]},
    "ldam": lambda c: {"samples_per_class": [c + 2 - i for i in range(c)]},
    "cost_sensitive": lambda c: {"cost_matrix": [[abs(i - j) * (1.0 + i) for j in range(c)] for i in range(c)]},
    "composite": lambda c: {
        "components": {"cross_entropy": {}, "focal": {"gamma": 2.0}},
        "weights": {"cross_entropy": 0.5, "focal": 0.5},
    },
    "relevance_diversity": lambda c: {
        "top_k": 2,
        "diversity_weight": 0.3,
        "popularity_weight": 0.1,
        "item_popularity": [float(c - i) for i in range(c)],
        "item_embeddings": [[((i * 7 + j * 3) % 5 - 2) / 2.0 for j in range(4)] for i in range(c)],
    },
}
#: losses for two classes only
BINARY_CLASS_LOSSES = ("fn_penalty", "lovasz_hinge")
#: tasks a loss is restricted to
TASK_LIMITS: dict[str, tuple[str, ...]] = {
    # scores over a catalogue (N, num_items): 2-D logits only
    "relevance_diversity": ("sequence_classification", "token_classification", "causal_lm"),
    # works from hidden states and the LM head
    "causal_lm": ("causal_lm",),
    # segmentation losses measure overlap of label maps: refused on tasks without spatial labels
    **{
        name: ("semantic_segmentation",)
        for name in ("dice", "generalized_dice", "tversky", "focal_tversky", "lovasz", "mcc", "lovasz_hinge")
    },
    # two classes (a vocabulary of 2 makes no language model)
    "fn_penalty": ("sequence_classification", "token_classification", "semantic_segmentation"),
}
#: the model's own loss per task; float-label models (BCE, MSE) have no ignore index, so their data has none
AUTO_CASES = [("auto", task) for task in INDEX_TASKS + BINARY_TASKS]


#: losses that need a teacher model: their exactness is tested with one (test_distillation_exactness.py and
#: test_distillation_multiprocess.py)
TEACHER_LOSSES = ("distillation", "causal_lm_distillation")


def decomposable_losses() -> list[str]:
    return [name for name in list_losses() if describe_loss(name).decomposable and name not in TEACHER_LOSSES]


def tasks_for(name: str) -> tuple[str, ...]:
    if name in TASK_LIMITS:
        return TASK_LIMITS[name]
    return INDEX_TASKS if describe_loss(name).label_kind == "index" else BINARY_TASKS  # float labels: both kinds


def cases() -> list[tuple[str, str]]:
    """``(loss_type, task)`` pairs of the matrix, model's own loss first."""
    return AUTO_CASES + [(name, task) for name in decomposable_losses() for task in tasks_for(name)]


def num_classes(task: str, loss_type: str = "auto") -> int:
    if task == "causal_lm":
        return VOCAB_SIZE
    return 2 if loss_type in BINARY_CLASS_LOSSES else NUM_LABELS


def kwargs_for(name: str, task: str) -> dict[str, Any]:
    return LOSS_KWARGS[name](num_classes(task, name)) if name in LOSS_KWARGS else {}


def ignored_labels(loss_type: str, task: str) -> bool:
    """Ignored entries in the data, except for the model's own BCE/MSE (which cannot ignore any)."""
    return not (loss_type == "auto" and task in BINARY_TASKS)


def reference_loss(loss_type: str, task: str) -> Any:
    """The loss the plain-PyTorch reference computes: the same loss, except hidden-state losses (``causal_lm``),
    whose reference is cross-entropy on the materialised logits (the same quantity)."""
    from hf_losses import get_loss
    from hf_losses.losses.base import HiddenStatesLoss

    if loss_type == "auto":
        return None
    loss = get_loss(loss_type, **kwargs_for(loss_type, task))
    return get_loss("cross_entropy") if isinstance(loss, HiddenStatesLoss) else loss
