"""The CPU reads the labels once per call: what that must not change.

cross_entropy and focal leave the label range to torch's bound-checked kernels on the CPU (re-checked into the usual
``ValueError`` when a kernel fails); other losses share one remembered min/max between the range check and the
ignore-index test (:func:`hf_losses.losses.inputs.value_bounds`); cross_entropy takes its item count from the NLL
kernel's total weight; focal's modulation has a hand-written backward. Each is checked here against an independent
reference (torch's own losses, autograd's chain of the same formula, gradcheck).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hf_losses import get_loss
from hf_losses.losses.base import LogitsLoss
from hf_losses.losses.classification import FocalTerm, summed_nll
from hf_losses.losses.inputs import label_pass, value_bounds

SHAPES = [(6, 3), (2, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class_weights"])
def test_summed_nll_is_torchs_sum_and_total_weight(shape, weighted):
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.randn(shape, generator=generator, dtype=torch.float64).log_softmax(1)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=generator)
    labels.view(-1)[::4] = -100
    weight = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64) if weighted else None
    total, total_weight = summed_nll(log_probs, labels, weight, -100)
    assert torch.allclose(total, F.nll_loss(log_probs, labels, weight=weight, reduction="sum"), rtol=1e-12)
    valid = labels != -100
    expected_weight = valid.sum() if weight is None else weight[labels[valid]].sum()
    assert float(total_weight) == pytest.approx(float(expected_weight), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cross_entropy_mean_without_num_items_is_torchs_mean_and_zero_when_all_ignored(shape):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=generator)
    labels.view(-1)[1::3] = -100
    loss = get_loss("cross_entropy")
    ours = loss(logits, labels)
    (grad,) = torch.autograd.grad(ours, logits)
    theirs = F.cross_entropy(logits, labels)
    (their_grad,) = torch.autograd.grad(theirs, logits)
    assert torch.allclose(ours, theirs, rtol=1e-12) and torch.allclose(grad, their_grad, rtol=1e-12, atol=1e-15)
    ignored = torch.full_like(labels, -100)
    value = loss(logits, ignored)
    (zero_grad,) = torch.autograd.grad(value, logits)
    assert value.item() == 0.0 and torch.equal(zero_grad, torch.zeros_like(logits))


LOSSES_CHECKING_LABELS = [
    ("cross_entropy", {}),
    ("cross_entropy", {"weight": [1.0, 2.0, 0.5], "label_smoothing": 0.1}),
    ("focal", {}),
    ("focal", {"alpha": [0.2, 0.3, 0.5], "label_smoothing": 0.1}),
    ("focal", {"alpha": 0.25, "reduction": "none"}),
    ("dice", {}),
    ("tversky", {}),
    ("class_balanced", {"samples_per_class": [5, 3, 2]}),
]


@pytest.mark.parametrize(("name", "kwargs"), LOSSES_CHECKING_LABELS, ids=lambda v: str(v) if v else "defaults")
@pytest.mark.parametrize("bad", [3, 7, -1, -5])
def test_a_label_out_of_range_is_a_value_error_naming_it(name, kwargs, bad):
    loss = get_loss(name, **kwargs)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[1, 2, 3] = bad
    with pytest.raises(ValueError, match=rf"`labels` must be in \[0, 3\) or ignore_index=-100; found {bad}\."):
        loss(logits, labels)
    with pytest.raises(ValueError, match=rf"found {bad}\."):  # data weights take the per-item path
        loss(logits, labels, sample_weight=torch.ones(2))


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "dice"])
def test_labels_changed_in_place_between_calls_are_checked_again(name):
    """The remembered min/max belongs to one unmodified tensor: an in-place change (or a view's) invalidates it."""
    loss = get_loss(name)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    loss(logits, labels)
    labels[0].view(-1)[5] = 9  # through a view: views share the base's version counter
    with pytest.raises(ValueError, match="found 9"):
        loss(logits, labels)


def test_value_bounds_follow_the_tensor_not_its_address():
    with label_pass():
        first = torch.tensor([0, 1, 2])
        assert value_bounds(first) == (0, 2)
        first.add_(5)
        assert value_bounds(first) == (5, 7)
        del first
        second = torch.tensor([-3, 4, 1])  # may reuse the freed object's address
        assert value_bounds(second) == (-3, 4)
        with torch.inference_mode():
            inference = torch.tensor([2, 8])
            assert value_bounds(inference) == (2, 8)


@pytest.mark.parametrize("name", ["dice", "tversky", "cross_entropy"])
def test_labels_rewritten_through_numpy_between_calls_are_checked_again(name):
    """numpy writes leave the tensor's version counter as it was: nothing may be remembered across calls."""
    loss = get_loss(name)
    logits = torch.randn(2, 3, 4, 4)
    buffer = np.zeros((2, 4, 4), dtype=np.int64)
    labels = torch.from_numpy(buffer)
    loss(logits, labels)
    buffer[1, 2, 3] = 8
    with pytest.raises(ValueError, match="found 8"):
        loss(logits, labels)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
def test_focal_term_matches_autograds_chain_and_gradcheck(gamma):
    generator = torch.Generator().manual_seed(2)
    # ce from 0 (p = 1, where gamma < 1 needs the floor) to large
    ce = torch.cat([torch.zeros(2), torch.rand(30, generator=generator) * 6, torch.tensor([1e-9, 30.0])])
    ce = ce.double().requires_grad_()
    ours = FocalTerm.apply(ce, gamma)
    tiny = torch.finfo(torch.float64).tiny
    reference = (-torch.expm1(-ce)).clamp(min=tiny).pow(gamma) * ce  # the formula autograd differentiated before
    weights = torch.rand(ce.shape, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad((ours * weights).sum(), ce)
    (ref_grad,) = torch.autograd.grad((reference * weights).sum(), ce)
    assert torch.allclose(ours, reference, rtol=1e-12, atol=0)
    assert torch.all(torch.isfinite(grad)) and torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)
    inside = (torch.rand(8, generator=generator, dtype=torch.float64) * 4 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: FocalTerm.apply(x, gamma), (inside,))


@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0])
def test_focal_second_derivative_is_autograds(gamma):
    """A gradient penalty differentiates the gradient: the hand-written backward must stay differentiable."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1])

    def penalty(value: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad(value, logits, create_graph=True)
        (second,) = torch.autograd.grad(grad.pow(2).sum(), logits)
        return second

    ours = penalty(get_loss("focal", gamma=gamma)(logits, labels))
    ce = F.cross_entropy(logits, labels, reduction="none")
    tiny = torch.finfo(torch.float64).tiny
    reference = penalty(((-torch.expm1(-ce)).clamp(min=tiny).pow(gamma) * ce).mean())
    assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-12)


class LabelReads(TorchDispatchMode):
    """Counts the aten ops a block applies to integer tensors of the labels' number of entries (by name)."""

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.numel = labels.numel()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(
            isinstance(a, torch.Tensor) and not a.is_floating_point() and a.numel() == self.numel
            for a in (*args, *(kwargs or {}).values())
        ):
            name = func.overloadpacket.__name__
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


LABEL_PASSES = ("aminmax", "min", "max", "amin", "amax", "ne", "eq", "masked_fill", "where")


@pytest.mark.parametrize("name", ["cross_entropy", "dice", "tversky", "mcc", "generalized_dice"])
def test_labels_without_ignored_entries_are_not_read_by_a_pass_of_their_own(name):
    """cross_entropy's NLL kernel and the overlap losses' one-hot scatter prove the labels: no min/max, no mask."""
    loss = get_loss(name)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    with LabelReads(labels) as reads:
        loss(logits, labels, num_items_in_batch=2 if loss.item_unit == "sample" else 128).backward()
    assert not {op: n for op, n in reads.counts.items() if op in LABEL_PASSES}
    # and the test sees label reads where there are some: a loss that still takes the min/max pass
    with LabelReads(labels) as reads:
        get_loss("bce")(logits, (labels[:, None] == 0).expand_as(logits).float(), num_items_in_batch=384)
        get_loss("lovasz_softmax")(logits, labels)
    assert reads.counts.get("aminmax", 0) >= 1


@pytest.mark.parametrize("name", ["dice", "tversky", "mcc", "generalized_dice"])
@pytest.mark.parametrize("ignore_index", [-100, 255])
def test_overlap_losses_with_ignored_labels_equal_the_masked_path_and_then_mask(name, ignore_index):
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 4, 6, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 6, 6), generator=generator)
    labels[0, :2] = ignore_index
    labels[2] = ignore_index  # an image with no labelled pixel
    optimistic = get_loss(name, ignore_index=ignore_index)
    masked = get_loss(name, ignore_index=ignore_index)
    masked._seen_ignored = True  # straight to the min/max + mask path
    first, second = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value = optimistic(first, labels)
    reference = masked(second, labels)
    value.backward(), reference.backward()
    assert torch.equal(value, reference) and torch.equal(first.grad, second.grad)
    assert optimistic._seen_ignored  # its data has ignored labels: it masks from now on
    clean = torch.randint(0, 4, (3, 6, 6), generator=generator)
    assert torch.equal(optimistic(logits, clean), get_loss(name, ignore_index=ignore_index)(logits, clean))


def test_an_ignore_index_that_is_a_class_is_masked_not_scattered():
    """ignore_index=0 is a valid class for scatter: those losses must mask it (the min/max path)."""
    logits = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 5, 5))
    value = get_loss("dice", ignore_index=0)(logits, labels)
    keep = labels != 0
    probs = logits.softmax(1) * keep.unsqueeze(1)
    onehot = F.one_hot(labels, 3).movedim(-1, 1).double() * keep.unsqueeze(1)
    tp, p, g = (probs * onehot).sum((2, 3)), probs.sum((2, 3)), onehot.sum((2, 3))
    expected = (1 - (2 * tp + 1e-5) / (p + g + 1e-5)).mean()  # every class present in every image here
    assert (keep.sum((1, 2)) > 0).all() and torch.allclose(value, expected, rtol=1e-10)


class AtenOps(TorchDispatchMode):
    """The aten ops a block dispatches, in order (by overload name)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape", [(64, 10), (2, 4, 8, 8)], ids=["2d", "4d"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_on_the_cpu_dispatches_exactly_f_cross_entropys_ops(shape, label_smoothing):
    """Forward and backward: not one op more than ``F.cross_entropy`` (no check, count or division of ours)."""
    logits = torch.randn(shape)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:])
    labels.view(-1)[::5] = -100
    loss = get_loss("cross_entropy", label_smoothing=label_smoothing)
    ops = []
    for fn in (lambda x: loss(x, labels), lambda x: F.cross_entropy(x, labels, label_smoothing=label_smoothing)):
        with AtenOps() as seen:
            fn(logits.clone().requires_grad_()).backward()
        ops.append([op for op in seen.ops if "_local_scalar_dense" not in op])  # ours reads the value back
    assert ops[0] == ops[1] and len(ops[1]) >= 4


def _checked(loss, *args, **kwargs):
    """The generic checked path (what cross_entropy and focal did before calling torch's kernels directly)."""
    return LogitsLoss.forward(loss, *args, **kwargs)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("num_items", [None, 7, torch.tensor(11), {"label": torch.tensor(13.0)}], ids=repr)
@pytest.mark.parametrize("shape", [(9, 5), (2, 5, 3, 4)], ids=lambda s: "x".join(map(str, s)))
def test_focal_direct_path_equals_the_checked_path_bit_for_bit(gamma, num_items, shape):
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=generator)
    labels.view(-1)[1::4] = -100
    loss = get_loss("focal", gamma=gamma)
    first, second = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value, reference = loss(first, labels, num_items), _checked(loss, second, labels, num_items)
    value.backward(), reference.backward()
    assert torch.equal(value, reference) and torch.equal(first.grad, second.grad)
    ce = F.cross_entropy(logits, labels, reduction="none")
    count = (labels != -100).sum() if num_items is None else num_items
    count = float(next(iter(count.values())) if isinstance(count, dict) else count)
    assert torch.allclose(value, ((1 - torch.exp(-ce)) ** gamma * ce).sum() / count, rtol=1e-12)
    empty = get_loss("focal", gamma=gamma)(logits, torch.full_like(labels, -100))
    assert empty.item() == 0.0


@pytest.mark.parametrize("shape", [(9, 5), (3, 5, 4), (2, 5, 3, 4)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize(
    "num_items", [None, 7, 7.5, torch.tensor(11), {"label": torch.tensor(13.0)}], ids=lambda v: repr(v)[:16]
)
def test_cross_entropy_direct_path_equals_the_checked_path_bit_for_bit(shape, dtype, label_smoothing, num_items):
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(shape, generator=generator, dtype=dtype)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=generator)
    labels.view(-1)[::3] = -100
    loss = get_loss("cross_entropy", label_smoothing=label_smoothing)
    first, second = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value = loss(first, labels, num_items)
    reference = _checked(loss, second, labels, num_items)
    value.backward(), reference.backward()
    assert value.dtype == dtype
    if label_smoothing and num_items is None:
        # torch's smoothed mean averages its two terms separately: equal up to rounding
        assert torch.allclose(value, reference, rtol=1e-6) and torch.allclose(first.grad, second.grad, atol=1e-8)
    else:
        assert torch.equal(value, reference) and torch.equal(first.grad, second.grad)
    expected = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum") / (
        (labels != -100).sum()
        if num_items is None
        else float(next(iter(num_items.values())) if isinstance(num_items, dict) else num_items)
    )
    assert torch.allclose(value, expected.to(dtype), rtol=1e-6)


def test_cross_entropy_direct_path_keeps_nan_logits_nan_and_no_label_zero():
    loss = get_loss("cross_entropy")
    logits = torch.randn(4, 3)
    logits[1, 2] = float("nan")
    assert torch.isnan(loss(logits, torch.tensor([0, 1, 2, 1])))
    empty = torch.randn(0, 3, requires_grad=True)
    value = loss(empty, torch.zeros(0, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and empty.grad.shape == (0, 3)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 2]), r"`labels` shape \(3,\) does not match logits"),
        (torch.randn(4, 3, 5), torch.zeros(4, 6, dtype=torch.long), r"expected \(4, 5\)"),
        (torch.randn(4, 1), torch.zeros(4, dtype=torch.long), "C >= 2 classes"),
        (torch.randn(3), torch.tensor(1), r"batch dimension|\(N, C\)"),
        (torch.randn(2, 3), torch.tensor([0, 5]), r"must be in \[0, 3\) or ignore_index=-100; found 5\."),
    ],
    ids=["batch", "spatial", "one_class", "unbatched", "range"],
)
@pytest.mark.parametrize("name", ["cross_entropy", "focal"])
def test_direct_paths_leave_every_refusal_to_the_checks(logits, labels, message, name):
    with pytest.raises((ValueError, TypeError), match=message):
        get_loss(name)(logits, labels)
