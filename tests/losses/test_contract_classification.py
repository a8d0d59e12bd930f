"""The loss contract, checked on every classification, cost-sensitive and multi-label loss: float64 gradients,
decomposition over micro-batches, all-ignored batches, half precision, spatial shapes, and every bad input
with the text of its error."""

import copy

import pytest
import torch

from hf_losses import describe_loss, get_loss

COSTS = [[0.0, 1.0, 4.0], [2.0, 0.0, 1.0], [8.0, 3.0, 0.0]]

# case id -> (registered name, kwargs, number of classes)
INDEX_CASES = {
    "cross_entropy": ("cross_entropy", {}, 3),
    "cross_entropy-weighted-smoothed": ("cross_entropy", {"weight": [0.5, 2.0, 1.0], "label_smoothing": 0.1}, 3),
    "focal-scalar-alpha": ("focal", {"gamma": 2.0, "alpha": 0.25}, 3),
    "focal-class-alpha": ("focal", {"gamma": 0.5, "alpha": [0.2, 0.3, 0.5]}, 3),
    "focal-smoothed": ("focal", {"gamma": 2.0, "alpha": [0.2, 0.3, 0.5], "label_smoothing": 0.1}, 3),
    "class_balanced-ce": ("class_balanced", {"samples_per_class": [100, 10, 3], "beta": 0.99}, 3),
    "class_balanced-focal": ("class_balanced", {"samples_per_class": [100, 10, 3], "base": "focal", "gamma": 1.5}, 3),
    "ldam": ("ldam", {"samples_per_class": [100, 10, 3], "scale": 2.0, "weight": [1.0, 2.0, 3.0]}, 3),
    "poly1": ("poly1", {"epsilon": 2.0}, 3),
    "cost_sensitive": ("cost_sensitive", {"cost_matrix": COSTS, "cost_weight": 0.5}, 3),
    "fn_penalty": ("fn_penalty", {"fn_cost": 5.0, "positive_class": 1}, 2),
}
BINARY_CASES = {
    "bce": ("bce", {}, 3),
    "bce-pos_weight": ("bce", {"pos_weight": [1.0, 3.0, 0.5]}, 3),
    "bce-pos_weight-smoothed": ("bce", {"pos_weight": [1.0, 3.0, 0.5], "label_smoothing": 0.1}, 3),
    "sigmoid_focal": ("sigmoid_focal", {"alpha": 0.25, "gamma": 2.0}, 3),
    "sigmoid_focal-no-alpha": ("sigmoid_focal", {"alpha": None, "gamma": 0.5}, 3),
    "sigmoid_focal-class-alpha": ("sigmoid_focal", {"alpha": [0.1, 0.5, 0.9], "gamma": 1.5}, 3),
    "asl": ("asl", {}, 3),
    "asl-focused-positives": ("asl", {"gamma_pos": 1.0, "gamma_neg": 3.0, "clip": 0.1}, 3),
    "asl-smoothed": ("asl", {"label_smoothing": 0.1}, 3),
}
CASES = {**INDEX_CASES, **BINARY_CASES}


def build(case, shape=(8,), dtype=torch.float32, seed=0, ignore=True):
    """(loss, logits (N, C, *spatial), labels) for ``case``; about one label entry in four ignored."""
    name, kwargs, num_classes = CASES[case]
    loss = get_loss(name, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    n, spatial = shape[0], tuple(shape[1:])
    logits = (torch.randn((n, num_classes) + spatial, generator=generator) * 2).to(dtype)
    if case in INDEX_CASES:
        labels = torch.randint(0, num_classes, (n,) + spatial, generator=generator)
    else:
        labels = torch.rand((n, num_classes) + spatial, generator=generator)
        labels = torch.where(labels < 0.5, (labels < 0.2).float(), labels)  # hard and soft targets
    if ignore:
        mask = torch.rand(labels.shape, generator=generator) < 0.25
        labels = labels.masked_fill(mask, -100)
    return loss, logits, labels


def ignored_everywhere(labels):
    return torch.full_like(labels, -100)


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("case", CASES)
def test_gradcheck_in_float64(case):
    loss, logits, labels = build(case, shape=(3, 2), dtype=torch.float64)
    logits.requires_grad_(True)
    assert loss(logits, labels).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,), eps=1e-6, atol=1e-5)


def test_detached_asl_focusing_changes_the_gradient_but_not_the_value():
    _, logits, labels = build("asl")
    full, detached = get_loss("asl", gamma_pos=1.0), get_loss("asl", gamma_pos=1.0, detach_focusing=True)
    first, second = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value_full, value_detached = full(first, labels), detached(second, labels)
    torch.testing.assert_close(value_full, value_detached)
    value_full.backward()
    value_detached.backward()
    assert not torch.allclose(first.grad, second.grad)


# ------------------------------------------------------------------------------------------------ reduction
@pytest.mark.parametrize("case", CASES)
def test_sum_over_micro_batches_equals_whole_batch(case):
    loss, logits, labels = build(case, shape=(8, 3))
    labels[3] = -100  # the middle micro-batch is entirely ignored
    whole_input = logits.clone().requires_grad_()
    whole = loss(whole_input, labels)
    whole.backward()
    num_items = loss.num_items(labels)
    parts_input = logits.clone().requires_grad_()
    total = sum(
        loss(chunk, chunk_labels, num_items_in_batch=num_items)
        for chunk, chunk_labels in zip(parts_input.split([3, 1, 4]), labels.split([3, 1, 4]))
    )
    total.backward()
    torch.testing.assert_close(total, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(parts_input.grad, whole_input.grad, atol=1e-7, rtol=1e-5)
    # a plain integer count is the same as the {item_unit: count} mapping
    plain_count = int(num_items["label"])
    torch.testing.assert_close(loss(logits, labels, num_items_in_batch=plain_count), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_num_items_counts_non_ignored_label_entries(case):
    loss, _, labels = build(case, shape=(8, 3))
    assert loss.item_unit == "label" and loss.decomposable
    assert loss.num_items(labels) == {"label": (labels != -100).sum()}


@pytest.mark.parametrize("case", CASES)
def test_all_ignored_batch_gives_zero_with_zero_gradient(case):
    loss, logits, labels = build(case, shape=(4, 2))
    logits.requires_grad_(True)
    value = loss(logits, ignored_everywhere(labels))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("case", CASES)
def test_spatial_logits_equal_the_same_entries_flattened(case):
    loss, logits, labels = build(case, shape=(2, 3, 4))
    num_classes = logits.shape[1]
    flat_logits = logits.movedim(1, -1).reshape(-1, num_classes)
    flat_labels = labels.reshape(-1) if case in INDEX_CASES else labels.movedim(1, -1).reshape(-1, num_classes)
    torch.testing.assert_close(loss(logits, labels), loss(flat_logits, flat_labels), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES)
def test_half_precision_logits_give_finite_float32_close_to_float32(case, dtype):
    loss, logits, labels = build(case, shape=(8, 3))
    half = (logits * 40).to(dtype).requires_grad_(True)  # logits up to ~300: exp overflows in half precision
    value = loss(half, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert half.grad.dtype == dtype and torch.isfinite(half.grad).all()
    # computed in float32: exactly the float32 loss of the same (rounded) values
    torch.testing.assert_close(value, loss(half.detach().float(), labels), atol=1e-6, rtol=1e-6)
    # and close to the unrounded float32 input
    torch.testing.assert_close(value, loss(logits * 40, labels), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("case", CASES)
def test_autocast_bfloat16_model_output_gives_float32_loss(case):
    loss, logits, labels = build(case, shape=(8,))
    layer = torch.nn.Linear(logits.shape[1], logits.shape[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = layer(logits)
        value = loss(outputs, labels)
    assert outputs.dtype == torch.bfloat16 and value.dtype == torch.float32
    torch.testing.assert_close(value, loss(outputs.float(), labels))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES)
def test_cuda_equals_cpu_with_ignored_labels_half_precision_and_checked_labels(case):
    loss, logits, labels = build(case, shape=(8, 3))
    cpu_input = logits.clone().requires_grad_()
    expected = loss(cpu_input, labels)
    expected.backward()
    device_loss = copy.deepcopy(loss).cuda()
    cuda_input = logits.cuda().requires_grad_()
    value = device_loss(cuda_input, labels.cuda())
    value.backward()
    assert value.device.type == "cuda" and value.dtype == torch.float32
    torch.testing.assert_close(value.cpu(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cuda_input.grad.cpu(), cpu_input.grad, atol=1e-6, rtol=1e-4)
    num_items = device_loss.num_items(labels.cuda())
    parts = sum(
        device_loss(x, y, num_items_in_batch=num_items) for x, y in zip(logits.cuda().split(3), labels.cuda().split(3))
    )
    torch.testing.assert_close(parts.cpu(), expected, atol=1e-6, rtol=0)
    assert device_loss(logits.cuda(), ignored_everywhere(labels).cuda()).item() == 0.0
    half = device_loss((logits * 40).cuda().half(), labels.cuda())
    assert half.dtype == torch.float32 and torch.isfinite(half)
    bad = labels.cuda().clone()
    bad.view(-1)[0] = 7  # out of range for both kinds: a ValueError, not a device-side assert
    with pytest.raises(ValueError, match="`labels` must"):
        device_loss(logits.cuda(), bad)


# ------------------------------------------------------------------------------------------------ description
@pytest.mark.parametrize("case", CASES)
def test_every_loss_describes_itself(case):
    name = CASES[case][0]
    description = describe_loss(name)
    assert description.summary and description.reference
    assert description.item_unit == "label" and description.decomposable
    assert description.label_kind == ("index" if case in INDEX_CASES else "binary")
    assert "ignore_index" in [p.name for p in description.parameters]


# ------------------------------------------------------------------------------------------------ bad input
def index_input(c=3, labels=(0, 1, 2, 1)):
    return torch.randn(4, c), torch.tensor(labels)


def binary_input(c=3):
    return torch.randn(4, c), torch.zeros(4, c)


BAD_FORWARD = [
    # class-vector length != C
    (
        "cross_entropy",
        {"weight": [1.0, 2.0]},
        index_input(),
        ValueError,
        r"loss 'cross_entropy': `weight` has 2 entries but the logits have C=3 classes",
    ),
    ("focal", {"alpha": [0.5, 0.5]}, index_input(), ValueError, r"loss 'focal': `alpha` has 2 entries .* C=3"),
    (
        "class_balanced",
        {"samples_per_class": [5, 5]},
        index_input(),
        ValueError,
        r"loss 'class_balanced': `samples_per_class` has 2 entries .* C=3",
    ),
    (
        "ldam",
        {"samples_per_class": [5, 5, 5, 5]},
        index_input(),
        ValueError,
        r"loss 'ldam': `samples_per_class` has 4 entries .* C=3",
    ),
    (
        "ldam",
        {"samples_per_class": [5, 5, 5], "weight": [1.0]},
        index_input(),
        ValueError,
        r"loss 'ldam': `weight` has 1 entries .* C=3",
    ),
    (
        "cost_sensitive",
        {"cost_matrix": [[0, 1], [1, 0]]},
        index_input(),
        ValueError,
        r"loss 'cost_sensitive': `cost_matrix` is 2 x 2 but the logits have C=3 classes",
    ),
    (
        "fn_penalty",
        {},
        index_input(),
        ValueError,
        r"loss 'fn_penalty' is for binary tasks: .* C=2 .* got shape \(4, 3\)",
    ),
    ("bce", {"pos_weight": [1.0, 2.0]}, binary_input(), ValueError, r"loss 'bce': `pos_weight` has 2 entries .* C=3"),
    # labels outside [0, C)
    (
        "cross_entropy",
        {},
        index_input(labels=(0, 3, 1, 1)),
        ValueError,
        r"loss 'cross_entropy': `labels` must be in \[0, 3\) or ignore_index=-100; found 3",
    ),
    ("focal", {}, index_input(labels=(0, -1, 1, -100)), ValueError, r"loss 'focal': `labels` must be in .* found -1"),
    ("poly1", {}, index_input(labels=(7, 0, 1, 1)), ValueError, r"loss 'poly1': `labels` must be in .* found 7"),
    (
        "cost_sensitive",
        {"cost_matrix": COSTS},
        index_input(labels=(0, 0, 5, 1)),
        ValueError,
        r"loss 'cost_sensitive': `labels` must be in .* found 5",
    ),
    # float labels for index losses, integer labels for multi-label losses
    (
        "cross_entropy",
        {},
        (torch.randn(4, 3), torch.zeros(4)),
        TypeError,
        r"loss 'cross_entropy': `labels` must hold integer class indices .* got dtype torch.float32",
    ),
    (
        "ldam",
        {"samples_per_class": [1, 2, 3]},
        (torch.randn(4, 3), torch.zeros(4, 3)),
        TypeError,
        r"loss 'ldam': `labels` must hold integer class indices",
    ),
    (
        "bce",
        {},
        (torch.randn(4, 3), torch.zeros(4, 3, dtype=torch.long)),
        TypeError,
        r"loss 'bce': `labels` must be float multi-label targets .* got integer dtype torch.int64",
    ),
    (
        "asl",
        {},
        (torch.randn(4, 3), torch.zeros(4, 3, dtype=torch.bool)),
        TypeError,
        r"loss 'asl': `labels` must be float multi-label targets",
    ),
    # multi-label targets outside [0, 1]
    (
        "sigmoid_focal",
        {},
        (torch.randn(2, 2), torch.tensor([[0.0, 2.0], [1.0, -100.0]])),
        ValueError,
        r"loss 'sigmoid_focal': `labels` must be targets in \[0, 1\] or ignore_index=-100; found 2",
    ),
    (
        "bce",
        {},
        (torch.randn(2, 2), torch.tensor([[0.0, float("nan")], [1.0, 1.0]])),
        ValueError,
        r"loss 'bce': `labels` must be targets in \[0, 1\] .* found nan",
    ),
    # shape mismatch
    (
        "focal",
        {},
        (torch.randn(4, 3), torch.zeros(4, 2, dtype=torch.long)),
        ValueError,
        r"loss 'focal': `labels` shape \(4, 2\) does not match logits \(4, 3\); expected \(4,\)",
    ),
    (
        "asl",
        {},
        (torch.randn(4, 3), torch.zeros(4, 2)),
        ValueError,
        r"loss 'asl': `labels` shape \(4, 2\) must equal logits shape \(4, 3\)",
    ),
    (
        "cross_entropy",
        {},
        (torch.tensor([1, 2]), torch.tensor([0, 1])),
        TypeError,
        r"loss 'cross_entropy': `logits` must be a floating-point tensor",
    ),
]


@pytest.mark.parametrize(
    "name,kwargs,inputs,error,message", BAD_FORWARD, ids=[f"{row[0]}-{i}" for i, row in enumerate(BAD_FORWARD)]
)
def test_bad_input_raises_a_clear_error_before_computing(name, kwargs, inputs, error, message):
    with pytest.raises(error, match=message):
        get_loss(name, **kwargs)(*inputs)


BAD_ARGUMENTS = [
    (
        "cross_entropy",
        {"label_smoothing": -0.1},
        ValueError,
        r"loss 'cross_entropy': `label_smoothing` must be in \[0, 1\], got -0.1",
    ),
    (
        "cross_entropy",
        {"weight": [1.0, -1.0]},
        ValueError,
        r"loss 'cross_entropy': every entry of `weight` must be >= 0",
    ),
    ("focal", {"gamma": -1.0}, ValueError, r"loss 'focal': `gamma` must be in \[0, inf\), got -1"),
    ("focal", {"alpha": -0.25}, ValueError, r"loss 'focal': `alpha` must be in \[0, 1\], got -0.25"),
    ("focal", {"alpha": 1.5}, ValueError, r"loss 'focal': `alpha` must be in \[0, 1\], got 1.5"),
    ("focal", {"alpha": [0.5, -0.5]}, ValueError, r"loss 'focal': every entry of `alpha` must be >= 0"),
    ("focal", {"label_smoothing": 1.5}, ValueError, r"loss 'focal': `label_smoothing` must be in \[0, 1\], got 1.5"),
    (
        "class_balanced",
        {"samples_per_class": [5, 5], "beta": 1.0},
        ValueError,
        r"loss 'class_balanced': `beta` must be in \[0, 1\), got 1",
    ),
    (
        "class_balanced",
        {"samples_per_class": [5, 5], "beta": -0.5},
        ValueError,
        r"`beta` must be in \[0, 1\], got -0.5",
    ),
    (
        "class_balanced",
        {"samples_per_class": [5, 5], "base": "dice"},
        ValueError,
        r"loss 'class_balanced': parameter 'base' must be one of 'ce', 'focal', got str 'dice'",
    ),
    (
        "class_balanced",
        {"samples_per_class": [0, 5]},
        ValueError,
        r"loss 'class_balanced': every entry of `samples_per_class` must be > 0",
    ),
    ("class_balanced", {"samples_per_class": [5, 5], "gamma": -2.0}, ValueError, r"`gamma` must be in \[0, inf\)"),
    ("class_balanced", {}, TypeError, r"samples_per_class"),
    (
        "ldam",
        {"samples_per_class": [5, 5], "max_margin": -1.0},
        ValueError,
        r"loss 'ldam': `max_margin` must be in \[0, inf\)",
    ),
    (
        "ldam",
        {"samples_per_class": [5, 5], "scale": 0.0},
        ValueError,
        r"loss 'ldam': `scale` must be in \(0, inf\), got 0",
    ),
    ("poly1", {"epsilon": -2.0}, ValueError, r"loss 'poly1': `epsilon` must be in \[-1, inf\), got -2"),
    (
        "cost_sensitive",
        {"cost_matrix": [[0, 1, 2], [1, 0, 2]]},
        ValueError,
        r"loss 'cost_sensitive': `cost_matrix` must be a square C x C matrix .* got shape \(2, 3\)",
    ),
    (
        "cost_sensitive",
        {"cost_matrix": [[0, -1], [1, 0]]},
        ValueError,
        r"loss 'cost_sensitive': every entry of `cost_matrix` must be >= 0",
    ),
    ("cost_sensitive", {"cost_matrix": [[0, float("inf")], [1, 0]]}, ValueError, r"`cost_matrix` must be finite"),
    ("cost_sensitive", {"cost_matrix": [[0, 1], [1]]}, TypeError, r"`cost_matrix` must be a C x C list of lists"),
    ("cost_sensitive", {"cost_matrix": COSTS, "cost_weight": -1.0}, ValueError, r"`cost_weight` must be in \[0, inf\)"),
    ("fn_penalty", {"fn_cost": -1.0}, ValueError, r"loss 'fn_penalty': `fn_cost` must be in \[0, inf\), got -1"),
    (
        "fn_penalty",
        {"positive_class": 2},
        ValueError,
        r"loss 'fn_penalty': `positive_class` must be one of \[0, 1\], got 2",
    ),
    ("bce", {"pos_weight": -1.0}, ValueError, r"loss 'bce': `pos_weight` must be in \[0, inf\), got -1"),
    ("bce", {"pos_weight": [1.0, -2.0]}, ValueError, r"loss 'bce': every entry of `pos_weight` must be >= 0"),
    ("sigmoid_focal", {"alpha": -0.25}, ValueError, r"loss 'sigmoid_focal': `alpha` must be in \[0, 1\], got -0.25"),
    (
        "sigmoid_focal",
        {"alpha": [0.25, 2.0]},
        ValueError,
        r"loss 'sigmoid_focal': every entry of `alpha` must be in \[0, 1\], got \[0.25, 2.0\]",
    ),
    ("bce", {"label_smoothing": -0.1}, ValueError, r"loss 'bce': `label_smoothing` must be in \[0, 1\], got -0.1"),
    ("asl", {"label_smoothing": 2.0}, ValueError, r"loss 'asl': `label_smoothing` must be in \[0, 1\], got 2"),
    ("sigmoid_focal", {"gamma": -2.0}, ValueError, r"loss 'sigmoid_focal': `gamma` must be in \[0, inf\)"),
    ("asl", {"gamma_neg": -1.0}, ValueError, r"loss 'asl': `gamma_neg` must be in \[0, inf\)"),
    ("asl", {"clip": 1.5}, ValueError, r"loss 'asl': `clip` must be in \[0, 1\], got 1.5"),
    ("asl", {"eps": 0.0}, ValueError, r"loss 'asl': `eps` must be in \(0, 1\], got 0"),
    ("focal", {"gamma": "2"}, TypeError, r"loss 'focal': parameter 'gamma' must be float, got str '2'"),
    ("focal", {"gama": 2.0}, ValueError, r"loss 'focal': unknown parameter 'gama'. Did you mean 'gamma'\?"),
    ("asl", {"detach_focusing": 1}, TypeError, r"loss 'asl': parameter 'detach_focusing' must be bool"),
]


@pytest.mark.parametrize(
    "name,kwargs,error,message", BAD_ARGUMENTS, ids=[f"{row[0]}-{i}" for i, row in enumerate(BAD_ARGUMENTS)]
)
def test_bad_argument_raises_at_construction_naming_loss_and_parameter(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        get_loss(name, **kwargs)
