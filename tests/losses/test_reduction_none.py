"""reduction="none" / "sum", normalize="weight" and sample_weight on every decomposable classification,
cost-sensitive, multi-label, regression and ranking loss: per-item losses against PyTorch's unreduced losses (and
torchvision's / the ASL authors' formulas, written out), their sum over the item count against the default mean,
weighted means against PyTorch's, data weights against a hand-weighted sum, and micro-batches against the batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_losses import get_loss

COSTS = [[0.0, 1.0, 4.0], [2.0, 0.0, 1.0], [8.0, 3.0, 0.0]]
WEIGHT = [0.5, 2.0, 1.25]  # exact in float32: the loss keeps its class weights in float32
SAMPLES = [100, 10, 3]
RANKING = {
    "top_k": 2,
    "diversity_weight": 0.3,
    "popularity_weight": 0.2,
    "item_popularity": [5.0, 1.0, 2.0],
    "item_embeddings": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
}

# case id -> (registered name, kwargs, label kind of the generated batch)
CASES = {
    "cross_entropy": ("cross_entropy", {}, "index"),
    "cross_entropy-weighted-smoothed": ("cross_entropy", {"weight": WEIGHT, "label_smoothing": 0.1}, "index"),
    "cross_entropy-soft-weighted-smoothed": ("cross_entropy", {"weight": WEIGHT, "label_smoothing": 0.1}, "soft"),
    "focal": ("focal", {"gamma": 2.0}, "index"),
    "focal-scalar-alpha": ("focal", {"gamma": 1.5, "alpha": 0.25}, "index"),
    "focal-class-alpha-smoothed": ("focal", {"gamma": 0.5, "alpha": WEIGHT, "label_smoothing": 0.2}, "index"),
    "focal-soft-scalar-alpha": ("focal", {"gamma": 2.0, "alpha": 0.25}, "soft"),
    "class_balanced-ce": ("class_balanced", {"samples_per_class": SAMPLES, "beta": 0.99}, "index"),
    "class_balanced-focal": ("class_balanced", {"samples_per_class": SAMPLES, "base": "focal"}, "index"),
    "ldam": ("ldam", {"samples_per_class": SAMPLES, "scale": 2.0, "weight": WEIGHT}, "index"),
    "poly1": ("poly1", {"epsilon": 2.0}, "index"),
    "cost_sensitive": ("cost_sensitive", {"cost_matrix": COSTS, "cost_weight": 0.5}, "index"),
    "fn_penalty": ("fn_penalty", {"fn_cost": 5.0}, "index2"),
    "bce": ("bce", {}, "binary"),
    "bce-pos_weight-weight-smoothed": (
        "bce",
        {"pos_weight": [1.0, 3.0, 0.5], "weight": [[1.0], [0.0], [2.0]], "label_smoothing": 0.1},
        "binary",
    ),
    "sigmoid_focal": ("sigmoid_focal", {}, "binary"),
    "sigmoid_focal-class-alpha": ("sigmoid_focal", {"alpha": [0.1, 0.5, 0.9], "gamma": 1.0}, "binary"),
    "asl": ("asl", {}, "binary"),
    "asl-smoothed": ("asl", {"gamma_pos": 1.0, "label_smoothing": 0.1}, "binary"),
    "mse": ("mse", {}, "target"),
    "huber": ("huber", {"delta": 0.5}, "target"),
    "smooth_l1": ("smooth_l1", {"beta": 0.5}, "target"),
    "smooth_l1-beta-zero": ("smooth_l1", {"beta": 0.0}, "target"),
    "relevance_diversity": ("relevance_diversity", RANKING, "ranking"),
}


def make_batch(kind, n=8, spatial=(2,), seed=0):
    """(logits, labels): about one label entry in four ignored (none for class probabilities)."""
    generator = torch.Generator().manual_seed(seed)
    c = 2 if kind == "index2" else 3
    spatial = () if kind == "ranking" else tuple(spatial)
    logits = torch.randn((n, c) + spatial, generator=generator) * 2
    if kind in ("index", "index2", "ranking"):
        labels = torch.randint(0, c, (n,) + spatial, generator=generator)
        ignored = torch.rand(labels.shape, generator=generator) < 0.25
    elif kind == "soft":
        return logits, torch.softmax(torch.randn(logits.shape, generator=generator) * 2, dim=1)
    elif kind == "binary":
        labels = torch.rand(logits.shape, generator=generator)
        labels = torch.where(labels < 0.5, (labels < 0.2).float(), labels)  # hard and soft targets
        ignored = torch.rand(labels.shape, generator=generator) < 0.25
    else:
        labels = torch.randn(logits.shape, generator=generator)
        ignored = torch.rand(labels.shape, generator=generator) < 0.25
    return logits, labels.masked_fill(ignored, -100)


def build(case, **options):
    name, kwargs, kind = CASES[case]
    return get_loss(name, **kwargs, **options), *make_batch(kind)


def item_shape(kind, logits):
    if kind in ("binary", "target"):
        return tuple(logits.shape)
    return (logits.shape[0],) + tuple(logits.shape[2:])


def valid_items(kind, labels):
    if kind == "soft":
        return torch.ones(item_shape(kind, labels), dtype=torch.bool)
    return labels != -100


# ------------------------------------------------------------------------------------------------ references
def torchvision_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss, reduction="none" (alpha may be a per-class (C, 1, ...) tensor)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * loss


def timm_asymmetric(x, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
    """timm's AsymmetricLossMultiLabel (= the ASL authors') forward, per entry instead of summed."""
    xs_pos = torch.sigmoid(x)
    xs_neg = (1 - xs_pos + clip).clamp(max=1) if clip > 0 else 1 - xs_pos
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    pt = xs_pos * y + xs_neg * (1 - y)
    return -loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))


def masked(losses, labels):
    return torch.where(labels != -100, losses, 0.0)


def class_balanced_weights(samples, beta):
    raw = [(1 - beta) / (1 - beta**n) for n in samples]
    return torch.tensor([w * len(samples) / sum(raw) for w in raw])


def focal_formula(logits, labels, gamma, alpha=None, smoothing=0.0):
    """Lin et al. eq. 5 per class, -alpha_c y'_c (1 - p_c)^gamma log p_c summed over c, y' = y (1 - e) + e / C
    (one-hot y for class indices): the hard-label focal loss when e = 0."""
    c = logits.shape[1]
    targets = labels if labels.is_floating_point() else F.one_hot(labels.clamp(min=0), c).movedim(-1, 1).float()
    targets = targets * (1 - smoothing) + smoothing / c
    p = torch.softmax(logits, dim=1)
    alpha = torch.ones(c) if alpha is None else alpha
    terms = -alpha.view(1, c, *([1] * (logits.dim() - 2))) * targets * (1 - p) ** gamma * torch.log(p)
    losses = terms.sum(dim=1)
    return losses if labels.is_floating_point() else masked(losses, labels)


def torch_unreduced(case, logits, labels):
    """PyTorch's (or a reference formula's) unreduced loss for ``case``, 0 at ignored entries; None: no reference."""
    name, kwargs, kind = CASES[case]
    weight = torch.tensor(kwargs["weight"]) if "weight" in kwargs else None
    smoothing = kwargs.get("label_smoothing", 0.0)
    if name == "focal":
        return focal_formula(logits, labels, kwargs["gamma"], hand_class_weights(case), smoothing)
    if name == "class_balanced" and kwargs.get("base") == "focal":
        return focal_formula(logits, labels, kwargs.get("gamma", 2.0), hand_class_weights(case))
    if name == "poly1":
        ce = F.cross_entropy(logits, labels, reduction="none")
        return masked(ce + kwargs["epsilon"] * (1 - torch.exp(-ce)), labels)
    if name == "ldam":
        raw = torch.tensor(kwargs["samples_per_class"], dtype=torch.float32) ** -0.25
        margins = raw * 0.5 / raw.max()  # default max_margin
        shifted = logits - margins[labels.clamp(min=0)].unsqueeze(1) * F.one_hot(labels.clamp(min=0), 3).movedim(-1, 1)
        return F.cross_entropy(kwargs["scale"] * shifted, labels, weight=weight, reduction="none")
    if name in ("cost_sensitive", "fn_penalty"):
        costs = torch.tensor(COSTS if name == "cost_sensitive" else [[0.0, 1.0], [kwargs["fn_cost"], 0.0]])
        ce = F.cross_entropy(logits, labels, reduction="none")
        expected_cost = (torch.softmax(logits, dim=1) * costs[labels.clamp(min=0)].movedim(-1, 1)).sum(dim=1)
        return masked(ce + kwargs.get("cost_weight", 1.0) * expected_cost, labels)
    if name == "cross_entropy":
        return F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing, reduction="none")
    if name == "class_balanced" and kwargs.get("base", "ce") == "ce":
        cb = class_balanced_weights(kwargs["samples_per_class"], kwargs["beta"])
        return F.cross_entropy(logits, labels, weight=cb, reduction="none")
    if name == "bce":
        targets = labels.masked_fill(labels == -100, 0.0) * (1 - smoothing) + smoothing / 2
        pos_weight = torch.tensor(kwargs["pos_weight"]) if "pos_weight" in kwargs else None
        losses = F.binary_cross_entropy_with_logits(
            logits,
            targets,
            weight=weight,
            pos_weight=None if pos_weight is None else pos_weight.view(3, 1),
            reduction="none",
        )
        return masked(losses, labels)
    if name == "sigmoid_focal":
        alpha = kwargs.get("alpha", 0.25)
        alpha = torch.tensor(alpha).view(-1, 1) if isinstance(alpha, list) else alpha
        targets = labels.masked_fill(labels == -100, 0.0)
        return masked(torchvision_sigmoid_focal(logits, targets, alpha, kwargs.get("gamma", 2.0)), labels)
    if name == "asl":
        targets = labels.masked_fill(labels == -100, 0.0) * (1 - smoothing) + smoothing / 2
        return masked(timm_asymmetric(logits, targets, gamma_pos=kwargs.get("gamma_pos", 0.0)), labels)
    if name in ("mse", "huber", "smooth_l1"):
        function = {
            "mse": lambda x, y: F.mse_loss(x, y, reduction="none"),
            "huber": lambda x, y: F.huber_loss(x, y, delta=kwargs["delta"], reduction="none"),
            "smooth_l1": lambda x, y: F.smooth_l1_loss(x, y, beta=kwargs["beta"], reduction="none"),
        }[name]
        return masked(function(logits, labels), labels)
    return None


# ------------------------------------------------------------------------------------------------ reduction
@pytest.mark.parametrize("case", [case for case in CASES if case != "relevance_diversity"])
def test_reduction_none_equals_torch_unreduced_loss(case):
    loss, logits, labels = build(case, reduction="none")
    expected = torch_unreduced(case, logits, labels)
    if expected is None:
        pytest.skip("no PyTorch counterpart: covered by the sum / count identity")
    items = loss(logits, labels)
    assert items.shape == expected.shape
    torch.testing.assert_close(items, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_reduction_none_summed_over_the_item_count_is_the_mean(case):
    loss, logits, labels = build(case)
    kind = CASES[case][2]
    unreduced, summed = build(case, reduction="none")[0], build(case, reduction="sum")[0]
    items = unreduced(logits, labels)
    assert items.shape == item_shape(kind, logits) and items.dtype == torch.float32
    assert not items[~valid_items(kind, labels)].any(), "ignored entries must be 0"
    count = loss.num_items(labels)["label"]
    assert count == valid_items(kind, labels).sum()
    torch.testing.assert_close(items.sum() / count, loss(logits, labels), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(summed(logits, labels), items.sum(), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_reduction_none_gradient_is_the_gradient_of_each_item(case):
    loss, logits, labels = build(case, reduction="none")
    logits.requires_grad_(True)
    items = loss(logits, labels)
    grad_items = torch.rand(items.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(items, logits, grad_items)
    weighted = build(case)[0]
    weighted_value = weighted(logits, labels, sample_weight=grad_items)
    (expected,) = torch.autograd.grad(weighted_value * weighted.num_items(labels)["label"], logits)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ normalize="weight"
def torch_weighted_mean(case, logits, labels):
    """PyTorch's weighted mean (sum of w_i l_i / sum of w_i) for ``case``; None: no class weights."""
    name, kwargs, kind = CASES[case]
    if name == "cross_entropy" and "weight" not in kwargs:
        return None
    if name == "cross_entropy" and kind == "index":
        weight = torch.tensor(WEIGHT)
        expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=kwargs.get("label_smoothing", 0.0))
        if not kwargs.get("label_smoothing"):
            log_probs = F.log_softmax(logits, dim=1)
            torch.testing.assert_close(expected, F.nll_loss(log_probs, labels, weight=weight))
        return expected
    if name == "cross_entropy":
        # PyTorch's mean with class probabilities divides by the number of rows; normalize="weight" divides by
        # sum_i sum_c w_c y_ic instead (w[y_i] for a one-hot row)
        total = F.cross_entropy(logits, labels, weight=torch.tensor(WEIGHT), label_smoothing=0.1, reduction="sum")
        return total / (labels * torch.tensor(WEIGHT).view(1, 3, 1)).sum()
    if name == "class_balanced" and kwargs.get("base", "ce") == "ce":
        cb = class_balanced_weights(kwargs["samples_per_class"], kwargs["beta"])
        return F.cross_entropy(logits, labels, weight=cb)
    if name == "bce" and "weight" in kwargs:
        weight = torch.tensor(kwargs["weight"]).expand_as(logits)
        valid = labels != -100
        targets = labels.masked_fill(~valid, 0.0) * 0.9 + 0.05
        pos_weight = torch.tensor(kwargs["pos_weight"]).view(3, 1)
        total = F.binary_cross_entropy_with_logits(
            logits, targets, weight=weight * valid, pos_weight=pos_weight, reduction="sum"
        )
        return total / (weight * valid).sum()
    return None


def hand_class_weights(case):
    """The class weight vector a case's weighted mean divides by (None: every item weighs 1)."""
    name, kwargs, _ = CASES[case]
    if name == "focal" and isinstance(kwargs.get("alpha"), float):
        return torch.tensor([1 - kwargs["alpha"], kwargs["alpha"], kwargs["alpha"]])
    if name == "focal" and "alpha" in kwargs:
        return torch.tensor(kwargs["alpha"])
    if name == "class_balanced":
        return class_balanced_weights(kwargs["samples_per_class"], kwargs.get("beta", 0.9999))
    if name in ("cross_entropy", "ldam") and "weight" in kwargs:
        return torch.tensor(kwargs["weight"])
    return None


def hand_item_weights(case, labels):
    """w[y_i] per label entry (0 if ignored), sum_c w_c y_ic per probability row, the element weight of bce."""
    name, kwargs, kind = CASES[case]
    valid = valid_items(kind, labels).float()
    if name == "bce" and "weight" in kwargs:
        return valid * torch.tensor(kwargs["weight"])
    vector = hand_class_weights(case)
    if vector is None:
        return valid
    if kind == "soft":
        return (labels * vector.view(1, -1, 1)).sum(dim=1)
    return vector[labels.clamp(min=0)] * valid


@pytest.mark.parametrize("case", CASES)
def test_item_weights_are_the_class_weight_of_each_item_and_0_where_ignored(case):
    loss, _, labels = build(case)
    torch.testing.assert_close(loss.item_weights(labels), hand_item_weights(case, labels))


@pytest.mark.parametrize("case", CASES)
def test_normalize_weight_is_the_weighted_mean(case):
    loss, logits, labels = build(case, normalize="weight")
    expected = torch_weighted_mean(case, logits, labels)
    if expected is None:
        # sum of the items over the sum of the hand-computed class weights (every item weighs 1 without them)
        items = build(case, reduction="none")[0](logits, labels)
        expected = items.sum() / hand_item_weights(case, labels).sum()
        if hand_class_weights(case) is None and CASES[case][0] != "bce":
            torch.testing.assert_close(expected, build(case)[0](logits, labels))
    torch.testing.assert_close(loss(logits, labels), expected, atol=1e-6, rtol=1e-6)
    assert loss.num_items(labels) == {"label_weight": pytest.approx(hand_item_weights(case, labels).sum().item())}


@pytest.mark.parametrize(
    "name,kwargs,weights",
    [
        ("focal", {"gamma": 0.0, "alpha": WEIGHT}, WEIGHT),
        ("focal", {"gamma": 0.0, "alpha": 0.25}, [0.75, 0.25, 0.25]),
        ("ldam", {"samples_per_class": SAMPLES, "max_margin": 0.0, "scale": 1.0, "weight": WEIGHT}, WEIGHT),
    ],
)
def test_normalize_weight_of_class_weighted_losses_at_their_cross_entropy_point_is_torch_weighted_mean(
    name, kwargs, weights
):
    logits, labels = make_batch("index")
    value = get_loss(name, normalize="weight", **kwargs)(logits, labels)
    torch.testing.assert_close(value, F.cross_entropy(logits, labels, weight=torch.tensor(weights)))


def test_normalize_weight_of_one_hot_probabilities_equals_the_hard_labels():
    logits, labels = make_batch("index")
    labels = labels.clamp(min=0)
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).float()
    loss = get_loss("cross_entropy", weight=WEIGHT, normalize="weight")
    torch.testing.assert_close(loss(logits, one_hot), loss(logits, labels))
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels, weight=torch.tensor(WEIGHT)))


# ------------------------------------------------------------------------------------------------ sample_weight
@pytest.mark.parametrize("normalize", ["count", "weight"])
@pytest.mark.parametrize("case", CASES)
def test_sample_weight_of_ones_changes_nothing(case, normalize):
    loss, logits, labels = build(case, normalize=normalize)
    expected = loss(logits, labels)
    items = build(case, reduction="none")[0](logits, labels)
    torch.testing.assert_close(loss(logits, labels, sample_weight=torch.ones(logits.shape[0])), expected)
    torch.testing.assert_close(loss(logits, labels, sample_weight=torch.ones(items.shape)), expected)


@pytest.mark.parametrize("per", ["example", "item"])
@pytest.mark.parametrize("case", CASES)
def test_random_sample_weight_equals_the_hand_weighted_sum(case, per):
    kind = CASES[case][2]
    _, logits, labels = build(case)
    generator = torch.Generator().manual_seed(2)
    shape = item_shape(kind, logits)
    weights = torch.rand(shape[:1] if per == "example" else shape, generator=generator) * 3
    per_item = weights.reshape(weights.shape + (1,) * (len(shape) - weights.dim())).expand(shape)
    reference = torch_unreduced(case, logits, labels)
    items = build(case, reduction="none")[0](logits, labels) if reference is None else reference
    valid = valid_items(kind, labels)
    # normalize="count": the weighted items summed over the (unweighted) item count
    counted = build(case)[0](logits, labels, sample_weight=weights)
    torch.testing.assert_close(counted, (items * per_item).sum() / valid.sum(), atol=1e-6, rtol=1e-5)
    # normalize="weight": over the sum of the items' weights (class weight times data weight)
    loss = build(case, normalize="weight")[0]
    class_weights = loss.item_weights(labels)
    assert class_weights.shape == shape and not class_weights[~valid].any()
    expected = (items * per_item).sum() / (class_weights * per_item).sum()
    torch.testing.assert_close(loss(logits, labels, sample_weight=weights), expected, atol=1e-6, rtol=1e-5)
    # reduction="none" weighs each item
    unreduced = build(case, reduction="none")[0](logits, labels, sample_weight=weights)
    torch.testing.assert_close(unreduced, items * per_item, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("normalize", ["count", "weight"])
@pytest.mark.parametrize("case", CASES)
def test_weighted_micro_batches_add_up_to_the_weighted_batch(case, normalize):
    """The trainer's contract: num_items (the count or the weight sum) of the whole batch, then parts summed."""
    loss, logits, labels = build(case, normalize=normalize)
    weights = torch.rand(logits.shape[0], generator=torch.Generator().manual_seed(3)) * 2
    whole_input = logits.clone().requires_grad_()
    whole = loss(whole_input, labels, sample_weight=weights)
    whole.backward()
    num_items = loss.num_items(labels, sample_weight=weights)
    assert list(num_items) == (["label_weight"] if normalize == "weight" else ["label"])
    parts_input = logits.clone().requires_grad_()
    sizes = [3, 1, 4]
    total = sum(
        loss(x, y, num_items_in_batch=num_items, sample_weight=w)
        for x, y, w in zip(parts_input.split(sizes), labels.split(sizes), weights.split(sizes))
    )
    total.backward()
    torch.testing.assert_close(total, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(parts_input.grad, whole_input.grad, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ ranking specifics
def test_ranking_rows_are_cross_entropy_plus_weighted_penalties():
    logits, labels = make_batch("ranking")
    items = get_loss("relevance_diversity", reduction="none", **RANKING)(logits, labels)
    relevance = F.cross_entropy(logits, labels, reduction="none")
    # top-2 mass, diversity = |sum q_a e_a/|e_a||^2, popularity = sum q_a count_a / max count
    unit = F.normalize(torch.tensor(RANKING["item_embeddings"]), dim=-1)
    popularity = torch.tensor(RANKING["item_popularity"]) / 5.0
    for row in range(logits.shape[0]):
        if labels[row] == -100:
            assert items[row] == 0
            continue
        values, indices = logits[row].topk(2)
        mass = torch.softmax(values, dim=0)
        diversity = ((mass[:, None] * unit[indices]).sum(0) ** 2).sum()
        expected = relevance[row] + 0.3 * diversity + 0.2 * (mass * popularity[indices]).sum()
        assert items[row].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ranking_components_are_reduced_like_the_weighted_loss():
    logits, labels = make_batch("ranking")
    weights = torch.rand(logits.shape[0], generator=torch.Generator().manual_seed(4))
    loss = get_loss("relevance_diversity", **RANKING)
    value = loss(logits, labels, sample_weight=weights)
    components = loss.last_components
    torch.testing.assert_close(
        value, components["relevance"] + 0.3 * components["diversity"] + 0.2 * components["popularity"]
    )
    relevance = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(components["relevance"], (relevance * weights).sum() / (labels != -100).sum())


@pytest.mark.parametrize("weighting", ["uncertainty", "dwa"])
def test_ranking_learned_weightings_refuse_per_row_options(weighting):
    with pytest.raises(
        ValueError, match=rf"loss 'relevance_diversity': `reduction='none'` needs per-row .*{weighting}"
    ):
        get_loss("relevance_diversity", weighting=weighting, reduction="none", **RANKING)
    loss = get_loss("relevance_diversity", weighting=weighting, **RANKING)
    logits, labels = make_batch("ranking")
    with pytest.raises(
        ValueError, match=r"loss 'relevance_diversity': data weights \(`sample_weight`\) need fixed .* weighting="
    ):
        loss(logits, labels, sample_weight=torch.ones(logits.shape[0]))


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("name", sorted({name for name, _, _ in CASES.values()}))
def test_options_are_validated_naming_the_loss(name):
    kwargs = next(kwargs for case_name, kwargs, _ in CASES.values() if case_name == name)
    with pytest.raises(ValueError, match=rf"loss '{name}': parameter 'reduction' must be one of 'mean', 'sum', 'none'"):
        get_loss(name, reduction="avg", **kwargs)
    with pytest.raises(ValueError, match=rf"loss '{name}': parameter 'normalize' must be one of 'count', 'weight'"):
        get_loss(name, normalize="batch", **kwargs)
    assert "reduction='sum'" in repr(get_loss(name, reduction="sum", **kwargs))


def test_reduction_none_of_an_all_ignored_batch_is_all_zero_with_zero_gradient():
    logits, labels = make_batch("index")
    logits.requires_grad_(True)
    items = get_loss("focal", reduction="none")(logits, torch.full_like(labels, -100))
    items.sum().backward()
    assert not items.any() and not logits.grad.any() and math.isfinite(items.sum().item())
