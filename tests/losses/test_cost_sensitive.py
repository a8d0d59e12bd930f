"""cost_sensitive, fn_penalty and the expected_cost metric: hand-computed values, the formula as a loop, and
the effect on a real imbalanced diagnosis task (missed malignant tumours)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_losses import get_loss
from hf_losses.losses.cost_sensitive import expected_cost

COSTS = [[0.0, 1.0, 4.0], [2.0, 0.0, 1.0], [8.0, 3.0, 0.0]]


def make_batch(n=9, c=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator) * 2
    labels = torch.randint(0, c, (n,), generator=generator)
    labels[4] = -100
    return logits, labels


def loop_cost_sensitive(logits, labels, costs, cost_weight):
    """-log p_y + cost_weight * sum_j p_j cost[y][j], one sample at a time."""
    total, count = 0.0, 0
    for row, y in zip(logits.tolist(), labels.tolist()):
        if y == -100:
            continue
        exps = [math.exp(v) for v in row]
        probs = [e / sum(exps) for e in exps]
        total += -math.log(probs[y]) + cost_weight * sum(p * c for p, c in zip(probs, costs[y]))
        count += 1
    return total / count


@pytest.mark.parametrize("cost_weight", [0.0, 0.5, 2.0])
def test_cost_sensitive_equals_formula_loop(cost_weight):
    logits, labels = make_batch()
    value = get_loss("cost_sensitive", cost_matrix=COSTS, cost_weight=cost_weight)(logits, labels)
    assert value.item() == pytest.approx(loop_cost_sensitive(logits, labels, COSTS, cost_weight), rel=1e-5)


def test_cost_sensitive_with_zero_costs_is_cross_entropy_and_accepts_a_tensor_matrix():
    logits, labels = make_batch()
    value = get_loss("cost_sensitive", cost_matrix=torch.zeros(3, 3), cost_weight=3.0)(logits, labels)
    torch.testing.assert_close(value, F.cross_entropy(logits, labels))


def test_cost_sensitive_on_spatial_logits_equals_flattened_logits():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 5, generator=generator)
    labels = torch.randint(0, 3, (2, 4, 5), generator=generator)
    labels[1, 2, :] = -100
    loss = get_loss("cost_sensitive", cost_matrix=COSTS)
    flat = loss(logits.movedim(1, -1).reshape(-1, 3), labels.reshape(-1))
    torch.testing.assert_close(loss(logits, labels), flat)


@pytest.mark.parametrize(
    "positive_class,label,fn_cost,expected",
    [
        # logits (0, 0): p = (1/2, 1/2). A positive costs fn_cost when missed, a negative 1 when flagged.
        (1, 1, 10.0, math.log(2) + 0.5 * 10.0),
        (1, 0, 10.0, math.log(2) + 0.5 * 1.0),
        (0, 0, 4.0, math.log(2) + 0.5 * 4.0),
        (0, 1, 4.0, math.log(2) + 0.5 * 1.0),
    ],
)
def test_fn_penalty_closed_form_at_even_odds(positive_class, label, fn_cost, expected):
    loss = get_loss("fn_penalty", fn_cost=fn_cost, positive_class=positive_class)
    assert loss(torch.zeros(1, 2), torch.tensor([label])).item() == pytest.approx(expected, rel=1e-6)


def test_fn_penalty_is_cost_sensitive_with_the_two_by_two_matrix():
    logits, labels = make_batch(c=2)
    shortcut = get_loss("fn_penalty", fn_cost=7.0, positive_class=1, cost_weight=0.3)
    full = get_loss("cost_sensitive", cost_matrix=[[0, 1], [7, 0]], cost_weight=0.3)
    torch.testing.assert_close(shortcut(logits, labels), full(logits, labels))
    assert shortcut.cost_matrix.tolist() == [[0.0, 1.0], [7.0, 0.0]]


def test_fn_penalty_pushes_a_missed_positive_harder_than_a_false_alarm():
    logits = torch.zeros(2, 2, requires_grad=True)
    get_loss("fn_penalty", fn_cost=10.0)(logits, torch.tensor([1, 0])).backward()
    positive_push, negative_push = logits.grad[0].abs().sum(), logits.grad[1].abs().sum()
    assert positive_push.item() == pytest.approx(0.5 * (1 + 0.5 * 10.0), rel=1e-6)  # |d/dz| per logit, both logits
    assert negative_push.item() == pytest.approx(0.5 * (1 + 0.5 * 1.0), rel=1e-6)


def test_fn_penalty_raises_sensitivity_and_lowers_expected_cost_on_breast_cancer():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_breast_cancer()  # 569 patients; target 0 = malignant (the positive class here)
    features = torch.tensor(data.data, dtype=torch.float32)
    features = (features - features.mean(0)) / features.std(0)
    labels = torch.tensor(data.target)
    test_index = torch.arange(len(labels)) % 3 == 0
    costs = [[0.0, 20.0], [1.0, 0.0]]  # missing a malignant tumour costs 20 x an unneeded biopsy

    def train(loss):
        torch.manual_seed(0)
        model = torch.nn.Linear(30, 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        for _ in range(60):
            optimizer.zero_grad()
            loss(model(features[~test_index]), labels[~test_index]).backward()
            optimizer.step()
        with torch.no_grad():
            predictions = model(features[test_index]).argmax(1)
        truth = labels[test_index]
        sensitivity = ((predictions == 0) & (truth == 0)).sum() / (truth == 0).sum()
        return sensitivity.item(), expected_cost(predictions, truth, costs)

    # held-out third: CE misses 4 of 76 malignant tumours (sensitivity 0.947, cost 0.43), fn_penalty 3 (0.961, 0.34)
    plain_sensitivity, plain_cost = train(get_loss("cross_entropy"))
    penalty_sensitivity, penalty_cost = train(get_loss("fn_penalty", fn_cost=20.0, positive_class=0))
    assert penalty_sensitivity > plain_sensitivity
    assert penalty_cost < plain_cost


# ------------------------------------------------------------------------------------------------ expected_cost
def test_expected_cost_of_hard_predictions_by_hand():
    labels = torch.tensor([0, 1, 2, 2, -100])
    predictions = torch.tensor([0, 2, 0, 1, 1])
    # costs: C[0][0]=0, C[1][2]=1, C[2][0]=8, C[2][1]=3; the ignored entry is skipped
    assert expected_cost(predictions, labels, COSTS) == pytest.approx((0 + 1 + 8 + 3) / 4)


def test_expected_cost_of_probabilities_by_hand_and_from_numpy():
    probs = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    labels = np.array([0, 2])
    # 0.5*0 + 0.5*1 = 0.5 ; 0.2*8 + 0.3*3 + 0.5*0 = 2.5
    assert expected_cost(probs, labels, COSTS) == pytest.approx((0.5 + 2.5) / 2)


def test_expected_cost_of_all_ignored_labels_is_zero():
    assert expected_cost(torch.tensor([1, 2]), torch.tensor([-100, -100]), COSTS) == 0.0


@pytest.mark.parametrize(
    "predictions,labels,match",
    [
        (torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), "probabilities summing to 1"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0, 1]), r"probabilities must have shape \(2, 3\)"),
        (torch.tensor([0, 3]), torch.tensor([0, 1]), r"predictions must be class indices in \[0, 3\)"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), "predictions shape"),
        (torch.tensor([0, 1]), torch.tensor([0, 5]), r"`labels` must be in \[0, 3\)"),
    ],
)
def test_expected_cost_rejects_bad_input(predictions, labels, match):
    with pytest.raises(ValueError, match=match):
        expected_cost(predictions, labels, COSTS)
