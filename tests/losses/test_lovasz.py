"""lovasz and lovasz_hinge against hand-computed values and the algorithms of the reference implementation
(Berman et al., github.com/bermanmaxim/LovaszSoftmax, pytorch/lovasz_losses.py; smp's LovaszLoss copies it).
Parameters, checks and reductions shared with the other segmentation losses: test_segmentation.py and
test_segmentation_options.py."""

import pytest
import torch
from segmentation_batches import hand_case_inputs, make_batch, probabilities

from hf_losses import get_loss
from hf_losses.losses.lovasz import LovaszSoftmaxLoss


# The Lovasz-softmax reference (Berman et al., github.com/bermanmaxim/LovaszSoftmax, pytorch/lovasz_losses.py),
# its algorithm written out with today's torch: lovasz_grad, lovasz_softmax_flat (one class at a time),
# flatten_probas (drops ignored pixels) and the per-image mean.
def reference_lovasz_grad(gt_sorted):
    gt_sorted = gt_sorted.double()  # `.float()` in the original; float64 so that the comparison can be tight
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def reference_lovasz_softmax_flat(probas, labels, classes="present"):
    if probas.numel() == 0:  # only void pixels; the original's `probas * 0.` is an empty tensor, meant as 0
        return probas.sum() * 0.0
    c = probas.size(1)
    losses = []
    for k in range(c) if classes in ("all", "present") else classes:  # or a list of classes to average
        fg = (labels == (1 if c == 1 else k)).to(probas.dtype)  # one sigmoid channel: foreground = label 1
        if classes == "present" and fg.sum() == 0:
            continue
        class_pred = probas[:, 0] if c == 1 else probas[:, k]
        errors = (fg - class_pred).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, reference_lovasz_grad(fg[perm]).to(probas.dtype)))
    return sum(losses) / len(losses) if losses else torch.zeros((), dtype=probas.dtype)


def reference_flatten_probas(probas, labels, ignore=-100):
    c = probas.shape[1]
    probas = probas.movedim(1, -1).reshape(-1, c)
    labels = labels.reshape(-1)
    valid = labels != ignore
    return probas[valid], labels[valid]


def reference_lovasz_softmax(probas, labels, classes="present", per_image=False):
    if per_image:
        values = [
            reference_lovasz_softmax_flat(*reference_flatten_probas(p.unsqueeze(0), y.unsqueeze(0)), classes)
            for p, y in zip(probas, labels)
        ]
        return sum(values) / len(values)
    return reference_lovasz_softmax_flat(*reference_flatten_probas(probas, labels), classes)


def reference_lovasz_hinge_flat(logits, labels):
    if len(labels) == 0:  # only void pixels, the gradients should be 0
        return logits.sum() * 0.0
    signs = 2.0 * labels.to(logits.dtype) - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    grad = reference_lovasz_grad(labels[perm]).to(logits.dtype)
    return torch.dot(torch.relu(errors_sorted), grad)


def reference_lovasz_hinge(logits, labels, per_image=True, ignore=-100):
    """``lovasz_hinge`` with ``flatten_binary_scores`` (drops ``ignore`` pixels); logits ``(B, H, W)``."""

    def flat(scores, target):
        scores, target = scores.reshape(-1), target.reshape(-1)
        valid = target != ignore
        return scores[valid], target[valid]

    if per_image:
        values = [reference_lovasz_hinge_flat(*flat(x, y)) for x, y in zip(logits, labels)]
        return sum(values) / len(values)
    return reference_lovasz_hinge_flat(*flat(logits, labels))


# ------------------------------------------------------------------------------------------ hand-computed cases
# The inputs of segmentation_batches.hand_case_inputs. Binary: errors 0.1, 0.2, 0.4, 0.1 sorted 0.4 (fg), 0.2,
# 0.1, 0.1 -> weights 1/2, 1/6, 1/3, 0. Three classes: per-class errors give 0.3, 0.6 and 0.7.
HAND_CASES = [
    # (kwargs, binary?, expected)
    ({}, True, 0.4 / 2 + 0.2 / 6 + 0.1 / 3),
    ({}, False, (0.3 + 0.7) / 2),  # class 1 absent: skipped
    ({"classes": "all"}, False, (0.3 + 0.6 + 0.7) / 3),
    ({"include_background": False}, False, 0.7),
]


@pytest.mark.parametrize("kwargs,binary,expected", HAND_CASES)
def test_hand_computed_values(kwargs, binary, expected):
    logits, labels = hand_case_inputs(binary)
    for per_image in (True, False):  # one image: both reductions agree
        value = get_loss("lovasz", per_image=per_image, **kwargs)(logits, labels)
        assert value.item() == pytest.approx(expected, abs=1e-12)


# Hinge, the binary hand case (logits log(p / (1 - p)) for p = 0.9, 0.2, 0.6, 0.1, labels 1, 0, 1, 0): errors
# 1 - s y = -1.197, -0.386, 1 - log(1.5) = 0.595, -1.197; only the largest, a foreground pixel, is positive, and
# the first Jaccard increment with two foreground pixels is 1 - (2 - 1) / 2 = 1/2.
def test_lovasz_hinge_hand_computed_value():
    logits, labels = hand_case_inputs(binary=True)
    expected = (1.0 - torch.log(torch.tensor(1.5, dtype=torch.float64)).item()) * 0.5
    for per_image in (True, False):  # one image: both reductions agree
        assert get_loss("lovasz_hinge", per_image=per_image)(logits, labels).item() == pytest.approx(
            expected, abs=1e-12
        )


def test_lovasz_hand_value_does_not_depend_on_the_order_of_tied_errors():
    logits, labels = hand_case_inputs(binary=True)
    order = torch.tensor([3, 2, 1, 0])  # errors 0.1 (fg) and 0.1 (bg) swap places
    value = get_loss("lovasz")(logits[..., order], labels[..., order])
    assert value.item() == pytest.approx(0.4 / 2 + 0.2 / 6 + 0.1 / 3, abs=1e-12)


# ------------------------------------------------------------------------------------------ reference implementation
@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("c", [1, 4])
def test_lovasz_equals_reference_implementation(classes, per_image, c):
    logits, labels = make_batch(3, c, (5, 4), seed=11 + c, ignore_fraction=0.2, dtype=torch.float64)
    value = get_loss("lovasz", classes=classes, per_image=per_image)(logits, labels)
    expected = reference_lovasz_softmax(probabilities(logits), labels, classes=classes, per_image=per_image)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)


def test_lovasz_per_image_skips_fully_ignored_images_unlike_the_reference_mean():
    """The reference averages over all images (a fully ignored one adds 0); ours divides by labelled images."""
    logits, labels = make_batch(3, 4, (5, 4), seed=5, dtype=torch.float64)
    labels[2] = -100
    value = get_loss("lovasz")(logits, labels)
    expected = reference_lovasz_softmax(probabilities(logits), labels, per_image=True) * 3 / 2
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_class_list_equals_reference_implementation(per_image):
    logits, labels = make_batch(3, 4, (5, 4), seed=17, ignore_fraction=0.2, dtype=torch.float64)
    value = get_loss("lovasz", classes=[1, 3], per_image=per_image)(logits, labels)
    expected = reference_lovasz_softmax(probabilities(logits), labels, classes=[1, 3], per_image=per_image)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("c", [1, 4])
def test_lovasz_from_probabilities_equals_from_logits(c):
    logits, labels = make_batch(3, c, (5, 4), seed=19, ignore_fraction=0.2, dtype=torch.float64)
    for per_image in (True, False):
        expected = get_loss("lovasz", per_image=per_image)(logits, labels)
        value = get_loss("lovasz", per_image=per_image, from_logits=False)(probabilities(logits), labels)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ignore_fraction", [0.0, 0.3])
def test_lovasz_hinge_equals_reference_implementation(per_image, ignore_fraction):
    logits, labels = make_batch(4, 1, (6, 5), seed=23, ignore_fraction=ignore_fraction, dtype=torch.float64)
    logits.requires_grad_()
    value = get_loss("lovasz_hinge", per_image=per_image)(logits, labels)
    expected = reference_lovasz_hinge(logits[:, 0], labels, per_image=per_image)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    (grad,) = torch.autograd.grad(value, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_lovasz_hinge_per_image_skips_fully_ignored_images_unlike_the_reference_mean():
    logits, labels = make_batch(3, 1, (5, 4), seed=29, dtype=torch.float64)
    labels[1] = -100
    value = get_loss("lovasz_hinge")(logits, labels)
    expected = reference_lovasz_hinge(logits[:, 0], labels, per_image=True) * 3 / 2
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)


def test_lovasz_hinge_of_two_class_logits_is_the_hinge_of_their_difference():
    logits, labels = make_batch(3, 2, (5, 4), seed=31, ignore_fraction=0.2, dtype=torch.float64)
    for per_image in (True, False):
        loss = get_loss("lovasz_hinge", per_image=per_image)
        expected = reference_lovasz_hinge(logits[:, 1] - logits[:, 0], labels, per_image=per_image)
        assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)


def test_lovasz_hinge_refuses_more_than_two_channels():
    logits, labels = make_batch(2, 3, (4, 4))
    with pytest.raises(ValueError, match=r"loss 'lovasz_hinge': the Lovasz hinge is binary: `logits` must be \(N, 1"):
        get_loss("lovasz_hinge")(logits, labels)


def test_lovasz_gradient_equals_reference_gradient():
    logits, labels = make_batch(2, 3, (4, 4), seed=2, ignore_fraction=0.2, dtype=torch.float64)
    logits.requires_grad_()
    (grad,) = torch.autograd.grad(get_loss("lovasz", per_image=False)(logits, labels), logits)
    (expected,) = torch.autograd.grad(reference_lovasz_softmax(probabilities(logits), labels), logits)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"classes": "some"}, ValueError, "parameter 'classes' must be one of 'present', 'all' or list of int, got"),
        ({"classes": [1, 1]}, ValueError, "`classes` must be a non-empty list of distinct class indices >= 0"),
        ({"classes": [0, 2], "include_background": False}, ValueError, "includes class 0, the background"),
        ({"smooth": 1.0}, ValueError, "unknown parameter 'smooth'"),
    ],
)
def test_bad_parameters_raise_naming_the_loss_and_parameter(kwargs, error, message):
    with pytest.raises(error) as info:
        get_loss("lovasz", **kwargs)
    assert message in str(info.value) and "lovasz" in str(info.value)


def test_direct_construction_validates_too():
    with pytest.raises(
        ValueError, match=r"loss 'lovasz': `classes` must be 'present', 'all' or a list of class indices"
    ):
        LovaszSoftmaxLoss(classes="some")
