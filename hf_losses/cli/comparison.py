"""Train the same model with several losses and report them side by side.

Shared by the examples and ``hf-losses demo``: each supplies ``make_trainer(args) -> LossTrainer`` (a fresh model
per call, same seed) and calls :func:`run_comparison`, which trains a baseline loss and the loss of the training
arguments (optionally tuned first, :mod:`hf_losses.cli.tuning`) one after the other, collects the evaluation
metrics and the log history, prints the table and writes ``results.md`` and ``loss_curves.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LossSetting:
    """One loss to train with: a label for the table and the LossTrainingArguments fields it sets."""

    label: str
    loss_type: str
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    class_weights: Any = None

    @classmethod
    def from_args(cls, args: Any, label: str | None = None) -> LossSetting:
        kwargs = args.loss_kwargs
        if isinstance(kwargs, str):
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        setting = cls(label or "", args.loss_type, dict(kwargs or {}), args.class_weights)
        setting.label = label or setting.describe()
        return setting

    def describe(self) -> str:
        """``focal(gamma=2.0)`` / ``cross_entropy + balanced weights``: a readable name for tables and folders."""
        text = self.loss_type.replace(" ", "")
        if self.loss_kwargs:
            text += "(" + ", ".join(f"{k}={_short(v)}" for k, v in self.loss_kwargs.items()) + ")"
        if self.class_weights is not None:
            text += f" + {_short(self.class_weights)} class weights"
        return text

    def folder_name(self) -> str:
        keep = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in self.describe())
        return "_".join(part for part in keep.split("_") if part)[:80] or "run"


@dataclass
class RunResult:
    """What one training run gave: final eval metrics, the Trainer's log history and wall time."""

    setting: LossSetting
    metrics: dict[str, float]
    log_history: list[dict[str, Any]]
    train_seconds: float
    output_dir: str


def with_loss(args: Any, setting: LossSetting, output_dir: str | Path | None = None) -> Any:
    """A copy of the training arguments that trains with ``setting`` (and writes into ``output_dir``)."""
    changes: dict[str, Any] = {
        "loss_type": setting.loss_type,
        "loss_kwargs": dict(setting.loss_kwargs),
        "class_weights": setting.class_weights,
    }
    if output_dir is not None:
        changes["output_dir"] = str(output_dir)
    return dataclasses.replace(args, **changes)


# ------------------------------------------------------------------------------------------ the whole comparison
def run_comparison(
    make_trainer: Callable[[Any], Any],
    training_args: Any,
    *,
    baseline_loss_type: str,
    title: str,
    intro: str | Callable[[float], str],
    columns: Sequence[tuple[str, str]],
    plot_metrics: Sequence[str] = (),
    tune_trials: int = 0,
    objective_metric: str = "",
    direction: str = "maximize",
    save_models: bool = True,
    model_card: Mapping[str, Any] | None = None,
    print_tuning_table: bool = False,
) -> str:
    """Train ``baseline_loss_type`` and the loss of ``training_args``, print the table, write the report.

    With ``tune_trials`` > 0 the loss of ``training_args`` is first tuned with optuna (objective: the eval metric
    ``objective_metric``, ``direction`` "maximize" or "minimize") and the best setting is compared; the trials'
    table goes into ``results.md`` (and is printed with ``print_tuning_table``). When both losses are the same
    setting only the baseline is trained. ``intro`` is the paragraph above the table, or a function of the
    comparison's training seconds giving it. ``columns``, ``plot_metrics``: see :func:`write_report`;
    ``save_models``, ``model_card``: see :func:`compare_losses`.

    Returns the markdown table on the main process, ``""`` on the others.
    """
    baseline = LossSetting(baseline_loss_type, baseline_loss_type)
    candidate = LossSetting.from_args(training_args)
    tuning_text = ""
    if tune_trials > 0:
        from hf_losses.cli.tuning import tune_loss, tuning_table  # optuna is optional

        candidate, trials = tune_loss(
            make_trainer, training_args, candidate, tune_trials, objective_metric=objective_metric, direction=direction
        )
        tuning_text = tuning_table(trials, objective_metric)
        if print_tuning_table and tuning_text and training_args.process_index == 0:
            print("\n" + tuning_text)
    settings = [baseline] if candidate.describe() == baseline.describe() else [baseline, candidate]

    start = time.perf_counter()
    results = compare_losses(make_trainer, training_args, settings, save_models=save_models, model_card=model_card)
    if training_args.process_index != 0:
        return ""
    intro_text = intro(time.perf_counter() - start) if callable(intro) else intro
    table, results_path, plot_path = write_report(
        training_args.output_dir, title, intro_text, results, columns, plot_metrics=plot_metrics, extra=tuning_text
    )
    print(f"\n{intro_text}\n\n{table}\n\nwrote {results_path}" + (f" and {plot_path}" if plot_path else ""))
    return table


# ------------------------------------------------------------------------------------------ training
def compare_losses(
    make_trainer: Callable[[Any], Any],
    args: Any,
    settings: Sequence[LossSetting],
    save_models: bool = True,
    model_card: Mapping[str, Any] | None = None,
) -> list[RunResult]:
    """Train and evaluate once per loss setting, each in ``<output_dir>/<setting folder>``, same seed and data.

    With ``save_models`` each folder gets the model, ``loss_config.json`` and a model card (``README.md``, with
    ``model_card`` passed to ``Trainer.create_model_card``: ``finetuned_from``, ``dataset``, ``tasks``...).
    """
    return [train_with_loss(make_trainer, args, setting, save_models, model_card) for setting in settings]


def train_with_loss(
    make_trainer: Callable[[Any], Any],
    args: Any,
    setting: LossSetting,
    save_models: bool = True,
    model_card: Mapping[str, Any] | None = None,
) -> RunResult:
    """Train and evaluate with one loss setting in ``<output_dir>/<setting folder>``; see :func:`compare_losses`."""
    run_dir = Path(args.output_dir) / setting.folder_name()
    run_args = with_loss(args, setting, run_dir)
    trainer = make_trainer(run_args)
    if trainer.is_world_process_zero():
        print(f"\n=== training with {setting.label} -> {run_dir}")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if trainer.is_world_process_zero():
        print(
            f"=== trained with {setting.label}: {seconds:.1f} s, world size {run_args.world_size}, model run as "
            f"{type(trainer.model_wrapped).__name__}"
        )
    metrics = last_evaluation(trainer.state) or trainer.evaluate()
    if save_models:
        trainer.save_model(str(run_dir))  # weights + loss_config.json
        # README.md with a "Training loss" section
        trainer.create_model_card(**{"model_name": run_dir.name, **dict(model_card or {})})
    if trainer.is_world_process_zero():  # the log history, for `hf-losses plot <run_dir>`
        run_dir.mkdir(parents=True, exist_ok=True)
        trainer.state.save_to_json(str(run_dir / "trainer_state.json"))
    return RunResult(
        setting,
        {k: float(v) for k, v in metrics.items() if _is_number(v)},
        list(trainer.state.log_history),
        seconds,
        str(run_dir),
    )


def last_evaluation(state: Any) -> dict[str, float] | None:
    """The eval metrics logged at the final step, if the run evaluated there (saves evaluating twice)."""
    for record in reversed(state.log_history):
        if "eval_loss" in record:
            return dict(record) if record.get("step") == state.global_step else None
    return None


# ------------------------------------------------------------------------------------------ report
def markdown_table(results: Sequence[RunResult], columns: Sequence[tuple[str, str]]) -> str:
    """One row per run: the loss, then ``columns`` = [(metric key, header)], then training time."""
    header = ["loss", *(title for _, title in columns), "train time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for result in results:
        cells = [result.setting.label]
        for key, _ in columns:
            value = result.metrics.get(key)
            cells.append("n/a" if value is None else f"{value:.4f}")
        cells.append(f"{result.train_seconds:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    output_dir: str | Path,
    title: str,
    intro: str,
    results: Sequence[RunResult],
    columns: Sequence[tuple[str, str]],
    plot_metrics: Sequence[str] = (),
    extra: str = "",
) -> tuple[str, Path, Path | None]:
    """Write ``results.md`` (title, intro, table, extra) and ``loss_curves.png`` (training loss, eval loss and
    ``plot_metrics`` per run); return (markdown table, results path, plot path or None without matplotlib)."""
    from hf_losses.cli.plotting import plot_comparison

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, columns)
    text = f"# {title}\n\n{intro.strip()}\n\n{table}\n"
    if extra:
        text += f"\n{extra.strip()}\n"
    results_path = output_dir / "results.md"
    results_path.write_text(text)
    plot_path = None
    try:
        plot_path = plot_comparison(
            {r.setting.label: r.log_history for r in results},
            output_dir / "loss_curves.png",
            metrics=plot_metrics,
            title=title,
        )
    except ImportError as error:  # matplotlib is optional
        print(f"(no plot: {error})")
    return table, results_path, plot_path


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
