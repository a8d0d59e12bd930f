"""Data weights and weighted means in the losses themselves (outside the trainer): ``sample_weight`` per example or
per item, ``normalize="weight"`` equal to PyTorch's weighted mean, zero weights, and the checks on weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_losses import get_loss
from hf_losses.losses.base import weight_unit


def _batch(n: int = 12, c: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator, requires_grad=True)
    labels = torch.randint(0, c, (n,), generator=generator)
    labels[3] = -100
    return logits, labels


def test_weighted_mean_equals_torch_cross_entropy_with_class_weights():
    logits, labels = _batch()
    w = torch.tensor([0.3, 2.0, 1.0, 4.0])
    ours = get_loss("cross_entropy", weight=w.tolist(), normalize="weight")(logits, labels)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, weight=w), rtol=1e-6, atol=0)
    # the default stays the decomposable count: sum w[y] ce / N
    count = get_loss("cross_entropy", weight=w.tolist())(logits, labels)
    expected = F.cross_entropy(logits, labels, weight=w, reduction="sum") / (labels != -100).sum()
    torch.testing.assert_close(count, expected, rtol=1e-6, atol=0)


def test_weighted_mean_with_label_smoothing_equals_torch():
    logits, labels = _batch(seed=1)
    w = torch.tensor([1.0, 0.5, 3.0, 2.0])
    ours = get_loss("cross_entropy", weight=w.tolist(), label_smoothing=0.1, normalize="weight")(logits, labels)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, weight=w, label_smoothing=0.1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("normalize", ["count", "weight"])
def test_sample_weight_per_example_and_per_item(normalize):
    logits, labels = _batch()
    sample = torch.rand(12, generator=torch.Generator().manual_seed(3)) * 2
    items = F.cross_entropy(logits, labels, reduction="none")
    valid = labels != -100
    denominator = (sample * valid).sum() if normalize == "weight" else valid.sum()
    loss = get_loss("cross_entropy", normalize=normalize)
    torch.testing.assert_close(loss(logits, labels, sample_weight=sample), (items * sample).sum() / denominator)
    # per-item weights of the labels' shape: the same for (N,) labels
    torch.testing.assert_close(
        loss(logits, labels, sample_weight=sample.reshape(12)), (items * sample).sum() / denominator
    )


def test_token_weights_on_token_classification_logits():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 7, generator=generator)  # (N, C, T)
    labels = torch.randint(0, 5, (3, 7), generator=generator)
    labels[0, :2] = -100
    token = torch.rand(3, 7, generator=generator)
    ours = get_loss("cross_entropy", normalize="weight")(logits, labels, sample_weight=token)
    items = F.cross_entropy(logits, labels, reduction="none")
    expected = (items * token).sum() / (token * (labels != -100)).sum()
    torch.testing.assert_close(ours, expected)
    per_example = torch.tensor([0.5, 2.0, 1.0])
    ours = get_loss("cross_entropy")(logits, labels, sample_weight=per_example)
    expected = (items * per_example[:, None]).sum() / (labels != -100).sum()
    torch.testing.assert_close(ours, expected)


def test_all_zero_weights_give_zero_loss_and_zero_gradient():
    logits, labels = _batch()
    for normalize in ("count", "weight"):
        loss = get_loss("focal", normalize=normalize)(logits, labels, sample_weight=torch.zeros(12))
        (grad,) = torch.autograd.grad(loss, logits)
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    # inside a step whose other micro-batches carry weight: global weight sum given, this call adds 0
    loss = get_loss("cross_entropy", normalize="weight")
    value = loss(logits, labels, num_items_in_batch={"label_weight": torch.tensor(5.0)}, sample_weight=torch.zeros(12))
    (grad,) = torch.autograd.grad(value, logits)
    assert value.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_num_items_counts_the_weight_sum_for_normalize_weight():
    _, labels = _batch()
    w = [0.3, 2.0, 1.0, 4.0]
    sample = torch.linspace(0.0, 1.0, 12)
    loss = get_loss("cross_entropy", weight=w, normalize="weight")
    ((unit, total),) = loss.num_items(labels, sample_weight=sample).items()
    valid = labels != -100
    expected = (torch.tensor(w)[labels.clamp(min=0)] * sample * valid).sum()
    assert unit == weight_unit("label") == "label_weight"
    assert total.dtype == torch.float64 and abs(float(total) - float(expected)) < 1e-6
    assert get_loss("cross_entropy").num_items(labels, sample_weight=sample) == {"label": valid.sum()}


def test_reduction_none_and_sum():
    logits, labels = _batch()
    none = get_loss("cross_entropy", reduction="none")(logits, labels)
    torch.testing.assert_close(none, F.cross_entropy(logits, labels, reduction="none"))
    total = get_loss("cross_entropy", reduction="sum")(logits, labels, sample_weight=torch.full((12,), 2.0))
    torch.testing.assert_close(total, 2 * F.cross_entropy(logits, labels, reduction="sum"))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.tensor([1.0] * 11 + [-1.0]), r"`sample_weight` must be finite and >= 0.*-1"),
        (torch.tensor([1.0] * 11 + [float("nan")]), r"`sample_weight` must be finite and >= 0.*nan"),
        (torch.ones(5), r"`sample_weight` shape \(5,\) fits neither one weight per example \(12,\)"),
        (torch.ones(12, 2), r"`sample_weight` shape \(12, 2\)"),
    ],
)
def test_bad_weights_are_refused_naming_the_input(weights, message):
    logits, labels = _batch()
    with pytest.raises(ValueError, match=message):
        get_loss("cross_entropy")(logits, labels, sample_weight=weights)


def test_options_are_validated_and_refused_where_they_cannot_work():
    with pytest.raises(ValueError, match=r"'reduction' must be one of 'mean', 'sum', 'none', got str 'avg'"):
        get_loss("cross_entropy", reduction="avg")
    with pytest.raises(ValueError, match=r"'normalize' must be one of 'count', 'weight', got str 'sum'"):
        get_loss("cross_entropy", normalize="sum")
    with pytest.raises(ValueError, match=r"`reduction` must be one of \['mean', 'sum', 'none'\], got 'avg'"):
        from hf_losses.losses.classification import CrossEntropyLoss

        CrossEntropyLoss(reduction="avg")


def test_causal_lm_token_weights_equal_full_logits():
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 6, 8, generator=generator, requires_grad=True)
    head = torch.randn(11, 8, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (2, 6), generator=generator)
    labels[1, :2] = -100
    token = torch.rand(2, 6, generator=generator)
    logits = (hidden @ head.T)[:, :-1].reshape(-1, 11)
    targets, shifted_weight = labels[:, 1:].reshape(-1), token[:, 1:].reshape(-1)
    items = F.cross_entropy(logits, targets, reduction="none")
    for normalize in ("count", "weight"):
        loss = get_loss("causal_lm", normalize=normalize, chunk_size=4)
        ours = loss(hidden, labels, weight=head, sample_weight=token)
        valid = targets != -100
        denominator = (shifted_weight * valid).sum() if normalize == "weight" else valid.sum()
        expected = (items * shifted_weight).sum() / denominator
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
        grads = torch.autograd.grad(ours, (hidden, head))
        expected_grads = torch.autograd.grad(expected, (hidden, head), retain_graph=True)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        ((unit, total),) = loss.num_items(labels, sample_weight=token).items()
        assert abs(float(total) - float(denominator)) < 1e-5
