"""The demo (hf-losses demo == examples/text_classification/train.py): imbalanced Rotten Tomatoes data and a smoke
run with the real pretrained MiniLM."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from example_runs import SMOKE_FLAGS, example_script
from launching import REPO_ROOT

from hf_losses.cli import demo
from hf_losses.cli.main import main as cli_main


def test_rotten_tomatoes_has_both_classes_and_no_plot_rows():
    texts, labels = demo.read_rotten_tomatoes()
    assert len(texts) == len(labels) == 4866  # 2455 fresh + 2411 rotten ('plot' synopses dropped)
    assert labels.count(demo.LABEL_NAMES.index("fresh")) == 2455
    assert all(text for text in texts)


def test_split_is_imbalanced_as_asked_and_disjoint():
    texts, labels = demo.read_rotten_tomatoes()
    train, held_out = demo.imbalanced_split(texts, labels, 200, 100, 0.1, seed=3)
    minority = demo.LABEL_NAMES.index(demo.MINORITY)
    assert (len(train["labels"]), train["labels"].count(minority)) == (220, 20)
    assert (len(held_out["labels"]), held_out["labels"].count(minority)) == (110, 10)
    assert not set(train["text"]) & set(held_out["text"])
    again, _ = demo.imbalanced_split(texts, labels, 200, 100, 0.1, seed=3)
    assert again == train  # fixed seed, same data


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_split_rejects_a_minority_fraction_outside_zero_one(fraction):
    with pytest.raises(ValueError, match="minority_fraction"):
        demo.imbalanced_split(["a", "b"], [0, 1], 1, 1, fraction, seed=0)


def test_cut_keeps_every_class_in_a_tiny_subset():
    columns = {"text": list("abcdefgh"), "labels": [1, 1, 1, 1, 1, 1, 0, 1]}
    small = demo.cut(columns, 3)
    assert len(small["labels"]) == 3 and sorted(set(small["labels"])) == [0, 1]
    assert small["text"][-1] == "g"


def test_demo_smoke_run_with_the_real_minilm(tmp_path, capsys):
    code = cli_main(
        [
            "demo",
            "--output_dir",
            str(tmp_path),
            "--max_train_samples",
            "8",
            "--max_eval_samples",
            "8",
            "--per_device_train_batch_size",
            "4",
            "--max_length",
            "32",
            *SMOKE_FLAGS,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    results = (tmp_path / "results.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("| cross_entropy")]
    assert [row.split("|")[1].strip() for row in rows] == ["cross_entropy", "cross_entropy + balanced class weights"]
    assert "recall 'rotten' (minority)" in results and "macro-F1" in results
    assert rows[0] in out  # the table is printed too
    assert (tmp_path / "loss_curves.png").is_file()
    saved = tmp_path / "cross_entropy_balanced_class_weights"
    loss_config = json.loads((saved / "loss_config.json").read_text())
    assert loss_config["class_weights"] == "balanced"
    # balanced weights n / (C n_c) from the 8 training reviews (at least one 'rotten' kept by the cut)
    weights = loss_config["class_weight_values"]
    assert weights[0] > 1.0 > weights[1]
    assert (saved / "tokenizer.json").is_file() and (saved / "model.safetensors").is_file()
    card = (saved / "README.md").read_text()
    assert "Training loss" in card and "sentence-transformers/all-MiniLM-L6-v2" in card


def test_example_file_is_the_demo():
    result = subprocess.run(
        [sys.executable, str(example_script("text_classification")), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--minority_fraction", "--tune_trials", "--loss_type", "--max_train_samples"):
        assert flag in result.stdout


def test_naming_another_loss_drops_the_default_class_weights():
    training_args, _ = demo.parse_arguments(["--loss_type", "focal", "--output_dir", "unused"])
    assert (training_args.loss_type, training_args.class_weights) == ("focal", None)
    training_args, _ = demo.parse_arguments(
        ["--loss_type", "focal", "--class_weights", "balanced", "--output_dir", "unused"]
    )
    assert training_args.class_weights == "balanced"
    training_args, _ = demo.parse_arguments(["--output_dir", "unused"])
    assert (training_args.loss_type, training_args.class_weights) == ("cross_entropy", "balanced")
