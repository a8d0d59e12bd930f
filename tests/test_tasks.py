"""Task readers: an hf-losses loss on (logits, labels) read for the task equals the model's own transformers loss
(same shift, flattening, upsampling, ignore values), and the item counts match what that loss averages over."""

from __future__ import annotations

import pytest
import torch
from tiny_tasks import as_batch, build_model

from hf_losses import get_loss
from hf_losses.tasks import build_task, infer_task, next_token_labels

SAME_AS_MODEL = [
    ("sequence_classification", "cross_entropy", True),
    ("token_classification", "cross_entropy", True),
    ("causal_lm", "cross_entropy", True),
    ("semantic_segmentation", "cross_entropy", True),  # SegFormer ignores 255: the reader maps it to -100
    ("multi_label", "bce", False),
    ("regression", "mse", False),
]


@pytest.mark.parametrize(("task", "loss_type", "ignored"), SAME_AS_MODEL)
def test_loss_on_read_logits_equals_model_loss(task, loss_type, ignored):
    torch.manual_seed(0)
    model = build_model(task).eval()
    batch = as_batch(task, 6, ignored=ignored)
    model_loss = model(**batch).loss
    reader = build_task("auto", model)
    assert reader.name == task
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits, labels = reader.read(model(**inputs), batch)
    ours = get_loss(loss_type)(logits, labels)
    torch.testing.assert_close(ours, model_loss.float(), rtol=1e-6, atol=1e-7)
    # the count the model's mean divides by
    if task == "semantic_segmentation":
        expected = (batch["labels"] != 255).sum()
    elif task == "causal_lm":
        expected = (batch["labels"][:, 1:] != -100).sum()
    elif ignored:
        expected = (batch["labels"] != -100).sum()
    else:
        expected = batch["labels"].numel()
    assert int(reader.model_loss_items(batch)) == int(expected)


def test_segmentation_logits_are_upsampled_bilinear_to_label_size():
    model = build_model("semantic_segmentation").eval()
    batch = as_batch("semantic_segmentation", 2)
    raw = model(pixel_values=batch["pixel_values"]).logits
    logits, labels = build_task("semantic_segmentation", model).read({"logits": raw}, batch)
    assert raw.shape[-1] < logits.shape[-1] == labels.shape[-1]
    expected = torch.nn.functional.interpolate(raw, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected)
    assert (labels == -100).sum() == (batch["labels"] == 255).sum() and not (labels == 255).any()


def test_causal_shift_and_collator_shift_labels_agree():
    batch = as_batch("causal_lm", 3)
    shifted = next_token_labels(batch)
    assert torch.equal(shifted[:, :-1], batch["labels"][:, 1:]) and (shifted[:, -1] == -100).all()
    custom = torch.full_like(batch["labels"], -100)
    custom[:, 0] = 5
    reader = build_task("causal_lm")
    assert torch.equal(reader.loss_labels({**batch, "shift_labels": custom}), custom.reshape(-1))


def test_token_classification_is_flattened():
    batch = as_batch("token_classification", 3)
    logits = torch.randn(3, batch["labels"].shape[1], 5)
    read_logits, read_labels = build_task("token_classification").read({"logits": logits}, batch)
    assert read_logits.shape == (3 * batch["labels"].shape[1], 5) and torch.equal(
        read_labels, batch["labels"].reshape(-1)
    )


def test_problem_type_unset_is_decided_per_batch_as_transformers_does():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, num_labels=3
    )
    reader = build_task("auto", BertForSequenceClassification(config))
    assert reader.name == "sequence_classification" and reader.label_kind is None
    assert reader.loss_labels({"labels": torch.tensor([0, 2])}).dtype == torch.long
    assert reader.loss_labels({"labels": torch.tensor([[0.0, 1.0, 1.0]])}).dtype == torch.float32
    config.problem_type = "multi_label_classification"
    assert build_task("auto", BertForSequenceClassification(config)).name == "multi_label"
    config.problem_type, config.num_labels = None, 1
    regression = build_task("sequence_classification", BertForSequenceClassification(config))
    _, labels = regression.read({"logits": torch.zeros(2, 1)}, {"labels": torch.tensor([0.5, 1.5])})
    assert labels.shape == (2, 1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BertForTokenClassification", "token_classification"),
        ("LlamaForCausalLM", "causal_lm"),
        ("GPT2LMHeadModel", "causal_lm"),
        ("SegformerForSemanticSegmentation", "semantic_segmentation"),
        ("ViTForImageClassification", "sequence_classification"),
        ("T5ForConditionalGeneration", None),
    ],
)
def test_task_inferred_from_class_name(name, expected):
    model = type(name, (torch.nn.Module,), {})()
    assert infer_task(model) == expected


def test_unknown_task_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown loss_task 'segmentation'"):
        build_task("segmentation")
