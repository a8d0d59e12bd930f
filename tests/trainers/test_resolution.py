"""Loss resolution as a pure step: ``resolve_loss(args, model, train_dataset)`` without a Trainer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_tasks import NUM_LABELS, build_dataset, build_model

from hf_losses import get_loss
from hf_losses.losses.base import HiddenStatesLoss
from hf_losses.trainers.loss_calls import HiddenStatesLossCall, LogitsLossCall, ModelLossCall, loss_call_for
from hf_losses.trainers.resolution import fill_class_information, resolve_loss


def arguments(**overrides):
    values = {
        "loss_type": "auto",
        "loss_kwargs": {},
        "class_weights": None,
        "class_weights_beta": 0.999,
        "loss_task": "auto",
        "label_names": None,
    }
    return SimpleNamespace(**{**values, **overrides})


def test_class_weights_go_to_the_loss_weight_parameter():
    assert fill_class_information("cross_entropy", {}, [1.0, 2.0], None) == {"weight": [1.0, 2.0]}
    assert fill_class_information("focal", {"gamma": 1.0}, [1.0, 2.0], None) == {"gamma": 1.0, "alpha": [1.0, 2.0]}
    assert fill_class_information("ldam", {}, None, [5, 3]) == {"samples_per_class": [5, 3]}
    assert fill_class_information("ldam", {"samples_per_class": [9, 9]}, None, [5, 3]) == {"samples_per_class": [9, 9]}
    # a mixing number called alpha is not a weight parameter: causal_lm_distillation's weights are class_weights
    assert fill_class_information("causal_lm_distillation", {}, [1.0, 2.0], None) == {"class_weights": [1.0, 2.0]}
    assert fill_class_information("distillation", {}, [1.0, 2.0], None) == {"weight": [1.0, 2.0]}
    # every component with class weights gets them (dice: smp's class-weighted mean over classes)
    assert fill_class_information("0.5*cross_entropy+0.5*dice", {}, [1.0, 2.0], None) == {
        "cross_entropy": {"weight": [1.0, 2.0]},
        "dice": {"class_weights": [1.0, 2.0]},
    }
    assert fill_class_information("0.5*cross_entropy+0.5*lovasz", {}, [1.0, 2.0], None) == {
        "cross_entropy": {"weight": [1.0, 2.0]}
    }


def test_balanced_class_weights_are_read_from_the_training_labels():
    dataset = build_dataset("sequence_classification", 24, ignored=False)
    labels = torch.tensor(dataset["labels"])
    counts = torch.bincount(labels, minlength=NUM_LABELS)
    plan = resolve_loss(
        arguments(loss_type="cross_entropy", class_weights="balanced"), build_model("sequence_classification"), dataset
    )
    expected = (len(labels) / (NUM_LABELS * counts.double())).tolist()
    assert plan.class_counts == counts.tolist()
    assert plan.class_weight_values == pytest.approx(expected, rel=1e-12)
    assert plan.loss.weight.tolist() == pytest.approx(expected, rel=1e-6)
    assert plan.task.name == "sequence_classification" and plan.decomposable
    assert plan.config["class_weight_values"] == pytest.approx(expected, rel=1e-12)
    assert plan.config["loss_kwargs_given"] == {} and plan.loss_kwargs["weight"] == plan.class_weight_values


def test_counts_feed_losses_that_take_them_and_are_recorded():
    dataset = build_dataset("sequence_classification", 24, ignored=False)
    plan = resolve_loss(arguments(loss_type="ldam"), build_model("sequence_classification"), dataset)
    assert plan.loss_kwargs["samples_per_class"] == plan.class_counts == plan.config["class_counts"]
    assert sum(plan.class_counts) == 24


def test_auto_keeps_the_model_loss_and_counts_nothing():
    plan = resolve_loss(arguments(), build_model("token_classification"), None)
    assert plan.loss is None and plan.task.name == "token_classification" and plan.class_counts is None
    assert plan.config["loss_type"] == "auto"
    assert isinstance(loss_call_for(plan.loss, plan.task), ModelLossCall)


def test_counts_without_training_data_are_refused():
    with pytest.raises(ValueError, match="needs class counts from the training data"):
        resolve_loss(
            arguments(loss_type="cross_entropy", class_weights="balanced"), build_model("sequence_classification"), None
        )


@pytest.mark.parametrize(
    ("loss_type", "task", "message"),
    [
        ("bce", "token_classification", "expects binary labels"),
        ("cross_entropy", "regression", "expects index labels"),
        ("causal_lm", "sequence_classification", "works from hidden states and needs loss_task='causal_lm'"),
    ],
)
def test_a_loss_that_does_not_fit_the_task_is_refused(loss_type, task, message):
    with pytest.raises(ValueError, match=message):
        resolve_loss(arguments(loss_type=loss_type, loss_task=task), build_model(task), None)


@pytest.mark.parametrize(("loss_type", "task"), [("mse", "multi_label"), ("bce", "regression")])
def test_float_label_losses_fit_both_float_tasks(loss_type, task):
    plan = resolve_loss(arguments(loss_type=loss_type), build_model(task), None)
    assert plan.task.name == task and isinstance(loss_call_for(plan.loss, plan.task), LogitsLossCall)


def test_the_trainer_dispatches_hidden_state_losses_by_type():
    plan = resolve_loss(arguments(loss_type="causal_lm"), build_model("causal_lm"), None)
    assert isinstance(plan.loss, HiddenStatesLoss)
    assert isinstance(loss_call_for(plan.loss, plan.task), HiddenStatesLossCall)


def test_an_explicit_loss_is_used_as_given():
    loss = get_loss("focal", gamma=1.0)
    plan = resolve_loss(arguments(loss_kwargs={"gamma": 1.0}), build_model("sequence_classification"), None, loss=loss)
    assert plan.loss is loss and plan.loss_type == "focal" and plan.config["loss_kwargs"] == {"gamma": 1.0}
