"""hf_losses.cli.comparison: names, tables, and reuse of the final evaluation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hf_losses.cli.comparison import LossSetting, RunResult, last_evaluation, markdown_table, with_loss
from hf_losses.trainers import LossTrainingArguments


@pytest.mark.parametrize("setting,label,folder", [
    (LossSetting("", "cross_entropy"), "cross_entropy", "cross_entropy"),
    (LossSetting("", "focal", {"gamma": 2.0}), "focal(gamma=2)", "focal_gamma_2"),
    (LossSetting("", "cross_entropy", {}, "balanced"), "cross_entropy + balanced class weights",
     "cross_entropy_balanced_class_weights"),
    (LossSetting("", "0.5*cross_entropy + 0.5*dice"), "0.5*cross_entropy+0.5*dice", "0.5_cross_entropy_0.5_dice"),
])
def test_settings_have_readable_labels_and_safe_folder_names(setting, label, folder):
    assert setting.describe() == label
    assert setting.folder_name() == folder


def test_markdown_table_has_one_row_per_run_and_marks_missing_metrics():
    results = [RunResult(LossSetting("ce", "cross_entropy"), {"eval_accuracy": 0.91234}, [], 12.34, "a"),
               RunResult(LossSetting("focal", "focal"), {}, [], 1.0, "b")]
    assert markdown_table(results, [("eval_accuracy", "accuracy")]).splitlines() == [
        "| loss | accuracy | train time (s) |", "|---|---|---|",
        "| ce | 0.9123 | 12.3 |", "| focal | n/a | 1.0 |"]


def test_final_evaluation_is_reused_only_when_it_happened_at_the_last_step():
    logged = [{"loss": 1.0, "step": 5}, {"eval_loss": 0.5, "eval_accuracy": 0.8, "step": 10}]
    assert last_evaluation(SimpleNamespace(log_history=logged, global_step=10))["eval_accuracy"] == 0.8
    assert last_evaluation(SimpleNamespace(log_history=logged, global_step=12)) is None
    assert last_evaluation(SimpleNamespace(log_history=[{"loss": 1.0, "step": 1}], global_step=1)) is None


def test_with_loss_replaces_only_the_loss_fields(tmp_path):
    args = LossTrainingArguments(output_dir=str(tmp_path), loss_type="cross_entropy", class_weights="balanced",
                                 learning_rate=1e-3, report_to="none")
    changed = with_loss(args, LossSetting("", "focal", {"gamma": 1.0}), tmp_path / "focal")
    assert (changed.loss_type, changed.loss_kwargs, changed.class_weights) == ("focal", {"gamma": 1.0}, None)
    assert changed.output_dir == str(tmp_path / "focal") and changed.learning_rate == 1e-3
    assert (args.loss_type, args.class_weights) == ("cross_entropy", "balanced")  # the original is untouched
