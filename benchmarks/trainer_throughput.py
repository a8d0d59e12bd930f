"""Training steps per second: LossTrainer vs the stock transformers Trainer computing the same loss, same tiny model,
same data, same process, runs interleaved (the machine's load changes over time). Not a timed test.

Scenarios (target: LossTrainer >= 0.98x the stock Trainer in each):
  plain        stock Trainer (the model's own cross-entropy) vs LossTrainer(loss_type="cross_entropy")
  ga4          the same with gradient accumulation over 4 micro-batches
  composite    stock Trainer(compute_loss_func=hf_losses.compute_loss_func(EXPRESSION)) vs
               LossTrainer(loss_type=EXPRESSION), logging every step (LossTrainer logs each component)

Each repeat runs every (scenario, trainer) once, the two trainers of a scenario back to back in alternating order;
the ratio is the median over repeats of the paired ratios (ours / stock of the same repeat), in wall time and in
this process's CPU time (what a loaded machine distorts least). On CUDA (``--device cuda``) the model and batches
are on the GPU.

    python benchmarks/trainer_throughput.py [--repeats 7] [--steps 200] [--scenarios plain ga4 composite]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_losses import LossTrainer, LossTrainingArguments, compute_loss_func  # noqa: E402

EXPRESSION = "0.5*cross_entropy+0.5*focal"
SCENARIOS = {
    # name: (gradient accumulation, log every step, stock loss (None: the model's own), LossTrainer loss_type)
    "plain": (1, False, None, "cross_entropy"),
    "ga4": (4, False, None, "cross_entropy"),
    "composite": (1, True, EXPRESSION, EXPRESSION),
}


class StepTimer(TrainerCallback):
    """Wall time and this process's CPU time of the optimizer steps after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and args.device.type == "cuda":
            torch.cuda.synchronize()
        now = (time.perf_counter(), time.process_time())
        if state.global_step == self.warmup:
            self.start = now
        elif state.global_step > self.warmup:
            self.end, self.steps = now, state.global_step - self.warmup


def make_data(num_samples: int, length: int, vocab: int, classes: int) -> datasets.Dataset:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (num_samples, length), generator=generator)
    labels = torch.randint(0, classes, (num_samples,), generator=generator)
    labels[::7] = -100
    return datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": labels.tolist()}
    )


def steps_per_second(
    scenario: str, ours: bool, data: datasets.Dataset, options: argparse.Namespace
) -> tuple[float, float, list[str]]:
    """(steps per wall second, steps per CPU second, logged keys) of one training run."""
    accumulation, log_every_step, stock_loss, loss_type = SCENARIOS[scenario]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=4,
    )
    model = BertForSequenceClassification(config)
    timer = StepTimer(options.warmup)
    logged: list[dict[str, Any]] = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(dict(logs or {}))

    with tempfile.TemporaryDirectory() as directory:
        common: dict[str, Any] = dict(
            output_dir=directory,
            per_device_train_batch_size=options.batch,
            gradient_accumulation_steps=accumulation,
            max_steps=options.steps + options.warmup,
            report_to=[],
            save_strategy="no",
            logging_strategy="steps" if log_every_step else "no",
            logging_steps=1,
            use_cpu=options.device == "cpu",
            disable_tqdm=True,
            seed=0,
            dataloader_num_workers=0,
        )
        callbacks = [timer, Logs()]
        if ours:
            trainer = LossTrainer(
                model=model,
                args=LossTrainingArguments(loss_type=loss_type, **common),
                train_dataset=data,
                callbacks=callbacks,
            )
        else:
            loss_function = None if stock_loss is None else compute_loss_func(stock_loss)
            trainer = Trainer(
                model=model,
                args=TrainingArguments(**common),
                train_dataset=data,
                callbacks=callbacks,
                compute_loss_func=loss_function,
            )
        with contextlib.redirect_stdout(io.StringIO()):  # the printed logs cost the same for both; not shown
            trainer.train()
    keys = sorted({key for logs in logged for key in logs if key.startswith("loss")})
    return (
        timer.steps / (timer.end[0] - timer.start[0]),
        timer.steps / (timer.end[1] - timer.start[1]),
        keys,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    data = make_data(4096, 32, 512, 4)
    runs: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    logged_keys: dict[str, list[str]] = {}
    for repeat in range(options.repeats):  # interleaved, so load changes hit both trainers alike
        for scenario in options.scenarios:
            for ours in (False, True) if repeat % 2 == 0 else (True, False):
                wall, cpu, keys = steps_per_second(scenario, ours, data, options)
                runs.setdefault((scenario, ours), []).append((wall, cpu))
                if ours:
                    logged_keys[scenario] = keys
    device = torch.cuda.get_device_name() if options.device == "cuda" else f"cpu, {options.threads} thread(s)"
    print(
        f"BERT 2x64, batch {options.batch}, {options.steps} timed steps after {options.warmup}, "
        f"{options.repeats} interleaved repeats, {device}, torch {torch.__version__}"
    )
    print(
        f"| {'scenario':<10} | {'trainer':<48} | {'steps/s wall':>12} | {'ratio':>6} | {'steps/s CPU':>11} | "
        f"{'ratio':>6} |"
    )
    print(f"|{'-' * 12}|{'-' * 50}|{'-' * 14}|{'-' * 8}|{'-' * 13}|{'-' * 8}|")
    for scenario in options.scenarios:
        accumulation, _, stock_loss, loss_type = SCENARIOS[scenario]
        stock, ours = runs[(scenario, False)], runs[(scenario, True)]
        stock_name = "stock Trainer, " + ("the model's loss" if stock_loss is None else "compute_loss_func")
        for name, values, paired in (
            (stock_name, stock, None),
            (f"LossTrainer {loss_type}", ours, [(o[0] / s[0], o[1] / s[1]) for o, s in zip(ours, stock)]),
        ):
            wall = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            ratios = (1.0, 1.0) if paired is None else tuple(statistics.median(r[i] for r in paired) for i in (0, 1))
            print(
                f"| {scenario:<10} | {name + f' (GA {accumulation})':<48} | {wall:12.2f} | {ratios[0]:6.3f} | "
                f"{cpu:11.2f} | {ratios[1]:6.3f} |"
            )
    for scenario, keys in logged_keys.items():
        if SCENARIOS[scenario][1]:
            print(f"{scenario}: LossTrainer logged {keys}")
    print("target: ratio >= 0.98 (wall and CPU time)")


if __name__ == "__main__":
    main()
