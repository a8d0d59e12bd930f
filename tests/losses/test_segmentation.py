"""dice, generalized_dice, tversky, focal_tversky against hand-computed values, MONAI and the papers' formulas
written out as plain loops; and what every segmentation loss (lovasz included) shares: registration, the two
reductions, ignored pixels, half precision, input checks. Lovasz-specific tests: test_lovasz.py; mcc: test_mcc.py;
the peer-parity options (multi-label, soft labels, probabilities, classes, class weights, per-image losses...):
test_segmentation_options.py; MONAI's and smp's own test tables and formulas: test_segmentation_peers.py."""

import math
import warnings

import pytest
import torch
from monai.losses import DiceLoss as MonaiDice
from monai.losses import GeneralizedDiceLoss as MonaiGeneralizedDice
from monai.losses import TverskyLoss as MonaiTversky
from segmentation_batches import ALL_LOSSES, OVERLAP_LOSSES, hand_case_inputs, make_batch

from hf_losses import describe_loss, get_loss, list_losses
from hf_losses.losses.segmentation import TverskyLoss, overlap_statistics


# ------------------------------------------------------------------------------------------ plain-loop references
def loop_statistics(logits, labels, image_indices, c, ignore_index=-100):
    """tp, |P|, |G| per class over the given images, one pixel at a time (softmax, or sigmoid for C == 1)."""
    tp, pred, target = [0.0] * c, [0.0] * c, [0.0] * c
    for n in image_indices:
        flat_logits = logits[n].reshape(logits.shape[1], -1).tolist()
        for x, y in enumerate(labels[n].reshape(-1).tolist()):
            if y == ignore_index:
                continue
            column = [flat_logits[k][x] for k in range(logits.shape[1])]
            if logits.shape[1] == 1:
                probs, onehot = [1.0 / (1.0 + math.exp(-column[0]))], [1.0 if y == 1 else 0.0]
            else:
                exps = [math.exp(v) for v in column]
                probs = [e / sum(exps) for e in exps]
                onehot = [1.0 if k == y else 0.0 for k in range(c)]
            for k in range(c):
                tp[k] += probs[k] * onehot[k]
                pred[k] += probs[k]
                target[k] += onehot[k]
    return tp, pred, target


def loop_class_losses(name, tp, pred, target, smooth, alpha=0.3, beta=0.7, gamma=0.75):
    """Per-class losses from the papers: Dice (Milletari 2016), Tversky (Salehi 2017), focal-Tversky
    (Abraham & Khan 2019); generalized Dice (Sudre 2017) returns one value for all classes."""
    if name == "generalized_dice":
        weights = [1.0 / g**2 if g > 0 else None for g in target]
        finite = [w for w in weights if w is not None]
        largest = max(finite) if finite else 0.0
        weights = [largest if w is None else w for w in weights]
        numerator = 2 * sum(w * t for w, t in zip(weights, tp)) + smooth
        denominator = sum(w * (p + g) for w, p, g in zip(weights, pred, target)) + smooth
        return [1.0 - numerator / denominator]
    losses = []
    for t, p, g in zip(tp, pred, target):
        if name == "dice":
            losses.append(1.0 - (2 * t + smooth) / (p + g + smooth))
        else:
            index = (t + smooth) / (t + alpha * (p - t) + beta * (g - t) + smooth)
            losses.append(1.0 - index if name == "tversky" else (1.0 - index) ** gamma)
    return losses


def loop_loss(name, logits, labels, per_image=True, include_background=True, smooth=1e-5, **kwargs):
    """The loss as the sum over images of per-image losses / number of images with a labelled pixel
    (per_image), or the loss of the whole batch's statistics."""
    c = logits.shape[1]
    keep = range(c) if include_background or c == 1 else range(1, c)
    groups = [[n] for n in range(logits.shape[0])] if per_image else [list(range(logits.shape[0]))]
    total, count = 0.0, 0
    for images in groups:
        tp, pred, target = loop_statistics(logits, labels, images, c)
        tp, pred, target = [tp[k] for k in keep], [pred[k] for k in keep], [target[k] for k in keep]
        if any((labels[n] != -100).any() for n in images):
            count += 1
        losses = loop_class_losses(name, tp, pred, target, smooth, **kwargs)
        total += sum(losses) / len(losses)
    return total / max(count, 1) if per_image else total


# ------------------------------------------------------------------------------------------ registry
def test_segmentation_losses_are_registered_with_their_units():
    names = list_losses()
    for name in ALL_LOSSES:
        assert name in names
        description = describe_loss(name)
        assert description.item_unit == "sample" and description.decomposable
        assert description.reference
    assert {p.name for p in describe_loss("tversky").parameters} >= {
        "alpha",
        "beta",
        "smooth",
        "per_image",
        "include_background",
    }


def test_per_image_false_is_a_batch_loss_that_ignores_num_items():
    logits, labels = make_batch()
    for name in ALL_LOSSES:
        loss = get_loss(name, per_image=False)
        assert loss.decomposable is False and loss.num_items(labels) == {}
        assert get_loss(name).decomposable is True  # the instance attribute does not leak to the class
        torch.testing.assert_close(loss(logits, labels, num_items_in_batch=100), loss(logits, labels))


# ------------------------------------------------------------------------------------------ hand-computed cases
# The inputs of segmentation_batches.hand_case_inputs. Binary: TP = 1.5, |P| = 1.8, |G| = 2, FP = 0.3, FN = 0.5.
# Three classes: TP = (0.7, 0, 0.3), |P| = (0.8, 0.8, 0.4), |G| = (1, 0, 1).
HAND_CASES = [
    # (name, kwargs, binary?, expected)
    ("dice", {"smooth": 0.0}, True, 1 - 3.0 / 3.8),
    ("dice", {"smooth": 1.0}, True, 1 - 4.0 / 4.8),
    ("generalized_dice", {"smooth": 0.0}, True, 1 - 3.0 / 3.8),
    ("tversky", {"smooth": 0.0}, True, 1 - 1.5 / (1.5 + 0.3 * 0.3 + 0.7 * 0.5)),
    ("tversky", {"smooth": 0.0, "alpha": 0.5, "beta": 0.5}, True, 1 - 3.0 / 3.8),
    ("focal_tversky", {"smooth": 0.0, "gamma": 0.75}, True, (1 - 1.5 / 1.94) ** 0.75),
    ("focal_tversky", {"smooth": 0.0, "gamma": 2.0}, True, (1 - 1.5 / 1.94) ** 2),
    ("dice", {"smooth": 0.0}, False, (0.4 / 1.8 + 1.0 + 0.8 / 1.4) / 3),
    ("dice", {"smooth": 0.0, "include_background": False}, False, (1.0 + 0.8 / 1.4) / 2),
    ("dice", {"smooth": 1.0}, False, (1 - 2.4 / 2.8 + 1 - 1.0 / 1.8 + 1 - 1.6 / 2.4) / 3),
    ("generalized_dice", {"smooth": 0.0}, False, 1 - 2 * 1.0 / 4.0),  # w = (1, max=1, 1)
    ("tversky", {"smooth": 0.0}, False, ((1 - 0.7 / 0.94) + 1.0 + (1 - 0.3 / 0.82)) / 3),
]


@pytest.mark.parametrize("name,kwargs,binary,expected", HAND_CASES)
def test_hand_computed_values(name, kwargs, binary, expected):
    logits, labels = hand_case_inputs(binary)
    for per_image in (True, False):  # one image: both reductions agree
        value = get_loss(name, per_image=per_image, **kwargs)(logits, labels)
        assert value.item() == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------ MONAI
MONAI_CASES = [
    # (name, our kwargs, MONAI class, MONAI kwargs)
    ("dice", {}, MonaiDice, {}),
    ("dice", {"smooth": 0.5}, MonaiDice, {"smooth_nr": 0.5, "smooth_dr": 0.5}),
    ("generalized_dice", {}, MonaiGeneralizedDice, {}),
    ("tversky", {}, MonaiTversky, {"alpha": 0.3, "beta": 0.7}),
    (
        "tversky",
        {"alpha": 0.8, "beta": 0.2, "smooth": 1.0},
        MonaiTversky,
        {"alpha": 0.8, "beta": 0.2, "smooth_nr": 1.0, "smooth_dr": 1.0},
    ),
]


@pytest.mark.parametrize("name,kwargs,monai_class,monai_kwargs", MONAI_CASES)
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 6, 5), (2, 3, 3, 4, 5), (2, 1, 7, 6)], ids=["2d", "3d", "binary"])
def test_equals_monai(name, kwargs, monai_class, monai_kwargs, per_image, include_background, shape):
    logits, labels = make_batch(shape[0], shape[1], shape[2:], seed=sum(shape))
    binary = shape[1] == 1
    ours = get_loss(name, per_image=per_image, include_background=include_background, **kwargs)
    theirs = monai_class(
        softmax=not binary,
        sigmoid=binary,
        to_onehot_y=not binary,
        batch=not per_image,
        include_background=include_background,
        **monai_kwargs,
    )
    logits = logits.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns that include_background is ignored for one channel
        expected = theirs(logits, labels.unsqueeze(1).to(logits.dtype) if binary else labels.unsqueeze(1))
    (expected_grad,) = torch.autograd.grad(expected, logits)
    value = ours(logits, labels)
    (grad,) = torch.autograd.grad(value, logits)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name,kwargs,monai_class,monai_kwargs", [c for c in MONAI_CASES if c[0] != "generalized_dice"])
@pytest.mark.parametrize("per_image", [True, False])
def test_equals_monai_with_ignored_pixels(name, kwargs, monai_class, monai_kwargs, per_image):
    """MONAI >= 1.5 masks ``ignore_index`` pixels in DiceLoss and TverskyLoss as we do."""
    logits, labels = make_batch(3, 4, (6, 5), seed=3, ignore_fraction=0.3)
    ours = get_loss(name, per_image=per_image, **kwargs)
    theirs = monai_class(softmax=True, to_onehot_y=True, batch=not per_image, ignore_index=-100, **monai_kwargs)
    torch.testing.assert_close(ours(logits, labels), theirs(logits, labels.unsqueeze(1)), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ paper formulas, loops
LOOP_CASES = [
    ("dice", {}),
    ("dice", {"smooth": 1.0, "include_background": False}),
    ("generalized_dice", {}),
    ("generalized_dice", {"include_background": False}),
    ("tversky", {"alpha": 0.2, "beta": 0.9, "smooth": 0.1}),
    ("focal_tversky", {"gamma": 0.75}),
    ("focal_tversky", {"gamma": 2.0, "alpha": 0.6, "beta": 0.4, "include_background": False}),
]


@pytest.mark.parametrize("name,kwargs", LOOP_CASES)
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("c", [1, 3])
def test_equals_plain_loop_formula_with_ignored_pixels(name, kwargs, per_image, c):
    logits, labels = make_batch(3, c, (4, 3), seed=7 + c, ignore_fraction=0.25, dtype=torch.float64)
    labels[1] = -100  # a fully ignored image: not an item, contributes nothing
    value = get_loss(name, per_image=per_image, **kwargs)(logits, labels)
    loop_kwargs = {k: v for k, v in kwargs.items() if k in ("alpha", "beta", "gamma")}
    expected = loop_loss(
        name,
        logits,
        labels,
        per_image,
        kwargs.get("include_background", True),
        kwargs.get("smooth", 1e-5),
        **loop_kwargs,
    )
    assert value.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_tversky_with_equal_weights_is_dice_and_focal_tversky_with_gamma_one_is_tversky():
    logits, labels = make_batch(seed=4, ignore_fraction=0.2)
    for per_image in (True, False):
        dice = get_loss("dice", per_image=per_image)(logits, labels)
        tversky = get_loss("tversky", alpha=0.5, beta=0.5, per_image=per_image)(logits, labels)
        torch.testing.assert_close(tversky, dice)
        torch.testing.assert_close(
            get_loss("focal_tversky", gamma=1.0, alpha=0.2, beta=0.8, per_image=per_image)(logits, labels),
            get_loss("tversky", alpha=0.2, beta=0.8, per_image=per_image)(logits, labels),
        )


def test_include_background_has_no_effect_with_one_sigmoid_channel():
    logits, labels = make_batch(2, 1, (4, 4), seed=6)
    for name in ALL_LOSSES:
        torch.testing.assert_close(
            get_loss(name, include_background=False)(logits, labels), get_loss(name)(logits, labels)
        )


def test_logits_without_spatial_dims_are_one_pixel_images():
    logits, labels = make_batch(5, 3, (), seed=8)
    expected = get_loss("dice")(logits.unsqueeze(-1), labels.unsqueeze(-1))
    torch.testing.assert_close(get_loss("dice")(logits, labels), expected)


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("c", [1, 4])
@pytest.mark.parametrize("with_ignored", [False, True])
def test_overlap_statistics_equal_plain_loop_sums(c, with_ignored):
    logits, labels = make_batch(3, c, (3, 4), seed=9, ignore_fraction=0.3 if with_ignored else 0.0, dtype=torch.float64)
    flat_labels = labels.reshape(3, -1)
    valid = (flat_labels != -100) if with_ignored else None
    tp, pred, target = overlap_statistics(logits.reshape(3, c, -1), flat_labels, valid)
    for n in range(3):
        expected = loop_statistics(logits, labels, [n], c)
        for actual, reference in zip((tp, pred, target), expected):
            assert actual[n].tolist() == pytest.approx(reference, rel=1e-12, abs=1e-12)


GRADCHECK_CASES = [(name, per_image, c) for name in ALL_LOSSES for per_image in (True, False) for c in (1, 3)]


@pytest.mark.parametrize("name,per_image,c", GRADCHECK_CASES)
def test_gradcheck_float64(name, per_image, c):
    logits, labels = make_batch(2, c, (2, 3), seed=12 + c, ignore_fraction=0.2, dtype=torch.float64)
    loss = get_loss(name, per_image=per_image)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (logits,))


# ------------------------------------------------------------------------------------------ reduction contract
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_per_image_is_decomposable_over_micro_batches(name):
    logits, labels = make_batch(6, 3, (4, 4), seed=13, ignore_fraction=0.2)
    labels[2] = -100  # a fully ignored image is not an item
    loss = get_loss(name)
    whole = loss(logits, labels)
    total_items = loss.num_items(labels)
    assert total_items["sample"].item() == 5
    parts = [loss(logits[i : i + 2], labels[i : i + 2], num_items_in_batch=total_items) for i in range(0, 6, 2)]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-6, atol=1e-6)
    counts = sum(loss.num_items(labels[i : i + 2])["sample"] for i in range(0, 6, 2))
    assert counts.item() == 5


@pytest.mark.parametrize("name,smooth", [(n, s) for n in OVERLAP_LOSSES for s in (None, 0.0)] + [("lovasz", None)])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("c", [1, 3])
def test_all_ignored_batch_gives_zero_and_zero_gradient(name, smooth, per_image, c):
    logits, labels = make_batch(2, c, (3, 3), seed=14)
    labels.fill_(-100)
    kwargs = {} if smooth is None else {"smooth": smooth}
    if name == "focal_tversky":
        kwargs["gamma"] = 0.5  # the infinite slope of x**0.5 at 0 must not leak
    logits.requires_grad_()
    value = get_loss(name, per_image=per_image, **kwargs)(logits, labels)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("name", OVERLAP_LOSSES)
def test_smooth_zero_with_absent_class_and_partly_ignored_image_is_finite(name):
    logits, labels = make_batch(2, 3, (3, 3), seed=15)
    labels[0] = -100
    labels[1] = 1
    logits.requires_grad_()
    value = get_loss(name, smooth=0.0)(logits, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_image", [True, False])
def test_half_precision_logits_give_float32_close_to_float32(name, dtype, per_image):
    logits, labels = make_batch(2, 3, (8, 8), seed=16, ignore_fraction=0.1)
    loss = get_loss(name, per_image=per_image)
    half = logits.to(dtype).requires_grad_()
    value = loss(half, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()
    torch.testing.assert_close(value, loss(logits.to(dtype).float(), labels), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(value, loss(logits, labels), rtol=0, atol=2e-2)


def test_autocast_bf16_computes_in_float32():
    logits, labels = make_batch(2, 3, (8, 8), seed=17)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = get_loss("dice")(logits, labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, get_loss("dice")(logits, labels))


# ------------------------------------------------------------------------------------------ bad input
BAD_CONSTRUCTION = [
    ("dice", {"smooth": -1.0}, ValueError, "`smooth` must be in [0, inf), got -1"),
    ("tversky", {"alpha": -0.1}, ValueError, "`alpha` must be in [0, inf), got -0.1"),
    ("tversky", {"beta": -2}, ValueError, "`beta` must be in [0, inf), got -2"),
    ("tversky", {"alpha": 0.0, "beta": 0.0}, ValueError, "`alpha` + `beta` must be > 0"),
    ("focal_tversky", {"gamma": -1.0}, ValueError, "`gamma` must be in (0, inf), got -1"),
    ("focal_tversky", {"gamma": 0.0}, ValueError, "`gamma` must be in (0, inf), got 0"),
    ("focal_tversky", {"alpha": 0, "beta": 0}, ValueError, "`alpha` + `beta` must be > 0"),
    ("dice", {"per_image": "yes"}, TypeError, "parameter 'per_image' must be bool"),
    ("dice", {"smoth": 1.0}, ValueError, "Did you mean 'smooth'?"),
]


@pytest.mark.parametrize("name,kwargs,error,message", BAD_CONSTRUCTION)
def test_bad_parameters_raise_naming_the_loss_and_parameter(name, kwargs, error, message):
    with pytest.raises(error) as info:
        get_loss(name, **kwargs)
    assert message in str(info.value) and name in str(info.value)


def test_direct_construction_validates_too():
    with pytest.raises(TypeError, match="loss 'tversky': `per_image` must be True or False, got 1"):
        TverskyLoss(per_image=1)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_bad_inputs_raise_before_computing(name):
    loss = get_loss(name)
    logits, labels = make_batch(2, 3, (4, 4))
    bad = labels.clone()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"must be in \[0, 3\) or ignore_index=-100; found 3"):
        loss(logits, bad)
    with pytest.raises(ValueError, match=r"`labels` shape \(2, 4, 5\) does not match logits \(2, 3, 4, 4\)"):
        loss(logits, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="`labels` must hold integer class indices"):
        loss(logits, labels.float())
    binary_logits, binary_labels = make_batch(2, 1, (4, 4))
    binary_labels[1, 2, 2] = 2
    with pytest.raises(ValueError, match=r"must be in \[0, 2\) or ignore_index=-100; found 2"):
        loss(binary_logits, binary_labels)
    with pytest.raises(ValueError, match=r"`labels` shape \(2, 4\) does not match logits \(2, 1, 4, 4\)"):
        loss(binary_logits, binary_labels[:, 0])


# ------------------------------------------------------------------------------------------ CUDA (GPU machines only)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("c", [1, 4])
def test_cuda_equals_cpu(name, per_image, c):
    logits, labels = make_batch(4, c, (16, 16), seed=20 + c, ignore_fraction=0.1)
    loss = get_loss(name, per_image=per_image)
    cpu = logits.clone().requires_grad_()
    expected = loss(cpu, labels)
    expected.backward()
    cuda = logits.cuda().requires_grad_()
    value = loss(cuda, labels.cuda())
    value.backward()
    assert value.device.type == "cuda"
    torch.testing.assert_close(value.cpu(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cuda.grad.cpu(), cpu.grad, rtol=1e-4, atol=1e-7)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = loss(cuda.bfloat16(), labels.cuda())
    assert half.dtype == torch.float32 and torch.isfinite(half)
    torch.testing.assert_close(half.cpu(), expected, rtol=0, atol=2e-2)


def test_composite_with_cross_entropy_is_decomposable_with_per_unit_counts():
    """``0.5*cross_entropy+0.5*dice``: CE divides by labelled pixels, Dice by labelled images."""
    logits, labels = make_batch(4, 3, (4, 4), seed=18, ignore_fraction=0.2)
    labels[3] = -100
    loss = get_loss("0.5*cross_entropy+0.5*dice")
    counts = loss.num_items(labels)
    assert counts["sample"].item() == 3 and counts["label"].item() == (labels != -100).sum().item()
    whole = loss(logits, labels)
    expected = 0.5 * torch.nn.functional.cross_entropy(logits, labels) + 0.5 * get_loss("dice")(logits, labels)
    torch.testing.assert_close(whole, expected)
    parts = sum(loss(logits[i : i + 2], labels[i : i + 2], num_items_in_batch=counts) for i in (0, 2))
    torch.testing.assert_close(parts, whole, rtol=1e-6, atol=1e-6)
