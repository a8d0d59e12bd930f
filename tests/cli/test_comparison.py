"""hf_losses.cli.comparison: names, tables, reuse of the final evaluation, and the whole comparison."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hf_losses.cli.comparison import (
    LossSetting,
    RunResult,
    last_evaluation,
    markdown_table,
    run_comparison,
    with_loss,
)
from hf_losses.trainers import LossTrainingArguments


@pytest.mark.parametrize(
    "setting,label,folder",
    [
        (LossSetting("", "cross_entropy"), "cross_entropy", "cross_entropy"),
        (LossSetting("", "focal", {"gamma": 2.0}), "focal(gamma=2)", "focal_gamma_2"),
        (
            LossSetting("", "cross_entropy", {}, "balanced"),
            "cross_entropy + balanced class weights",
            "cross_entropy_balanced_class_weights",
        ),
        (LossSetting("", "0.5*cross_entropy + 0.5*dice"), "0.5*cross_entropy+0.5*dice", "0.5_cross_entropy_0.5_dice"),
    ],
)
def test_settings_have_readable_labels_and_safe_folder_names(setting, label, folder):
    assert setting.describe() == label
    assert setting.folder_name() == folder


def test_markdown_table_has_one_row_per_run_and_marks_missing_metrics():
    results = [
        RunResult(LossSetting("ce", "cross_entropy"), {"eval_accuracy": 0.91234}, [], 12.34, "a"),
        RunResult(LossSetting("focal", "focal"), {}, [], 1.0, "b"),
    ]
    assert markdown_table(results, [("eval_accuracy", "accuracy")]).splitlines() == [
        "| loss | accuracy | train time (s) |",
        "|---|---|---|",
        "| ce | 0.9123 | 12.3 |",
        "| focal | n/a | 1.0 |",
    ]


def test_final_evaluation_is_reused_only_when_it_happened_at_the_last_step():
    logged = [{"loss": 1.0, "step": 5}, {"eval_loss": 0.5, "eval_accuracy": 0.8, "step": 10}]
    assert last_evaluation(SimpleNamespace(log_history=logged, global_step=10))["eval_accuracy"] == 0.8
    assert last_evaluation(SimpleNamespace(log_history=logged, global_step=12)) is None
    assert last_evaluation(SimpleNamespace(log_history=[{"loss": 1.0, "step": 1}], global_step=1)) is None


def test_with_loss_replaces_only_the_loss_fields(tmp_path):
    args = LossTrainingArguments(
        output_dir=str(tmp_path),
        loss_type="cross_entropy",
        class_weights="balanced",
        learning_rate=1e-3,
        report_to="none",
    )
    changed = with_loss(args, LossSetting("", "focal", {"gamma": 1.0}), tmp_path / "focal")
    assert (changed.loss_type, changed.loss_kwargs, changed.class_weights) == ("focal", {"gamma": 1.0}, None)
    assert changed.output_dir == str(tmp_path / "focal") and changed.learning_rate == 1e-3
    assert (args.loss_type, args.class_weights) == ("cross_entropy", "balanced")  # the original is untouched


class FakeTrainer:
    """Just enough of a LossTrainer for run_comparison: records which loss it trained with."""

    trained: list[str] = []

    def __init__(self, args):
        self.args = args
        self.model_wrapped = object()
        self.state = SimpleNamespace(
            log_history=[{"loss": 1.0, "step": 1}], global_step=1, save_to_json=lambda path: open(path, "w").write("{}")
        )

    def is_world_process_zero(self):
        return True

    def train(self):
        FakeTrainer.trained.append(self.args.loss_type)

    def evaluate(self):
        return {"eval_accuracy": 0.5}


def test_run_comparison_trains_a_loss_equal_to_the_baseline_once_and_writes_the_report(tmp_path, capsys):
    FakeTrainer.trained = []
    args = LossTrainingArguments(output_dir=str(tmp_path), loss_type="cross_entropy", report_to="none")
    table = run_comparison(
        FakeTrainer,
        args,
        baseline_loss_type="cross_entropy",
        title="Title",
        intro=lambda seconds: f"took {seconds:.0f} s",
        columns=[("eval_accuracy", "accuracy")],
        save_models=False,
    )
    assert FakeTrainer.trained == ["cross_entropy"]
    assert table.splitlines()[2].startswith("| cross_entropy | 0.5000 |")
    assert (tmp_path / "results.md").read_text().startswith("# Title\n\ntook 0 s\n\n| loss | accuracy |")
    assert table in capsys.readouterr().out
