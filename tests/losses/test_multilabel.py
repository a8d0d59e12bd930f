"""bce, sigmoid_focal, asl against PyTorch's BCE, torchvision's sigmoid_focal_loss formula and the ASL
authors' forward pass (both written out here: torchvision is not installable next to this torch)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_losses import get_loss
from hf_losses.losses.multilabel import per_entry_sigmoid_focal


def make_batch(shape=(6, 4), seed=0, soft=False, ignore=False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 2
    if soft:
        targets = torch.rand(shape, generator=generator)
    else:
        targets = (torch.rand(shape, generator=generator) < 0.3).float()
    if ignore:
        targets.view(-1)[::5] = -100.0
    return logits, targets


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="mean"):
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
    if reduction == "mean":
        return loss.mean()
    return loss.sum()


def authors_asymmetric_loss(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=False):
    """Ridnik et al.'s AsymmetricLoss.forward (Alibaba-MIIL/ASL): the *sum* over entries."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not disable_torch_grad_focal_loss and torch.is_grad_enabled()):
            pt = xs_pos * y + xs_neg * (1 - y)
            one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
            one_sided_w = torch.pow(1 - pt, one_sided_gamma)
        loss = loss * one_sided_w
    return -loss.sum()


# ------------------------------------------------------------------------------------------------ bce
@pytest.mark.parametrize("pos_weight", [None, 3.0, [1.0, 2.0, 0.5, 4.0]])
def test_bce_equals_torch_binary_cross_entropy_with_logits(pos_weight):
    logits, targets = make_batch(soft=True)
    reference_weight = None if pos_weight is None else torch.as_tensor(pos_weight)
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=reference_weight)
    torch.testing.assert_close(get_loss("bce", pos_weight=pos_weight)(logits, targets), expected)


def test_bce_mean_is_over_non_ignored_entries_only():
    logits, targets = make_batch(ignore=True)
    valid = targets != -100
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 4.0])
    per_entry = F.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0), pos_weight=pos_weight, reduction="none"
    )
    torch.testing.assert_close(get_loss("bce", pos_weight=pos_weight)(logits, targets), per_entry[valid].mean())


def test_bce_pos_weight_applies_along_the_class_dimension_of_spatial_logits():
    logits, targets = make_batch(shape=(2, 3, 4, 5))
    pos_weight = torch.tensor([1.0, 5.0, 0.2])
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight.view(3, 1, 1))
    torch.testing.assert_close(get_loss("bce", pos_weight=pos_weight)(logits, targets), expected)


def test_bce_closed_form_at_even_odds():
    # sigmoid(0) = 1/2: a positive with pos_weight 3 costs 3 ln 2, a negative ln 2
    value = get_loss("bce", pos_weight=[3.0])(torch.zeros(2, 1), torch.tensor([[1.0], [0.0]]))
    assert value.item() == pytest.approx((3 * math.log(2) + math.log(2)) / 2, rel=1e-6)


# ------------------------------------------------------------------------------------------------ sigmoid_focal
@pytest.mark.parametrize(
    "alpha,gamma,soft",
    [
        (0.25, 2.0, False),
        (0.25, 2.0, True),
        (None, 2.0, False),
        (0.5, 0.0, False),
        (0.9, 0.5, True),
        (0.25, 1.0, False),
    ],
)
def test_sigmoid_focal_equals_torchvision_formula_values_and_gradients(alpha, gamma, soft):
    logits, targets = make_batch(shape=(3, 4, 5), soft=soft)
    ours_input, reference_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = get_loss("sigmoid_focal", alpha=alpha, gamma=gamma)(ours_input, targets)
    expected = torchvision_sigmoid_focal_loss(reference_input, targets, -1 if alpha is None else alpha, gamma)
    torch.testing.assert_close(ours, expected)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad)


def test_sigmoid_focal_ignored_entries_do_not_count():
    logits, targets = make_batch(ignore=True)
    valid = targets != -100
    per_entry = torchvision_sigmoid_focal_loss(logits[valid], targets[valid], reduction="none")
    torch.testing.assert_close(get_loss("sigmoid_focal")(logits, targets), per_entry.mean())


def test_sigmoid_focal_functional_core_equals_module_without_gradient():
    logits, targets = make_batch(soft=True)
    with torch.no_grad():
        module_value = get_loss("sigmoid_focal", alpha=0.3, gamma=1.5)(logits, targets)
    torch.testing.assert_close(module_value, per_entry_sigmoid_focal(logits, targets, 0.3, 1.5).mean())


def test_sigmoid_focal_closed_form_at_even_odds():
    # p = 1/2 for every entry: alpha_t * (1/2)^2 * ln 2 with alpha_t = 0.25 (positive) or 0.75 (negative)
    value = get_loss("sigmoid_focal")(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert value.item() == pytest.approx((0.25 + 0.75) * 0.25 * math.log(2) / 2, rel=1e-6)


# ------------------------------------------------------------------------------------------------ asl
@pytest.mark.parametrize(
    "gamma_pos,gamma_neg,clip,detach",
    [
        (0.0, 4.0, 0.05, False),
        (1.0, 4.0, 0.05, False),
        (1.0, 2.0, 0.0, False),
        (0.0, 4.0, 0.2, True),
    ],
)
def test_asl_equals_authors_forward_divided_by_entry_count(gamma_pos, gamma_neg, clip, detach):
    logits, targets = make_batch(soft=True, seed=4)
    ours_input, reference_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = get_loss("asl", gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, detach_focusing=detach)
    ours = loss(ours_input, targets)
    expected = (
        authors_asymmetric_loss(
            reference_input, targets, gamma_neg, gamma_pos, clip, disable_torch_grad_focal_loss=detach
        )
        / targets.numel()
    )
    torch.testing.assert_close(ours, expected)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad)


def test_asl_without_focusing_or_clipping_is_bce():
    logits, targets = make_batch()
    value = get_loss("asl", gamma_pos=0.0, gamma_neg=0.0, clip=0.0)(logits, targets)
    torch.testing.assert_close(value, F.binary_cross_entropy_with_logits(logits, targets))


def test_asl_discards_negatives_below_the_clip_probability():
    logits = torch.tensor([[-4.0, 0.0]], requires_grad=True)  # sigmoid(-4) = 0.018 < clip = 0.05
    loss = get_loss("asl", gamma_neg=4.0, clip=0.05)
    value = loss(logits[:, :1], torch.tensor([[0.0]]))
    value.backward()
    assert value.item() == 0.0 and logits.grad.abs().sum() == 0
    # a negative above the clip: p_m = 0.5 - 0.05, loss -p_m^4 log(1 - p_m)
    expected = -(0.45**4) * math.log(0.55)
    assert loss(torch.zeros(1, 1), torch.tensor([[0.0]])).item() == pytest.approx(expected, rel=1e-5)
