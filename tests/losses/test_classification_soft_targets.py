"""cross_entropy and focal on class probabilities (mixup, cutmix, a teacher's distribution): against PyTorch's
F.cross_entropy with probability targets (class weights, label smoothing, every reduction), the focal formula
written out as plain loops, the hard-label losses on one-hot rows, and the loss contract (gradients, micro-batches,
precision, errors)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_losses import describe_loss, get_loss

WEIGHT = [0.5, 2.0, 1.25, 4.0]


def make_batch(shape=(6,), c=4, seed=0, dtype=torch.float32, sharpness=2.0):
    generator = torch.Generator().manual_seed(seed)
    n, spatial = shape[0], tuple(shape[1:])
    logits = torch.randn((n, c) + spatial, generator=generator, dtype=torch.float64) * 2
    probabilities = torch.softmax(
        torch.randn((n, c) + spatial, generator=generator, dtype=torch.float64) * sharpness, 1
    )
    return logits.to(dtype), probabilities.to(dtype)


def loop_soft_focal(logits, targets, gamma, alpha=None, smoothing=0.0):
    """-sum_c alpha_c y'_c (1 - p_c)^gamma log p_c per row of (N, C) inputs, y' = y (1 - e) + e / C, as a list."""
    rows = []
    for row, target in zip(logits.tolist(), targets.tolist()):
        norm = math.log(sum(math.exp(v) for v in row))
        total = 0.0
        for c, (z, y) in enumerate(zip(row, target)):
            log_p = z - norm
            smoothed = y * (1 - smoothing) + smoothing / len(row)
            total += -(1.0 if alpha is None else alpha[c]) * smoothed * (1 - math.exp(log_p)) ** gamma * log_p
        rows.append(total)
    return rows


# ------------------------------------------------------------------------------------------------ cross_entropy
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weight", [None, WEIGHT])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.7])
@pytest.mark.parametrize("shape", [(6,), (3, 2, 5)])
def test_cross_entropy_equals_torch_with_probability_targets(shape, label_smoothing, weight, reduction):
    logits, probabilities = make_batch(shape, dtype=torch.float64)
    loss = get_loss("cross_entropy", weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    expected = F.cross_entropy(
        logits,
        probabilities,
        weight=None if weight is None else torch.tensor(weight, dtype=torch.float64),
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    value = loss(logits, probabilities)
    assert value.dtype == torch.float64 and value.shape == expected.shape
    # torch's mean with probability targets divides by the number of rows, as the item count does
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_cross_entropy_on_probabilities_equals_the_plain_loop_formula():
    logits, probabilities = make_batch()
    expected = loop_soft_focal(logits, probabilities, 0.0, WEIGHT, 0.2)
    value = get_loss("cross_entropy", weight=WEIGHT, label_smoothing=0.2, reduction="none")(logits, probabilities)
    torch.testing.assert_close(value, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_one_hot_probabilities_equal_class_indices():
    logits, _ = make_batch()
    labels = torch.tensor([0, 3, 1, 2, 2, 0])
    one_hot = F.one_hot(labels, 4).float()
    for kwargs in ({}, {"weight": WEIGHT}, {"label_smoothing": 0.3}, {"weight": WEIGHT, "label_smoothing": 0.1}):
        loss = get_loss("cross_entropy", **kwargs)
        torch.testing.assert_close(loss(logits, one_hot), loss(logits, labels))


def test_mixup_target_gives_the_mixup_criterion():
    """Zhang et al. 2018: CE of lam * onehot(a) + (1 - lam) * onehot(b) = lam CE(a) + (1 - lam) CE(b)."""
    logits, _ = make_batch()
    first, second, lam = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 3, 0, 1, 2, 2]), 0.7
    mixed = lam * F.one_hot(first, 4).float() + (1 - lam) * F.one_hot(second, 4).float()
    loss = get_loss("cross_entropy")
    expected = lam * F.cross_entropy(logits, first) + (1 - lam) * F.cross_entropy(logits, second)
    torch.testing.assert_close(loss(logits, mixed), expected)


# ------------------------------------------------------------------------------------------------ focal
@pytest.mark.parametrize("alpha", [None, WEIGHT, 0.25])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_focal_with_gamma_zero_on_probabilities_is_torch_weighted_cross_entropy(alpha, label_smoothing):
    logits, probabilities = make_batch(shape=(4, 3))
    weight = (
        torch.tensor(alpha) if isinstance(alpha, list) else {None: None, 0.25: torch.tensor([0.75] + [0.25] * 3)}[alpha]
    )
    loss = get_loss("focal", gamma=0.0, alpha=alpha, label_smoothing=label_smoothing, reduction="none")
    expected = F.cross_entropy(logits, probabilities, weight=weight, label_smoothing=label_smoothing, reduction="none")
    torch.testing.assert_close(loss(logits, probabilities), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gamma,alpha,smoothing", [(2.0, None, 0.0), (0.5, WEIGHT, 0.0), (3.0, WEIGHT, 0.15)])
def test_focal_on_probabilities_equals_the_plain_loop_formula(gamma, alpha, smoothing):
    logits, probabilities = make_batch(sharpness=0.5)
    value = get_loss("focal", gamma=gamma, alpha=alpha, label_smoothing=smoothing)(logits, probabilities)
    expected = sum(loop_soft_focal(logits, probabilities, gamma, alpha, smoothing)) / logits.shape[0]
    assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"gamma": 2.0}, {"gamma": 0.5, "alpha": WEIGHT}, {"gamma": 1.0, "alpha": 0.25}])
def test_focal_on_one_hot_probabilities_equals_class_indices(kwargs):
    logits, _ = make_batch(shape=(6, 3))
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 4, (6, 3), generator=generator)
    one_hot = F.one_hot(labels, 4).movedim(-1, 1).float()
    loss = get_loss("focal", **kwargs)
    torch.testing.assert_close(loss(logits, one_hot), loss(logits, labels))
    torch.testing.assert_close(loss.item_weights(one_hot), loss.item_weights(labels))


@pytest.mark.parametrize("alpha", [None, WEIGHT])
def test_focal_label_smoothing_on_class_indices_at_gamma_zero_is_torch_smoothed_cross_entropy(alpha):
    logits, _ = make_batch(shape=(6, 3))
    labels = torch.randint(0, 4, (6, 3), generator=torch.Generator().manual_seed(6))
    labels[0, 0] = labels[4, 2] = -100
    weight = None if alpha is None else torch.tensor(alpha)
    expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=0.3, reduction="sum") / 16
    value = get_loss("focal", gamma=0.0, alpha=alpha, label_smoothing=0.3)(logits, labels)
    torch.testing.assert_close(value, expected)


def test_focal_label_smoothing_at_gamma_two_equals_the_loop_formula_on_smoothed_one_hot_rows():
    logits, _ = make_batch()
    labels = torch.tensor([0, 3, 1, -100, 2, 0])
    valid = labels != -100
    one_hot = F.one_hot(labels[valid], 4).float()
    expected = sum(loop_soft_focal(logits[valid], one_hot, 2.0, WEIGHT, 0.1)) / valid.sum().item()
    value = get_loss("focal", gamma=2.0, alpha=WEIGHT, label_smoothing=0.1)(logits, labels)
    assert value.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------ contract
SOFT_CASES = {
    "cross_entropy": ("cross_entropy", {}),
    "cross_entropy-weighted-smoothed": ("cross_entropy", {"weight": WEIGHT, "label_smoothing": 0.1}),
    "focal": ("focal", {"gamma": 2.0}),
    "focal-alpha-smoothed": ("focal", {"gamma": 0.5, "alpha": WEIGHT, "label_smoothing": 0.2}),
}


@pytest.mark.parametrize("case", SOFT_CASES)
def test_gradcheck_in_float64(case):
    name, kwargs = SOFT_CASES[case]
    logits, probabilities = make_batch(shape=(3, 2), dtype=torch.float64)
    loss = get_loss(name, **kwargs)
    assert torch.autograd.gradcheck(lambda x: loss(x, probabilities), (logits.requires_grad_(),), atol=1e-6)


@pytest.mark.parametrize("case", SOFT_CASES)
def test_one_item_per_row_and_micro_batches_add_up(case):
    name, kwargs = SOFT_CASES[case]
    logits, probabilities = make_batch(shape=(8, 3))
    loss = get_loss(name, **kwargs)
    assert loss.num_items(probabilities) == {"label": 24}
    whole_input = logits.clone().requires_grad_()
    whole = loss(whole_input, probabilities)
    whole.backward()
    parts_input = logits.clone().requires_grad_()
    total = sum(
        loss(x, y, num_items_in_batch=loss.num_items(probabilities))
        for x, y in zip(parts_input.split([3, 1, 4]), probabilities.split([3, 1, 4]))
    )
    total.backward()
    torch.testing.assert_close(total, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(parts_input.grad, whole_input.grad, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", SOFT_CASES)
def test_half_precision_logits_and_targets_compute_in_float32(case, dtype):
    name, kwargs = SOFT_CASES[case]
    logits, probabilities = make_batch(shape=(8,))
    loss = get_loss(name, **kwargs)
    half_logits = (logits * 40).to(dtype).requires_grad_()
    half_targets = probabilities.to(dtype)
    value = loss(half_logits, half_targets)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(half_logits.grad).all()
    torch.testing.assert_close(value, loss(half_logits.detach().float(), half_targets.float()), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", SOFT_CASES)
def test_spatial_probabilities_equal_the_same_rows_flattened(case):
    name, kwargs = SOFT_CASES[case]
    logits, probabilities = make_batch(shape=(2, 3, 4))
    loss = get_loss(name, **kwargs)
    flat = [t.movedim(1, -1).reshape(-1, 4) for t in (logits, probabilities)]
    torch.testing.assert_close(loss(logits, probabilities), loss(*flat), atol=1e-6, rtol=1e-6)


def test_label_kind_stays_index_for_the_trainer():
    assert describe_loss("cross_entropy").label_kind == "index" and describe_loss("focal").label_kind == "index"


BAD_PROBABILITIES = [
    (
        "cross_entropy",
        torch.zeros(4),
        TypeError,
        r"loss 'cross_entropy': `labels` must hold integer class indices \(torch.long\) shaped \(4,\), or class "
        r"probabilities shaped like the logits \(4, 3\); got dtype torch.float32 and shape \(4,\)",
    ),
    (
        "focal",
        torch.tensor([[0.5, 0.5, 0.0]] * 3 + [[1.5, -0.5, 0.0]]),
        ValueError,
        r"loss 'focal': class-probability `labels` must be finite and >= 0 .*found -0.5",
    ),
    (
        "cross_entropy",
        torch.tensor([[0.5, 0.5, 0.0]] * 3 + [[-100.0] * 3]),
        ValueError,
        r"no ignore_index: give it sample_weight 0 instead\), found -100",
    ),
    (
        "cross_entropy",
        torch.tensor([[0.5, 0.5, 0.0]] * 3 + [[float("nan"), 0.0, 1.0]]),
        ValueError,
        r"loss 'cross_entropy': class-probability `labels` must be finite .*found nan",
    ),
]


@pytest.mark.parametrize("name,labels,error,message", BAD_PROBABILITIES)
def test_bad_probabilities_are_refused_naming_the_loss(name, labels, error, message):
    with pytest.raises(error, match=message):
        get_loss(name)(torch.randn(4, 3), labels)


def test_one_class_and_wrong_class_count_are_refused():
    with pytest.raises(ValueError, match=r"loss 'cross_entropy': `logits` must score C >= 2 classes"):
        get_loss("cross_entropy")(torch.randn(4, 1), torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"loss 'focal': `alpha` has 4 entries but the logits have C=3"):
        get_loss("focal", alpha=WEIGHT)(torch.randn(4, 3), torch.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"loss 'cross_entropy': `labels` is on device meta but `logits` on cpu"):
        get_loss("cross_entropy")(torch.randn(4, 3), torch.full((4, 3), 1 / 3, device="meta"))
