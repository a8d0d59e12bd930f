"""Options of the multi-label losses: per-class alpha of sigmoid_focal (torchvision's formula, one class at a time),
element weights and label smoothing of bce (torch's BCEWithLogitsLoss(weight=...), Keras' smoothing), label
smoothing of asl (timm's AsymmetricLossMultiLabel formula on smoothed targets). torchvision and timm are not
installable next to this torch: their formulas are written out here, line for line."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_losses import get_loss


def make_batch(shape=(6, 4), seed=0, ignore=False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 2
    targets = torch.rand(shape, generator=generator)
    targets = torch.where(targets < 0.6, (targets < 0.25).float(), targets)  # hard and soft targets
    if ignore:
        targets = targets.masked_fill(torch.rand(shape, generator=generator) < 0.2, -100.0)
    return logits, targets


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss (torchvision 0.2x), line for line."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


def timm_asymmetric_loss_multi_label(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8):
    """timm.loss.AsymmetricLossMultiLabel.forward: the *sum* over entries."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        one_sided_w = torch.pow(1 - pt, one_sided_gamma)
        loss *= one_sided_w
    return -loss.sum()


# ------------------------------------------------------------------------------------------------ sigmoid_focal
def per_class_torchvision(logits, targets, alphas, gamma):
    """torchvision's loss of each class column with that class's scalar alpha, reduction="none"."""
    columns = [
        torchvision_sigmoid_focal_loss(logits.select(1, c), targets.select(1, c), alpha, gamma)
        for c, alpha in enumerate(alphas)
    ]
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3, 5)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_per_class_alpha_equals_torchvision_one_class_at_a_time(shape, gamma):
    alphas = [0.1, 0.25, 0.6, 1.0]
    logits, targets = make_batch(shape)
    ours_input, reference_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = get_loss("sigmoid_focal", alpha=alphas, gamma=gamma)(ours_input, targets)
    expected = per_class_torchvision(reference_input, targets, alphas, gamma).mean()
    torch.testing.assert_close(ours, expected)
    ours.backward()  # the fused closed-form gradient
    expected.backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad)
    unreduced = get_loss("sigmoid_focal", alpha=alphas, gamma=gamma, reduction="none")(logits, targets)
    torch.testing.assert_close(unreduced, per_class_torchvision(logits, targets, alphas, gamma))


def test_per_class_alpha_with_ignored_entries_is_the_mean_over_the_others():
    alphas = [0.9, 0.25, 0.5, 0.0]
    logits, targets = make_batch(ignore=True)
    valid = targets != -100
    per_entry = per_class_torchvision(logits, targets.masked_fill(~valid, 0.0), alphas, 2.0)[valid]
    torch.testing.assert_close(get_loss("sigmoid_focal", alpha=alphas)(logits, targets), per_entry.mean())


def test_equal_per_class_alphas_equal_the_scalar_alpha():
    logits, targets = make_batch()
    torch.testing.assert_close(
        get_loss("sigmoid_focal", alpha=[0.3] * 4)(logits, targets),
        get_loss("sigmoid_focal", alpha=0.3)(logits, targets),
    )


def test_per_class_alpha_closed_form_at_even_odds():
    # p = 1/2: entry c costs alpha_t (1/2)^2 ln 2, alpha_t = alpha_c for a positive, 1 - alpha_c for a negative
    value = get_loss("sigmoid_focal", alpha=[0.1, 0.8])(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert value.item() == pytest.approx((0.1 + 0.2) * 0.25 * math.log(2) / 2, rel=1e-6)


@pytest.mark.parametrize(
    "alpha,inputs,error,message",
    [
        ([0.5, 1.5], None, ValueError, r"loss 'sigmoid_focal': every entry of `alpha` must be in \[0, 1\], got"),
        ([0.5, -0.1], None, ValueError, r"loss 'sigmoid_focal': every entry of `alpha` must be >= 0"),
        ([0.5, 0.5, 0.5], (torch.randn(3, 4), torch.zeros(3, 4)), ValueError, r"`alpha` has 3 entries .* C=4"),
    ],
)
def test_bad_per_class_alpha_is_refused_naming_the_loss(alpha, inputs, error, message):
    with pytest.raises(error, match=message):
        loss = get_loss("sigmoid_focal", alpha=alpha)
        loss(*inputs)


# ------------------------------------------------------------------------------------------------ bce
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize(
    "shape,weight,pos_weight",
    [
        ((6, 4), [0.5, 2.0, 0.0, 1.0], None),
        ((6, 4), [[2.0], [1.0], [0.5], [0.5], [1.0], [3.0]], [1.0, 4.0, 0.5, 2.0]),
        ((2, 4, 3, 5), [[[1.0]], [[2.0]], [[0.25]], [[4.0]]], None),
        ((2, 4, 3, 5), [0.5, 1.0, 1.5, 2.0, 2.5], None),  # along the last dimension, as torch broadcasts
    ],
)
def test_bce_element_weight_equals_torch_bce_with_logits_loss(shape, weight, pos_weight, reduction):
    logits, targets = make_batch(shape)
    weight_tensor = torch.tensor(weight)
    reference = torch.nn.BCEWithLogitsLoss(
        weight=weight_tensor,
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight),
        reduction=reduction,
    )
    loss = get_loss("bce", weight=weight, pos_weight=pos_weight, reduction=reduction)
    torch.testing.assert_close(loss(logits, targets), reference(logits, targets))


def test_bce_element_weight_with_ignored_entries_and_weighted_mean():
    logits, targets = make_batch(ignore=True)
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    valid = targets != -100
    entries = F.binary_cross_entropy_with_logits(
        logits, targets.masked_fill(~valid, 0.0), weight=weight, reduction="none"
    )
    torch.testing.assert_close(get_loss("bce", weight=weight)(logits, targets), entries[valid].sum() / valid.sum())
    weighted_mean = entries[valid].sum() / weight.expand_as(logits)[valid].sum()
    torch.testing.assert_close(get_loss("bce", weight=weight, normalize="weight")(logits, targets), weighted_mean)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5, 1.0])
def test_bce_label_smoothing_is_torch_bce_on_keras_smoothed_targets(label_smoothing):
    logits, targets = make_batch(ignore=True)
    valid = targets != -100
    smoothed = targets[valid] * (1 - label_smoothing) + label_smoothing / 2
    expected = F.binary_cross_entropy_with_logits(logits[valid], smoothed, pos_weight=torch.tensor(2.0))
    value = get_loss("bce", label_smoothing=label_smoothing, pos_weight=2.0)(logits, targets)
    torch.testing.assert_close(value, expected)


def test_bce_label_smoothing_closed_form():
    # p = sigmoid(ln 3) = 3/4; a positive smoothed by 0.2 is 0.9: -(0.9 ln 3/4 + 0.1 ln 1/4)
    value = get_loss("bce", label_smoothing=0.2)(torch.tensor([[math.log(3.0)]]), torch.tensor([[1.0]]))
    assert value.item() == pytest.approx(-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,inputs,error,message",
    [
        ({"weight": [1.0, 2.0, 3.0]}, (torch.randn(2, 4), torch.zeros(2, 4)), ValueError, r"`weight` of shape \(3,\) "),
        ({"weight": [1.0, -2.0]}, None, ValueError, r"loss 'bce': every entry of `weight` must be finite and >= 0"),
        ({"weight": [float("nan")]}, None, ValueError, r"loss 'bce': every entry of `weight` must be finite"),
        ({"weight": [0.0, 0.0]}, None, ValueError, r"loss 'bce': `weight` must have at least one entry > 0"),
        ({"weight": "heavy"}, None, TypeError, r"loss 'bce': (`weight` must be a tensor|parameter 'weight' must be)"),
        ({"label_smoothing": 1.5}, None, ValueError, r"loss 'bce': `label_smoothing` must be in \[0, 1\], got 1.5"),
    ],
)
def test_bad_bce_options_are_refused_naming_the_loss(kwargs, inputs, error, message):
    with pytest.raises(error, match=message):
        loss = get_loss("bce", **kwargs)
        loss(*inputs)


# ------------------------------------------------------------------------------------------------ asl
@pytest.mark.parametrize("label_smoothing", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 3.0, 0.0)])
def test_asl_label_smoothing_is_timm_multi_label_on_smoothed_targets(label_smoothing, gamma_pos, gamma_neg, clip):
    logits, targets = make_batch(ignore=True)
    valid = targets != -100
    smoothed = targets[valid] * (1 - label_smoothing) + label_smoothing / 2
    ours_input, reference_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value = get_loss("asl", gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, label_smoothing=label_smoothing)(
        ours_input, targets
    )
    expected = timm_asymmetric_loss_multi_label(reference_input[valid], smoothed, gamma_neg, gamma_pos, clip)
    expected = expected / valid.sum()
    torch.testing.assert_close(value, expected)
    value.backward()
    expected.backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad)


def test_asl_label_smoothing_closed_form_without_focusing():
    # gamma 0, clip 0: BCE of the smoothed target; at logit 0 (p = 1/2) every target costs ln 2
    loss = get_loss("asl", gamma_pos=0.0, gamma_neg=0.0, clip=0.0, label_smoothing=0.3)
    assert loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(2), rel=1e-6)
    logit = math.log(3.0)  # p = 3/4, a negative smoothed to 0.15
    expected = -(0.15 * math.log(0.75) + 0.85 * math.log(0.25))
    assert loss(torch.tensor([[logit]]), torch.tensor([[0.0]])).item() == pytest.approx(expected, rel=1e-6)


def test_asl_label_smoothing_is_validated():
    with pytest.raises(ValueError, match=r"loss 'asl': `label_smoothing` must be in \[0, 1\], got -0.1"):
        get_loss("asl", label_smoothing=-0.1)
