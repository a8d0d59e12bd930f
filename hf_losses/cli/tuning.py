"""Tune a loss's parameters with optuna through ``Trainer.hyperparameter_search`` before a comparison.

:func:`default_search_space` knows one parameter per tunable loss (focal's gamma, fn_penalty's fn_cost, ...) and,
for a two-term expression such as ``0.5*cross_entropy+0.5*dice``, the weight of the second term.
:func:`tune_loss` runs the search and returns the best :class:`~hf_losses.cli.comparison.LossSetting`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_losses.cli.comparison import LossSetting, with_loss
from hf_losses.registry import component_names, is_expression, resolve_name

#: loss -> (its parameter tuned by default, low, high, log scale)
DEFAULT_SEARCH_RANGES: dict[str, tuple[str, float, float, bool]] = {
    "focal": ("gamma", 0.0, 5.0, False),
    "cross_entropy": ("label_smoothing", 0.0, 0.3, False),
    "poly1": ("epsilon", -1.0, 5.0, False),
    "class_balanced": ("beta", 0.9, 0.9999, False),
    "ldam": ("max_margin", 0.1, 1.0, False),
    "fn_penalty": ("fn_cost", 1.0, 20.0, True),
    "cost_sensitive": ("cost_weight", 0.0, 5.0, False),
}


def default_search_space(loss_type: str) -> Callable[..., dict[str, Any]]:
    """An optuna search space over the loss's own parameters, for ``Trainer.hyperparameter_search``.

    The returned ``hp_space(trial)`` gives LossTrainingArguments fields: ``loss_kwargs`` (e.g. focal's gamma;
    ``hp_space(trial, base)`` keeps the other entries of ``base``) or, for ``a*cross_entropy + b*dice``
    expressions, a new ``loss_type`` with the Dice weight tuned.
    """
    if is_expression(loss_type):
        return _second_term_weight_space(loss_type)
    name = resolve_name(loss_type)
    if name not in DEFAULT_SEARCH_RANGES:
        raise ValueError(
            f"no default search space for loss '{name}'; tunable by default: "
            f"{', '.join(DEFAULT_SEARCH_RANGES)}. Pass your own hp_space to "
            f"trainer.hyperparameter_search."
        )
    parameter, low, high, log = DEFAULT_SEARCH_RANGES[name]

    def space(trial: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        value = trial.suggest_float(parameter, low, high, log=log)
        return {"loss_kwargs": {**dict(base or {}), parameter: value}}

    return space


def tune_loss(
    make_trainer: Callable[[Any], Any],
    args: Any,
    setting: LossSetting,
    n_trials: int,
    objective_metric: str,
    direction: str = "maximize",
    seed: int = 0,
) -> tuple[LossSetting, list[dict]]:
    """``trainer.hyperparameter_search(backend="optuna")`` over the loss parameters of ``setting``.

    ``make_trainer(args)`` must pass ``model_init`` (a fresh model per trial). The objective is the eval metric
    ``objective_metric`` after the trial's last evaluation. Returns the best setting (the same on every process)
    and one ``{"trial", "params", "objective"}`` record per trial (on the main process).
    """
    import optuna

    base_space = default_search_space(setting.loss_type)
    composite = is_expression(setting.loss_type)
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

    tune_args = dataclasses.replace(
        with_loss(args, setting, Path(args.output_dir) / "tuning"), save_strategy="no", report_to=[]
    )
    best = make_trainer(tune_args).hyperparameter_search(
        hp_space=hp_space,
        compute_objective=objective,
        n_trials=n_trials,
        direction=direction,
        backend="optuna",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    chosen = hp_space(_FixedTrial(_broadcast(None if best is None else dict(best.hyperparameters))))
    tuned = LossSetting(
        "",
        chosen.get("loss_type", setting.loss_type),
        dict(chosen.get("loss_kwargs", setting.loss_kwargs)),
        setting.class_weights,
    )
    tuned.label = "tuned " + tuned.describe()
    return tuned, [trials[number] for number in sorted(trials)]


def tuning_table(trials: Sequence[Mapping[str, Any]], metric: str) -> str:
    """Markdown table of the optuna trials (parameters and objective), as returned by :func:`tune_loss`."""
    if not trials:
        return ""
    names = sorted({key for trial in trials for key in trial["params"]})
    lines = [
        "Tuning (optuna, trainer.hyperparameter_search):",
        "",
        "| trial | " + " | ".join(names) + f" | {metric} |",
        "|---" * (len(names) + 2) + "|",
    ]
    for trial in trials:
        values = [f"{trial['params'].get(name, float('nan')):.4g}" for name in names]
        objective = "n/a" if trial["objective"] is None else f"{trial['objective']:.4f}"
        lines.append(f"| {trial['trial']} | " + " | ".join(values) + f" | {objective} |")
    return "\n".join(lines)


def _second_term_weight_space(loss_type: str) -> Callable[[Any], dict[str, Any]]:
    """``(1-w)*first + w*second`` with ``w`` in [0.1, 0.9], for an expression of exactly two components."""
    names = component_names(loss_type)
    if len(names) != 2:
        raise ValueError(f"tuning a composite needs exactly two components, got {names} in {loss_type!r}.")
    first, second = names

    def composite_space(trial: Any) -> dict[str, Any]:
        weight = trial.suggest_float(f"{second}_weight", 0.1, 0.9)
        return {"loss_type": f"{1 - weight:.4g}*{first}+{weight:.4g}*{second}"}

    return composite_space


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
