"""relevance_diversity: CE when diversity is off, penalties equal their formulas as loops, decomposes, gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_losses import describe_loss, get_loss
from hf_losses.losses.ranking import sampled_softmax_cross_entropy


def _batch(rows: int = 8, items: int = 12, dims: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, items, generator=generator) * 2
    labels = torch.randint(0, items, (rows,), generator=generator)
    embeddings = torch.randn(items, dims, generator=generator)
    popularity = torch.randint(0, 50, (items,), generator=generator).float()
    return logits, labels, embeddings, popularity


def _loop_diversity(logits, embeddings, top_k):
    """sum_{a,b in top-k} q_a q_b cos(e_a, e_b), pair by pair."""
    values = []
    for row in logits:
        top = sorted(range(len(row)), key=lambda j: -float(row[j]))[:top_k]
        norm = sum(math.exp(float(row[j])) for j in top)
        mass = {j: math.exp(float(row[j])) / norm for j in top}
        total = 0.0
        for a in top:
            for b in top:
                cosine = float(embeddings[a] @ embeddings[b]) / float(embeddings[a].norm() * embeddings[b].norm())
                total += mass[a] * mass[b] * cosine
        values.append(total)
    return sum(values) / len(values)


def _loop_popularity(logits, counts, top_k):
    values = []
    for row in logits:
        top = sorted(range(len(row)), key=lambda j: -float(row[j]))[:top_k]
        norm = sum(math.exp(float(row[j])) for j in top)
        values.append(sum(math.exp(float(row[j])) / norm * float(counts[j]) / float(counts.max()) for j in top))
    return sum(values) / len(values)


def test_diversity_weight_zero_equals_softmax_cross_entropy_exactly():
    logits, labels, _, _ = _batch()
    labels[3] = -100
    logits.requires_grad_(True)
    value = get_loss("relevance_diversity", diversity_weight=0.0)(logits, labels)
    (grad,) = torch.autograd.grad(value, logits)
    reference = F.cross_entropy(logits, labels)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert torch.equal(value, reference)
    assert torch.equal(grad, reference_grad)


@pytest.mark.parametrize("top_k", [2, 3, 12])  # top_k=1 (a constant penalty) is refused, see test_nothing_silent
def test_diversity_term_equals_pairwise_cosine_loop(top_k):
    logits, labels, embeddings, _ = _batch()
    loss = get_loss("relevance_diversity", diversity_weight=0.7, item_embeddings=embeddings, top_k=top_k)
    value = loss(logits, labels)
    diversity = _loop_diversity(logits, embeddings, top_k)
    assert loss.last_components["diversity"].item() == pytest.approx(diversity, rel=1e-5)
    expected = F.cross_entropy(logits, labels).item() + 0.7 * diversity
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_popularity_term_equals_loop():
    logits, labels, _, counts = _batch()
    loss = get_loss("relevance_diversity", diversity_weight=0.0, popularity_weight=0.3, item_popularity=counts, top_k=4)
    value = loss(logits, labels)
    popularity = _loop_popularity(logits, counts, 4)
    assert loss.last_components["popularity"].item() == pytest.approx(popularity, rel=1e-5)
    assert value.item() == pytest.approx(F.cross_entropy(logits, labels).item() + 0.3 * popularity, rel=1e-5)
    assert set(loss.component_weights()) == {"relevance", "popularity"}


def test_hand_computed_two_item_case():
    # two items with orthogonal embeddings and equal scores: q = (1/2, 1/2), D = 1/4 + 1/4 = 1/2
    logits, labels = torch.zeros(1, 2), torch.tensor([0])
    loss = get_loss("relevance_diversity", diversity_weight=1.0, item_embeddings=[[1.0, 0.0], [0.0, 3.0]], top_k=2)
    assert loss(logits, labels).item() == pytest.approx(math.log(2) + 0.5, rel=1e-6)
    # identical directions: D = 1 whatever the mass
    loss.set_item_embeddings([[1.0, 1.0], [2.0, 2.0]])
    assert loss(torch.tensor([[0.3, -1.0]]), labels).item() == pytest.approx(
        F.cross_entropy(torch.tensor([[0.3, -1.0]]), labels).item() + 1.0, rel=1e-6
    )


def test_sampled_softmax_equals_loop_with_log_q_correction_and_accidental_hits_masked():
    logits, labels, _, counts = _batch(rows=4, items=6)
    labels = torch.tensor([0, 2, 5, 1])
    negatives = torch.tensor([2, 3, 3])
    log_q = torch.log((counts + 1) / (counts + 1).sum())
    values = sampled_softmax_cross_entropy(logits, labels, negatives, log_q)
    for row in range(4):
        positive = float(logits[row, labels[row]] - log_q[labels[row]])
        scores = [positive] + [float(logits[row, n] - log_q[n]) for n in negatives if n != labels[row]]
        expected = -positive + math.log(sum(math.exp(s) for s in scores))
        assert values[row].item() == pytest.approx(expected, rel=1e-5)


def test_sampled_negatives_use_global_seed_and_uniform_correction_is_a_shift():
    logits, labels, _, _ = _batch(items=30)
    loss = get_loss("relevance_diversity", diversity_weight=0.0, sampled_negatives=5)
    torch.manual_seed(1)
    first = loss(logits, labels)
    torch.manual_seed(1)
    assert torch.equal(first, loss(logits, labels))
    # uniform Q: log Q is a constant, so the value is the plain CE over the sampled candidates
    torch.manual_seed(1)
    negatives = torch.multinomial(torch.full((30,), 1 / 30), 5, replacement=True)
    expected = sampled_softmax_cross_entropy(logits, labels, negatives, torch.zeros(30)).mean()
    torch.testing.assert_close(first, expected)
    popular = get_loss(
        "relevance_diversity",
        diversity_weight=0.0,
        sampled_negatives=5,
        negative_sampling="popularity",
        item_popularity=torch.arange(30.0),
    )
    assert torch.isfinite(popular(logits, labels))


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_gradcheck_float64(weighting):
    logits, labels, embeddings, counts = _batch(rows=4, items=7)
    loss = get_loss(
        "relevance_diversity",
        diversity_weight=0.5,
        popularity_weight=0.2,
        item_embeddings=embeddings,
        item_popularity=counts,
        top_k=3,
        weighting=weighting,
        initial_log_variance=0.3,
    )
    logits = logits.double().requires_grad_(True)
    assert loss(logits, labels).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_gradient_equal_across_accumulation(weighting):
    """8 rows at once == two calls of 4 rows divided by num_items_in_batch=8 (logits and log-variances)."""
    logits, labels, embeddings, counts = _batch()
    labels[1] = -100
    kwargs = dict(
        diversity_weight=0.5,
        popularity_weight=0.2,
        item_embeddings=embeddings,
        item_popularity=counts,
        top_k=3,
        weighting=weighting,
        initial_log_variance=0.4,
    )
    whole_loss, split_loss = get_loss("relevance_diversity", **kwargs), get_loss("relevance_diversity", **kwargs)
    whole_logits, split_logits = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    whole = whole_loss(whole_logits, labels)
    whole.backward()
    count = int((labels != -100).sum())
    split = sum(split_loss(z, y, num_items_in_batch=count) for z, y in zip(split_logits.split(4), labels.split(4)))
    split.backward()
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(split_logits.grad, whole_logits.grad, rtol=1e-5, atol=1e-7)
    for whole_parameter, split_parameter in zip(whole_loss.parameters(), split_loss.parameters()):
        torch.testing.assert_close(split_parameter.grad, whole_parameter.grad, rtol=1e-5, atol=1e-7)


def test_last_components_add_up_over_micro_batches_to_the_batch_means():
    logits, labels, embeddings, _ = _batch()
    loss = get_loss("relevance_diversity", diversity_weight=0.5, item_embeddings=embeddings, top_k=3)
    loss(logits, labels)
    whole = dict(loss.last_components)
    parts = {"relevance": 0.0, "diversity": 0.0}
    for z, y in zip(logits.split(4), labels.split(4)):
        loss(z, y, num_items_in_batch=8)
        parts = {name: parts[name] + loss.last_components[name] for name in parts}
    for name in parts:
        torch.testing.assert_close(parts[name], whole[name])


def test_uncertainty_value_is_kendall_formula():
    logits, labels, embeddings, _ = _batch()
    loss = get_loss(
        "relevance_diversity",
        diversity_weight=0.5,
        item_embeddings=embeddings,
        weighting="uncertainty",
        initial_log_variance=0.2,
    )
    with torch.no_grad():
        loss.weighting.log_variances.copy_(torch.tensor([0.2, -0.3, 0.0]))
    value = loss(logits, labels)
    relevance, diversity = loss.last_components["relevance"], loss.last_components["diversity"]
    expected = (math.exp(-0.2) * relevance + 0.2) + 0.5 * (math.exp(0.3) * diversity - 0.3)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.component_weights() == pytest.approx({"relevance": math.exp(-0.2), "diversity": 0.5 * math.exp(0.3)})
    assert [name for name, _ in loss.named_parameters()] == ["weighting.log_variances"]


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_all_ignored_gives_zero_with_zero_gradient(weighting):
    logits, _, embeddings, _ = _batch()
    logits.requires_grad_(True)
    loss = get_loss("relevance_diversity", item_embeddings=embeddings, weighting=weighting)
    value = loss(logits, torch.full((8,), -100))
    value.backward()
    assert value.item() == 0.0
    assert logits.grad.abs().sum() == 0
    for parameter in loss.parameters():
        assert parameter.grad.abs().sum() == 0


def test_bf16_logits_give_float32_loss():
    logits, labels, embeddings, _ = _batch()
    loss = get_loss("relevance_diversity", item_embeddings=embeddings)
    value = loss(logits.bfloat16(), labels)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(logits.bfloat16().float(), labels).item(), rel=1e-6)


def test_live_embeddings_are_a_view_not_a_parameter_of_the_loss():
    logits, labels, _, _ = _batch()
    output_embeddings = torch.nn.Parameter(torch.randn(12, 4))
    loss = get_loss("relevance_diversity", diversity_weight=1.0)
    loss.set_item_embeddings(output_embeddings)
    before = loss(logits, labels)
    with torch.no_grad():
        output_embeddings[:, 1:] = 0.0  # every item points along +/- the first axis: |cos| = 1
    after = loss(logits, labels)
    assert after.item() != pytest.approx(before.item())
    assert list(loss.parameters()) == [] and "item_embeddings" not in loss.state_dict()
    logits.requires_grad_(True)
    loss(logits, labels).backward()
    assert output_embeddings.grad is None


def test_diversity_gradient_spreads_mass_towards_dissimilar_items():
    """Items 0 and 1 are near-duplicates, item 2 is orthogonal: descending D lifts item 2 relative to 0 and 1."""
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.5, 0.5]])
    logits = torch.tensor([[2.0, 1.9, 1.0, -3.0]], requires_grad=True)
    loss = get_loss(
        "relevance_diversity", relevance_weight=0.0, diversity_weight=1.0, item_embeddings=embeddings, top_k=3
    )
    loss(logits, torch.tensor([0])).backward()
    assert logits.grad[0, 2] < 0 < logits.grad[0, 0]


def test_schedule_drives_the_diversity_weight():
    loss = get_loss(
        "relevance_diversity",
        diversity_weight=1.0,
        item_embeddings=torch.randn(12, 4),
        schedules={
            "diversity": {"schedule": "linear", "start_value": 0.0, "end_value": 0.5, "start_step": 0, "end_step": 100}
        },
    )
    weights = []
    for step in (0, 50, 100, 200):
        loss.set_step(step)
        weights.append(loss.component_weights()["diversity"])
    assert weights == pytest.approx([0.0, 0.25, 0.5, 0.5])
    restored = get_loss(
        "relevance_diversity",
        diversity_weight=1.0,
        item_embeddings=torch.randn(12, 4),
        schedules={
            "diversity": {"schedule": "linear", "start_value": 0.0, "end_value": 0.5, "start_step": 0, "end_step": 100}
        },
    )
    loss.set_step(30)
    restored.load_state_dict(loss.state_dict())
    assert restored.component_weights()["diversity"] == pytest.approx(0.15)


@pytest.mark.parametrize(
    "kwargs,logits_shape,error,match",
    [
        ({"top_k": 0}, None, ValueError, "`top_k` must be an int >= 1, got 0"),
        ({"sampled_negatives": -1}, None, ValueError, "`sampled_negatives` must be an int >= 0"),
        ({"negative_sampling": "zipf"}, None, ValueError, "'negative_sampling' must be one of 'uniform', 'popularity'"),
        ({"diversity_weight": -1.0}, None, ValueError, r"`diversity_weight` must be in \[0, inf\)"),
        ({"weighting": "gradnorm"}, None, ValueError, "'weighting' must be one of 'fixed', 'uncertainty', 'dwa'"),
        ({"item_popularity": [1.0, -2.0]}, None, ValueError, "every entry of `item_popularity` must be >= 0"),
        ({"item_embeddings": torch.ones(3)}, None, ValueError, "`item_embeddings` must be 2-D"),
        ({"item_embeddings": [1.0, 2.0]}, None, TypeError, "'item_embeddings' must be"),
        (
            {"schedules": {"novelty": 1.0}},
            None,
            ValueError,
            r"`schedules` names \['novelty'\] which are not components",
        ),
        (
            {},
            (8, 12),
            ValueError,
            "needs `item_embeddings`; pass item_embeddings=... at construction or call "
            r"loss.set_item_embeddings\(...\)",
        ),
        (
            {"item_embeddings": torch.randn(5, 2)},
            (8, 12),
            ValueError,
            "`item_embeddings` has 5 rows but the logits score 12 items",
        ),
        (
            {"diversity_weight": 0.0, "top_k": 20, "popularity_weight": 1.0, "item_popularity": torch.ones(12)},
            (8, 12),
            ValueError,
            "`top_k`=20 exceeds the catalogue size 12",
        ),
        (
            {"diversity_weight": 0.0, "sampled_negatives": 12},
            (8, 12),
            ValueError,
            "`sampled_negatives`=12 must be below",
        ),
        ({"diversity_weight": 0.0}, (8, 12, 3), ValueError, r"`logits` must be \(N, num_items\) scores"),
    ],
)
def test_invalid_arguments_raise_naming_the_parameter(kwargs, logits_shape, error, match):
    if logits_shape is None:
        with pytest.raises(error, match=match):
            get_loss("relevance_diversity", **kwargs)
        return
    loss = get_loss("relevance_diversity", **kwargs)
    with pytest.raises(error, match=match):
        labels = torch.zeros((8,) + tuple(logits_shape[2:]), dtype=torch.long)
        loss(torch.randn(*logits_shape), labels)


def test_registered_with_summary_reference_and_alias():
    description = describe_loss("recommendation")
    assert description.name == "relevance_diversity"
    assert "Rao 1982" in description.reference and description.item_unit == "label"
    assert {p.name for p in description.parameters} >= {
        "diversity_weight",
        "top_k",
        "item_embeddings",
        "schedules",
        "weighting",
        "sampled_negatives",
    }
