"""Class counts from the training set's label column and the weights derived from them."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight
from tiny_tasks import build_dataset, build_model, training_arguments

from hf_losses import LossTrainer
from hf_losses.losses.class_weights import weights_from_counts
from hf_losses.trainers.arguments import parse_class_weights
from hf_losses.trainers.class_counts import class_counts, label_column_of


def test_counts_of_a_label_column_respect_selection_and_ignore_index():
    dataset = datasets.Dataset.from_dict({"label": [0, 1, 1, 2, -100, 1, 0]}).select([1, 2, 3, 4, 5])
    assert label_column_of(dataset) == "label"
    assert class_counts(dataset, num_classes=4).tolist() == [0, 3, 1, 0]


def test_counts_of_nested_token_and_pixel_labels():
    tokens = datasets.Dataset.from_dict({"labels": [[0, 1, -100], [2, 2], [1]]})
    assert class_counts(tokens, num_classes=3).tolist() == [1, 2, 2]
    pixels = datasets.Dataset.from_dict({"labels": [[[0, 255], [1, 1]], [[255, 2], [0, 0]]]})
    assert class_counts(pixels, num_classes=3, ignore_value=255).tolist() == [3, 2, 1]


def test_counts_of_multi_hot_labels_are_positives_per_class():
    dataset = datasets.Dataset.from_dict({"labels": [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]})
    assert class_counts(dataset, num_classes=3, label_kind="binary").tolist() == [2, 1, 2]


def test_label_out_of_range_and_missing_column_are_clear_errors():
    with pytest.raises(ValueError, match="label 5 found"):
        class_counts(datasets.Dataset.from_dict({"labels": [0, 5]}), num_classes=3)
    with pytest.raises(ValueError, match="no label column"):
        label_column_of(datasets.Dataset.from_dict({"target": [0, 1]}))
    with pytest.raises(TypeError, match="datasets.Dataset"):
        class_counts([0, 1, 2], num_classes=3)


def test_balanced_weights_equal_scikit_learn():
    labels = np.array([0] * 50 + [1] * 7 + [2] * 3)
    counts = np.bincount(labels)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(weights_from_counts(counts, "balanced"), expected, rtol=1e-12)


def test_effective_number_weights_follow_cui_et_al():
    counts, beta = np.array([1000, 100, 10]), 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in counts]  # eq. 4: 1 / E_n, E_n = (1 - beta^n) / (1 - beta)
    expected = np.array(raw) / sum(raw) * 3  # normalised to sum to C
    np.testing.assert_allclose(weights_from_counts(counts, "effective_num", beta), expected, rtol=1e-12)
    assert weights_from_counts(counts, "effective_num", beta)[2] > weights_from_counts(counts, "effective_num", beta)[0]


def test_parse_class_weights_forms():
    assert parse_class_weights(" balanced ") == "balanced"
    assert parse_class_weights("2, 1") == [2.0, 1.0]
    assert parse_class_weights((1, 2)) == [1.0, 2.0]
    assert parse_class_weights(None) is None


def test_trainer_reads_counts_and_builds_weighted_loss(tmp_path):
    """--class_weights balanced: weights from the train set's labels reach the loss, and ldam gets
    samples_per_class from the same counts."""
    dataset = build_dataset("sequence_classification", 12)
    labels = np.array([y for y in dataset["labels"] if y >= 0])
    expected_counts = np.bincount(labels, minlength=3)
    expected_weights = compute_class_weight("balanced", classes=np.arange(3), y=labels)

    args = training_arguments(str(tmp_path / "a"), 2, 1, loss_type="cross_entropy", class_weights="balanced")
    trainer = LossTrainer(model=build_model("sequence_classification"), args=args, train_dataset=dataset)
    np.testing.assert_allclose(trainer.loss.weight.numpy(), expected_weights, rtol=1e-6)
    config = trainer._loss_config
    assert config["class_counts"] == expected_counts.tolist() and config["class_weights"] == "balanced"

    args = training_arguments(str(tmp_path / "b"), 2, 1, loss_type="ldam")
    trainer = LossTrainer(model=build_model("sequence_classification"), args=args, train_dataset=dataset)
    assert trainer.loss.samples_per_class.tolist() == expected_counts.tolist()

    args = training_arguments(str(tmp_path / "c"), 2, 1, loss_type="focal", class_weights=[1.0, 2.0, 3.0])
    trainer = LossTrainer(model=build_model("sequence_classification"), args=args, train_dataset=dataset)
    assert trainer.loss.alpha.tolist() == [1.0, 2.0, 3.0]
