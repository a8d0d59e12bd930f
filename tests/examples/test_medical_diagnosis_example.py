"""examples/medical_diagnosis: the registered MLP model, the data split, and a smoke run of the comparison."""

from __future__ import annotations

import json

import numpy as np
import torch
from example_runs import SMOKE_FLAGS
from transformers import AutoConfig, AutoModelForSequenceClassification


def test_mlp_is_registered_with_the_auto_classes_and_round_trips(example, tmp_path):
    medical = example("medical_diagnosis")
    config = medical.TabularMLPConfig(num_features=5, hidden_size=8, num_hidden_layers=1, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    assert isinstance(model, medical.TabularMLPForSequenceClassification)
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), medical.TabularMLPConfig)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    features = torch.randn(4, 5)
    torch.testing.assert_close(reloaded(features).logits, model.eval()(features).logits)


def test_mlp_computes_cross_entropy_when_given_labels(example):
    medical = example("medical_diagnosis")
    model = medical.TabularMLPForSequenceClassification(medical.TabularMLPConfig(num_features=3, num_labels=2)).eval()
    features, labels = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    output = model(features, labels=labels)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))


def test_split_is_stratified_standardised_and_codes_malignant_as_one(example):
    medical = example("medical_diagnosis")
    train, test = medical.load_data(0.3, seed=0, feature_set="mean")
    assert len(train) + len(test) == 569
    assert int(np.sum(train["labels"])) + int(np.sum(test["labels"])) == 212  # malignant patients
    assert abs(np.mean(test["labels"]) - 212 / 569) < 0.01
    features = np.asarray(train["features"])
    assert features.shape[1] == 10
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(features.std(axis=0), 1.0, atol=1e-4)


def test_cost_matrix_prices_a_missed_malignancy(example):
    assert example("medical_diagnosis").cost_matrix(5.0) == [[0.0, 1.0], [5.0, 0.0]]


def test_smoke_run_compares_fn_penalty_with_cross_entropy(example, tmp_path):
    medical = example("medical_diagnosis")
    table = medical.main(["--output_dir", str(tmp_path), "--max_train_samples", "32", *SMOKE_FLAGS])
    rows = [line for line in table.splitlines()[2:]]
    assert [row.split("|")[1].strip() for row in rows] == ["cross_entropy", "fn_penalty(fn_cost=5)"]
    for row in rows:  # sensitivity, specificity, expected cost, accuracy are numbers
        cells = [cell.strip() for cell in row.split("|")[2:6]]
        assert all(0.0 <= float(cell) <= 5.0 for cell in cells), row
    assert table in (tmp_path / "results.md").read_text()
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    saved = tmp_path / "fn_penalty_fn_cost_5"
    loss_config = json.loads((saved / "loss_config.json").read_text())
    assert loss_config["loss_type"] == "fn_penalty"
    assert "Training loss" in (saved / "README.md").read_text()
    assert isinstance(
        AutoModelForSequenceClassification.from_pretrained(saved), medical.TabularMLPForSequenceClassification
    )
