"""Nothing silent: a catalogue of inputs that trained on silently (an identically-zero loss, NaN gradients) or
failed with an error from inside torch, each now a clear error naming the loss, the parameter and what is
allowed, a loud warning, or a correct result (value and gradient).

One table per class:

1. degenerate parameters accepted at construction (all-zero weights, infinite or NaN numbers, parameter
   combinations that make the loss a constant);
2. per-call inputs of the logits losses (label dtypes, devices, empty batches, ``num_items_in_batch``, non-finite
   targets, shapes, float64, one class);
3. misuse of the hidden-states loss ``causal_lm`` (head weight and bias: devices, dtypes, shapes);
4. the contrastive loss ``info_nce`` (empty, one pair, no dimension, shapes, dtypes, devices).

Errors are asserted with their exact type and a regex naming the loss and the parameter in backquotes.
Devices are tested on the CPU with the ``meta`` device.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from hf_losses import get_loss

INF, NAN = float("inf"), float("nan")
COSTS = [[0.0, 1.0, 4.0], [2.0, 0.0, 1.0], [8.0, 3.0, 0.0]]
REQUIRED = {
    "class_balanced": {"samples_per_class": [50, 20, 5]},
    "ldam": {"samples_per_class": [50, 20, 5], "scale": 2.0},
    "cost_sensitive": {"cost_matrix": COSTS},
    "relevance_diversity": {"diversity_weight": 0.0, "top_k": 2},
}


def build(name, **kwargs):
    return get_loss(name, **{**REQUIRED.get(name, {}), **kwargs})


def assert_raises(error, pattern, call):
    """``call()`` raises exactly ``error`` (not a subclass: not torch's RuntimeError) whose message matches."""
    with pytest.raises(Exception) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert re.search(pattern, str(info.value)), str(info.value)


def index_batch(n=4, c=3, spatial=(), seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c) + tuple(spatial), generator=generator).requires_grad_()
    labels = torch.randint(0, c, (n,) + tuple(spatial), generator=generator)
    return logits, labels


def float_batch(n=4, c=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator).requires_grad_()
    return logits, torch.rand(n, c, generator=generator).round()


def value_and_grad(loss, logits, *args, **kwargs):
    value = loss(logits, *args, **kwargs)
    (grad,) = torch.autograd.grad(value, logits)
    return value.detach(), grad


# ================================================================================================ 1. parameters
DEGENERATE_PARAMETERS = {
    # every component weight zero: identically 0
    "composite-expression-all-zero": (
        "0*cross_entropy+0*dice",
        {},
        ValueError,
        r"loss 'composite': every component has weight 0 \(`weights\['cross_entropy'\]`=0, `weights\['dice'\]`=0\)",
    ),
    "composite-weights-all-zero": (
        "composite",
        {"components": ["cross_entropy", "dice"], "weights": {"cross_entropy": 0, "dice": 0.0}},
        ValueError,
        r"loss 'composite': every component has weight 0 .*give at least one component a weight > 0",
    ),
    "composite-uncertainty-all-zero": (
        "0*cross_entropy+0*lovasz",
        {"weighting": "uncertainty"},
        ValueError,
        r"loss 'composite': every component has weight 0 \(`weights\['cross_entropy'\]`=0",
    ),
    "composite-schedule-zero-at-every-step": (
        "composite",
        {"components": ["cross_entropy"], "schedules": {"cross_entropy": 0.0}},
        ValueError,
        r"loss 'composite': every component has weight 0 \(`schedules\['cross_entropy'\]` is 0 at every step\)",
    ),
    "relevance_diversity-all-weights-zero": (
        "relevance_diversity",
        {"relevance_weight": 0.0, "diversity_weight": 0.0},
        ValueError,
        r"loss 'relevance_diversity': every component has weight 0 \(`relevance_weight`=0, `diversity_weight`=0, "
        r"`popularity_weight`=0\)",
    ),
    # every class weight zero: identically 0
    "cross_entropy-weight-all-zero": (
        "cross_entropy",
        {"weight": [0, 0, 0]},
        ValueError,
        r"loss 'cross_entropy': `weight` must have at least one entry > 0",
    ),
    "focal-alpha-all-zero": (
        "focal",
        {"alpha": [0.0, 0.0]},
        ValueError,
        r"loss 'focal': `alpha` must have at least one entry > 0",
    ),
    "ldam-weight-all-zero": (
        "ldam",
        {"weight": torch.zeros(3)},
        ValueError,
        r"loss 'ldam': `weight` must have at least one entry > 0",
    ),
    "causal_lm-class_weights-all-zero": (
        "causal_lm",
        {"class_weights": [0.0] * 5},
        ValueError,
        r"loss 'causal_lm': `class_weights` must have at least one entry > 0",
    ),
    "relevance_diversity-item_popularity-all-zero": (
        "relevance_diversity",
        {"item_popularity": [0, 0, 0]},
        ValueError,
        r"loss 'relevance_diversity': `item_popularity` .*(> 0|positive)",
    ),
    # an infinite focusing parameter
    "focal-gamma-inf": (
        "focal",
        {"gamma": INF},
        ValueError,
        r"loss 'focal': `gamma` must be a finite number in \[0, inf\)",
    ),
    "sigmoid_focal-gamma-inf": (
        "sigmoid_focal",
        {"gamma": INF},
        ValueError,
        r"loss 'sigmoid_focal': `gamma` must be a finite number in \[0, inf\)",
    ),
    "asl-gamma_neg-inf": ("asl", {"gamma_neg": INF}, ValueError, r"loss 'asl': `gamma_neg` must be a finite number"),
    "focal_tversky-gamma-inf": (
        "focal_tversky",
        {"gamma": INF},
        ValueError,
        r"loss 'focal_tversky': `gamma` must be a finite number in \(0, inf\)",
    ),
    "class_balanced-gamma-inf": (
        "class_balanced",
        {"base": "focal", "gamma": INF},
        ValueError,
        r"loss 'class_balanced': `gamma` must be a finite number",
    ),
    # inf / nan where a number makes no sense
    "dice-smooth-inf": ("dice", {"smooth": INF}, ValueError, r"loss 'dice': `smooth` must be a finite number"),
    "dice-smooth-nan": ("dice", {"smooth": NAN}, ValueError, r"loss 'dice': `smooth` must be .*(nan|NaN)"),
    "tversky-alpha-inf": ("tversky", {"alpha": INF}, ValueError, r"loss 'tversky': `alpha` must be a finite number"),
    "info_nce-temperature-inf": (
        "info_nce",
        {"temperature": INF},
        ValueError,
        r"loss 'info_nce': `temperature` must be a finite number in \(0, inf\)",
    ),
    "cross_entropy-label_smoothing-nan": (
        "cross_entropy",
        {"label_smoothing": NAN},
        ValueError,
        r"loss 'cross_entropy': `label_smoothing` must be .*(nan|NaN)",
    ),
    "poly1-epsilon-inf": ("poly1", {"epsilon": INF}, ValueError, r"loss 'poly1': `epsilon` must be a finite number"),
    "huber-delta-inf": ("huber", {"delta": INF}, ValueError, r"loss 'huber': `delta` must be a finite number"),
    "ldam-scale-inf": ("ldam", {"scale": INF}, ValueError, r"loss 'ldam': `scale` must be a finite number"),
    "ldam-max_margin-inf": ("ldam", {"max_margin": INF}, ValueError, r"loss 'ldam': `max_margin` must be a finite"),
    "cost_sensitive-cost_weight-inf": (
        "cost_sensitive",
        {"cost_weight": INF},
        ValueError,
        r"loss 'cost_sensitive': `cost_weight` must be a finite number",
    ),
    "cost_sensitive-cost_matrix-nan": (
        "cost_sensitive",
        {"cost_matrix": [[0.0, NAN], [1.0, 0.0]]},
        ValueError,
        r"loss 'cost_sensitive': `cost_matrix` must be finite",
    ),
    "fn_penalty-fn_cost-inf": (
        "fn_penalty",
        {"fn_cost": INF},
        ValueError,
        r"loss 'fn_penalty': `fn_cost` must be a finite number",
    ),
    "causal_lm-softcap-inf": (
        "causal_lm",
        {"softcap": INF},
        ValueError,
        r"loss 'causal_lm': `softcap` must be a finite",
    ),
    "causal_lm-z_loss-inf": ("causal_lm", {"z_loss": INF}, ValueError, r"loss 'causal_lm': `z_loss` must be a finite"),
    "composite-dwa-temperature-inf": (
        "cross_entropy+dice",
        {"weighting": "dwa", "temperature": INF},
        ValueError,
        r"loss 'composite': `temperature` must be a finite number",
    ),
    "composite-initial_log_variance-minus-inf": (
        "cross_entropy+dice",
        {"weighting": "uncertainty", "initial_log_variance": -INF},
        ValueError,
        r"loss 'composite': `initial_log_variance` must be a finite number in \(-inf, inf\)",
    ),
    "composite-schedule-end_value-inf": (
        "composite",
        {
            "components": ["cross_entropy"],
            "schedules": {
                "cross_entropy": {
                    "schedule": "linear",
                    "start_value": 0.0,
                    "end_value": INF,
                    "start_step": 0,
                    "end_step": 10,
                }
            },
        },
        ValueError,
        r"loss 'composite': `schedules\['cross_entropy'\]\['end_value'\]` must be a finite number",
    ),
    "relevance_diversity-diversity_weight-inf": (
        "relevance_diversity",
        {"diversity_weight": INF},
        ValueError,
        r"loss 'relevance_diversity': `diversity_weight` must be a finite number",
    ),
    "relevance_diversity-item_embeddings-inf": (
        "relevance_diversity",
        {"item_embeddings": [[INF, 0.0], [0.0, 1.0], [1.0, 1.0]]},
        ValueError,
        r"loss 'relevance_diversity': `item_embeddings` must be finite",
    ),
    "focal-alpha-inf": ("focal", {"alpha": [INF, 1.0]}, ValueError, r"loss 'focal': `alpha` must be finite"),
    # combinations that make the loss a constant
    "asl-eps-one": ("asl", {"eps": 1.0}, ValueError, r"loss 'asl': `eps` must be in \(0, 1\), got 1"),
    "tversky-alpha-beta-zero-smooth-zero": (
        "tversky",
        {"alpha": 0.0, "beta": 0.0, "smooth": 0.0},
        ValueError,
        r"loss 'tversky': `alpha` \+ `beta` must be > 0",
    ),
    "relevance_diversity-top_k-one-with-diversity": (
        "relevance_diversity",
        {"diversity_weight": 0.5, "top_k": 1},
        ValueError,
        r"loss 'relevance_diversity': `top_k` must be >= 2 when `diversity_weight` > 0, got 1",
    ),
    "relevance_diversity-top_k-one-with-popularity": (
        "relevance_diversity",
        {"popularity_weight": 0.5, "item_popularity": [3, 2, 1], "top_k": 1},
        ValueError,
        r"loss 'relevance_diversity': `top_k` must be >= 2 when `popularity_weight` > 0",
    ),
}


@pytest.mark.parametrize("case", DEGENERATE_PARAMETERS)
def test_degenerate_parameter_is_refused_at_construction(case):
    name, kwargs, error, pattern = DEGENERATE_PARAMETERS[case]
    assert_raises(error, pattern, lambda: build(name, **kwargs))


def test_zero_bce_pos_weight_is_accepted_it_only_drops_the_positive_term():
    """Decision: pos_weight=0 (even for every class) is legitimate -- the negatives still give a loss and a
    gradient, so the loss is not identically 0 -- and it equals PyTorch's."""
    logits, targets = float_batch()
    for pos_weight in (0.0, [0.0, 0.0, 0.0]):
        value, grad = value_and_grad(build("bce", pos_weight=pos_weight), logits, targets)
        reference = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.zeros(3))
        (reference_grad,) = torch.autograd.grad(reference, logits)
        torch.testing.assert_close(value, reference.detach())
        torch.testing.assert_close(grad, reference_grad)
        assert value > 0 and grad.abs().sum() > 0


def test_all_zero_cost_matrix_is_accepted_it_is_plain_cross_entropy():
    """Decision: a zero cost matrix only removes the cost term; what is left is cross-entropy, not a zero loss."""
    logits, labels = index_batch()
    value, grad = value_and_grad(build("cost_sensitive", cost_matrix=torch.zeros(3, 3)), logits, labels)
    reference = F.cross_entropy(logits, labels)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(value, reference.detach())
    torch.testing.assert_close(grad, reference_grad)


# ================================================================================================ 2. inputs
# integer labels of any dtype: the same value and gradient as int64
LABEL_DTYPES = {
    "cross_entropy-int32": ("cross_entropy", {}, (), torch.int32),
    "focal-int16": ("focal", {"alpha": [0.2, 0.3, 0.5]}, (), torch.int16),
    "class_balanced-int32": ("class_balanced", {}, (), torch.int32),
    "ldam-uint8": ("ldam", {}, (), torch.uint8),
    "poly1-int8": ("poly1", {}, (), torch.int8),
    "cost_sensitive-int16": ("cost_sensitive", {}, (), torch.int16),
    "relevance_diversity-int32": ("relevance_diversity", {}, (), torch.int32),
    "dice-int16": ("dice", {}, (4, 4), torch.int16),
    "generalized_dice-uint8": ("generalized_dice", {}, (4, 4), torch.uint8),
    "tversky-int32": ("tversky", {}, (4, 4), torch.int32),
    "lovasz-uint8": ("lovasz", {}, (4, 4), torch.uint8),
    "composite-uint8": ("0.5*cross_entropy+0.5*dice", {}, (4, 4), torch.uint8),
}


@pytest.mark.parametrize("case", LABEL_DTYPES)
def test_inputs_integer_labels_of_any_dtype_give_the_int64_result(case):
    name, kwargs, spatial, dtype = LABEL_DTYPES[case]
    loss = build(name, **kwargs)
    logits, labels = index_batch(spatial=spatial)
    expected, expected_grad = value_and_grad(loss, logits, labels)
    value, grad = value_and_grad(loss, logits, labels.to(dtype))
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


# labels on another device than the logits: an error naming both devices (meta stands for any other device)
DEVICE_CASES = {
    "cross_entropy": ("cross_entropy", "index"),
    "focal": ("focal", "index"),
    "dice": ("dice", "index"),
    "lovasz": ("lovasz", "index"),
    "bce": ("bce", "binary"),
    "mse": ("mse", "binary"),
}


@pytest.mark.parametrize("case", DEVICE_CASES)
def test_inputs_labels_on_another_device_name_both_devices(case):
    name, kind = DEVICE_CASES[case]
    logits, labels = index_batch() if kind == "index" else float_batch()
    assert_raises(
        ValueError,
        rf"loss '{name}': `labels` is on device meta but `logits` on cpu; put them on the same device",
        lambda: build(name)(logits, labels.to("meta")),
    )


# an empty batch (or empty images): 0 with a zero gradient, as cross_entropy
EMPTY_BATCHES = {
    "dice-N0": ("dice", {}, (0, 3, 4, 4)),
    "dice-N0-batch-statistics": ("dice", {"per_image": False, "smooth": 0.0}, (0, 3, 4, 4)),
    "generalized_dice-N0": ("generalized_dice", {}, (0, 3, 4, 4)),
    "tversky-N0": ("tversky", {}, (0, 3, 5)),
    "focal_tversky-N0": ("focal_tversky", {}, (0, 1, 4, 4)),
    "lovasz-N0": ("lovasz", {}, (0, 3, 4, 4)),
    "lovasz-N0-batch-statistics": ("lovasz", {"per_image": False}, (0, 3, 4)),
    "dice-empty-images": ("dice", {}, (2, 3, 0, 4)),
    "composite-N0": ("cross_entropy+dice", {}, (0, 3, 4, 4)),
    "cross_entropy-N0": ("cross_entropy", {}, (0, 3)),
}


@pytest.mark.parametrize("case", EMPTY_BATCHES)
def test_inputs_empty_batch_gives_zero_with_zero_gradient(case):
    name, kwargs, shape = EMPTY_BATCHES[case]
    logits = torch.randn(shape, requires_grad=True)
    labels = torch.zeros((shape[0],) + shape[2:], dtype=torch.long)
    value, grad = value_and_grad(build(name, **kwargs), logits, labels)
    assert value.item() == 0.0 and grad.shape == logits.shape and not grad.any()


# num_items_in_batch: never 0 or negative, NaN, inf, a bool, a string or several counts at once
NUM_ITEMS = {
    "int-zero": ("cross_entropy", 0, ValueError, r"`num_items_in_batch` must be in \(0, inf\), got 0"),
    "int-negative": ("focal", -8, ValueError, r"`num_items_in_batch` must be in \(0, inf\), got -8"),
    "float-zero": ("dice", 0.0, ValueError, r"`num_items_in_batch` must be in \(0, inf\), got 0"),
    "float-nan": ("bce", NAN, ValueError, r"`num_items_in_batch` must be a finite number"),
    "float-inf": ("mse", INF, ValueError, r"`num_items_in_batch` must be a finite number"),
    "bool": ("cross_entropy", True, TypeError, r"`num_items_in_batch` must be a number > 0, a 0-d tensor"),
    "string": ("cross_entropy", "8", TypeError, r"`num_items_in_batch` must be a number > 0, .* got str"),
    "tensor-negative": ("poly1", torch.tensor(-3), ValueError, r"`num_items_in_batch` must be a count in \[0, inf\)"),
    "tensor-nan": ("lovasz", torch.tensor(NAN), ValueError, r"`num_items_in_batch` must be a count in \[0, inf\)"),
    "tensor-zero-with-items": (
        "cross_entropy",
        torch.tensor(0),
        ValueError,
        r"`num_items_in_batch` is 0 but this call",
    ),
    "tensor-two-counts": ("cross_entropy", torch.tensor([4, 4]), ValueError, r"`num_items_in_batch` must be one count"),
    "tensor-bool": ("focal", torch.tensor(True), TypeError, r"`num_items_in_batch` must be a count, got a tensor"),
    "mapping-zero": ("cross_entropy", {"label": 0}, ValueError, r"`num_items_in_batch` must be in \(0, inf\), got 0"),
    "mapping-negative-tensor": ("dice", {"sample": torch.tensor(-1)}, ValueError, r"`num_items_in_batch` must be a"),
    "mapping-without-the-unit": (
        "cross_entropy",
        {"labels": 8},
        ValueError,
        r"`num_items_in_batch` has no count for its item unit 'label'",
    ),
    "composite-one-count-for-two-units": (
        "cross_entropy+dice",
        4,
        ValueError,
        r"`num_items_in_batch` must be a mapping \{item_unit: count\} because the components count different items",
    ),
}


@pytest.mark.parametrize("case", NUM_ITEMS)
def test_inputs_bad_num_items_in_batch_is_refused(case):
    name, count, error, pattern = NUM_ITEMS[case]
    loss = build(name)
    logits, labels = index_batch(spatial=(2, 2)) if loss.label_kind == "index" else float_batch()
    owner = "composite" if "+" in name else name
    assert_raises(error, rf"loss '{owner}': {pattern}", lambda: loss(logits, labels, num_items_in_batch=count))


def test_inputs_zero_num_items_tensor_for_an_all_ignored_window_gives_zero():
    """Decision: a tensor count of 0 is what the trainer sums for an accumulation window whose labels are all
    ignored; it stays valid there (0 with a zero gradient), unlike a hand-given 0."""
    logits, labels = index_batch()
    for name in ("cross_entropy", "dice", "focal"):
        value, grad = value_and_grad(build(name), logits, torch.full_like(labels, -100), torch.tensor(0))
        assert value.item() == 0.0 and not grad.any()


def test_inputs_valid_num_items_are_unchanged():
    logits, labels = index_batch()
    expected = F.cross_entropy(logits, labels, reduction="sum") / 10
    loss = build("cross_entropy")
    for count in (10, 10.0, torch.tensor(10), torch.tensor([10]), {"label": 10}, {"label": torch.tensor(10.0)}):
        torch.testing.assert_close(loss(logits, labels, num_items_in_batch=count), expected)


# NaN / inf in float targets that the loss cannot ignore
FLOAT_TARGETS = {
    "mse-nan": ("mse", NAN, r"loss 'mse': `labels` must be finite regression targets .*found nan"),
    "huber-nan": ("huber", NAN, r"loss 'huber': `labels` must be finite regression targets"),
    "mse-inf": ("mse", INF, r"loss 'mse': `labels` must be finite regression targets .*found inf"),
    "bce-nan": ("bce", NAN, r"loss 'bce': `labels` must be targets in \[0, 1\]"),
    "asl-nan": ("asl", NAN, r"loss 'asl': `labels` must be targets in \[0, 1\]"),
}


@pytest.mark.parametrize("case", FLOAT_TARGETS)
def test_inputs_non_finite_float_target_is_refused(case):
    name, bad, pattern = FLOAT_TARGETS[case]
    logits, targets = float_batch()
    targets[1, 2] = bad
    assert_raises(ValueError, pattern, lambda: build(name)(logits, targets))


def test_inputs_ignored_regression_targets_still_count_as_ignored():
    logits, targets = float_batch()
    targets[0] = -100.0
    value = build("mse")(logits, targets)
    torch.testing.assert_close(value, F.mse_loss(logits[1:], targets[1:]))


# shapes, 0-d logits and one class, for every label kind
SHAPES = {
    "index-labels-shape": (
        "cross_entropy",
        lambda: (torch.randn(4, 3), torch.zeros(4, 2, dtype=torch.long)),
        ValueError,
        r"loss 'cross_entropy': `labels` shape \(4, 2\) does not match logits",
    ),
    "binary-labels-shape": (
        "bce",
        lambda: (torch.randn(4, 3), torch.zeros(4, 2)),
        ValueError,
        r"loss 'bce': `labels` shape \(4, 2\) must equal logits shape",
    ),
    "target-labels-shape": (
        "mse",
        lambda: (torch.randn(4, 1), torch.zeros(4)),
        ValueError,
        r"loss 'mse': `labels` shape \(4,\) must equal logits shape",
    ),
    "segmentation-one-channel-labels-shape": (
        "dice",
        lambda: (torch.randn(2, 1, 4, 4), torch.zeros(2, 4, 3, dtype=torch.long)),
        ValueError,
        r"loss 'dice': `labels` shape \(2, 4, 3\) does not match logits",
    ),
    "cross_entropy-0-d-logits": (
        "cross_entropy",
        lambda: (torch.tensor(1.0), torch.tensor(0)),
        ValueError,
        r"loss 'cross_entropy': `logits` must have a batch dimension",
    ),
    "mse-0-d-logits": (
        "mse",
        lambda: (torch.tensor(1.0), torch.tensor(0.5)),
        ValueError,
        r"loss 'mse': `logits` must have a batch dimension",
    ),
    "cross_entropy-one-class": (
        "cross_entropy",
        lambda: (torch.randn(4, 1), torch.zeros(4, dtype=torch.long)),
        ValueError,
        r"loss 'cross_entropy': `logits` must score C >= 2 classes along dim 1, got shape \(4, 1\)",
    ),
    "focal-one-class": (
        "focal",
        lambda: (torch.randn(4, 1, 2), torch.zeros(4, 2, dtype=torch.long)),
        ValueError,
        r"loss 'focal': `logits` must score C >= 2 classes",
    ),
    "poly1-one-class": (
        "poly1",
        lambda: (torch.randn(4, 1), torch.zeros(4, dtype=torch.long)),
        ValueError,
        r"loss 'poly1': `logits` must score C >= 2 classes",
    ),
    "relevance_diversity-one-item": (
        "relevance_diversity",
        lambda: (torch.randn(4, 1), torch.zeros(4, dtype=torch.long)),
        ValueError,
        r"loss 'relevance_diversity': `(logits` must score C >= 2|top_k`)",
    ),
    "index-loss-bool-labels": (
        "cross_entropy",
        lambda: (torch.randn(4, 3), torch.ones(4, dtype=torch.bool)),
        TypeError,
        r"loss 'cross_entropy': `labels` must hold integer class indices",
    ),
}


@pytest.mark.parametrize("case", SHAPES)
def test_inputs_bad_shape_or_kind_is_refused(case):
    name, make, error, pattern = SHAPES[case]
    logits, labels = make()
    assert_raises(error, pattern, lambda: build(name)(logits, labels))


def test_inputs_one_channel_segmentation_is_still_binary_not_refused():
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    labels = torch.randint(0, 2, (2, 4, 4))
    value, grad = value_and_grad(build("dice"), logits, labels)
    assert 0 < value.item() < 1 and grad.abs().sum() > 0


FLOAT64 = {
    "dice": ("dice", (2, 3, 4, 4)),
    "lovasz": ("lovasz", (2, 3, 4, 4)),
    "composite": ("cross_entropy+dice", (2, 3, 4, 4)),
    "relevance_diversity": ("relevance_diversity", (4, 3)),
    "ldam": ("ldam", (4, 3)),
}


@pytest.mark.parametrize("case", FLOAT64)
def test_inputs_float64_stays_float64(case):
    name, shape = FLOAT64[case]
    logits = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:])
    value, grad = value_and_grad(build(name), logits, labels)
    assert value.dtype == torch.float64 and grad.dtype == torch.float64


# ================================================================================================ 3. causal_lm
V, H = 11, 8


def lm_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 5, H, generator=generator).requires_grad_()
    weight = torch.randn(V, H, generator=generator).requires_grad_()
    labels = torch.randint(0, V, (2, 5), generator=generator)
    return hidden, labels, weight


def lm_reference(hidden, labels, weight, bias=None):
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))


HIDDEN_STATES_ERRORS = {
    "weight-on-another-device": (
        lambda h, y, w: ((h, y), {"weight": w.detach().to("meta")}),
        ValueError,
        r"loss 'causal_lm': `weight` is on device meta but `hidden_states` on cpu",
    ),
    "bias-on-another-device": (
        lambda h, y, w: ((h, y), {"weight": w, "bias": torch.zeros(V, device="meta")}),
        ValueError,
        r"loss 'causal_lm': `bias` is on device meta but `hidden_states` on cpu",
    ),
    "weight-dtype-that-cannot-multiply": (
        lambda h, y, w: ((h, y), {"weight": w.detach().to(torch.float8_e4m3fn)}),
        TypeError,
        r"loss 'causal_lm': `weight` has dtype torch.float8_e4m3fn.*one of \['torch.float16'",
    ),
    "weight-transposed": (
        lambda h, y, w: ((h, y), {"weight": w.t()}),
        ValueError,
        r"loss 'causal_lm': `weight` is the LM head weight \(V, H\) with H=8",
    ),
    "weight-zero3-partition": (
        lambda h, y, w: ((h, y), {"weight": torch.nn.Parameter(torch.empty(0))}),
        ValueError,
        r"loss 'causal_lm': `weight` is the LM head weight .*ZeRO-3 partition: gather it first",
    ),
    "weight-one-token": (
        lambda h, y, w: ((h, torch.zeros_like(y)), {"weight": w[:1]}),
        ValueError,
        r"loss 'causal_lm': `weight` must score V >= 2 tokens",
    ),
    "bias-shape": (
        lambda h, y, w: ((h, y), {"weight": w, "bias": torch.zeros(1, V)}),
        ValueError,
        r"loss 'causal_lm': `bias` must be None or a \(11,\) tensor, got \(1, 11\)",
    ),
    "no-weight": (
        lambda h, y, w: ((h @ w.t(), y), {}),
        TypeError,
        r"loss 'causal_lm': works from hidden states and the LM head; call loss\(hidden_states, labels, weight=",
    ),
    "hidden-states-one-dimensional": (
        lambda h, y, w: ((h[0, 0], y[0, 0]), {"weight": w}),
        ValueError,
        r"loss 'causal_lm': `hidden_states` must be \(N, T, H\)",
    ),
    "hidden-states-integer": (
        lambda h, y, w: ((h.detach().long(), y), {"weight": w}),
        TypeError,
        r"loss 'causal_lm': `hidden_states` must be a floating-point torch.Tensor",
    ),
    "shift_labels-float": (
        lambda h, y, w: ((h, None), {"weight": w, "shift_labels": y.float()}),
        TypeError,
        r"loss 'causal_lm': `(labels`/`)?shift_labels` must be integer token ids",
    ),
    "labels-shape": (
        lambda h, y, w: ((h, y[:, :4]), {"weight": w}),
        ValueError,
        r"loss 'causal_lm': labels shape \(2, 4\) must equal hidden_states shape",
    ),
    "num_items_in_batch-zero": (
        lambda h, y, w: ((h, y), {"weight": w, "num_items_in_batch": 0}),
        ValueError,
        r"loss 'causal_lm': `num_items_in_batch` must be in \(0, inf\), got 0",
    ),
}


@pytest.mark.parametrize("case", HIDDEN_STATES_ERRORS)
def test_hidden_states_misuse_is_refused_naming_what_to_pass(case):
    make, error, pattern = HIDDEN_STATES_ERRORS[case]
    args, kwargs = make(*lm_inputs())
    assert_raises(error, pattern, lambda: get_loss("causal_lm")(*args, **kwargs))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_hidden_states_integer_labels_of_any_dtype_give_the_int64_result(dtype):
    hidden, labels, weight = lm_inputs()
    loss = get_loss("causal_lm")
    expected = loss(hidden, labels, weight=weight)
    torch.testing.assert_close(loss(hidden, labels.to(dtype), weight=weight), expected, rtol=0, atol=0)
    torch.testing.assert_close(
        loss(hidden, None, weight=weight, shift_labels=labels.to(dtype)),
        loss(hidden, None, weight=weight, shift_labels=labels),
    )


@pytest.mark.parametrize(
    "hidden_dtype,weight_dtype,result_dtype",
    [(torch.float64, torch.float32, torch.float64), (torch.float32, torch.float64, torch.float64)],
)
def test_hidden_states_float64_mixed_with_float32_head_computes_in_float64(hidden_dtype, weight_dtype, result_dtype):
    hidden, labels, weight = lm_inputs()
    hidden = hidden.detach().to(hidden_dtype).requires_grad_()
    weight = weight.detach().to(weight_dtype).requires_grad_()
    value = get_loss("causal_lm")(hidden, labels, weight=weight)
    grads = torch.autograd.grad(value, (hidden, weight))
    reference = lm_reference(hidden.double(), labels, weight.double())
    reference_grads = torch.autograd.grad(reference, (hidden, weight))
    assert value.dtype == result_dtype
    torch.testing.assert_close(value, reference.to(result_dtype))
    for grad, reference_grad, tensor in zip(grads, reference_grads, (hidden, weight)):
        assert grad.dtype == tensor.dtype
        torch.testing.assert_close(grad, reference_grad.to(tensor.dtype))


# ================================================================================================ 4. info_nce
CONTRASTIVE_ERRORS = {
    "zero-dimensions": (
        lambda: (torch.randn(4, 0), torch.randn(4, 0)),
        ValueError,
        r"loss 'info_nce': the embeddings must have D >= 1 dimensions, got shape \(4, 0\)",
    ),
    "keys-on-another-device": (
        lambda: (torch.randn(4, 6), torch.randn(4, 6, device="meta")),
        ValueError,
        r"loss 'info_nce': `key_embeddings` is on device meta but `query_embeddings` on cpu",
    ),
    "different-batch-sizes": (
        lambda: (torch.randn(4, 6), torch.randn(3, 6)),
        ValueError,
        r"loss 'info_nce': query and key embeddings must both be \(N, D\) with the same shape",
    ),
    "different-dimensions": (
        lambda: (torch.randn(4, 6), torch.randn(4, 5)),
        ValueError,
        r"loss 'info_nce': query and key embeddings must both be \(N, D\) with the same shape",
    ),
    "one-dimensional": (
        lambda: (torch.randn(6), torch.randn(6)),
        ValueError,
        r"loss 'info_nce': query and key embeddings must both be \(N, D\)",
    ),
    "integer-embeddings": (
        lambda: (torch.ones(4, 6, dtype=torch.long), torch.ones(4, 6, dtype=torch.long)),
        TypeError,
        r"loss 'info_nce': query and key embeddings must be floating-point",
    ),
    "integer-labels-as-keys": (
        lambda: (torch.randn(4, 6), torch.arange(4)),
        TypeError,
        r"loss 'info_nce': query and key embeddings must be floating-point",
    ),
}


@pytest.mark.parametrize("case", CONTRASTIVE_ERRORS)
def test_contrastive_bad_inputs_are_refused(case):
    make, error, pattern = CONTRASTIVE_ERRORS[case]
    queries, keys = make()
    assert_raises(error, pattern, lambda: get_loss("info_nce")(queries, keys))


def test_contrastive_empty_batch_gives_zero_with_zero_gradient():
    queries = torch.randn(0, 6, requires_grad=True)
    value, grad = value_and_grad(get_loss("info_nce"), queries, torch.randn(0, 6))
    assert value.item() == 0.0 and grad.shape == (0, 6)


def test_contrastive_one_pair_warns_that_there_is_no_negative():
    queries = torch.randn(1, 6, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"loss 'info_nce': the batch holds 1 pair, so there is no in-batch neg"):
        value, grad = value_and_grad(get_loss("info_nce"), queries, torch.randn(1, 6))
    assert value.item() == 0.0 and not grad.any()


@pytest.mark.parametrize(
    "query_dtype,key_dtype,result_dtype",
    [(torch.float64, torch.float64, torch.float64), (torch.float16, torch.float32, torch.float32)],
)
def test_contrastive_dtypes(query_dtype, key_dtype, result_dtype):
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(4, 6, generator=generator), torch.randn(4, 6, generator=generator)
    value = get_loss("info_nce", temperature=0.5)(queries.to(query_dtype), keys.to(key_dtype))
    expected = F.cross_entropy(
        F.normalize(queries.to(query_dtype).double(), dim=-1)
        @ F.normalize(keys.to(key_dtype).double(), dim=-1).t()
        / 0.5,
        torch.arange(4),
    )
    assert value.dtype == result_dtype
    torch.testing.assert_close(value, expected.to(result_dtype))
