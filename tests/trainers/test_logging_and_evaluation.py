"""Component logging (``loss/<name>``, ``loss_weight/<name>``), evaluation with the same loss, and the batch-mean
semantics of losses with whole-batch statistics."""

from __future__ import annotations

import pytest
import torch
from tiny_tasks import as_batch, build_dataset, build_model, reference_gradient, relative_error, trainer_gradients

from hf_losses import LossTrainer, get_loss
from hf_losses.tasks import build_task

TASK = "sequence_classification"


def component_values(loss, examples) -> dict[str, float]:
    model = build_model(TASK)
    inputs = {k: v for k, v in examples.items() if k != "labels"}
    with torch.no_grad():
        logits, labels = build_task(TASK, model).read(model(**inputs), examples)
        total = loss(logits, labels)
    components = getattr(loss, "last_components", {})
    return {"loss": float(total), **{name: float(value) for name, value in components.items()}}


def test_components_are_logged_averaged_over_the_logging_interval(tmp_path):
    """lr 0, 16 samples, batch 2 x GA 2, logging every 2 steps: each log holds, per component, the mean over its two
    optimizer steps of that step's global mean (computed here with the loss on each step's 4 samples)."""
    _, trainer = trainer_gradients(
        TASK,
        "0.3*cross_entropy+0.7*focal",
        {"focal": {"gamma": 2.0}},
        16,
        2,
        2,
        str(tmp_path),
        logging_strategy="steps",
        logging_steps=2,
    )
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    examples = as_batch(TASK, 16)
    loss = get_loss("0.3*cross_entropy+0.7*focal", focal={"gamma": 2.0})
    steps = [component_values(loss, {k: v[4 * s : 4 * s + 4] for k, v in examples.items()}) for s in range(4)]
    for index, entry in enumerate(logs):
        pair = steps[2 * index : 2 * index + 2]
        for name in ("cross_entropy", "focal"):
            expected = sum(step[name] for step in pair) / 2
            assert entry[f"loss/{name}"] == pytest.approx(expected, rel=1e-5)
        assert entry["loss"] == pytest.approx(sum(step["loss"] for step in pair) / 2, rel=1e-4)
        assert entry["loss_weight/cross_entropy"] == 0.3 and entry["loss_weight/focal"] == 0.7


def test_eval_loss_uses_the_same_loss_and_predictions_still_work(tmp_path):
    from tiny_tasks import training_arguments

    args = training_arguments(
        str(tmp_path), 2, 1, loss_type="focal", loss_kwargs={"gamma": 1.5}, per_device_eval_batch_size=8
    )
    trainer = LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 4))
    eval_dataset = build_dataset(TASK, 8)
    metrics = trainer.evaluate(eval_dataset)
    examples = as_batch(TASK, 8)
    expected = component_values(get_loss("focal", gamma=1.5), examples)["loss"]
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    prediction = trainer.predict(eval_dataset)
    assert prediction.predictions.shape == (8, 3)
    assert prediction.metrics["test_loss"] == pytest.approx(expected, rel=1e-5)


def test_model_own_loss_evaluation_matches_the_model(tmp_path):
    from tiny_tasks import training_arguments

    args = training_arguments(str(tmp_path), 2, 1, per_device_eval_batch_size=8)
    trainer = LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 4))
    metrics = trainer.evaluate(build_dataset(TASK, 8))
    with torch.no_grad():
        expected = float(build_model(TASK)(**as_batch(TASK, 8)).loss)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_batch_statistic_loss_keeps_batch_mean_semantics(tmp_path):
    """dice with per_image=False needs whole-batch sums: under GA each micro-batch's value is divided by the
    accumulation steps, as the stock Trainer does -- the mean of the micro-batch losses, not the full-batch loss."""
    task = "semantic_segmentation"
    loss = get_loss("dice", per_image=False)
    assert not loss.decomposable
    examples = as_batch(task, 4)
    halves = [{k: v[i : i + 2] for k, v in examples.items()} for i in (0, 2)]
    expected = (reference_gradient(task, loss, halves[0]) + reference_gradient(task, loss, halves[1])) / 2
    grads, trainer = trainer_gradients(task, "dice", {"per_image": False}, 4, 2, 2, str(tmp_path))
    assert trainer.loss_is_scaled_for_ga is False
    assert relative_error(grads[0], expected) <= 1e-5
    assert relative_error(grads[0], reference_gradient(task, loss, examples)) > 1e-3  # not the full-batch value


def test_mismatched_loss_and_task_fail_at_construction(tmp_path):
    from tiny_tasks import training_arguments

    args = training_arguments(str(tmp_path), 2, 1, loss_type="bce")
    with pytest.raises(ValueError, match="expects binary labels"):
        LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 4))
    args = training_arguments(str(tmp_path), 2, 1, loss_type="cross_entropy", label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="label smoothing in `loss_kwargs`"):
        LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 4))


def test_loss_object_can_be_passed_directly(tmp_path):
    from tiny_tasks import GradientCapture, training_arguments

    loss = get_loss("poly1", epsilon=0.5)
    capture = GradientCapture()
    trainer = LossTrainer(
        model=build_model(TASK),
        args=training_arguments(str(tmp_path), 2, 4),
        loss=loss,
        train_dataset=build_dataset(TASK, 8),
        callbacks=[capture],
    )
    trainer.train()
    assert trainer.loss is loss
    assert relative_error(capture.gradients[0], reference_gradient(TASK, loss, as_batch(TASK, 8))) <= 1e-5
