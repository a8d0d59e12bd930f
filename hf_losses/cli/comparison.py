"""Train the same model with several losses and report them side by side; tune a loss's parameters with optuna.

Shared by the examples and ``hf-losses demo``: each example supplies ``make_trainer(args) -> LossTrainer`` (a fresh
model per call, same seed) and the loss settings to compare; this module runs them one after the other, collects
the evaluation metrics and the log history, and writes ``results.md`` and ``loss_curves.png``.
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

#: what a comparison entry may override in the training arguments
LOSS_FIELDS = ("loss_type", "loss_kwargs", "class_weights")


@dataclass
class LossSetting:
    """One loss to train with: a label for the table and the LossTrainingArguments fields it sets."""

    label: str
    loss_type: str
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    class_weights: Any = None

    @classmethod
    def from_args(cls, args: Any, label: str | None = None) -> "LossSetting":
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
    changes: dict[str, Any] = {"loss_type": setting.loss_type, "loss_kwargs": dict(setting.loss_kwargs),
                               "class_weights": setting.class_weights}
    if output_dir is not None:
        changes["output_dir"] = str(output_dir)
    return dataclasses.replace(args, **changes)


def compare_losses(make_trainer: Callable[[Any], Any], args: Any, settings: Sequence[LossSetting],
                   save_models: bool = True, model_card: Mapping[str, Any] | None = None) -> list[RunResult]:
    """Train and evaluate once per loss setting, each in ``<output_dir>/<setting folder>``, same seed and data.

    With ``save_models`` each folder gets the model, ``loss_config.json`` and a model card (``README.md``, with
    ``model_card`` passed to ``Trainer.create_model_card``: ``finetuned_from``, ``dataset``, ``tasks``...).
    """
    results = []
    for setting in settings:
        run_dir = Path(args.output_dir) / setting.folder_name()
        run_args = with_loss(args, setting, run_dir)
        trainer = make_trainer(run_args)
        if trainer.is_world_process_zero():
            print(f"\n=== training with {setting.label} -> {run_dir}")
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        if trainer.is_world_process_zero():
            print(f"=== trained with {setting.label}: {seconds:.1f} s, world size {run_args.world_size}, model run as "
                  f"{type(trainer.model_wrapped).__name__}")
        metrics = last_evaluation(trainer.state) or trainer.evaluate()
        if save_models:
            trainer.save_model(str(run_dir))  # weights + loss_config.json
            # README.md with a "Training loss" section
            trainer.create_model_card(**{"model_name": run_dir.name, **dict(model_card or {})})
        if trainer.is_world_process_zero():  # the log history, for `hf-losses plot <run_dir>`
            run_dir.mkdir(parents=True, exist_ok=True)
            trainer.state.save_to_json(str(run_dir / "trainer_state.json"))
        results.append(RunResult(setting, {k: float(v) for k, v in metrics.items() if _is_number(v)},
                                 list(trainer.state.log_history), seconds, str(run_dir)))
    return results


def last_evaluation(state: Any) -> dict[str, float] | None:
    """The eval metrics logged at the final step, if the run evaluated there (saves evaluating twice)."""
    for record in reversed(state.log_history):
        if "eval_loss" in record:
            return dict(record) if record.get("step") == state.global_step else None
    return None


# ------------------------------------------------------------------------------------------ tables
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


def write_report(output_dir: str | Path, title: str, intro: str, results: Sequence[RunResult],
                 columns: Sequence[tuple[str, str]], plot_metrics: Sequence[str] = (),
                 extra: str = "") -> tuple[str, Path, Path | None]:
    """Write ``results.md`` (title, intro, table, extra) and ``loss_curves.png``; return (markdown, paths)."""
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
        plot_path = plot_comparison({r.setting.label: r.log_history for r in results},
                                    output_dir / "loss_curves.png", metrics=plot_metrics, title=title)
    except ImportError as error:  # matplotlib is optional
        print(f"(no plot: {error})")
    return table, results_path, plot_path


def tuning_table(trials: Sequence[Mapping[str, Any]], metric: str) -> str:
    """Markdown table of the optuna trials (parameters and objective), as returned by :func:`tune_loss`."""
    if not trials:
        return ""
    names = sorted({key for trial in trials for key in trial["params"]})
    lines = ["Tuning (optuna, trainer.hyperparameter_search):", "",
             "| trial | " + " | ".join(names) + f" | {metric} |", "|---" * (len(names) + 2) + "|"]
    for trial in trials:
        values = [f"{trial['params'].get(name, float('nan')):.4g}" for name in names]
        objective = "n/a" if trial["objective"] is None else f"{trial['objective']:.4f}"
        lines.append(f"| {trial['trial']} | " + " | ".join(values) + f" | {objective} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ tuning
def default_search_space(loss_type: str) -> Callable[[Any], dict[str, Any]]:
    """An optuna search space over the loss's own parameters, for ``Trainer.hyperparameter_search``.

    The returned ``hp_space(trial)`` gives LossTrainingArguments fields: ``loss_kwargs`` (e.g. focal's gamma)
    or, for ``a*cross_entropy + b*dice`` expressions, a new ``loss_type`` with the Dice weight tuned.
    """
    from hf_losses.registry import parse_composite_expression, resolve_name

    if "+" in loss_type or "*" in loss_type:
        names = list(parse_composite_expression(loss_type))
        if len(names) != 2:
            raise ValueError(f"tuning a composite needs exactly two components, got {names} in {loss_type!r}.")
        first, second = names

        def composite_space(trial: Any) -> dict[str, Any]:
            weight = trial.suggest_float(f"{second}_weight", 0.1, 0.9)
            return {"loss_type": f"{1 - weight:.4g}*{first}+{weight:.4g}*{second}"}

        return composite_space

    name = resolve_name(loss_type)
    ranges: dict[str, tuple[str, float, float, bool]] = {
        "focal": ("gamma", 0.0, 5.0, False),
        "cross_entropy": ("label_smoothing", 0.0, 0.3, False),
        "poly1": ("epsilon", -1.0, 5.0, False),
        "class_balanced": ("beta", 0.9, 0.9999, False),
        "ldam": ("max_margin", 0.1, 1.0, False),
        "fn_penalty": ("fn_cost", 1.0, 20.0, True),
        "cost_sensitive": ("cost_weight", 0.0, 5.0, False),
    }
    if name not in ranges:
        raise ValueError(f"no default search space for loss '{name}'; tunable by default: {', '.join(ranges)}. "
                         f"Pass your own hp_space to trainer.hyperparameter_search.")
    parameter, low, high, log = ranges[name]

    def space(trial: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        value = trial.suggest_float(parameter, low, high, log=log)
        return {"loss_kwargs": {**dict(base or {}), parameter: value}}

    return space


def tune_loss(make_trainer: Callable[[Any], Any], args: Any, setting: LossSetting, n_trials: int,
              objective_metric: str, direction: str = "maximize", seed: int = 0) -> tuple[LossSetting, list[dict]]:
    """``trainer.hyperparameter_search(backend="optuna")`` over the loss parameters of ``setting``.

    ``make_trainer(args)`` must pass ``model_init`` (a fresh model per trial). The objective is the eval metric
    ``objective_metric`` after the trial's last evaluation. Returns the best setting (the same on every process)
    and one ``{"trial", "params", "objective"}`` record per trial (on the main process).
    """
    import optuna

    base_space = default_search_space(setting.loss_type)
    composite = "+" in setting.loss_type or "*" in setting.loss_type
    trials: dict[int, dict[str, Any]] = {}

    def hp_space(trial: Any) -> dict[str, Any]:
        params = base_space(trial) if composite else base_space(trial, setting.loss_kwargs)
        number = getattr(trial, "number", None)
        if isinstance(trial, optuna.Trial) and number not in trials:
            trials[number] = {"trial": number, "params": dict(trial.params), "objective": None}
        return params

    def objective(metrics: Mapping[str, float]) -> float:
        key = objective_metric if objective_metric in metrics else f"eval_{objective_metric}"
        if key not in metrics:
            raise KeyError(f"tuning objective '{objective_metric}' is not among the eval metrics {sorted(metrics)}.")
        if trials:
            trials[max(trials)]["objective"] = float(metrics[key])
        return float(metrics[key])

    tune_args = dataclasses.replace(with_loss(args, setting, Path(args.output_dir) / "tuning"),
                                    save_strategy="no", report_to=[])
    trainer = make_trainer(tune_args)
    best = trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective, n_trials=n_trials,
                                         direction=direction, backend="optuna",
                                         sampler=optuna.samplers.TPESampler(seed=seed))
    best_params = _broadcast(None if best is None else dict(best.hyperparameters))
    chosen = hp_space(_FixedTrial(best_params))
    tuned = LossSetting("", chosen.get("loss_type", setting.loss_type),
                        dict(chosen.get("loss_kwargs", setting.loss_kwargs)), setting.class_weights)
    tuned.label = "tuned " + tuned.describe()
    return tuned, [trials[number] for number in sorted(trials)]


def _broadcast(value: Any) -> Any:
    """Rank 0's value on every process (optuna runs the study on rank 0 only)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
    return value


class _FixedTrial:
    """Replays a finished trial's parameters through an hp_space function."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        return float(self.params[name])


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
