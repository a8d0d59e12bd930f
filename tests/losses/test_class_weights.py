"""Class weights from counts (balanced, effective number) against hand-computed values, the formula of Cui et al.
written out, and scikit-learn's ``compute_class_weight("balanced")``."""

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from hf_losses import get_loss
from hf_losses.losses.class_weights import (
    WEIGHT_METHODS,
    balanced_weights,
    effective_number_weights,
    weights_from_counts,
)

HAND_CASES = [
    # (method, counts, beta, expected)
    # balanced: n / (C n_c), n = 60, C = 3
    ("balanced", [50, 7, 3], None, [60 / 150, 60 / 21, 60 / 9]),
    # an empty class gets 0; n = 8, C = 3
    ("balanced", [6, 0, 2], None, [8 / 18, 0.0, 8 / 6]),
    # beta = 1/2: (1 - beta) / (1 - beta^n) = 1 for n = 1 and 2/3 for n = 2; normalised to sum C = 2
    ("effective_num", [1, 2], 0.5, [1.2, 0.8]),
    # an empty class gets the largest weight of the present ones: (1, 1, 2/3) * 3 / (8/3)
    ("effective_num", [1, 0, 2], 0.5, [9 / 8, 9 / 8, 3 / 4]),
    # beta = 0: equal weights, empty classes included
    ("effective_num", [5, 0, 1], 0.0, [1.0, 1.0, 1.0]),
]


@pytest.mark.parametrize("method,counts,beta,expected", HAND_CASES)
def test_hand_computed_weights(method, counts, beta, expected):
    kwargs = {} if beta is None else {"beta": beta}
    weights = weights_from_counts(counts, method, **kwargs)
    assert isinstance(weights, list) and all(type(w) is float for w in weights)
    assert weights == pytest.approx(expected, rel=1e-15, abs=1e-15)
    tensor = balanced_weights(counts) if method == "balanced" else effective_number_weights(counts, beta)
    assert tensor.dtype == torch.float64 and tensor.tolist() == weights


@pytest.mark.parametrize("labels", [[0] * 50 + [1] * 7 + [2] * 3, [0, 1, 1, 2, 2, 2, 3], [4, 4, 0, 1, 2, 3]])
def test_balanced_equals_scikit_learn(labels):
    labels = np.array(labels)
    classes = np.arange(labels.max() + 1)
    expected = compute_class_weight("balanced", classes=classes, y=labels)
    np.testing.assert_allclose(weights_from_counts(np.bincount(labels), "balanced"), expected, rtol=1e-15)
    np.testing.assert_allclose(balanced_weights(torch.tensor(np.bincount(labels))).numpy(), expected, rtol=1e-15)


@pytest.mark.parametrize("counts,beta", [([1000, 100, 10], 0.99), ([3, 0, 7, 1], 0.9), ([5, 5], 0.9999)])
def test_effective_number_follows_cui_et_al(counts, beta):
    raw = [(1 - beta) / (1 - beta**n) if n else None for n in counts]  # eq. 4: 1 / E_n
    largest = max(w for w in raw if w is not None)
    raw = [largest if w is None else w for w in raw]
    expected = [w / sum(raw) * len(counts) for w in raw]  # normalised to sum to C
    weights = weights_from_counts(counts, "effective_num", beta)
    assert weights == pytest.approx(expected, rel=1e-12)
    assert math.fsum(weights) == pytest.approx(len(counts), rel=1e-15)


def test_effective_number_tends_to_inverse_frequency_as_beta_tends_to_one():
    weights = effective_number_weights(torch.tensor([10.0, 1000.0]), 1 - 1e-9)
    assert (weights[0] / weights[1]).item() == pytest.approx(100.0, rel=1e-3)


def test_class_balanced_loss_uses_these_weights_in_float32():
    samples = [500, 50, 20, 2]
    loss = get_loss("class_balanced", samples_per_class=samples, beta=0.99)
    assert loss.weight.dtype == torch.float32
    assert torch.equal(loss.weight, effective_number_weights(torch.tensor(samples, dtype=torch.float32), 0.99).float())


BAD_CALLS = [
    (([0, 0, 0], "balanced"), "the training labels contain no countable class"),
    (([], "effective_num"), "the training labels contain no countable class"),
    (([3, 1], "effective_num", 1.0), r"`class_weights_beta` must be in \[0, 1\), got 1.0"),
    (([3, 1], "effective_num", -0.1), r"`class_weights_beta` must be in \[0, 1\), got -0.1"),
    (([3, 1], "inverse"), r"unknown method 'inverse'; use one of \['balanced', 'effective_num'\] or numbers"),
]


@pytest.mark.parametrize("arguments,message", BAD_CALLS)
def test_bad_calls_raise_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=r"class weights: " + message):
        weights_from_counts(*arguments)


def test_methods():
    assert WEIGHT_METHODS == ("balanced", "effective_num")
