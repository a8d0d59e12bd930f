"""One optimizer step's gradient is the gradient of the mean over the step's items, however the step's samples
are split: batch 8 x GA 1, batch 2 x GA 4, and the last incomplete window of an epoch (10 samples, batch 2,
GA 4 -> windows of 8 and 2 samples). Every decomposable registered loss x every task, plus the model's own loss.
The 2-process half of the matrix is in ``test_multiprocess_exactness.py``.
"""

from __future__ import annotations

import pytest
import torch
from exactness_cases import LOSS_KWARGS, TEACHER_LOSSES, cases, ignored_labels, kwargs_for, num_classes, reference_loss
from tiny_tasks import as_batch, reference_gradient, relative_error, trainer_gradients

from hf_losses import describe_loss, list_losses

TOLERANCE = 1e-5
CASES = cases()


def _first(examples: dict, start: int, stop: int) -> dict:
    return {key: value[start:stop] for key, value in examples.items()}


@pytest.mark.parametrize(("loss_type", "task"), CASES, ids=[f"{loss}-{task}" for loss, task in CASES])
def test_gradient_equal_across_accumulation_and_last_window(loss_type, task, tmp_path):
    ignored, classes = ignored_labels(loss_type, task), num_classes(task, loss_type)
    examples = as_batch(task, 10, ignored=ignored, num_labels=classes)
    full = reference_gradient(task, reference_loss(loss_type, task), _first(examples, 0, 8), num_labels=classes)
    tail = reference_gradient(task, reference_loss(loss_type, task), _first(examples, 8, 10), num_labels=classes)

    kwargs = kwargs_for(loss_type, task)
    one_batch, _ = trainer_gradients(
        task, loss_type, kwargs, 8, 8, 1, str(tmp_path / "a"), ignored=ignored, num_labels=classes
    )
    accumulated, _ = trainer_gradients(
        task, loss_type, kwargs, 10, 2, 4, str(tmp_path / "b"), ignored=ignored, num_labels=classes
    )
    assert len(one_batch) == 1 and len(accumulated) == 2
    assert relative_error(one_batch[0], full) <= TOLERANCE, "batch 8 x GA 1"
    assert relative_error(accumulated[0], full) <= TOLERANCE, "batch 2 x GA 4"
    assert relative_error(accumulated[1], tail) <= TOLERANCE, "last incomplete window (1 batch of 2)"


def test_every_decomposable_loss_with_required_parameters_is_covered():
    """A newly registered loss with required parameters must get an entry in exactness_cases.LOSS_KWARGS."""
    covered = {loss for loss, _ in CASES}
    for name in list_losses():
        description = describe_loss(name)
        if not description.decomposable:
            continue
        required = [p.name for p in description.parameters if p.required]
        assert not required or name in LOSS_KWARGS, f"add '{name}' (required: {required}) to LOSS_KWARGS"
        assert name in covered or name in TEACHER_LOSSES


def test_stock_trainer_gradient_is_sum_of_microbatch_means_for_bert(tmp_path):
    """Upstream bug, measured: BertForSequenceClassification accepts **kwargs, so transformers 5 trusts it to divide
    by num_items_in_batch, which it ignores -- the stock Trainer's gradient at GA 4 is the *sum* of the four
    micro-batch means (~4x); LossTrainer(loss_type="auto") gives the exact mean."""
    from transformers import Trainer

    task = "sequence_classification"
    examples = as_batch(task, 8, ignored=False)
    exact = reference_gradient(task, None, examples)
    summed = torch.zeros_like(exact)
    for start in range(0, 8, 2):
        summed += reference_gradient(task, None, _first(examples, start, start + 2))

    stock, _ = trainer_gradients(
        task, "auto", None, 8, 2, 4, str(tmp_path / "stock"), ignored=False, trainer_class=Trainer
    )
    ours, _ = trainer_gradients(task, "auto", None, 8, 2, 4, str(tmp_path / "ours"), ignored=False)
    import transformers

    ratio = float(stock[0].norm() / exact.norm())
    print(f"stock Trainer gradient norm / exact = {ratio:.2f}")
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert relative_error(stock[0], summed) <= TOLERANCE
        assert ratio > 2.5
    else:  # 4.x (minimum-versions job): BERT's forward takes no **kwargs, so the stock Trainer divides by GA
        assert relative_error(stock[0], exact) <= TOLERANCE
    assert relative_error(ours[0], exact) <= TOLERANCE


def test_tutorial_compute_loss_pattern_is_wrong_under_accumulation(tmp_path):
    """The pattern most tutorials teach -- a Trainer subclass whose compute_loss returns F.cross_entropy(...) --
    is a per-micro-batch mean; with ignored labels (uneven micro-batches) its GA gradient is not the full-batch one
    (the stock Trainer divides by GA, but a micro-batch with 1 label weighs as much as one with 2)."""
    import torch.nn.functional as F
    from transformers import Trainer

    class TutorialTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = F.cross_entropy(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss

    task = "sequence_classification"
    exact = reference_gradient(task, None, as_batch(task, 8))
    tutorial, _ = trainer_gradients(task, "auto", None, 8, 2, 4, str(tmp_path / "t"), trainer_class=TutorialTrainer)
    ours, _ = trainer_gradients(task, "cross_entropy", None, 8, 2, 4, str(tmp_path / "o"))
    assert relative_error(tutorial[0], exact) > 1e-2
    assert relative_error(ours[0], exact) <= TOLERANCE


def test_all_ignored_microbatch_contributes_zero_and_no_nan(tmp_path):
    """A micro-batch whose labels are all ignored adds nothing (the model's own CE would be NaN there)."""
    task = "sequence_classification"
    for loss_type in ("auto", "cross_entropy"):
        grads, _ = trainer_gradients(task, loss_type, None, 8, 1, 8, str(tmp_path / loss_type))  # sample 3 ignored
        exact = reference_gradient(task, reference_loss(loss_type, task), as_batch(task, 8))
        assert torch.isfinite(grads[0]).all()
        assert relative_error(grads[0], exact) <= TOLERANCE
