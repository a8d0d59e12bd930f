"""mse / huber: equal to PyTorch's functions, ignore entries, decompose over micro-batches."""

import pytest
import torch
import torch.nn.functional as F

from hf_losses import describe_loss, get_loss


@pytest.mark.parametrize(
    "name,kwargs,reference",
    [
        ("mse", {}, lambda x, y: F.mse_loss(x, y)),
        ("huber", {"delta": 0.5}, lambda x, y: F.huber_loss(x, y, delta=0.5)),
        ("smooth_l1", {"beta": 0.5}, lambda x, y: F.smooth_l1_loss(x, y, beta=0.5)),
        ("smooth_l1", {"beta": 0.0}, lambda x, y: F.l1_loss(x, y)),
    ],
)
def test_equals_torch_and_decomposes(name, kwargs, reference):
    torch.manual_seed(0)
    predictions, targets = torch.randn(8, 3) * 2, torch.randn(8, 3)
    loss = get_loss(name, **kwargs)
    torch.testing.assert_close(loss(predictions, targets), reference(predictions, targets))
    chunks = sum(loss(p, t, num_items_in_batch=24) for p, t in zip(predictions.split(3), targets.split(3)))
    torch.testing.assert_close(chunks, loss(predictions, targets), atol=1e-6, rtol=0)


def test_ignored_targets_are_excluded_and_all_ignored_gives_zero():
    predictions = torch.tensor([[1.0], [2.0], [5.0]], requires_grad=True)
    targets = torch.tensor([[0.0], [-100.0], [3.0]])
    assert get_loss("mse")(predictions, targets).item() == pytest.approx((1 + 4) / 2)
    zero = get_loss("mse")(predictions, torch.full_like(targets, -100.0))
    zero.backward()
    assert zero.item() == 0.0 and predictions.grad.abs().sum() == 0


def test_huber_rejects_non_positive_delta():
    with pytest.raises(ValueError, match=r"loss 'huber': `delta` must be in \(0, inf\), got 0"):
        get_loss("huber", delta=0.0)


def test_integer_targets_are_refused():
    with pytest.raises(TypeError, match="loss 'mse'.*float"):
        get_loss("mse")(torch.randn(2, 1), torch.tensor([[1], [2]]))


@pytest.mark.parametrize("name", ["mse", "huber", "smooth_l1"])
def test_labels_are_real_valued_targets(name):
    assert describe_loss(name).label_kind == "target"


def test_composite_may_mix_regression_and_multi_label_float_targets():
    predictions, targets = torch.randn(4, 3), torch.rand(4, 3)
    loss = get_loss("0.5*mse+0.5*bce")
    expected = 0.5 * F.mse_loss(predictions, targets) + 0.5 * F.binary_cross_entropy_with_logits(predictions, targets)
    torch.testing.assert_close(loss(predictions, targets), expected)
