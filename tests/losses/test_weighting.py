"""Weight schedules, uncertainty weighting and DWA: documented values at given steps, state round trips,
learned weights moving the right way, and the composite loss built on them."""

import math

import pytest
import torch

from hf_losses.losses.weighting import ComponentWeighting, WeightSchedule, dwa_lambdas

OWNER = "loss 'test'"


def _linear(start_value, end_value, start_step, end_step, kind="linear"):
    return {
        "schedule": kind,
        "start_value": start_value,
        "end_value": end_value,
        "start_step": start_step,
        "end_step": end_step,
    }


# ---------------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    "config,step,expected",
    [
        (0.3, 0, 0.3),
        (0.3, 10_000, 0.3),
        ({"schedule": "constant", "value": 0.7}, 5, 0.7),
        (_linear(0.0, 0.5, 0, 1000), 0, 0.0),
        (_linear(0.0, 0.5, 0, 1000), 250, 0.125),
        (_linear(0.0, 0.5, 0, 1000), 1000, 0.5),
        (_linear(0.0, 0.5, 0, 1000), 5000, 0.5),
        (_linear(1.0, 0.0, 100, 200), 50, 1.0),  # before the ramp: start value
        (_linear(1.0, 0.0, 100, 200), 150, 0.5),
        (_linear(1.0, 0.0, 100, 200), 175, 0.25),
        (_linear(0.0, 1.0, 0, 100, "cosine"), 0, 0.0),
        (_linear(0.0, 1.0, 0, 100, "cosine"), 25, (1 - math.cos(math.pi / 4)) / 2),
        (_linear(0.0, 1.0, 0, 100, "cosine"), 50, 0.5),
        (_linear(0.0, 1.0, 0, 100, "cosine"), 100, 1.0),
        (_linear(2.0, 1.0, 10, 20, "cosine"), 15, 1.5),
        (_linear(2.0, 1.0, 10, 20, "cosine"), 12, 2.0 - (1 - math.cos(math.pi * 0.2)) / 2),
    ],
)
def test_schedule_gives_documented_weight_at_step(config, step, expected):
    assert WeightSchedule.from_config(OWNER, "dice", config).value(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "config,error,match",
    [
        ("linear", TypeError, r"`schedules\['dice'\]` must be a number or a dict"),
        (
            {"schedule": "exponential"},
            ValueError,
            r"`schedules\['dice'\]\['schedule'\]` must be one of "
            r"\['constant', 'linear', 'cosine'\], got 'exponential'",
        ),
        (
            {"schedule": "linear", "start_value": 0.0, "end_value": 1.0},
            ValueError,
            r"missing \['start_step', 'end_step'\]",
        ),
        (_linear(0.0, 1.0, 10, 10), ValueError, "needs end_step > start_step, got start_step=10, end_step=10"),
        (_linear(0.0, 1.0, -1, 10), ValueError, r"`schedules\['dice'\]\['start_step'\]` must be an int >= 0, got -1"),
        (_linear(0.0, 1.0, 0, 10.5), ValueError, r"\['end_step'\]` must be an int >= 0, got 10.5"),
        (_linear(-1.0, 1.0, 0, 10), ValueError, r"\['start_value'\]` must be in \[0, inf\), got -1"),
        ({**_linear(0.0, 1.0, 0, 10), "warmup": 3}, ValueError, r"unknown keys \['warmup'\]"),
        ({"schedule": "constant", "value": 1.0, "end_value": 2.0}, ValueError, r"unknown keys \['end_value'\]"),
    ],
)
def test_invalid_schedule_raises_naming_the_key(config, error, match):
    with pytest.raises(error, match=match):
        WeightSchedule.from_config(OWNER, "dice", config)


def test_schedule_multiplies_the_static_weight_and_state_resumes_mid_schedule():
    weighting = ComponentWeighting(
        OWNER, ["ce", "dice"], {"ce": 1.0, "dice": 0.5}, schedules={"dice": _linear(0.0, 1.0, 0, 1000)}
    )
    weighting.set_step(400)
    assert weighting.effective_weights() == pytest.approx({"ce": 1.0, "dice": 0.2})
    resumed = ComponentWeighting(
        OWNER, ["ce", "dice"], {"ce": 1.0, "dice": 0.5}, schedules={"dice": _linear(0.0, 1.0, 0, 1000)}
    )
    resumed.load_state_dict(weighting.state_dict())
    assert int(resumed.step) == 400 and resumed.effective_weights() == weighting.effective_weights()
    for step in (401, 700, 1200):
        weighting.set_step(step)
        resumed.set_step(step)
        assert resumed.effective_weights() == weighting.effective_weights()
    assert resumed.effective_weights()["dice"] == 0.5


def test_fixed_combine_is_the_weighted_sum():
    weighting = ComponentWeighting(OWNER, ["a", "b"], {"a": 0.25, "b": 2.0})
    values = {"a": torch.tensor(4.0), "b": torch.tensor(3.0)}
    assert weighting.combine(values, {"a": 1.0, "b": 1.0}).item() == pytest.approx(0.25 * 4 + 2 * 3)


def test_uncertainty_combine_is_kendall_formula_and_regulariser_scales_with_item_fraction():
    weighting = ComponentWeighting(OWNER, ["a", "b"], {"a": 1.0, "b": 0.5}, weighting="uncertainty")
    with torch.no_grad():
        weighting.log_variances.copy_(torch.tensor([0.5, -1.0]))
    values = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    total = weighting.combine(values, {"a": 0.25, "b": 1.0})
    expected = (math.exp(-0.5) * 2 + 0.25 * 0.5) + 0.5 * (math.exp(1.0) * 3 - 1.0)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert weighting.effective_weights() == pytest.approx({"a": math.exp(-0.5), "b": 0.5 * math.exp(1.0)})


# ---------------------------------------------------------------------------------------------- dwa
def test_dwa_lambdas_follow_liu_et_al_equation():
    last, previous = torch.tensor([0.5, 0.9], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    expected_first = 2 * math.exp(0.5 / 2) / (math.exp(0.5 / 2) + math.exp(0.9 / 2))
    assert dwa_lambdas(last, previous, 2.0).tolist() == pytest.approx([expected_first, 2 - expected_first])
    assert dwa_lambdas(last, torch.full_like(last, float("nan")), 2.0).tolist() == [1.0, 1.0]


def _dwa_run(weighting, losses_per_step, calls_per_step=1, start=0):
    observed = []
    for offset, (loss_a, loss_b) in enumerate(losses_per_step):
        weighting.set_step(start + offset)
        observed.append(dict(weighting.effective_weights()))
        for _ in range(calls_per_step):
            # each micro-batch holds 1/calls of the step's items: its value is its share of the step's mean
            values = {
                "a": torch.tensor(loss_a / calls_per_step, requires_grad=True),
                "b": torch.tensor(loss_b / calls_per_step, requires_grad=True),
            }
            weighting.combine(values, {"a": 1.0 / calls_per_step, "b": 1.0 / calls_per_step})
    return observed


def test_dwa_weights_from_period_means_by_hand():
    weighting = ComponentWeighting(
        OWNER, ["a", "b"], {"a": 1.0, "b": 1.0}, weighting="dwa", temperature=2.0, dwa_period_steps=2
    )
    # periods of 2 steps: means a = 4, 2, 1.5 and b = 1, 1, 1.2
    steps = [(4.0, 1.0), (4.0, 1.0), (2.0, 1.0), (2.0, 1.0), (1.0, 1.0), (2.0, 1.4), (9.0, 9.0)]
    observed = _dwa_run(weighting, steps)
    assert all(o == {"a": 1.0, "b": 1.0} for o in observed[:4])  # two periods must be seen first
    ratio_a, ratio_b = 2.0 / 4.0, 1.0 / 1.0
    lambda_a = 2 * math.exp(ratio_a / 2) / (math.exp(ratio_a / 2) + math.exp(ratio_b / 2))
    assert observed[4] == pytest.approx({"a": lambda_a, "b": 2 - lambda_a})
    assert observed[5] == observed[4]
    ratio_a, ratio_b = 1.5 / 2.0, 1.2 / 1.0
    lambda_a = 2 * math.exp(ratio_a / 2) / (math.exp(ratio_a / 2) + math.exp(ratio_b / 2))
    assert observed[6] == pytest.approx({"a": lambda_a, "b": 2 - lambda_a})
    # the slower-falling task (b) gets the larger weight
    assert observed[6]["b"] > observed[6]["a"]


def test_dwa_state_round_trips_mid_period_and_is_independent_of_accumulation():
    steps = [(4.0, 1.0), (3.0, 1.0), (2.0, 1.0), (2.0, 1.5), (1.0, 1.0), (2.0, 1.4), (1.0, 3.0), (0.5, 1.0)]
    kwargs = dict(weighting="dwa", temperature=1.5, dwa_period_steps=3)
    uninterrupted = ComponentWeighting(OWNER, ["a", "b"], {"a": 1.0, "b": 1.0}, **kwargs)
    reference = _dwa_run(uninterrupted, steps)
    first = ComponentWeighting(OWNER, ["a", "b"], {"a": 1.0, "b": 1.0}, **kwargs)
    observed = _dwa_run(first, steps[:4])
    resumed = ComponentWeighting(OWNER, ["a", "b"], {"a": 1.0, "b": 1.0}, **kwargs)
    resumed.load_state_dict(first.state_dict())
    observed += _dwa_run(resumed, steps[4:], start=4)
    assert observed == reference and reference[-1] != {"a": 1.0, "b": 1.0}
    accumulated = _dwa_run(
        ComponentWeighting(OWNER, ["a", "b"], {"a": 1.0, "b": 1.0}, **kwargs), steps, calls_per_step=4
    )
    assert [pytest.approx(weights) for weights in accumulated] == reference


def test_dwa_ignores_evaluation_calls():
    weighting = ComponentWeighting(OWNER, ["a", "b"], {"a": 1.0, "b": 1.0}, weighting="dwa", dwa_period_steps=1)
    with torch.no_grad():
        weighting.combine({"a": torch.tensor(5.0), "b": torch.tensor(1.0)}, {"a": 1.0, "b": 1.0})
    assert weighting.dwa_counts.sum() == 0


# ---------------------------------------------------------------------------------------------- uncertainty
def test_uncertainty_weight_of_the_noisier_task_falls():
    """Two regression heads on shared data; task b has 6x the noise std. Kendall's optimum is exp(-s) = 1/L."""
    torch.manual_seed(0)
    features = torch.randn(512, 4)
    true_weights = torch.randn(4, 2)
    targets = features @ true_weights + torch.randn(512, 2) * torch.tensor([0.3, 2.0])
    model = torch.nn.Linear(4, 2)
    weighting = ComponentWeighting(OWNER, ["a", "b"], {"a": 1.0, "b": 1.0}, weighting="uncertainty")
    optimizer = torch.optim.Adam(list(model.parameters()) + list(weighting.parameters()), lr=0.05)
    for _ in range(300):
        errors = (model(features) - targets) ** 2
        total = weighting.combine({"a": errors[:, 0].mean(), "b": errors[:, 1].mean()}, {"a": 1.0, "b": 1.0})
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    weights = weighting.effective_weights()
    final = ((model(features) - targets) ** 2).mean(dim=0).detach()
    assert weights["b"] < 1.0 < weights["a"]
    assert weights["a"] == pytest.approx(1 / final[0].item(), rel=0.15)
    assert weights["b"] == pytest.approx(1 / final[1].item(), rel=0.15)


# ---------------------------------------------------------------------------------------------- composite
def _classification_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 4, generator=generator) * 2
    labels = torch.randint(0, 4, (8,), generator=generator)
    labels[2] = -100
    return logits, labels


def _reference_components(logits, labels):
    from hf_losses import get_loss

    return (torch.nn.functional.cross_entropy(logits, labels), get_loss("focal", gamma=2.0)(logits, labels))


def test_composite_list_dict_and_string_forms_still_work():
    from hf_losses import get_loss

    logits, labels = _classification_batch()
    cross_entropy, focal = _reference_components(logits, labels)
    from_list = get_loss("composite", components=["cross_entropy", "focal"])
    assert from_list.weights == {"cross_entropy": 1.0, "focal": 1.0}
    from_list.losses["focal"].gamma = 2.0
    torch.testing.assert_close(from_list(logits, labels), cross_entropy + focal)
    from_string = get_loss("0.25*ce+focal", focal={"gamma": 2.0})
    torch.testing.assert_close(from_string(logits, labels), 0.25 * cross_entropy + focal)
    assert from_string.component_weights() == {"cross_entropy": 0.25, "focal": 1.0}


def test_composite_schedule_from_the_string_form_multiplies_the_weight():
    from hf_losses import get_loss

    logits, labels = _classification_batch()
    cross_entropy, focal = _reference_components(logits, labels)
    loss = get_loss(
        "cross_entropy+0.5*focal", focal={"gamma": 2.0}, schedules={"focal": _linear(0.0, 1.0, 0, 100, "cosine")}
    )
    loss.set_step(0)
    torch.testing.assert_close(loss(logits, labels), cross_entropy)
    loss.set_step(50)
    assert loss.component_weights() == pytest.approx({"cross_entropy": 1.0, "focal": 0.25})
    torch.testing.assert_close(loss(logits, labels), cross_entropy + 0.25 * focal)
    torch.testing.assert_close(loss.last_components["focal"], focal)
    resumed = get_loss(
        "cross_entropy+0.5*focal", focal={"gamma": 2.0}, schedules={"focal": _linear(0.0, 1.0, 0, 100, "cosine")}
    )
    resumed.load_state_dict(loss.state_dict())
    assert resumed.component_weights() == loss.component_weights()


def test_composite_uncertainty_is_kendall_formula_with_one_parameter_per_component():
    from hf_losses import get_loss

    logits, labels = _classification_batch()
    cross_entropy, focal = _reference_components(logits, labels)
    loss = get_loss(
        "composite",
        components={"cross_entropy": {}, "focal": {"gamma": 2.0}},
        weights={"focal": 2.0},
        weighting="uncertainty",
    )
    assert [name for name, _ in loss.named_parameters()] == ["weighting.log_variances"]
    with torch.no_grad():
        loss.weighting.log_variances.copy_(torch.tensor([0.4, -0.2]))
    expected = (math.exp(-0.4) * cross_entropy + 0.4) + 2.0 * (math.exp(0.2) * focal - 0.2)
    torch.testing.assert_close(loss(logits, labels), expected)
    assert loss.component_weights() == pytest.approx({"cross_entropy": math.exp(-0.4), "focal": 2 * math.exp(0.2)})


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "dwa"])
def test_composite_gradient_equal_across_accumulation(weighting):
    """8 samples at once == 4 micro-batches of 2 with num_items_in_batch (logits and learned parameters)."""
    from hf_losses import get_loss

    logits, labels = _classification_batch()
    kwargs = dict(
        components={"cross_entropy": {}, "focal": {"gamma": 2.0}}, weighting=weighting, initial_log_variance=0.3
    )
    whole_loss, split_loss = get_loss("composite", **kwargs), get_loss("composite", **kwargs)
    whole_logits, split_logits = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    whole_loss(whole_logits, labels).backward()
    num_items = split_loss.num_items(labels)
    total = sum(split_loss(z, y, num_items_in_batch=num_items) for z, y in zip(split_logits.split(2), labels.split(2)))
    total.backward()
    torch.testing.assert_close(split_logits.grad, whole_logits.grad, rtol=1e-5, atol=1e-7)
    for whole_parameter, split_parameter in zip(whole_loss.parameters(), split_loss.parameters()):
        torch.testing.assert_close(split_parameter.grad, whole_parameter.grad, rtol=1e-5, atol=1e-7)
    if weighting == "dwa":  # the running sums hold the same means
        torch.testing.assert_close(
            split_loss.weighting.dwa_sums / split_loss.weighting.dwa_counts,
            whole_loss.weighting.dwa_sums / whole_loss.weighting.dwa_counts,
        )


def test_composite_uncertainty_all_ignored_gives_zero_with_zero_gradient():
    from hf_losses import get_loss

    logits = torch.randn(4, 3, requires_grad=True)
    loss = get_loss("cross_entropy+focal", weighting="uncertainty")
    value = loss(logits, torch.full((4,), -100))
    value.backward()
    assert value.item() == 0.0 and logits.grad.abs().sum() == 0
    assert loss.weighting.log_variances.grad.abs().sum() == 0


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"schedules": {"dice": 1.0}}, ValueError, r"`schedules` names \['dice'\] which are not components"),
        ({"weighting": "gradnorm"}, ValueError, "'weighting' must be one of 'fixed', 'uncertainty', 'dwa'"),
        ({"temperature": 0.0}, ValueError, r"`temperature` must be in \(0, inf\)"),
        ({"dwa_period_steps": 0}, ValueError, "`dwa_period_steps` must be an int >= 1, got 0"),
        ({"schedules": {"focal": {"schedule": "linear"}}}, ValueError, r"missing \['start_value'"),
    ],
)
def test_composite_invalid_weighting_arguments_raise(kwargs, error, match):
    from hf_losses import get_loss

    with pytest.raises(error, match=match):
        get_loss("composite", components=["cross_entropy", "focal"], **kwargs)


def test_dwa_jump_over_many_periods_leaves_an_empty_history():
    weighting = ComponentWeighting(OWNER, ["a", "b"], {"a": 1.0, "b": 1.0}, weighting="dwa", dwa_period_steps=2)
    _dwa_run(weighting, [(4.0, 1.0), (4.0, 1.0), (2.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1.0, 1.0)])
    assert weighting.effective_weights() != {"a": 1.0, "b": 1.0}
    weighting.set_step(10**9)
    # the period in progress closes with its data, every later one is empty
    assert int(weighting.dwa_period) == 10**9 // 2 and torch.isnan(weighting.dwa_history[1]).all()
    assert weighting.effective_weights() == {"a": 1.0, "b": 1.0}
