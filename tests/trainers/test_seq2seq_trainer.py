"""LossSeq2SeqTrainer: token-level losses on an encoder-decoder's decoder labels (tiny T5 and BART): one optimizer
step's gradient equals plain PyTorch on the whole batch, whatever the accumulation; class weights come from the
target tokens; ``predict_with_generate`` evaluation still works; and a user's own Trainer subclass gets the same
behaviour through ``LossTrainerMixin``. Two processes: ``tests/distributed/test_seq2seq_multiprocess.py``."""

from __future__ import annotations

import pytest
import torch
from seq2seq_models import MODELS, VOCAB_SIZE, as_batch, build_dataset, build_model, reference_gradient
from tiny_tasks import GradientCapture, relative_error, training_arguments
from transformers import Trainer

from hf_losses import LossSeq2SeqTrainer, LossSeq2SeqTrainingArguments, LossTrainerMixin, get_loss

TOLERANCE = 1e-5
LOSSES = [("cross_entropy", {}), ("cross_entropy", {"label_smoothing": 0.1}), ("focal", {"gamma": 2.0}), ("auto", {})]


def arguments(output_dir, batch_size: int, accumulation: int, **overrides) -> LossSeq2SeqTrainingArguments:
    return training_arguments(
        str(output_dir), batch_size, accumulation, arguments_class=LossSeq2SeqTrainingArguments, **overrides
    )


def trained_gradients(trainer_class, name, output_dir, batch_size, accumulation, **overrides):
    capture = GradientCapture()
    args = arguments(output_dir, batch_size, accumulation, **overrides)
    trainer = trainer_class(model=build_model(name), args=args, train_dataset=build_dataset(8), callbacks=[capture])
    trainer.train()
    return capture.gradients, trainer


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("loss_type", "loss_kwargs"), LOSSES)
@pytest.mark.parametrize(("batch_size", "accumulation"), [(8, 1), (2, 4)])
def test_gradient_equals_plain_pytorch_on_the_whole_batch(
    tmp_path, name, loss_type, loss_kwargs, batch_size, accumulation
):
    reference = reference_gradient(name, None if loss_type == "auto" else get_loss(loss_type, **loss_kwargs), 8)
    grads, trainer = trained_gradients(
        LossSeq2SeqTrainer, name, tmp_path, batch_size, accumulation, loss_type=loss_type, loss_kwargs=loss_kwargs
    )
    assert trainer.task.name == "seq2seq_lm" and len(grads) == 1
    assert relative_error(grads[0], reference) <= TOLERANCE


def test_balanced_class_weights_are_counted_over_the_target_vocabulary(tmp_path):
    labels = as_batch(8)["labels"]
    counts = torch.bincount(labels[labels != -100], minlength=VOCAB_SIZE)
    grads, trainer = trained_gradients(
        LossSeq2SeqTrainer, "t5", tmp_path, 2, 4, loss_type="cross_entropy", class_weights="balanced"
    )
    assert trainer.plan.class_counts == counts.tolist()
    expected = torch.where(counts > 0, counts.sum() / (VOCAB_SIZE * counts.clamp(min=1).double()), 0.0)
    torch.testing.assert_close(trainer.loss.weight.double(), expected, rtol=1e-6, atol=0)
    reference = reference_gradient("t5", get_loss("cross_entropy", weight=expected.tolist()), 8)
    assert relative_error(grads[0], reference) <= TOLERANCE


def test_predict_with_generate_evaluation_keeps_working(tmp_path):
    model = build_model("t5")
    args = arguments(
        tmp_path,
        4,
        1,
        loss_type="focal",
        predict_with_generate=True,
        generation_max_length=6,
        per_device_eval_batch_size=4,
    )
    trainer = LossSeq2SeqTrainer(
        model=model, args=args, train_dataset=build_dataset(8), eval_dataset=build_dataset(8, seed=1)
    )
    metrics = trainer.evaluate()
    batch = as_batch(8, seed=1)
    with torch.no_grad():
        logits = model(**batch).logits
        model_loss = model(**batch).loss
    focal = get_loss("focal")
    per_batch = [
        focal(logits[i : i + 4].reshape(-1, VOCAB_SIZE), batch["labels"][i : i + 4].reshape(-1)) for i in (0, 4)
    ]
    expected = sum(float(value) for value in per_batch) / 2  # evaluation: the mean of per-batch means, as stock
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(float(model_loss) - expected) > 1e-2  # the stock Seq2SeqTrainer would report the model's own CE
    prediction = trainer.predict(build_dataset(4, seed=1))
    assert prediction.predictions.shape[0] == 4 and prediction.predictions.dtype.kind == "i"  # generated ids


def test_decoder_inputs_from_a_seq2seq_collator_are_used_as_given():
    """DataCollatorForSeq2Seq(model=...) adds decoder_input_ids; without them the task makes the same ones."""
    model = build_model("bart")
    batch = as_batch(4)
    batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    from hf_losses.tasks import build_task

    task = build_task("auto", model)
    assert task.model_inputs(model, batch)["decoder_input_ids"] is batch["decoder_input_ids"]
    del batch["decoder_input_ids"]
    made = task.model_inputs(model, batch)["decoder_input_ids"]
    assert torch.equal(made, model.prepare_decoder_input_ids_from_labels(labels=batch["labels"]))
    assert "labels" not in task.model_inputs(model, batch)


class UserTrainer(Trainer):
    """A user's own Trainer subclass: counts its training steps and adds a metric to every log."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_seen = 0

    def training_step(self, *args, **kwargs):
        self.steps_seen += 1
        return super().training_step(*args, **kwargs)

    def log(self, logs, *args, **kwargs):
        super().log({**logs, "user_metric": 1.0}, *args, **kwargs)


class MyTrainer(LossTrainerMixin, UserTrainer):
    pass


def test_a_user_trainer_subclass_gets_the_loss_exactly_through_the_mixin(tmp_path):
    reference = reference_gradient("t5", get_loss("0.3*cross_entropy+0.7*focal"), 8)
    grads, trainer = trained_gradients(
        MyTrainer,
        "t5",
        tmp_path,
        2,
        4,
        loss_type="0.3*cross_entropy+0.7*focal",
        loss_task="seq2seq_lm",
        logging_strategy="steps",
        logging_steps=1,
    )
    assert relative_error(grads[0], reference) <= TOLERANCE
    assert trainer.steps_seen == 4  # the user's own override ran
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][0]
    assert logged["user_metric"] == 1.0 and {"loss/cross_entropy", "loss/focal"} <= set(logged)


def test_the_mixin_refuses_a_class_that_is_not_a_trainer():
    class NotATrainer(LossTrainerMixin):
        pass

    with pytest.raises(TypeError, match=r"LossTrainerMixin goes before a transformers\.Trainer subclass"):
        NotATrainer()
