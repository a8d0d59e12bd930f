"""``compute_loss_func(loss_type, **loss_kwargs)``: an hf-losses loss for the stock ``Trainer(compute_loss_func=...)``
(and TRL's trainers, which take the same argument), for users who do not want another Trainer class.

When it is exact. The stock Trainer calls ``compute_loss_func(outputs, labels, num_items_in_batch)`` with
``num_items_in_batch`` = the count of ``labels != -100`` over the whole accumulation window (``labels[..., 1:]`` for
a causal LM, or the collator's ``shift_labels``), summed across processes when ``average_tokens_across_devices``
(the default), and then neither divides the loss by the accumulation steps nor lets DDP's averaging shrink it. A
loss whose item is a label entry -- cross-entropy, focal, class-balanced, LDAM, Poly-1, cost-sensitive, BCE,
ASL, MSE... and sums of them -- divides its per-entry sum by exactly that count, so the gradient is the one of the
whole batch. Losses whose item is something else are refused with a pointer to ``LossTrainer``, which counts per
unit: per-image Dice/Tversky/Lovasz (their item is an image), whole-batch statistics (``per_image=False``,
``info_nce``), and hidden-state losses (``causal_lm``: the stock Trainer hands over logits).

``task="causal_lm"`` is refused too: the stock count covers the *shifted* labels only for models whose
``loss_type`` maps to ``ForCausalLMLoss`` (``Trainer._loss_shifts_labels``); for others -- GPT-2 in transformers
5.24, measured: 10 counted items for 5 predicted tokens -- every step's gradient would be scaled down by the
share of first positions and padding. ``LossTrainer`` counts the shifted labels itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from hf_losses.losses.base import HiddenStatesLoss
from hf_losses.registry import get_loss
from hf_losses.tasks import TASKS, Task, build_task


def compute_loss_func(loss_type: str, task: str = "auto", **loss_kwargs: Any) -> Callable[..., Tensor]:
    """A ``compute_loss_func`` for ``transformers.Trainer``: ``loss_type`` (a registered name or an expression) with
    ``loss_kwargs``, reading the model's logits as ``task`` says (``"auto"``: per-sample labels; pass
    ``task="token_classification"`` or ``"seq2seq_lm"`` for per-token labels)."""
    if task not in TASKS:
        raise ValueError(f"compute_loss_func: `task` must be one of {list(TASKS)}, got {task!r}.")
    if task == "causal_lm":
        raise ValueError(
            "compute_loss_func(task='causal_lm'): the stock Trainer counts unshifted labels for many "
            "causal LMs (GPT-2 among them), so the loss would not be exact; use hf_losses.LossTrainer "
            "(it counts the shifted labels over the accumulation window and processes)."
        )
    loss = get_loss(loss_type, **loss_kwargs)
    _refuse_inexact(loss, loss_type)
    reader: Task | None = None if task == "auto" else build_task(task, ignore_index=loss.ignore_index)

    def loss_function(outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        task_reader = reader or _per_sample_task(labels, loss)
        logits, targets = task_reader.read(outputs, {"labels": labels})
        if num_items_in_batch is not None and hasattr(num_items_in_batch, "reshape"):
            num_items_in_batch = num_items_in_batch.reshape(())
        return loss(logits, targets, num_items_in_batch=num_items_in_batch)

    loss_function.loss = loss  # for inspection (and the model card of a user's own code)
    return loss_function


def _refuse_inexact(loss: Any, loss_type: str) -> None:
    """Losses the stock Trainer's single ``labels != -100`` count cannot make exact."""
    parts = list(loss.losses.values()) if hasattr(loss, "losses") else [loss]
    for part in parts:
        name = getattr(part, "name", "") or type(part).__name__
        if isinstance(part, HiddenStatesLoss):
            reason = "works from hidden states and the LM head, and the stock Trainer hands over logits"
        elif not getattr(part, "decomposable", True):
            reason = "needs whole-batch statistics, which a per-micro-batch function cannot gather exactly"
        elif getattr(part, "item_unit", "label") != "label":
            reason = f"averages over {part.item_unit}s, but the stock Trainer counts label entries (labels != -100)"
        else:
            continue
        raise ValueError(
            f"compute_loss_func('{loss_type}'): loss '{name}' {reason}; use hf_losses.LossTrainer "
            f"(it counts every item unit over the accumulation window and processes)."
        )


def _per_sample_task(labels: Tensor, loss: Any) -> Task:
    """``task="auto"``: one label (or one row of targets) per sample; per-token labels need ``task=``."""
    if labels.is_floating_point():
        kind = "regression" if getattr(loss, "label_kind", "binary") == "target" else "multi_label"
        return build_task(kind, ignore_index=loss.ignore_index)
    if labels.dim() == 1:
        return build_task("sequence_classification", ignore_index=loss.ignore_index)
    raise ValueError(
        f"compute_loss_func: labels of shape {tuple(labels.shape)} are per token; say how to read "
        f"them: compute_loss_func(..., task='token_classification' | 'seq2seq_lm')."
    )
