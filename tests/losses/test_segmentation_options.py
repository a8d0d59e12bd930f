"""The options every segmentation loss gained for peer parity, against hand-computed values and identities:
per-image losses (reduction="none" / "sum"), data weights per image, multi-label and soft targets, probability
inputs, class subsets and weights, log_loss, separate smoothing, and the conventions kept on purpose; the contract
with them (decomposition, gradients, half precision, no host synchronisation: the meta device has no values to read);
and every refusal with its message. Peer values: test_segmentation_peers.py."""

import math

import pytest
import torch
from segmentation_batches import hand_case_inputs, make_batch, probabilities

from hf_losses import describe_loss, get_loss
from hf_losses.losses.base import labels_compatible
from hf_losses.losses.segmentation import DiceLoss

PER_IMAGE_LOSSES = ["dice", "generalized_dice", "tversky", "focal_tversky", "mcc", "lovasz", "lovasz_hinge"]


def batch_for(name, n=4, spatial=(4, 3), seed=0, ignore_fraction=0.2, dtype=torch.float32):
    return make_batch(n, 1 if name == "lovasz_hinge" else 3, spatial, seed, ignore_fraction, dtype)


def multilabel_batch(n=3, c=3, spatial=(4, 3), seed=0, soft=False, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, *spatial, generator=generator, dtype=dtype) * 2
    targets = torch.rand(logits.shape, generator=generator, dtype=dtype)
    return logits, targets if soft else (targets < 0.4).to(dtype)


# ------------------------------------------------------------------------------------------ per-image losses
@pytest.mark.parametrize("name", PER_IMAGE_LOSSES)
def test_reduction_none_gives_each_images_own_loss(name):
    logits, labels = batch_for(name, seed=1, dtype=torch.float64)
    labels[2] = -100  # no labelled pixel: loss 0, not an item
    items = get_loss(name, reduction="none")(logits, labels)
    assert items.shape == (4,) and items[2].item() == 0.0
    for n in (0, 1, 3):
        alone = get_loss(name)(logits[n : n + 1], labels[n : n + 1])
        assert items[n].item() == pytest.approx(alone.item(), rel=1e-12)
    assert get_loss(name, reduction="sum")(logits, labels).item() == pytest.approx(items.sum().item(), rel=1e-12)
    assert get_loss(name)(logits, labels).item() == pytest.approx(items.sum().item() / 3, rel=1e-12)


@pytest.mark.parametrize("name", PER_IMAGE_LOSSES)
def test_sample_weight_weighs_images(name):
    logits, labels = batch_for(name, seed=2, dtype=torch.float64)
    labels[3] = -100
    weights = torch.tensor([0.5, 2.0, 0.0, 7.0], dtype=torch.float64)
    items = get_loss(name, reduction="none")(logits, labels)
    value = get_loss(name)(logits, labels, sample_weight=weights)
    assert value.item() == pytest.approx((weights * items).sum().item() / 3, rel=1e-12)  # 3 labelled images
    weighted_mean = get_loss(name, normalize="weight")(logits, labels, sample_weight=weights)
    assert weighted_mean.item() == pytest.approx((weights * items).sum().item() / 2.5, rel=1e-12)  # 0.5 + 2 + 0


@pytest.mark.parametrize("name", PER_IMAGE_LOSSES)
@pytest.mark.parametrize("normalize", ["count", "weight"])
def test_sample_weight_is_exact_over_micro_batches(name, normalize):
    logits, labels = batch_for(name, n=6, seed=3, dtype=torch.float64)
    labels[4] = -100
    weights = torch.linspace(0.5, 3.0, 6, dtype=torch.float64)
    loss = get_loss(name, normalize=normalize)
    whole = loss(logits, labels, sample_weight=weights)
    counts = loss.num_items(labels, sample_weight=weights)
    parts = sum(
        loss(logits[i : i + 2], labels[i : i + 2], num_items_in_batch=counts, sample_weight=weights[i : i + 2])
        for i in (0, 2, 4)
    )
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------ modes and inputs
def test_label_kind_is_an_instance_attribute_the_trainer_reads():
    assert get_loss("dice").label_kind == "index"
    assert get_loss("dice", multilabel=True).label_kind == "binary"
    assert get_loss("tversky", soft_label=True).label_kind == "binary"
    assert get_loss("mcc", multilabel=True).label_kind == "binary"
    assert DiceLoss.label_kind == "index" and describe_loss("dice").label_kind == "index"  # the class is unchanged
    assert labels_compatible(get_loss("dice", multilabel=True).label_kind, "binary")
    assert not labels_compatible(get_loss("dice", multilabel=True).label_kind, "index")
    composite = get_loss("0.5*bce+0.5*dice", dice={"multilabel": True})  # float targets for both components
    logits, targets = multilabel_batch(seed=4)
    expected = 0.5 * get_loss("bce")(logits, targets) + 0.5 * get_loss("dice", multilabel=True)(logits, targets)
    torch.testing.assert_close(composite(logits, targets), expected)


@pytest.mark.parametrize("name", ["dice", "generalized_dice", "tversky", "focal_tversky", "mcc"])
def test_multilabel_one_channel_equals_binary_index_labels(name):
    logits, labels = make_batch(3, 1, (4, 4), seed=5, dtype=torch.float64)
    float_targets = labels.unsqueeze(1).double()
    torch.testing.assert_close(get_loss(name, multilabel=True)(logits, float_targets), get_loss(name)(logits, labels))


@pytest.mark.parametrize("name", ["dice", "generalized_dice", "tversky", "mcc"])
def test_multilabel_is_each_channel_its_own_binary_problem(name):
    """Without class weights, a multi-label loss is the mean of the per-channel binary losses."""
    logits, targets = multilabel_batch(seed=6)
    per_channel = [get_loss(name, multilabel=True)(logits[:, k : k + 1], targets[:, k : k + 1]) for k in range(3)]
    if name == "generalized_dice":  # one score pools the channels
        return
    torch.testing.assert_close(get_loss(name, multilabel=True)(logits, targets), sum(per_channel) / 3)


def test_multilabel_channel_without_labelled_entry_is_left_out_of_that_images_class_mean():
    logits, targets = multilabel_batch(n=2, seed=7)
    targets[0, 1] = -100.0  # channel 1 of image 0 not annotated (a partially labelled dataset)
    loss = get_loss("dice", multilabel=True, reduction="none")
    items = loss(logits, targets)
    channels = [get_loss("dice", multilabel=True)(logits[:1, k : k + 1], targets[:1, k : k + 1]) for k in (0, 2)]
    assert items[0].item() == pytest.approx(sum(channels).item() / 2, rel=1e-12)


@pytest.mark.parametrize("name", ["dice", "generalized_dice", "tversky", "focal_tversky"])
@pytest.mark.parametrize("multilabel", [True, False])
def test_soft_label_gives_zero_loss_at_the_target(name, multilabel):
    """Wang et al. 2023: with TP = sum min(p, y) the loss is 0 where the prediction equals a soft target; the
    product form sum p y is not."""
    logits, _ = multilabel_batch(seed=8)
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)
    kwargs = {"multilabel": multilabel, "from_logits": False, "smooth": 0.0}
    assert get_loss(name, soft_label=True, **kwargs)(probs, probs).item() == pytest.approx(0.0, abs=1e-12)
    if multilabel:
        assert get_loss(name, **kwargs)(probs, probs).item() > 0.05


def test_soft_label_equals_product_form_for_hard_targets():
    logits, targets = multilabel_batch(seed=9)
    for name in ("dice", "tversky", "generalized_dice"):
        torch.testing.assert_close(
            get_loss(name, multilabel=True, soft_label=True)(logits, targets),
            get_loss(name, multilabel=True)(logits, targets),
        )
    onehot = torch.nn.functional.one_hot(targets.argmax(1), 3).movedim(-1, 1).double()  # softmax, one-hot targets
    torch.testing.assert_close(
        get_loss("dice", soft_label=True)(logits, onehot), get_loss("dice")(logits, targets.argmax(1))
    )


@pytest.mark.parametrize("name", PER_IMAGE_LOSSES[:-1])
@pytest.mark.parametrize("c", [1, 3])
def test_from_logits_false_takes_the_probabilities(name, c):
    logits, labels = make_batch(3, c, (4, 4), seed=10 + c, ignore_fraction=0.2, dtype=torch.float64)
    for per_image in (True, False):
        expected = get_loss(name, per_image=per_image)(logits, labels)
        value = get_loss(name, per_image=per_image, from_logits=False)(probabilities(logits), labels)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------ class options, scores
# The three-class hand case of segmentation_batches: TP = (0.7, 0, 0.3), |P| = (0.8, 0.8, 0.4), |G| = (1, 0, 1);
# sum p^2 = (0.5, 0.4, 0.1), sum y^2 = |G|. Dice per class with smooth 0: 1.4/1.8, 0/0.8, 0.6/1.4.
DICE = [1.4 / 1.8, 0.0, 0.6 / 1.4]
HAND_CASES = [
    # (name, kwargs, expected)
    ("dice", {"classes": [0, 2]}, (2 - DICE[0] - DICE[2]) / 2),
    ("dice", {"class_weights": [1.0, 2.0, 5.0]}, (1 * (1 - DICE[0]) + 2 * 1 + 5 * (1 - DICE[2])) / 8),
    ("dice", {"classes": [1, 2], "class_weights": [9.0, 1.0, 3.0]}, (1 * 1 + 3 * (1 - DICE[2])) / 4),
    ("dice", {"log_loss": True}, (-math.log(DICE[0]) - math.log(1e-7) - math.log(DICE[2])) / 3),
    ("dice", {"squared_pred": True}, ((1 - 1.4 / 1.5) + 1 + (1 - 0.6 / 1.1)) / 3),
    ("dice", {"jaccard": True}, ((1 - 0.7 / 1.1) + 1 + (1 - 0.3 / 1.1)) / 3),  # TP / (|P| + |G| - TP)
    ("dice", {"smooth_nr": 0.0, "smooth_dr": 1.0}, ((1 - 1.4 / 2.8) + 1 + (1 - 0.6 / 2.4)) / 3),
    ("dice", {"smooth_nr": 1.0, "smooth_dr": 0.0}, ((1 - 2.4 / 1.8) + (1 - 1 / 0.8) + (1 - 1.6 / 1.4)) / 3),
    ("generalized_dice", {"w_type": "uniform"}, 1 - 2 * 1.0 / 4.0),  # pooled sums: 2 * 1 / (2 + 2)
    ("generalized_dice", {"w_type": "simple"}, 1 - 2 * 1.0 / 4.0),  # |G| = 1 or absent (then the max weight, 1)
    ("generalized_dice", {"w_type": "uniform", "class_weights": [2.0, 1.0, 0.0]}, 1 - 2 * 1.4 / (2 * 1.8 + 0.8)),
    ("generalized_dice", {"classes": [1, 2], "w_type": "uniform"}, 1 - 2 * 0.3 / (0.8 + 1.4)),
    ("tversky", {"log_loss": True}, (-math.log(0.7 / 0.94) - math.log(1e-7) - math.log(0.3 / 0.82)) / 3),
    ("focal_tversky", {"log_loss": True, "gamma": 2.0, "classes": [0]}, math.log(0.7 / 0.94) ** 2),
]


@pytest.mark.parametrize("name,kwargs,expected", HAND_CASES)
def test_hand_computed_values(name, kwargs, expected):
    logits, labels = hand_case_inputs(binary=False)
    for per_image in (True, False):  # one image: both reductions agree
        value = get_loss(name, per_image=per_image, smooth=0.0, **kwargs)(logits, labels)
        assert value.item() == pytest.approx(expected, abs=1e-12)


def test_classes_without_background_equal_include_background_false():
    logits, labels = make_batch(3, 4, (4, 4), seed=12, ignore_fraction=0.2)
    for name in ("dice", "generalized_dice", "tversky", "focal_tversky", "mcc", "lovasz"):
        extra = {"classes": "all"} if name == "lovasz" else {}  # a list averages over all the listed classes
        torch.testing.assert_close(
            get_loss(name, classes=[1, 2, 3])(logits, labels),
            get_loss(name, include_background=False, **extra)(logits, labels),
        )


# ------------------------------------------------------------------------------------------ conventions kept
@pytest.mark.parametrize("name", ["dice", "generalized_dice", "tversky", "focal_tversky", "mcc", "lovasz"])
@pytest.mark.parametrize("per_image", [True, False])
def test_all_ignored_batch_gives_zero_even_with_unequal_smoothing_or_eps(name, per_image):
    """1 - s_nr / s_dr (MONAI) or MCC's eps would give a non-zero loss to a batch with no labelled pixel."""
    logits, labels = make_batch(2, 3, (3, 3), seed=13)
    labels.fill_(-100)
    kwargs = {} if name in ("mcc", "lovasz") else {"smooth_nr": 0.0, "smooth_dr": 1e-3}
    logits.requires_grad_()
    value = get_loss(name, per_image=per_image, **kwargs)(logits, labels)
    value.backward()
    assert value.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_zero_denominator_is_a_perfect_score():
    """smooth_dr = 0 with nothing labelled and nothing predicted: 0 / 0 counts as a perfect score (loss 0)."""
    probs = torch.tensor([[[0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 0, 0]])
    for name in ("dice", "tversky", "generalized_dice"):
        assert get_loss(name, from_logits=False, smooth_nr=0.5, smooth_dr=0.0)(probs, labels).item() == 0.0


# ------------------------------------------------------------------------------------------ contract
OPTION_CASES = [
    ("dice", {"squared_pred": True, "jaccard": True, "smooth_nr": 0.0, "smooth_dr": 0.1}),
    ("dice", {"log_loss": True, "class_weights": [0.5, 2.0, 1.0]}),
    ("generalized_dice", {"w_type": "simple", "classes": [0, 2]}),
    ("tversky", {"multilabel": True, "soft_label": True}),
    ("focal_tversky", {"gamma": 1.5, "soft_label": True}),
    ("mcc", {}),
    ("mcc", {"multilabel": True, "class_weights": [1.0, 0.0, 2.0]}),
    ("lovasz", {"classes": [0, 2]}),
    ("lovasz_hinge", {}),
]


def option_batch(name, kwargs, n=2, spatial=(2, 3), seed=0, dtype=torch.float64, ignore_fraction=0.2):
    if kwargs.get("multilabel") or kwargs.get("soft_label"):
        logits, targets = multilabel_batch(n, 3, spatial, seed, soft=True, dtype=dtype)
        if not kwargs.get("multilabel"):
            targets = torch.softmax(targets * 4, 1)
        ignored = torch.rand(targets.shape, generator=torch.Generator().manual_seed(seed)) < ignore_fraction
        return logits, targets.masked_fill(ignored, -100.0)
    return batch_for(name, n, spatial, seed, ignore_fraction, dtype)


@pytest.mark.parametrize("name,kwargs", OPTION_CASES)
@pytest.mark.parametrize("per_image", [True, False])
def test_gradcheck_float64_with_options(name, kwargs, per_image):
    logits, labels = option_batch(name, kwargs, seed=14)
    loss = get_loss(name, per_image=per_image, **kwargs)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (logits,))


@pytest.mark.parametrize("name,kwargs", OPTION_CASES)
def test_per_image_is_exact_over_micro_batches_with_options(name, kwargs):
    logits, labels = option_batch(name, kwargs, n=6, spatial=(4, 4), seed=15)
    labels[1] = -100
    loss = get_loss(name, **kwargs)
    counts = loss.num_items(labels)
    assert counts["sample"].item() == 5
    parts = sum(loss(logits[i : i + 3], labels[i : i + 3], num_items_in_batch=counts) for i in (0, 3))
    torch.testing.assert_close(parts, loss(logits, labels), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kwargs", OPTION_CASES)
@pytest.mark.parametrize("per_image", [True, False])
def test_half_precision_computes_in_float32(name, kwargs, per_image):
    logits, labels = option_batch(name, kwargs, n=2, spatial=(6, 6), seed=16, dtype=torch.float32)
    loss = get_loss(name, per_image=per_image, **kwargs)
    half = logits.bfloat16().requires_grad_()
    value = loss(half, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(half.grad.float()).all()
    torch.testing.assert_close(value, loss(half.detach().float(), labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs", OPTION_CASES + [("dice", {}), ("lovasz", {"classes": "all"})])
@pytest.mark.parametrize("per_image", [True, False])
def test_no_value_is_read_on_the_host_off_the_cpu(name, kwargs, per_image):
    """The meta device holds shapes, no values: any host read (``.item()``, ``bool(t)``, a boolean index) raises,
    so a loss that runs there takes no device->host sync on an accelerator."""
    logits, labels = option_batch(name, kwargs, n=2, spatial=(4, 4), seed=17, dtype=torch.float32)
    loss = get_loss(name, per_image=per_image, **kwargs).to("meta")
    value = loss(logits.to("meta"), labels.to("meta"))
    assert value.device.type == "meta" and value.shape == ()
    if per_image:
        assert get_loss(name, reduction="none", **kwargs).to("meta")(logits.to("meta"), labels.to("meta")).shape == (2,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,kwargs", OPTION_CASES)
@pytest.mark.parametrize("per_image", [True, False])
def test_cuda_takes_no_host_sync_and_equals_cpu(name, kwargs, per_image):
    logits, labels = option_batch(name, kwargs, n=4, spatial=(8, 8), seed=18, dtype=torch.float32)
    loss = get_loss(name, per_image=per_image, **kwargs)
    expected = loss(logits, labels)
    cuda_loss, cuda_logits, cuda_labels = loss.cuda(), logits.cuda(), labels.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value = cuda_loss(cuda_logits, cuda_labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(value.cpu(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ refusals
BAD_CONSTRUCTION = [
    ("dice", {"smooth_nr": -1.0}, ValueError, r"`smooth_nr` must be in \[0, inf\), got -1"),
    ("tversky", {"smooth_dr": float("nan")}, ValueError, r"`smooth_dr` must be a finite number"),
    ("dice", {"classes": []}, ValueError, r"`classes` must be a non-empty list of distinct class indices"),
    ("dice", {"classes": [1, 1]}, ValueError, r"`classes` must be a non-empty list of distinct class indices"),
    ("dice", {"classes": [-1]}, ValueError, r"`classes` must be a non-empty list of distinct class indices"),
    ("dice", {"classes": [0, 1], "include_background": False}, ValueError, r"includes class 0, the background"),
    ("dice", {"class_weights": [0, 0]}, ValueError, r"`class_weights` must have at least one entry > 0"),
    ("dice", {"class_weights": [1, 0, 0], "classes": [1, 2]}, ValueError, r"every class the loss averages over has"),
    ("dice", {"class_weights": [1, 0], "include_background": False}, ValueError, r"every class the loss averages"),
    ("dice", {"class_weights": [1, 2], "classes": [2]}, ValueError, r"names class 2 but `class_weights` has 2 entries"),
    ("dice", {"squared_pred": True, "soft_label": True, "multilabel": True}, ValueError, r"`soft_label=True` has no"),
    ("generalized_dice", {"w_type": "cube"}, ValueError, r"parameter 'w_type' must be one of 'square', 'simple'"),
    ("dice", {"per_image": False, "reduction": "none"}, ValueError, r"`reduction='none'` needs one loss per image"),
    ("mcc", {"per_image": False, "normalize": "weight"}, ValueError, r"`normalize='weight'` needs one loss per image"),
    ("dice", {"reduction": "max"}, ValueError, r"parameter 'reduction' must be one of 'mean', 'sum', 'none'"),
    ("dice", {"multilabel": 1}, TypeError, r"parameter 'multilabel' must be bool"),
    ("lovasz_hinge", {"include_background": False}, ValueError, r"unknown parameter 'include_background'"),
]


@pytest.mark.parametrize("name,kwargs,error,message", BAD_CONSTRUCTION)
def test_bad_parameters_raise_naming_the_loss_and_parameter(name, kwargs, error, message):
    with pytest.raises(error, match=rf"loss '{name}': .*{message}"):
        get_loss(name, **kwargs)


def test_per_image_false_refuses_sample_weight():
    logits, labels = make_batch(2, 3, (3, 3))
    with pytest.raises(ValueError, match=r"loss 'dice': data weights \(`sample_weight`\) need per-item losses"):
        get_loss("dice", per_image=False)(logits, labels, sample_weight=torch.ones(2))


BAD_CALLS = [
    # (name, kwargs, logits shape, labels, error, message)
    ("dice", {"classes": [0, 3]}, (2, 3, 4), "index", ValueError, r"`classes` \[0, 3\] names class 3 but the logits"),
    ("dice", {"class_weights": [1, 2]}, (2, 3, 4), "index", ValueError, r"`class_weights` has 2 entries but the log"),
    ("tversky", {"class_weights": [1]}, (2, 1, 4), "index", ValueError, r"`class_weights` chooses or weighs .* one"),
    ("mcc", {"classes": [0]}, (2, 1, 4), "index", ValueError, r"`classes` chooses or weighs classes .* one channel"),
    ("dice", {"multilabel": True}, (2, 3, 4), "index", TypeError, r"`labels` must be float targets in \[0, 1\] sha"),
    ("mcc", {}, (2, 1, 4), "float", TypeError, r"`labels` must hold integer class indices .* set multilabel=True\."),
    ("dice", {}, (2, 3, 4), "float", TypeError, r"`labels` must hold integer class .* or soft_label=True \(class"),
    ("dice", {"multilabel": True}, (2, 3, 4), "too-high", ValueError, r"`labels` must be targets in \[0, 1\] or ig"),
    ("dice", {"multilabel": True}, (2, 3, 4), "short", ValueError, r"`labels` shape \(2, 3, 3\) must equal logits"),
    ("dice", {"multilabel": True}, (6,), "flat", ValueError, r"`logits` must be \(N, C, d1, ...\) with one channel"),
    ("tversky", {"soft_label": True}, (2, 3, 4), "index", TypeError, r"`labels` must be float targets in \[0, 1\]"),
    ("dice", {"from_logits": False}, (2, 3, 4), "index", ValueError, r"`logits` must be probabilities \(from_logit"),
    ("lovasz", {"from_logits": False}, (2, 3, 4), "index", ValueError, r"`logits` must be probabilities \(from_logi"),
]


@pytest.mark.parametrize("name,kwargs,shape,labels_as,error,message", BAD_CALLS)
def test_bad_inputs_raise_before_computing(name, kwargs, shape, labels_as, error, message):
    logits = torch.randn(*shape) * 3  # from_logits=False: logits are no probabilities
    index = torch.randint(0, max(shape[1], 2) if len(shape) > 1 else 2, (shape[0],) + shape[2:])
    labels = {
        "index": index,
        "too-high": torch.full(shape, 1.5),
        "short": torch.zeros(shape[:2] + (3,)),
        "flat": torch.zeros(shape),
        "float": torch.zeros(shape),
    }[labels_as]
    with pytest.raises(error, match=rf"loss '{name}': {message}"):
        get_loss(name, **kwargs)(logits, labels)


def test_describe_lists_the_new_parameters():
    parameters = {p.name: p for p in describe_loss("dice").parameters}
    assert {"smooth_nr", "smooth_dr", "squared_pred", "jaccard", "log_loss", "classes", "class_weights"} <= set(
        parameters
    )
    assert {"multilabel", "soft_label", "from_logits", "reduction", "normalize"} <= set(parameters)
    assert parameters["smooth"].default == 1e-5 and parameters["smooth_nr"].default is None
    w_type = {p.name: p for p in describe_loss("generalized_dice").parameters}["w_type"]
    assert w_type.default == "square" and "'simple'" in w_type.type and "'uniform'" in w_type.type
    assert "lovasz_hinge" in str(describe_loss("lovasz_hinge")) and describe_loss("lovasz_hinge").reference
