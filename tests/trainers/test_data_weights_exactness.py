"""Data weights (``sample_weight`` / ``token_weight`` columns) under gradient accumulation: one optimizer step's
gradient equals the plain-PyTorch weighted mean over the same 8 examples (torch's functional losses) for batch 8 x
GA 1 and batch 2 x GA 4 -- whose second micro-batch weighs 0 --, with normalize="count" and "weight", per-example,
per-token and class weights. The 2-process half is in ``tests/distributed/test_data_weights_multiprocess.py``."""

from __future__ import annotations

import pytest
from tiny_tasks import relative_error, trainer_gradients
from weighted_data import CASES, loss_kwargs, weight_columns, weighted_reference_gradient

TOLERANCE = 1e-5


@pytest.mark.parametrize(("loss_type", "task", "kinds", "normalize", "class_weights"), CASES)
def test_weighted_gradient_equal_across_accumulation(loss_type, task, kinds, normalize, class_weights, tmp_path):
    reference = weighted_reference_gradient(loss_type, task, kinds, normalize, class_weights, 0, 8)
    kwargs = loss_kwargs(loss_type, normalize, class_weights)
    columns = weight_columns(task, kinds, 8)
    one_batch, _ = trainer_gradients(task, loss_type, kwargs, 8, 8, 1, str(tmp_path / "a"), extra_columns=columns)
    accumulated, _ = trainer_gradients(task, loss_type, kwargs, 8, 2, 4, str(tmp_path / "b"), extra_columns=columns)
    assert len(one_batch) == 1 and len(accumulated) == 1
    error_one, error_accumulated = relative_error(one_batch[0], reference), relative_error(accumulated[0], reference)
    print(f"{loss_type}/{task}/{kinds}/{normalize}: 8x1 {error_one:.2e}, 2x4 {error_accumulated:.2e}")
    assert error_one <= TOLERANCE, "batch 8 x GA 1"
    assert error_accumulated <= TOLERANCE, "batch 2 x GA 4"
