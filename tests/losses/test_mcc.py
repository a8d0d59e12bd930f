"""mcc (Matthews correlation loss) against hand-computed confusion counts and plain-loop sums. smp's own test
table and its formula: test_segmentation_peers.py; the options and contract it shares with the other segmentation
losses: test_segmentation_options.py."""

import math

import pytest
import torch
from segmentation_batches import hand_case_inputs, make_batch, probabilities

from hf_losses import describe_loss, get_loss


def mcc_from_counts(tp, fp, fn, tn, eps):
    """1 - MCC from the four soft counts, each + eps (Abhishek & Hamarneh 2021; smp)."""
    tp, fp, fn, tn = tp + eps, fp + eps, fn + eps, tn + eps
    return 1.0 - (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


# The inputs of segmentation_batches.hand_case_inputs. Binary: TP = 1.5, FP = 0.3, FN = 0.5, TN = 4 - 1.8 - 2 + 1.5
# = 1.7. Three classes, two pixels: class 0 TP 0.7 FP 0.1 FN 0.3 TN 0.9; class 1 TP 0 FP 0.8 FN 0 TN 1.2; class 2
# TP 0.3 FP 0.1 FN 0.7 TN 0.9.
BINARY_COUNTS = (1.5, 0.3, 0.5, 1.7)
MULTI_COUNTS = [(0.7, 0.1, 0.3, 0.9), (0.0, 0.8, 0.0, 1.2), (0.3, 0.1, 0.7, 0.9)]


@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_hand_computed_binary(eps):
    logits, labels = hand_case_inputs(binary=True)
    for per_image in (True, False):  # one image: both reductions agree
        value = get_loss("mcc", eps=eps, per_image=per_image)(logits, labels)
        assert value.item() == pytest.approx(mcc_from_counts(*BINARY_COUNTS, eps), abs=1e-12)


@pytest.mark.parametrize(
    "kwargs,classes,weights",
    [({}, [0, 1, 2], None), ({"include_background": False}, [1, 2], None), ({"classes": [2]}, [2], None)]
    + [({"class_weights": [1.0, 2.0, 5.0]}, [0, 1, 2], [1.0, 2.0, 5.0])],
)
def test_hand_computed_three_classes(kwargs, classes, weights):
    logits, labels = hand_case_inputs(binary=False)
    losses = [mcc_from_counts(*MULTI_COUNTS[c], 1e-5) for c in classes]
    weights = weights or [1.0] * len(classes)
    expected = sum(w * value for w, value in zip(weights, losses)) / sum(weights)
    assert get_loss("mcc", **kwargs)(logits, labels).item() == pytest.approx(expected, abs=1e-12)


def test_perfect_and_inverted_predictions_give_zero_and_two():
    labels = torch.tensor([[[0, 1, 1, 0], [1, 0, 0, 1]]])
    perfect = (labels.unsqueeze(1) * 2 - 1) * 30.0
    assert get_loss("mcc", eps=1e-9)(perfect.double(), labels).item() == pytest.approx(0.0, abs=1e-6)
    assert get_loss("mcc", eps=1e-9)(-perfect.double(), labels).item() == pytest.approx(2.0, abs=1e-6)


def loop_mcc(probs, targets, valid, eps):
    """1 - MCC of one image and class, one pixel at a time."""
    tp = fp = fn = tn = 0.0
    for p, y, keep in zip(probs, targets, valid):
        if keep:
            tp, fp, fn, tn = tp + p * y, fp + p * (1 - y), fn + (1 - p) * y, tn + (1 - p) * (1 - y)
    return mcc_from_counts(tp, fp, fn, tn, eps)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("c", [1, 3])
def test_equals_plain_loop_with_ignored_pixels(per_image, c):
    logits, labels = make_batch(3, c, (4, 3), seed=41 + c, ignore_fraction=0.25, dtype=torch.float64)
    labels[1] = -100  # a fully ignored image: not an item
    probs = probabilities(logits).reshape(3, c, -1)
    flat = labels.reshape(3, -1)
    groups = [[0], [2]] if per_image else [[0, 1, 2]]
    total = 0.0
    for images in groups:
        per_class = []
        for k in range(c):
            target = [float(y == (1 if c == 1 else k)) for n in images for y in flat[n].tolist()]
            p = [v for n in images for v in probs[n, k].tolist()]
            valid = [y != -100 for n in images for y in flat[n].tolist()]
            per_class.append(loop_mcc(p, target, valid, 1e-5))
        total += sum(per_class) / c
    expected = total / len(groups)
    value = get_loss("mcc", per_image=per_image)(logits, labels)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_multilabel_soft_targets_equal_plain_loop():
    generator = torch.Generator().manual_seed(43)
    logits = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    targets = torch.rand(2, 3, 5, generator=generator, dtype=torch.float64)
    probs = torch.sigmoid(logits)
    expected = sum(
        loop_mcc(probs[n, k].tolist(), targets[n, k].tolist(), [True] * 5, 1e-5) for n in range(2) for k in range(3)
    ) / (2 * 3)
    assert get_loss("mcc", multilabel=True)(logits, targets).item() == pytest.approx(expected, rel=1e-10)


def test_registered_with_its_parameters():
    description = describe_loss("mcc")
    assert description.item_unit == "sample" and description.decomposable and description.reference
    assert {p.name for p in description.parameters} >= {"eps", "per_image", "multilabel", "from_logits", "classes"}
    assert describe_loss("matthews").name == "mcc"


@pytest.mark.parametrize("eps,message", [(0.0, r"`eps` must be in \(0, inf\), got 0"), (-1.0, r"`eps` must be in")])
def test_bad_eps_raises_naming_the_loss(eps, message):
    with pytest.raises(ValueError, match=rf"loss 'mcc': {message}"):
        get_loss("mcc", eps=eps)
