"""What the two distillation examples share: train one model and save it, count parameters, time a model on the
held-out set, write the results table.

The examples train several models one after the other (a teacher, then students with and without it), each in its
own folder under ``output_dir``; every process trains, the main process alone measures and reports (the others
wait at a barrier), so the table is the same under ``python`` and ``accelerate launch``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_losses.cli.comparison import LossSetting, RunResult, write_report

#: printed after every training run; the same line as hf_losses.cli.comparison prints (the launch tests read it)
TRAINED_LINE = "=== trained with {label}: {seconds:.1f} s, world size {world_size}, model run as {wrapper}"


def count_parameters(model: nn.Module) -> int:
    """Every parameter of the model (embeddings and heads included)."""
    return sum(parameter.numel() for parameter in model.parameters())


def run_arguments(args: Any, output_dir: str | Path, **changes: Any) -> Any:
    """A copy of the training arguments writing into ``output_dir`` with ``changes`` (loss_type, loss_kwargs,
    class_weights, teacher_model...): validated again, as ``LossTrainingArguments`` validates on construction."""
    return dataclasses.replace(args, output_dir=str(output_dir), **changes)


def train_and_save(
    make_trainer: Callable[[Any], Any],
    run_args: Any,
    label: str,
    save_model: bool = True,
    model_card: Mapping[str, Any] | None = None,
) -> tuple[Any, float]:
    """Train ``make_trainer(run_args)``; save the model (with ``loss_config.json`` and a model card) and the log
    history in ``run_args.output_dir``; return the trainer and the training seconds. Every process returns once
    the saved files are complete (a later run may load this model as its teacher)."""
    trainer = make_trainer(run_args)
    if trainer.is_world_process_zero():
        print(f"\n=== training {label} -> {run_args.output_dir}", flush=True)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if trainer.is_world_process_zero():
        wrapper = type(trainer.model_wrapped).__name__
        print(
            TRAINED_LINE.format(label=label, seconds=seconds, world_size=run_args.world_size, wrapper=wrapper),
            flush=True,
        )
    if save_model:
        trainer.save_model(run_args.output_dir)
        trainer.create_model_card(**{"model_name": Path(run_args.output_dir).name, **dict(model_card or {})})
    if trainer.is_world_process_zero():
        Path(run_args.output_dir).mkdir(parents=True, exist_ok=True)
        trainer.state.save_to_json(str(Path(run_args.output_dir) / "trainer_state.json"))
    trainer.accelerator.wait_for_everyone()
    return trainer, seconds


def timed_forward(
    model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], repeats: int = 3
) -> tuple[list[Any], float]:
    """The model's outputs on ``batches`` (eval mode, no gradient) and the seconds of the fastest of ``repeats``
    passes over all of them, after one warm-up batch. Every model is timed this way, in float32: on a CPU with one
    intra-op thread, in that thread's CPU time (what the pass takes on one idle core, whatever else shares the
    machine); on a GPU in wall time between synchronisations."""
    device = next(model.parameters()).device
    batches = [{key: value.to(device) for key, value in batch.items()} for batch in batches]
    on_cpu = device.type == "cpu"
    clock = time.thread_time if on_cpu else time.perf_counter
    threads = torch.get_num_threads()
    model.eval()
    fastest, outputs = float("inf"), []
    try:
        if on_cpu:
            torch.set_num_threads(1)  # the work runs in this thread, so its CPU time is the pass's
        with torch.inference_mode():
            model(**batches[0])
            for _ in range(max(1, repeats)):
                _synchronize(device)
                start = clock()
                outputs = [model(**batch) for batch in batches]
                _synchronize(device)
                fastest = min(fastest, clock() - start)
    finally:
        torch.set_num_threads(threads)
    return outputs, fastest


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batched(rows: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def report(
    output_dir: str | Path,
    title: str,
    intro: str,
    rows: Sequence[tuple[str, dict[str, float], float, Sequence[Mapping[str, Any]], str]],
    columns: Sequence[tuple[str, str]],
    plot_metrics: Sequence[str] = (),
) -> str:
    """Print the table and write ``results.md`` and ``loss_curves.png`` (hf_losses.cli.comparison's report) from
    rows of (label, metrics, training seconds, log history, run folder); return the Markdown table."""
    results = [
        RunResult(LossSetting(label, label), dict(metrics), list(history), seconds, run_dir)
        for label, metrics, seconds, history, run_dir in rows
    ]
    table, results_path, plot_path = write_report(output_dir, title, intro, results, columns, plot_metrics)
    print(f"\n{intro}\n\n{table}\n\nwrote {results_path}" + (f" and {plot_path}" if plot_path else ""), flush=True)
    return table
