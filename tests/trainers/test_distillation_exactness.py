"""Distillation is exact like every other loss: one optimizer step's gradient of the student is the gradient of the
mean over the step's items, whether its 8 samples come as batch 8 x GA 1 or batch 2 x GA 4, and the last, shorter
window of an epoch (10 samples, batch 2, GA 4 -> windows of 8 and 2) is the mean over its own 2 samples -- for
``distillation`` (a tiny BERT classifier taught by a wider, deeper BERT) and ``causal_lm_distillation`` (a GPT-2
student taught by a wider, deeper Llama sharing its vocabulary). The reference is plain PyTorch (no Trainer). The
2-process and DeepSpeed half is in ``tests/distributed/test_distillation_multiprocess.py``.
"""

from __future__ import annotations

import pytest
from distillation_models import CASES, LOSS_KWARGS, TOLERANCE, reference_gradient, student_and_teacher
from tiny_tasks import GradientCapture, build_dataset, relative_error, training_arguments

from hf_losses import LossTrainer


def _gradients(loss_type: str, num_samples: int, batch_size: int, accumulation: int, output_dir: str) -> list:
    """The student's gradient before every optimizer step of one epoch over the first ``num_samples`` examples."""
    task = CASES[loss_type][0]
    student, teacher = student_and_teacher(loss_type)
    args = training_arguments(
        output_dir, batch_size, accumulation, loss_type=loss_type, loss_kwargs=LOSS_KWARGS[loss_type], loss_task=task
    )
    capture = GradientCapture()
    trainer = LossTrainer(
        model=student,
        args=args,
        train_dataset=build_dataset(task, num_samples),
        callbacks=[capture],
        teacher_model=teacher,
    )
    trainer.train()
    return capture.gradients


@pytest.mark.parametrize("loss_type", sorted(CASES))
def test_gradient_equal_across_accumulation_and_last_window(loss_type, tmp_path):
    full, tail = reference_gradient(loss_type, 0, 8), reference_gradient(loss_type, 8, 10)
    one_batch = _gradients(loss_type, 8, 8, 1, str(tmp_path / "a"))
    accumulated = _gradients(loss_type, 10, 2, 4, str(tmp_path / "b"))
    assert len(one_batch) == 1 and len(accumulated) == 2
    assert relative_error(one_batch[0], full) <= TOLERANCE, "batch 8 x GA 1"
    assert relative_error(accumulated[0], full) <= TOLERANCE, "batch 2 x GA 4"
    assert relative_error(accumulated[1], tail) <= TOLERANCE, "last incomplete window (1 batch of 2)"
