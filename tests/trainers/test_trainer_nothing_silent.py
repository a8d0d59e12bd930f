"""Catalogue, trainer side: what used to train on silently (a loss that does not fit the task, NaN losses, resuming
with another loss or without its state, a half-written checkpoint, non-finite JSON) is now an error naming what to
change, or the documented behaviour. The loss-level catalogue is ``tests/losses/test_nothing_silent.py``."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tiny_tasks import build_dataset, build_model, training_arguments
from transformers import HfArgumentParser, TrainerCallback

from hf_losses import LossTrainer, LossTrainingArguments
from hf_losses.trainers.nonfinite import NonFiniteLossError

TASK = "sequence_classification"


# ------------------------------------------------------------------------------------------ loss vs task
@pytest.mark.parametrize(
    "loss_type", ["dice", "generalized_dice", "tversky", "focal_tversky", "lovasz", "0.5*cross_entropy+0.5*dice"]
)
@pytest.mark.parametrize("task", ["sequence_classification", "token_classification", "causal_lm"])
def test_segmentation_loss_on_a_task_without_label_maps_is_refused(tmp_path, loss_type, task):
    args = training_arguments(str(tmp_path), 2, 1, loss_type=loss_type, loss_task=task)
    with pytest.raises(ValueError, match=r"is a segmentation loss .* has no spatial labels.*loss_task='semantic_"):
        LossTrainer(model=build_model(task), args=args, train_dataset=build_dataset(task, 4))


def test_segmentation_loss_on_a_segmentation_task_is_accepted(tmp_path):
    task = "semantic_segmentation"
    args = training_arguments(str(tmp_path), 2, 1, loss_type="0.5*cross_entropy+0.5*dice", loss_task=task)
    LossTrainer(model=build_model(task), args=args, train_dataset=build_dataset(task, 4))


# ------------------------------------------------------------------------------------------ non-finite losses
class NaNAtForward:
    """Makes the classifier's output NaN on the ``bad``-th training forward (1-based), and again whenever that
    micro-batch's features come back (as real bad data would)."""

    def __init__(self, model: torch.nn.Module, bad: int) -> None:
        self.calls, self.bad, self.bad_input = 0, bad, None
        model.classifier.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        if not module.training:
            return output
        self.calls += 1
        if self.calls == self.bad:
            self.bad_input = args[0].detach().clone()
        if self.bad_input is not None and torch.equal(args[0].detach(), self.bad_input):
            return output * float("nan")
        return output


class ParametersAfterEachStep(TrainerCallback):
    def __init__(self) -> None:
        self.snapshots: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.snapshots.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))


def nan_run(tmp_path, mode: str, bad: int = 3, **overrides):
    """Batch 2 x GA 2 over 12 samples (3 optimizer steps); forward ``bad`` (window 2) gives NaN logits."""
    args = training_arguments(
        str(tmp_path),
        2,
        2,
        loss_type="cross_entropy",
        nonfinite_loss=mode,
        learning_rate=0.1,
        max_steps=3,
        logging_strategy="steps",
        logging_steps=1,
        **overrides,
    )
    model = build_model(TASK)
    NaNAtForward(model, bad)
    snapshots = ParametersAfterEachStep()
    trainer = LossTrainer(
        model=model, args=args, train_dataset=build_dataset(TASK, 12, ignored=False), callbacks=[snapshots]
    )
    return trainer, snapshots


def test_nonfinite_raise_stops_before_the_step_and_says_where_and_what(tmp_path):
    trainer, snapshots = nan_run(tmp_path, "raise")
    with pytest.raises(
        NonFiniteLossError,
        match=r"not finite at optimizer step 2 \(loss 'cross_entropy' = nan on "
        r"micro-batch 0 of the window, rank 0.*6 of 6 logits are non-finite",
    ):
        trainer.train()
    assert len(snapshots.snapshots) == 1  # step 1 done, step 2 never taken
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_raise_is_the_default(tmp_path):
    args = training_arguments(str(tmp_path), 2, 1)
    assert args.nonfinite_loss == "raise"


def test_nonfinite_skip_drops_exactly_that_update_and_logs_it(tmp_path):
    trainer, snapshots = nan_run(tmp_path, "skip")
    trainer.train()
    first, second, third = snapshots.snapshots
    assert torch.equal(first, second)  # the window with the NaN changed nothing
    assert not torch.equal(second, third) and torch.isfinite(third).all()
    logged = [entry.get("nonfinite_skipped_steps") for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [None, 1, 1]


def test_nonfinite_skip_drops_the_whole_window_when_an_earlier_micro_batch_was_bad(tmp_path):
    trainer, snapshots = nan_run(tmp_path, "skip", bad=4)  # the window's second micro-batch
    trainer.train()
    assert torch.equal(snapshots.snapshots[0], snapshots.snapshots[1])
    trainer, snapshots = nan_run(tmp_path / "b", "skip", bad=3)  # its first micro-batch
    trainer.train()
    assert torch.equal(snapshots.snapshots[0], snapshots.snapshots[1])


def test_nonfinite_ignore_keeps_transformers_behaviour(tmp_path):
    trainer, snapshots = nan_run(tmp_path, "ignore")
    trainer.train()
    assert torch.isnan(snapshots.snapshots[1]).any()  # what transformers does: the weights become NaN


def test_nonfinite_guard_also_covers_the_model_own_loss(tmp_path):
    args = training_arguments(str(tmp_path), 2, 1, max_steps=2, learning_rate=0.1)
    model = build_model(TASK)
    NaNAtForward(model, 2)
    trainer = LossTrainer(model=model, args=args, train_dataset=build_dataset(TASK, 8, ignored=False))
    with pytest.raises(NonFiniteLossError, match="loss 'auto'"):
        trainer.train()


@pytest.mark.parametrize("value", ["rase", "never", ""])
def test_nonfinite_loss_mode_is_validated(tmp_path, value):
    with pytest.raises(ValueError, match=r"`nonfinite_loss` must be one of \['raise', 'skip', 'ignore'\]"):
        LossTrainingArguments(output_dir=str(tmp_path), report_to=[], nonfinite_loss=value)


# ------------------------------------------------------------------------------------------ resume
def train_with_checkpoints(output_dir, **overrides):
    args = training_arguments(
        str(output_dir), 2, 1, max_steps=4, save_strategy="steps", save_steps=2, learning_rate=0.1, **overrides
    )
    trainer = LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 8, ignored=False))
    trainer.train()
    return trainer


def resume(output_dir, checkpoint, **overrides):
    args = training_arguments(str(output_dir), 2, 1, max_steps=6, save_strategy="no", learning_rate=0.1, **overrides)
    trainer = LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 8, ignored=False))
    return trainer.train(resume_from_checkpoint=checkpoint)


@pytest.fixture(scope="module")
def focal_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("focal_run")
    train_with_checkpoints(output_dir, loss_type="focal", loss_kwargs={"gamma": 2.0}, class_weights=[1.0, 2.0, 3.0])
    return output_dir


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"loss_type": "cross_entropy", "class_weights": [1.0, 2.0, 3.0]}, ["loss_type", "loss_kwargs"]),
        ({"loss_type": "focal", "loss_kwargs": {"gamma": 1.0}, "class_weights": [1.0, 2.0, 3.0]}, ["loss_kwargs"]),
        (
            {"loss_type": "focal", "loss_kwargs": {"gamma": 2.0}, "class_weights": [1.0, 1.0, 3.0]},
            ["loss_kwargs", "class_weights", "class_weight_values"],
        ),
        (
            {"loss_type": "focal", "loss_kwargs": {"gamma": 2.0}},
            ["loss_kwargs", "class_weights", "class_weight_values"],
        ),
        ({}, ["loss_type", "loss_kwargs", "class_weights", "class_weight_values"]),  # the model's own loss
    ],
)
def test_resuming_with_another_loss_lists_each_difference(focal_run, tmp_path, overrides, fields):
    with pytest.raises(ValueError, match="the loss differs from the one .*checkpoint-4 was trained with") as error:
        resume(tmp_path, str(focal_run / "checkpoint-4"), **overrides)
    listed = [line[2:].split(":")[0] for line in str(error.value).splitlines() if line.startswith("- ")]
    assert listed == fields
    assert "--allow_loss_change" in str(error.value)


def test_resuming_with_the_same_loss_or_on_purpose_works(focal_run, tmp_path):
    same = {"loss_type": "focal", "loss_kwargs": {"gamma": 2.0}, "class_weights": [1.0, 2.0, 3.0]}
    assert resume(tmp_path / "same", str(focal_run / "checkpoint-4"), **same).global_step == 6
    other = {"loss_type": "cross_entropy", "allow_loss_change": True}
    assert resume(tmp_path / "other", str(focal_run / "checkpoint-4"), **other).global_step == 6


def test_resume_true_takes_the_newest_complete_checkpoint(focal_run, tmp_path):
    import shutil

    output_dir = tmp_path / "run"
    shutil.copytree(focal_run, output_dir)
    half_written = output_dir / "checkpoint-6"
    shutil.copytree(output_dir / "checkpoint-4", half_written)
    (half_written / "trainer_state.json").unlink()  # a kill before the last file of the save
    broken = output_dir / "checkpoint-8"
    shutil.copytree(output_dir / "checkpoint-4", broken)
    (broken / "trainer_state.json").write_text('{"global_step": 8, "log_hi')  # a kill during it
    args = training_arguments(
        str(output_dir),
        2,
        1,
        max_steps=6,
        save_strategy="no",
        learning_rate=0.1,
        loss_type="focal",
        loss_kwargs={"gamma": 2.0},
        class_weights=[1.0, 2.0, 3.0],
    )
    trainer = LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 8, ignored=False))
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 6  # resumed from checkpoint-4, not from the half-written 6 or 8


def test_resume_true_without_a_complete_checkpoint_says_which_are_incomplete(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    args = training_arguments(str(tmp_path), 2, 1, max_steps=2, save_strategy="no")
    trainer = LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 4))
    with pytest.raises(ValueError, match=r"no complete checkpoint in .*incomplete.*checkpoint-2"):
        trainer.train(resume_from_checkpoint=True)


STATEFUL = {"loss_type": "0.5*cross_entropy+0.5*focal", "loss_kwargs": {"weighting": "uncertainty"}}


@pytest.fixture(scope="module")
def stateful_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("stateful_run")
    train_with_checkpoints(output_dir, **STATEFUL)
    assert (output_dir / "checkpoint-4" / "loss_state.pt").is_file()
    return output_dir


def test_missing_loss_state_is_an_error_naming_the_file(stateful_run, tmp_path):
    import shutil

    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(stateful_run / "checkpoint-4", checkpoint)
    (checkpoint / "loss_state.pt").unlink()
    with pytest.raises(ValueError, match=r"loss has state .*checkpoint-4/loss_state\.pt is missing"):
        resume(tmp_path / "out", str(checkpoint), **STATEFUL)


def test_damaged_loss_state_is_an_error_naming_the_file(stateful_run, tmp_path):
    import shutil

    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(stateful_run / "checkpoint-4", checkpoint)
    data = (checkpoint / "loss_state.pt").read_bytes()
    (checkpoint / "loss_state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read the loss state .*checkpoint-4/loss_state\.pt"):
        resume(tmp_path / "out", str(checkpoint), **STATEFUL)


def test_checkpoint_of_the_stock_trainer_resumed_with_a_named_loss_is_refused(focal_run, tmp_path):
    import shutil

    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(focal_run / "checkpoint-4", checkpoint)
    (checkpoint / "loss_config.json").unlink()
    with pytest.raises(ValueError, match=r"has no loss_config\.json .* trains with loss 'focal'"):
        resume(
            tmp_path / "out",
            str(checkpoint),
            loss_type="focal",
            loss_kwargs={"gamma": 2.0},
            class_weights=[1.0, 2.0, 3.0],
        )


# ------------------------------------------------------------------------------------------ JSON and weights
@pytest.mark.parametrize("text", ['{"gamma": Infinity}', '{"gamma": -Infinity}', '{"gamma": NaN}'])
def test_non_finite_json_in_loss_kwargs_is_refused(text):
    with pytest.raises(ValueError, match="`loss_kwargs` must be strict JSON"):
        HfArgumentParser(LossTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", "unused", "--report_to", "none", "--loss_type", "focal", "--loss_kwargs", text]
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,inf,2", "finite numbers >= 0"),
        ("nan,1", "finite numbers >= 0"),
        ("0,0,0", "all 0"),
        ("-1,2", ">= 0"),
    ],
)
def test_degenerate_class_weights_are_refused(tmp_path, value, message):
    with pytest.raises(ValueError, match=f"`class_weights` .*{message}"):
        LossTrainingArguments(output_dir=str(tmp_path), report_to=[], loss_type="cross_entropy", class_weights=value)


def test_loss_config_is_strict_json_even_with_non_finite_values(tmp_path):
    from hf_losses.trainers.model_card import write_loss_config

    path = write_loss_config(str(tmp_path), {"loss_kwargs": {"softcap": float("inf"), "x": [float("nan"), 1.0]}})
    text = open(path, encoding="utf-8").read()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name))["loss_kwargs"] == {
        "softcap": "inf",
        "x": ["nan", 1.0],
    }
    assert os.path.basename(path) == "loss_config.json"
