"""cross_entropy, focal, class_balanced, ldam, poly1 against hand-computed values, PyTorch, MONAI and the
papers' formulas written out as plain loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_losses import get_loss
from hf_losses.losses.classification import ldam_margins

LN2 = math.log(2.0)


def make_batch(n=7, c=4, seed=0, ignore=(2,)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator) * 2
    labels = torch.randint(0, c, (n,), generator=generator)
    for i in ignore:
        labels[i] = -100
    return logits, labels


# ------------------------------------------------------------------------------------------------ references
def loop_focal(logits, labels, gamma, alpha=None):
    """Lin et al. 2017 eq. 5 with softmax p, one sample at a time; alpha a per-class list or None."""
    total, count = 0.0, 0
    for row, y in zip(logits.tolist(), labels.tolist()):
        if y == -100:
            continue
        exps = [math.exp(v) for v in row]
        p = exps[y] / sum(exps)
        a = 1.0 if alpha is None else alpha[y]
        total += -a * (1 - p) ** gamma * math.log(p)
        count += 1
    return total / count


def loop_ldam(logits, labels, samples, max_margin, scale, weight=None):
    """Cao et al. 2019 (eq. 13 and their LDAMLoss): CE of s * (z - Delta_y e_y), Delta_j = K / n_j^(1/4)."""
    raw = [n**-0.25 for n in samples]
    margins = [m * max_margin / max(raw) for m in raw]
    total, count = 0.0, 0
    for row, y in zip(logits.tolist(), labels.tolist()):
        if y == -100:
            continue
        shifted = [scale * (v - (margins[y] if j == y else 0.0)) for j, v in enumerate(row)]
        log_norm = math.log(sum(math.exp(v) for v in shifted))
        total += (1.0 if weight is None else weight[y]) * (log_norm - shifted[y])
        count += 1
    return total / count


def loop_poly1(logits, labels, epsilon):
    """Leng et al. 2022 eq. 3: -log p_y + epsilon (1 - p_y)."""
    total, count = 0.0, 0
    for row, y in zip(logits.tolist(), labels.tolist()):
        if y == -100:
            continue
        exps = [math.exp(v) for v in row]
        p = exps[y] / sum(exps)
        total += -math.log(p) + epsilon * (1 - p)
        count += 1
    return total / count


# ------------------------------------------------------------------------------------------------ cross_entropy
def test_cross_entropy_equals_torch_with_label_smoothing_and_ignored_labels():
    logits, labels = make_batch()
    expected = F.cross_entropy(logits, labels, label_smoothing=0.2)
    torch.testing.assert_close(get_loss("cross_entropy", label_smoothing=0.2)(logits, labels), expected)


def test_weighted_cross_entropy_is_torch_weighted_mean_times_weight_sum_over_count():
    logits, labels = make_batch()
    weight = torch.tensor([0.5, 2.0, 1.0, 4.0])
    valid = labels != -100
    torch_weighted_mean = F.cross_entropy(logits, labels, weight=weight)
    expected = torch_weighted_mean * weight[labels[valid]].sum() / valid.sum()
    torch.testing.assert_close(get_loss("cross_entropy", weight=weight.tolist())(logits, labels), expected)


def test_cross_entropy_on_spatial_logits_equals_torch():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 5, generator=generator)
    labels = torch.randint(0, 3, (2, 4, 5), generator=generator)
    labels[0, 0, :] = -100
    torch.testing.assert_close(get_loss("cross_entropy")(logits, labels), F.cross_entropy(logits, labels))


# ------------------------------------------------------------------------------------------------ focal
@pytest.mark.parametrize(
    "kwargs,label,expected",
    [
        # logits (0, 0): p_y = 1/2, so FL = alpha_y * (1/2)^gamma * ln 2
        ({"gamma": 2.0}, 0, 0.25 * LN2),
        ({"gamma": 0.0}, 1, LN2),
        ({"gamma": 1.0}, 1, 0.5 * LN2),
        ({"gamma": 2.0, "alpha": 0.25}, 0, 0.75 * 0.25 * LN2),  # scalar alpha: class 0 gets 1 - alpha
        ({"gamma": 2.0, "alpha": 0.25}, 1, 0.25 * 0.25 * LN2),  # every other class gets alpha
        ({"gamma": 2.0, "alpha": [3.0, 1.0]}, 0, 3.0 * 0.25 * LN2),
    ],
)
def test_focal_closed_form_at_even_odds(kwargs, label, expected):
    value = get_loss("focal", **kwargs)(torch.zeros(1, 2), torch.tensor([label]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.5, None), (3.0, [0.1, 0.2, 0.3, 0.4]), (1.0, [1, 2, 0, 5])])
def test_focal_equals_paper_formula_loop(gamma, alpha):
    logits, labels = make_batch()
    value = get_loss("focal", gamma=gamma, alpha=alpha)(logits, labels)
    assert value.item() == pytest.approx(loop_focal(logits, labels, gamma, alpha), rel=1e-5)


def test_focal_with_gamma_zero_is_class_weighted_cross_entropy_sum_over_count():
    logits, labels = make_batch()
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4])
    expected = F.cross_entropy(logits, labels, weight=alpha, reduction="sum") / (labels != -100).sum()
    torch.testing.assert_close(get_loss("focal", gamma=0.0, alpha=alpha)(logits, labels), expected)


def test_focal_down_weights_confident_correct_predictions_more_than_cross_entropy():
    logits = torch.tensor([[4.0, 0.0], [0.5, 0.0]])  # an easy and a hard sample, both of class 0
    labels = torch.tensor([0, 0])
    focal = get_loss("focal", gamma=2.0)
    ratio_easy = focal(logits[:1], labels[:1]) / F.cross_entropy(logits[:1], labels[:1])
    ratio_hard = focal(logits[1:], labels[1:]) / F.cross_entropy(logits[1:], labels[1:])
    assert ratio_easy < 0.001 < 0.1 < ratio_hard


def test_focal_equals_monai_softmax_focal_loss_summed_per_pixel():
    monai_losses = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 6, generator=generator) * 3
    labels = torch.randint(0, 3, (2, 5, 6), generator=generator)
    for alpha in (None, 0.3):
        monai = monai_losses.FocalLoss(gamma=2.0, alpha=alpha, use_softmax=True, to_onehot_y=True, reduction="none")
        expected = monai(logits, labels.unsqueeze(1)).sum() / labels.numel()
        torch.testing.assert_close(get_loss("focal", gamma=2.0, alpha=alpha)(logits, labels), expected)


def test_focal_gradient_is_finite_for_fractional_gamma_at_a_certain_prediction():
    logits = torch.tensor([[60.0, -60.0]], requires_grad=True)  # p_y == 1 exactly in float32
    loss = get_loss("focal", gamma=0.5)(logits, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------------ class_balanced
@pytest.mark.parametrize("base,gamma", [("ce", 2.0), ("focal", 2.0), ("focal", 0.5)])
def test_class_balanced_equals_cui_formula_loop(base, gamma):
    logits, labels = make_batch()
    samples, beta = [500, 50, 20, 2], 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in samples]
    weights = [w * len(samples) / sum(raw) for w in raw]
    expected = loop_focal(logits, labels, gamma if base == "focal" else 0.0, weights)
    value = get_loss("class_balanced", samples_per_class=samples, beta=beta, base=base, gamma=gamma)(logits, labels)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_class_balanced_with_beta_zero_is_plain_cross_entropy():
    logits, labels = make_batch()
    value = get_loss("class_balanced", samples_per_class=[500, 50, 20, 2], beta=0.0)(logits, labels)
    torch.testing.assert_close(value, F.cross_entropy(logits, labels))


# ------------------------------------------------------------------------------------------------ ldam
def test_ldam_margins_are_proportional_to_inverse_fourth_root_with_max_margin():
    margins = ldam_margins(torch.tensor([1.0, 16.0, 81.0]), 0.5)
    torch.testing.assert_close(margins, torch.tensor([0.5, 0.25, 0.5 / 3]))


@pytest.mark.parametrize("max_margin,scale,weight", [(0.5, 30.0, None), (1.0, 1.0, None), (0.3, 5.0, [1, 2, 3, 4])])
def test_ldam_equals_cao_formula_loop(max_margin, scale, weight):
    logits, labels = make_batch()
    logits = torch.tanh(logits)  # the paper's cosine logits
    samples = [400, 100, 30, 5]
    loss = get_loss("ldam", samples_per_class=samples, max_margin=max_margin, scale=scale, weight=weight)
    expected = loop_ldam(logits, labels, samples, max_margin, scale, weight)
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_ldam_with_zero_margin_is_scaled_cross_entropy():
    logits, labels = make_batch()
    value = get_loss("ldam", samples_per_class=[1, 2, 3, 4], max_margin=0.0, scale=2.0)(logits, labels)
    torch.testing.assert_close(value, F.cross_entropy(2.0 * logits, labels))


def test_ldam_penalises_rare_classes_more_at_equal_logits():
    loss = get_loss("ldam", samples_per_class=[1000, 10], scale=1.0)
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert loss(logits[1:], torch.tensor([1])) > loss(logits[:1], torch.tensor([0]))


# ------------------------------------------------------------------------------------------------ poly1
@pytest.mark.parametrize("epsilon", [-1.0, 0.0, 1.0, 2.0])
def test_poly1_equals_leng_formula_loop(epsilon):
    logits, labels = make_batch()
    value = get_loss("poly1", epsilon=epsilon)(logits, labels)
    assert value.item() == pytest.approx(loop_poly1(logits, labels, epsilon), rel=1e-5)


def test_poly1_closed_form_and_zero_epsilon_is_cross_entropy():
    assert get_loss("poly1", epsilon=2.0)(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(LN2 + 1.0)
    logits, labels = make_batch()
    torch.testing.assert_close(get_loss("poly1", epsilon=0.0)(logits, labels), F.cross_entropy(logits, labels))
