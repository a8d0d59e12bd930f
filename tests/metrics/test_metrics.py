"""The evaluate metric modules shipped in hf_losses/metrics: offline loading, evaluate.combine, and values
checked against scikit-learn, hand-computed cases and the cost_sensitive module's torch expected_cost."""

from __future__ import annotations

import os

import evaluate
import numpy as np
import pytest
from sklearn import metrics as sk

from hf_losses.metrics import METRICS, functional, load_metric, metric_path


@pytest.fixture(scope="module")
def loaded():
    return {name: load_metric(name) for name in METRICS}


def random_pairs(seed: int, n: int = 200, num_classes: int = 4):
    rng = np.random.default_rng(seed)
    references = rng.integers(0, num_classes, n)
    # a biased classifier: right 60% of the time, else class 0 (so recalls differ per class)
    predictions = np.where(rng.random(n) < 0.6, references, 0)
    return predictions, references


def test_every_metric_loads_offline_from_its_folder(loaded):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    for name, module in loaded.items():
        assert isinstance(module, evaluate.EvaluationModule)
        assert module.name == name
        assert os.path.isfile(os.path.join(metric_path(name), f"{name}.py"))


def test_unknown_metric_name_suggests_the_close_one():
    with pytest.raises(ValueError, match="Did you mean 'macro_f1'"):
        metric_path("macro_f")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_scikit_learn(loaded, seed):
    predictions, references = random_pairs(seed)
    assert loaded["accuracy"].compute(predictions=predictions, references=references)["accuracy"] == pytest.approx(
        sk.accuracy_score(references, predictions)
    )
    assert loaded["macro_f1"].compute(predictions=predictions, references=references)["macro_f1"] == pytest.approx(
        sk.f1_score(references, predictions, average="macro")
    )
    recall = loaded["per_class_recall"].compute(predictions=predictions, references=references)
    expected = sk.recall_score(references, predictions, average=None, labels=[0, 1, 2, 3])
    assert [recall[f"recall_{c}"] for c in range(4)] == pytest.approx(expected.tolist())
    assert recall["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(references, predictions))


def test_macro_f1_over_num_classes_counts_a_never_seen_class_as_zero(loaded):
    # classes 0 and 1 perfect; class 2 exists but appears nowhere -> F1 0 when averaged over 3 classes
    result = loaded["macro_f1"].compute(predictions=[0, 1, 1], references=[0, 1, 1], num_classes=3, per_class=True)
    assert result == pytest.approx({"macro_f1": 2 / 3, "f1_0": 1.0, "f1_1": 1.0, "f1_2": 0.0})
    assert loaded["macro_f1"].compute(predictions=[0, 1, 1], references=[0, 1, 1])["macro_f1"] == 1.0


def test_per_class_recall_uses_label_names_and_drops_ignored(loaded):
    result = loaded["per_class_recall"].compute(
        predictions=[0, 0, 1, 1, 0], references=[0, 1, 1, -100, 0], label_names=["rotten", "fresh"]
    )
    # rotten: 2 of 2 found; fresh: 1 of 2 found (the -100 entry is dropped)
    assert result == pytest.approx({"recall_rotten": 1.0, "recall_fresh": 0.5, "balanced_accuracy": 0.75})


# (predictions, references, cost matrix, sensitivity, specificity, expected cost) computed by hand
COST_CASES = [
    ([1, 1, 0, 0], [1, 1, 0, 0], None, 1.0, 1.0, 0.0),
    ([0, 0, 1, 1], [1, 0, 1, 0], [[0, 1], [10, 0]], 0.5, 0.5, (10 + 1) / 4),
    ([0, 0, 0, 0], [1, 1, 1, 0], [[0, 1], [5, 0]], 0.0, 1.0, 15 / 4),
    ([1, 1, 1, 1], [1, 1, 1, 0], [[0, 2], [5, 0]], 1.0, 0.0, 2 / 4),
    ([0, 1, 0, 1, 1], [0, 0, 1, 1, -100], [[0, 1], [3, 0]], 0.5, 0.5, (1 + 3) / 4),
]


@pytest.mark.parametrize("predictions,references,cost_matrix,sensitivity,specificity,cost", COST_CASES)
def test_expected_cost_matches_hand_computed_cases(
    loaded, predictions, references, cost_matrix, sensitivity, specificity, cost
):
    result = loaded["expected_cost"].compute(predictions=predictions, references=references, cost_matrix=cost_matrix)
    assert result == pytest.approx({"sensitivity": sensitivity, "specificity": specificity, "expected_cost": cost})


def test_expected_cost_equals_the_cost_sensitive_module_reference(loaded):
    torch_expected_cost = pytest.importorskip("hf_losses.losses.cost_sensitive").expected_cost
    predictions, references = random_pairs(5, num_classes=3)
    cost_matrix = [[0, 1, 4], [2, 0, 1], [8, 3, 0]]
    ours = loaded["expected_cost"].compute(predictions=predictions, references=references, cost_matrix=cost_matrix)
    assert ours["expected_cost"] == pytest.approx(torch_expected_cost(predictions, references, cost_matrix))
    # sensitivity of class 2 = its recall, specificity = recall of "not 2"
    result = loaded["expected_cost"].compute(
        predictions=predictions, references=references, cost_matrix=cost_matrix, positive_label=2
    )
    assert result["sensitivity"] == pytest.approx(sk.recall_score(references == 2, predictions == 2))
    assert result["specificity"] == pytest.approx(sk.recall_score(references != 2, predictions != 2))


def test_expected_cost_rejects_a_cost_matrix_of_the_wrong_size(loaded):
    with pytest.raises(ValueError, match="3 classes"):
        loaded["expected_cost"].compute(
            predictions=[0, 1, 2], references=[0, 1, 2], cost_matrix=[[0, 1], [1, 0]], num_classes=3
        )


def test_dice_iou_hand_computed_two_by_two():
    # foreground: predicted {a, b}, true {b, c}: intersection 1 -> Dice 2/4, IoU 1/3
    module = load_metric("dice_iou")
    result = module.compute(predictions=[[[1, 1], [0, 0]]], references=[[[0, 1], [1, 0]]])
    assert result["dice_1"] == pytest.approx(0.5) and result["iou_1"] == pytest.approx(1 / 3)
    assert result["dice"] == result["dice_1"]  # background excluded from the mean by default
    # background: predicted {c, d}, true {a, d}: intersection 1 -> Dice 1/2, IoU 1/3
    assert result["dice_0"] == pytest.approx(0.5) and result["iou_0"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", [0, 3])
def test_dice_iou_pooled_over_images_equal_scikit_learn_per_class_f1_and_jaccard(seed):
    rng = np.random.default_rng(seed)
    references = rng.integers(0, 3, (4, 8, 8))
    predictions = np.where(rng.random((4, 8, 8)) < 0.7, references, rng.integers(0, 3, (4, 8, 8)))
    references[0, 0, :4] = -100
    result = load_metric("dice_iou").compute(
        predictions=list(predictions), references=list(references), include_background=True
    )
    keep = references.reshape(-1) != -100
    flat_true, flat_pred = references.reshape(-1)[keep], predictions.reshape(-1)[keep]
    dice = sk.f1_score(flat_true, flat_pred, average=None, labels=[0, 1, 2])
    iou = sk.jaccard_score(flat_true, flat_pred, average=None, labels=[0, 1, 2])
    assert [result[f"dice_{c}"] for c in range(3)] == pytest.approx(dice.tolist())
    assert [result[f"iou_{c}"] for c in range(3)] == pytest.approx(iou.tolist())
    assert result["dice"] == pytest.approx(dice.mean()) and result["iou"] == pytest.approx(iou.mean())


def test_dice_of_a_class_absent_everywhere_is_one_not_nan():
    dice, iou = functional.dice_iou([0, 0, 0], [0, 0, 0], num_classes=2)
    assert dice.tolist() == [1.0, 1.0] and iou.tolist() == [1.0, 1.0]


def test_combine_returns_every_module_s_keys_and_routes_options(loaded):
    combined = evaluate.combine(
        [
            load_metric("accuracy"),
            load_metric("macro_f1"),
            load_metric("per_class_recall"),
            load_metric("expected_cost"),
        ]
    )
    result = combined.compute(predictions=[0, 0, 1, 1], references=[1, 0, 1, 0], cost_matrix=[[0, 1], [10, 0]])
    assert result == pytest.approx(
        {
            "accuracy": 0.5,
            "macro_f1": 0.5,
            "recall_0": 0.5,
            "recall_1": 0.5,
            "balanced_accuracy": 0.5,
            "sensitivity": 0.5,
            "specificity": 0.5,
            "expected_cost": 2.75,
        }
    )


def test_metrics_accumulate_batches_like_evaluate_metrics(loaded):
    module = load_metric("macro_f1")
    predictions, references = random_pairs(7)
    for start in range(0, len(references), 50):
        module.add_batch(predictions=predictions[start : start + 50], references=references[start : start + 50])
    assert module.compute()["macro_f1"] == pytest.approx(sk.f1_score(references, predictions, average="macro"))


def test_mismatched_lengths_raise_a_clear_error():
    with pytest.raises(ValueError, match="same number of entries"):
        functional.confusion_matrix([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        functional.confusion_matrix([0, 3], [0, 1], num_classes=2)
