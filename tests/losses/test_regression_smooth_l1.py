"""smooth_l1 is PyTorch's SmoothL1Loss(beta), beta = 0 (L1) included -- no longer an alias of huber, which it equals
only at beta = 1 (SmoothL1(beta) = Huber(delta=beta) / beta)."""

import pytest
import torch
import torch.nn.functional as F

from hf_losses import describe_loss, get_loss
from hf_losses.losses.regression import HuberLoss, SmoothL1Loss


def make_batch(shape=(8, 3), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 2, torch.randn(shape, generator=generator)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 1.0, 2.5])
def test_equals_torch_smooth_l1_loss(beta, reduction):
    predictions, targets = make_batch()
    ours_input, reference_input = predictions.clone().requires_grad_(), predictions.clone().requires_grad_()
    value = get_loss("smooth_l1", beta=beta, reduction=reduction)(ours_input, targets)
    expected = torch.nn.SmoothL1Loss(beta=beta, reduction=reduction)(reference_input, targets)
    torch.testing.assert_close(value, expected)
    value.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad)


def test_beta_zero_is_l1():
    predictions, targets = make_batch()
    torch.testing.assert_close(get_loss("smooth_l1", beta=0.0)(predictions, targets), F.l1_loss(predictions, targets))


@pytest.mark.parametrize("beta", [0.25, 1.0, 3.0])
def test_smooth_l1_is_huber_over_beta(beta):
    predictions, targets = make_batch()
    huber = get_loss("huber", delta=beta)(predictions, targets)
    torch.testing.assert_close(get_loss("smooth_l1", beta=beta)(predictions, targets), huber / beta)


@pytest.mark.parametrize(
    "prediction,target,beta,expected",
    [
        (0.5, 0.0, 1.0, 0.125),  # 0.5 e^2 / beta
        (3.0, 1.0, 1.0, 1.5),  # |e| - beta / 2
        (3.0, 1.0, 0.5, 1.75),
        (0.2, 0.0, 0.5, 0.04),
        (-2.0, 1.0, 0.0, 3.0),  # |e|
    ],
)
def test_hand_computed_values(prediction, target, beta, expected):
    value = get_loss("smooth_l1", beta=beta)(torch.tensor([[prediction]]), torch.tensor([[target]]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_ignored_targets_and_micro_batches():
    predictions, targets = make_batch()
    targets[1, 2] = targets[5, 0] = -100.0
    valid = targets != -100
    loss = get_loss("smooth_l1", beta=0.3)
    torch.testing.assert_close(
        loss(predictions, targets), F.smooth_l1_loss(predictions[valid], targets[valid], beta=0.3)
    )
    count = loss.num_items(targets)
    parts = sum(loss(p, t, num_items_in_batch=count) for p, t in zip(predictions.split(3), targets.split(3)))
    torch.testing.assert_close(parts, loss(predictions, targets), atol=1e-6, rtol=0)


def test_registered_as_its_own_loss():
    loss = get_loss("smooth_l1")
    assert isinstance(loss, SmoothL1Loss) and not isinstance(loss, HuberLoss) and loss.beta == 1.0
    description = describe_loss("smooth_l1")
    assert description.label_kind == "target" and description.decomposable
    assert [p.name for p in description.parameters][:2] == ["beta", "ignore_index"]
    assert "smooth_l1" not in describe_loss("huber").aliases
    assert "beta=0.5" in repr(get_loss("smooth_l1", beta=0.5))


def test_beta_is_validated_and_delta_is_not_a_parameter():
    with pytest.raises(ValueError, match=r"loss 'smooth_l1': `beta` must be in \[0, inf\), got -1"):
        get_loss("smooth_l1", beta=-1.0)
    with pytest.raises(ValueError, match=r"loss 'smooth_l1': `beta` must be a finite number"):
        get_loss("smooth_l1", beta=float("inf"))
    with pytest.raises(ValueError, match=r"loss 'smooth_l1': unknown parameter 'delta'"):
        get_loss("smooth_l1", delta=1.0)
