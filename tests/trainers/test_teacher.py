"""The teacher of a distillation loss in LossTrainer: given as a model or a path (loaded with the student's Auto
class), frozen (eval mode, no gradient, every forward without grad), its outputs handed to the loss (logits read by
the student's task; hidden states and LM head without logits), in the student's autocast, never saved with the
student, named in ``loss_config.json`` and the model card; clear errors for a missing, unused or mismatched teacher.
The gradient exactness is in ``test_distillation_exactness.py``, 2 processes and DeepSpeed in
``tests/distributed/test_distillation_multiprocess.py``."""

from __future__ import annotations

import json
import os

import pytest
import torch
from distillation_models import CASES, NUM_SAMPLES, build, student_and_teacher
from tiny_tasks import GradientCapture, build_dataset, training_arguments

from hf_losses import LossTrainer, LossTrainingArguments


def _trainer(loss_type: str, output_dir, student=None, teacher=None, **overrides) -> LossTrainer:
    """LossTrainer for 1 optimizer step of 2 x 4 samples (lr 0 unless overridden), fresh models unless given."""
    task, student_name, teacher_name = CASES.get(loss_type, CASES["distillation"])  # expressions: classification
    args = training_arguments(str(output_dir), 4, 2, loss_type=loss_type, **overrides)
    return LossTrainer(
        model=student if student is not None else build(student_name),
        args=args,
        train_dataset=build_dataset(task, NUM_SAMPLES),
        teacher_model=teacher if teacher is not None else build(teacher_name, seed=1),
    )


# ------------------------------------------------------------------------------------------ frozen, run without grad
@pytest.mark.parametrize("loss_type", sorted(CASES))
def test_teacher_is_frozen_in_eval_mode_and_runs_without_grad(loss_type, tmp_path):
    student, teacher = student_and_teacher(loss_type)
    teacher.train()  # whatever state it comes in
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    grad_modes: list[bool] = []
    teacher.register_forward_hook(lambda module, inputs, output: grad_modes.append(torch.is_grad_enabled()))
    trainer = _trainer(loss_type, tmp_path, student, teacher, learning_rate=0.1)
    trainer.train()
    assert trainer.teacher_model is teacher  # single process: no wrapper
    assert not teacher.training and not any(module.training for module in teacher.modules())
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    assert all(parameter.grad is None for parameter in teacher.parameters())
    assert grad_modes == [False, False]  # one forward per micro-batch (2 x 4 samples), each without grad
    assert all(torch.equal(before[name], value) for name, value in teacher.state_dict().items())
    assert student.training  # the student trains (and moved)
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), build(CASES[loss_type][1]).parameters()))


def test_teacher_logits_reach_the_loss_read_like_the_students(tmp_path):
    trainer = _trainer("distillation", tmp_path)
    seen: dict[str, torch.Tensor] = {}
    original = trainer.loss.forward

    def record(logits, labels, **kwargs):
        seen.update(student=logits.detach(), teacher=kwargs["teacher_logits"], labels=labels)
        return original(logits, labels, **kwargs)

    trainer.loss.forward = record
    batch = {key: torch.tensor(value[:4]) for key, value in build_dataset("sequence_classification", 4)[:].items()}
    trainer.compute_loss(trainer.model, batch)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        expected = trainer.teacher_model(**inputs).logits
    assert torch.equal(seen["teacher"], expected) and not seen["teacher"].requires_grad
    assert seen["teacher"].shape == seen["student"].shape == (4, 3)


def test_teacher_hidden_states_and_head_reach_the_loss_without_teacher_logits(tmp_path):
    trainer = _trainer("causal_lm_distillation", tmp_path)
    teacher = trainer.teacher_model
    head_shapes: list[tuple[int, ...]] = []
    teacher.lm_head.register_forward_hook(lambda module, inputs, output: head_shapes.append(tuple(output.shape)))
    seen: dict[str, object] = {}
    original = trainer.loss.forward

    def record(hidden_states, labels, **kwargs):
        seen.update(kwargs)
        return original(hidden_states, labels, **kwargs)

    trainer.loss.forward = record
    batch = {key: torch.tensor(value) for key, value in build_dataset("causal_lm", 4)[:].items()}
    trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        expected = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(seen["teacher_hidden_states"], expected.last_hidden_state)
    assert seen["teacher_hidden_states"].shape == (4, 6, 16)  # the teacher's width, not the student's 8
    assert torch.equal(seen["teacher_weight"], teacher.lm_head.weight) and seen["teacher_bias"] is None
    assert not seen["teacher_weight"].requires_grad
    assert head_shapes == [(4, 0, 24)]  # the teacher's head computes no logits


def test_teacher_runs_in_the_students_autocast_under_mixed_precision(tmp_path):
    student, teacher = student_and_teacher("distillation")
    seen: list[tuple[bool, torch.dtype]] = []
    teacher.register_forward_hook(
        lambda module, inputs, output: seen.append((torch.is_autocast_enabled("cpu"), output.logits.dtype))
    )
    trainer = _trainer("distillation", tmp_path, student, teacher, bf16=True)
    trainer.train()
    assert trainer.accelerator.native_amp  # the student's forward is autocast by accelerate
    assert seen == [(True, torch.bfloat16)] * 2
    # weights stay float32 as the student's do under native mixed precision
    assert {p.dtype for p in teacher.parameters()} == {p.dtype for p in student.parameters()} == {torch.float32}


# ------------------------------------------------------------------------------------------ loading by name
@pytest.mark.parametrize("loss_type", sorted(CASES))
def test_teacher_given_as_a_path_is_loaded_with_the_students_auto_class(loss_type, tmp_path):
    _, teacher = student_and_teacher(loss_type)
    teacher.save_pretrained(tmp_path / "teacher")
    task = CASES[loss_type][0]
    args = training_arguments(str(tmp_path / "out"), 8, 1, loss_type=loss_type, teacher_model=str(tmp_path / "teacher"))
    trainer = LossTrainer(
        model=student_and_teacher(loss_type)[0], args=args, train_dataset=build_dataset(task, NUM_SAMPLES)
    )
    # a Llama teacher for a GPT-2 student: AutoModelForCausalLM, not the student's class
    assert type(trainer.teacher_model) is type(teacher)
    assert not trainer.teacher_model.training
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(trainer.teacher_model.state_dict()[name], value), name
    assert trainer._loss_config["teacher_model"] == str(tmp_path / "teacher")


def test_teacher_given_to_the_trainer_wins_over_the_arguments(tmp_path):
    _, teacher = student_and_teacher("distillation")
    trainer = _trainer("distillation", tmp_path, teacher=teacher, teacher_model="some/unused-name")
    assert trainer.teacher_model is teacher


def test_teacher_model_flag_parses_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(LossTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--loss_type", "distillation", "--teacher_model", "org/teacher", "--use_cpu"]
    )
    assert args.teacher_model == "org/teacher"


# ------------------------------------------------------------------------------------------ never saved, but named
@pytest.mark.parametrize("loss_type", sorted(CASES))
def test_checkpoint_holds_the_student_alone_and_names_the_teacher(loss_type, tmp_path):
    from safetensors.torch import load_file

    student, teacher = student_and_teacher(loss_type)
    trainer = _trainer(loss_type, tmp_path, student, teacher, save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_model()
    for folder in (tmp_path / "checkpoint-1", tmp_path):
        saved = load_file(str(folder / "model.safetensors"))
        assert set(saved) <= set(student.state_dict()), folder  # (a tied head may be saved once)
        assert sum(value.numel() for value in saved.values()) <= sum(p.numel() for p in student.parameters())
        with open(folder / "config.json", encoding="utf-8") as file:
            assert json.load(file)["architectures"] == [type(student).__name__]
        with open(folder / "loss_config.json", encoding="utf-8") as file:
            assert json.load(file)["teacher_model"] == type(teacher).__name__  # built from a config: its class
        assert not any("teacher" in name for name in os.listdir(folder))
    assert not any(module is teacher for module in student.modules())


def test_model_card_names_the_teacher(tmp_path):
    _, teacher = student_and_teacher("distillation")
    teacher.config._name_or_path = "org/bert-teacher"
    trainer = _trainer("distillation", tmp_path, teacher=teacher)
    trainer.train()
    trainer.create_model_card()
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "## Training loss" in readme and "- loss: `distillation`" in readme
    assert "teacher (distillation, not part of this model): `org/bert-teacher`" in readme
    assert json.loads((tmp_path / "loss_config.json").read_text())["teacher_model"] == "org/bert-teacher"


# ------------------------------------------------------------------------------------------ errors
def test_a_loss_that_needs_a_teacher_without_one_names_teacher_model(tmp_path):
    args = training_arguments(str(tmp_path), 8, 1, loss_type="distillation")
    with pytest.raises(ValueError, match=r"'distillation' distils from a teacher model.*teacher_model"):
        LossTrainer(model=build("bert_student"), args=args, train_dataset=build_dataset("sequence_classification", 8))


@pytest.mark.parametrize("loss_type", ["cross_entropy", "auto"])
def test_a_teacher_with_a_loss_that_does_not_use_one_is_refused(loss_type, tmp_path):
    args = training_arguments(str(tmp_path), 8, 1, loss_type=loss_type)
    with pytest.raises(ValueError, match=rf"teacher model \(BertForSequenceClassification\).*'{loss_type}' does not"):
        LossTrainer(
            model=build("bert_student"),
            args=args,
            train_dataset=build_dataset("sequence_classification", 8),
            teacher_model=build("bert_teacher"),
        )


@pytest.mark.parametrize("loss_type", ["cross_entropy", "auto"])
def test_teacher_model_argument_with_a_loss_that_does_not_use_one_fails_when_parsed(loss_type, tmp_path):
    with pytest.raises(ValueError, match="`teacher_model` 'org/teacher' given"):
        training_arguments(str(tmp_path), 8, 1, loss_type=loss_type, teacher_model="org/teacher")


def test_teacher_with_another_number_of_classes_is_refused_naming_both(tmp_path):
    args = training_arguments(str(tmp_path), 8, 1, loss_type="distillation")
    with pytest.raises(ValueError, match=r"student .* has number of classes 3 but the teacher .* has 5"):
        LossTrainer(
            model=build("bert_student"),
            args=args,
            train_dataset=build_dataset("sequence_classification", 8),
            teacher_model=build("bert_teacher", num_labels=5),
        )


def test_teacher_with_another_vocabulary_is_refused_naming_both(tmp_path):
    args = training_arguments(str(tmp_path), 8, 1, loss_type="causal_lm_distillation")
    with pytest.raises(ValueError, match=r"student .* has vocabulary size 24 but the teacher .* has 30"):
        LossTrainer(
            model=build("gpt2_student"),
            args=args,
            train_dataset=build_dataset("causal_lm", 8),
            teacher_model=build("llama_teacher", vocab_size=30),
        )


def test_the_student_as_its_own_teacher_is_refused(tmp_path):
    student = build("bert_student")
    args = training_arguments(str(tmp_path), 8, 1, loss_type="distillation")
    with pytest.raises(ValueError, match="`teacher_model` is the student itself"):
        LossTrainer(
            model=student, args=args, train_dataset=build_dataset("sequence_classification", 8), teacher_model=student
        )


def test_a_teacher_that_is_not_a_model_or_path_is_refused(tmp_path):
    args = training_arguments(str(tmp_path), 8, 1, loss_type="distillation")
    with pytest.raises(TypeError, match="`teacher_model` must be a model, a local path or a Hub name"):
        LossTrainer(
            model=build("bert_student"),
            args=args,
            train_dataset=build_dataset("sequence_classification", 8),
            teacher_model=3,
        )


def test_gradient_capture_sees_only_the_students_parameters(tmp_path):
    """The optimizer holds the student's parameters alone: the teacher is outside the model."""
    capture = GradientCapture()
    trainer = _trainer("distillation", tmp_path)
    trainer.add_callback(capture)
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in trainer.teacher_model.parameters()}
    assert optimized == {id(p) for p in trainer.model.parameters() if p.requires_grad}


def test_evaluation_runs_the_teacher_too(tmp_path):
    student, teacher = student_and_teacher("distillation")
    calls: list[bool] = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(torch.is_grad_enabled()))
    trainer = _trainer("distillation", tmp_path, student, teacher, per_device_eval_batch_size=4)
    metrics = trainer.evaluate(build_dataset("sequence_classification", NUM_SAMPLES))
    assert calls == [False, False] and torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_a_composite_with_a_distillation_component_gets_the_teachers_logits(tmp_path):
    student, teacher = student_and_teacher("distillation")
    trainer = _trainer(
        "0.3*cross_entropy+0.7*distillation", tmp_path, student, teacher, logging_strategy="steps", logging_steps=1
    )
    trainer.train()
    (entry,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"loss/cross_entropy", "loss/distillation"} <= set(entry)
