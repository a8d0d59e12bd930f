"""Plots from a Trainer run: loss curves per component (``loss/<name>``) and evaluation metrics.

The Trainer writes every logged value into ``trainer_state.json`` (``log_history``); these functions read it back,
so they work on any run folder (an output_dir or a checkpoint) without a callback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_NOT_METRICS = {"epoch", "step", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def find_trainer_state(run_dir: str | Path) -> Path:
    """``RUN_DIR/trainer_state.json``, else the one of the newest ``checkpoint-*`` folder inside it."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.name == "trainer_state.json":
        return run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder '{run_dir}' does not exist.")
    state = run_dir / "trainer_state.json"
    if state.is_file():
        return state
    checkpoints = sorted(
        run_dir.glob("checkpoint-*/trainer_state.json"),
        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1,
    )
    if checkpoints:
        return checkpoints[-1]
    raise FileNotFoundError(
        f"no trainer_state.json in '{run_dir}' or its checkpoint-* folders; is it the output_dir of a Trainer run?"
    )


def read_log_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``log_history`` list of the run's trainer_state.json."""
    path = find_trainer_state(run_dir)
    try:
        history = json.loads(path.read_text()).get("log_history")
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(history, list):
        raise ValueError(f"{path} has no 'log_history' list.")
    return history


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for record in history:
        value = record.get(key)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and "step" in record
        ):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def curve_keys(history: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Which logged keys go in which panel: training loss and its components, eval loss, eval metrics."""
    keys: dict[str, list[str]] = {"train": [], "eval_loss": [], "metrics": []}
    seen: set[str] = set()
    for record in history:
        for key, value in record.items():
            if key in seen or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            seen.add(key)
            if key == "loss" or key.startswith("loss/") or key.startswith("loss_weight/"):
                keys["train"].append(key)
            elif key == "eval_loss" or key.startswith("eval_loss/"):
                keys["eval_loss"].append(key)
            elif key.startswith("eval_") and key not in _NOT_METRICS:
                keys["metrics"].append(key)
    return keys


def plot_run(run_dir: str | Path, output: str | Path | None = None, title: str | None = None) -> Path:
    """Loss curves (total and every ``loss/<name>`` component), eval loss and eval metrics of one run -> PNG.

    Returns the PNG path (default ``RUN_DIR/loss_curves.png``).
    """
    history = read_log_history(run_dir)
    keys = curve_keys(history)
    if not any(keys.values()):
        raise ValueError(f"the run in '{run_dir}' logged no losses or metrics yet (empty log_history).")
    plt = _pyplot()
    panels = [name for name in ("train", "eval_loss", "metrics") if keys[name]]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    titles = {"train": "training loss", "eval_loss": "evaluation loss", "metrics": "evaluation metrics"}
    for axis, panel in zip(axes[0], panels):
        for key in keys[panel]:
            steps, values = _series(history, key)
            axis.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=key)
        axis.set_title(titles[panel])
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(plt, figure, Path(output) if output else Path(run_dir) / "loss_curves.png")


def plot_comparison(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    output: str | Path,
    metrics: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """Several runs side by side (e.g. cross_entropy vs focal): training loss, eval loss and chosen eval metrics,
    one line per run. ``histories`` maps a run label to its ``log_history``."""
    plt = _pyplot()
    keys = ["loss", "eval_loss", *metrics]
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for label, history in histories.items():
            steps, values = _series(history, key)
            if steps:
                axis.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=label)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.get_lines():
            axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(plt, figure, Path(output))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'hf-losses[plot]'") from None
    matplotlib.use("Agg")  # files only: works without a display and under accelerate launch
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, figure: Any, output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
