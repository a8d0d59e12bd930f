"""Data-weight columns in the trainer: kept through ``remove_unused_columns``, collated (per-token weights padded
with 0 on the labels' padding side), checked with errors naming the column, and refused where they cannot work."""

from __future__ import annotations

import pytest
import torch
from tiny_tasks import build_dataset, build_model, training_arguments
from transformers import default_data_collator

from hf_losses import LossTrainer
from hf_losses.trainers.data_weights import DataWeightsCollator, weight_columns_of


def _pad_right(features):
    """A minimal padding collator (what DataCollatorForTokenClassification does to ids and labels)."""
    length = max(len(f["input_ids"]) for f in features)
    ids = [f["input_ids"] + [0] * (length - len(f["input_ids"])) for f in features]
    labels = [f["labels"] + [-100] * (length - len(f["labels"])) for f in features]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def test_collator_pads_token_weights_with_zero_and_stacks_sample_weights():
    features = [
        {"input_ids": [5, 6, 7], "labels": [1, 2, 0], "token_weight": [0.5, 1.0, 2.0], "sample_weight": 2.0},
        {"input_ids": [8], "labels": [1], "token_weight": [3.0], "sample_weight": 0.0},
    ]
    batch = DataWeightsCollator(_pad_right)(features)
    assert batch["labels"].tolist() == [[1, 2, 0], [1, -100, -100]]
    assert batch["token_weight"].tolist() == [[0.5, 1.0, 2.0], [3.0, 0.0, 0.0]]
    assert batch["sample_weight"].tolist() == [2.0, 0.0] and batch["sample_weight"].dtype == torch.float32
    left = DataWeightsCollator(_pad_right, padding_side="left")(features)
    assert left["token_weight"].tolist() == [[0.5, 1.0, 2.0], [0.0, 0.0, 3.0]]


def test_collator_passes_batches_without_weights_through_unchanged():
    features = [{"input_ids": [1, 2], "labels": 1}, {"input_ids": [3, 4], "labels": 0}]
    batch = DataWeightsCollator(default_data_collator)(features)
    assert set(batch) == {"input_ids", "labels"}


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("sample_weight", -1.0, r"column `sample_weight` must hold finite weights >= 0.*-1"),
        ("sample_weight", float("inf"), r"column `sample_weight` must hold finite weights >= 0.*inf"),
        ("sample_weight", [1.0, 2.0], r"column `sample_weight` must hold one number per example"),
        ("token_weight", [1.0, float("nan")], r"column `token_weight` must hold finite weights >= 0.*nan"),
        ("token_weight", [1.0, 1.0, 1.0, 1.0], r"column `token_weight` of example 1 has 4 weights but its labels 3"),
    ],
)
def test_collator_refuses_bad_weights_naming_the_column(column, value, message):
    features = [
        {"input_ids": [5, 6, 7], "labels": [1, 2, 0], column: [1.0, 1.0] if column == "token_weight" else 1.0},
        {"input_ids": [8, 9], "labels": [1, 1], column: value},
    ]
    with pytest.raises(ValueError, match=message):
        DataWeightsCollator(_pad_right)(features)


def _trainer(tmp_path, columns, loss_type="cross_entropy", loss_kwargs=None, **overrides):
    dataset = build_dataset("sequence_classification", 8, ignored=False)
    for name, values in columns.items():
        dataset = dataset.add_column(name, values)
    args = training_arguments(
        str(tmp_path), 2, 2, loss_type=loss_type, loss_kwargs=loss_kwargs or {}, learning_rate=0.1, **overrides
    )
    return LossTrainer(model=build_model("sequence_classification"), args=args, train_dataset=dataset)


def test_weight_columns_survive_remove_unused_columns(tmp_path):
    trainer = _trainer(tmp_path, {"sample_weight": [1.0] * 8, "text": ["a"] * 8}, remove_unused_columns=True)
    assert weight_columns_of(trainer.train_dataset) == ["sample_weight"]
    batch = next(iter(trainer.get_train_dataloader()))
    assert "sample_weight" in batch and "text" not in batch
    assert batch["sample_weight"].tolist() == [1.0, 1.0]
    trainer.train()  # the model never sees the column


def test_zero_weight_for_a_whole_step_is_a_clear_error(tmp_path):
    weights = [0.0] * 4 + [1.0] * 4  # step 1 (batch 2 x GA 2) weighs nothing
    trainer = _trainer(tmp_path, {"sample_weight": weights}, loss_kwargs={"normalize": "weight"})
    with pytest.raises(ValueError, match=r"optimizer step 1 have total weight 0 \(normalize='weight'"):
        trainer.train()
    # with normalize="count" the step's loss is 0 with zero gradient, which is well defined
    _trainer(tmp_path / "count", {"sample_weight": weights}).train()


def test_bad_weight_in_the_data_names_the_column(tmp_path):
    trainer = _trainer(tmp_path, {"sample_weight": [1.0] * 7 + [-2.0]})
    with pytest.raises(ValueError, match=r"column `sample_weight` must hold finite weights >= 0.*-2"):
        trainer.train()


def test_model_loss_cannot_weigh_items(tmp_path):
    trainer = _trainer(tmp_path, {"sample_weight": [1.0] * 8}, loss_type="auto")
    with pytest.raises(ValueError, match=r"loss_type='auto' trains the model's own loss, which cannot weigh items"):
        trainer.train()


def test_unreduced_loss_is_refused_by_the_trainer(tmp_path):
    with pytest.raises(ValueError, match=r"reduction='none'; the trainer needs one number per step"):
        _trainer(tmp_path, {}, loss_kwargs={"reduction": "none"})
