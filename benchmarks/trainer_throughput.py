"""Training steps per second: LossTrainer(loss_type="cross_entropy") vs the stock transformers Trainer, same tiny
model, same data, same process, runs interleaved (the machine's load changes over time). Prints a table and the
ratio (target >= 0.98). Not a timed test.

    python benchmarks/trainer_throughput.py [--repeats 5] [--steps 60] [--accumulation 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback  # noqa: E402

from hf_losses import LossTrainer, LossTrainingArguments  # noqa: E402


class StepTimer(TrainerCallback):
    """Wall time and this process's CPU time of the optimizer steps after ``warmup`` steps (CPU time is what a
    shared, loaded machine distorts least)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_step_end(self, args, state, control, **kwargs):
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
    trainer_class, loss_type: str | None, data, steps: int, warmup: int, batch: int, accumulation: int
) -> tuple[float, float]:
    """(steps per wall second, steps per CPU second)."""
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
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as directory:
        common = dict(
            output_dir=directory,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=steps + warmup,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
            dataloader_num_workers=0,
        )
        if loss_type is None:
            from transformers import TrainingArguments

            args = TrainingArguments(**common)
        else:
            args = LossTrainingArguments(loss_type=loss_type, **common)
        trainer = trainer_class(model=model, args=args, train_dataset=data, callbacks=[timer])
        trainer.train()
    return (timer.steps / (timer.end[0] - timer.start[0]), timer.steps / (timer.end[1] - timer.start[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    data = make_data(4096, 32, 512, 4)
    runs = {"stock Trainer (model's loss)": [], "LossTrainer cross_entropy": [], "LossTrainer auto": []}
    for _ in range(options.repeats):  # interleaved, so load changes hit every trainer alike
        runs["stock Trainer (model's loss)"].append(
            steps_per_second(Trainer, None, data, options.steps, options.warmup, options.batch, options.accumulation)
        )
        runs["LossTrainer cross_entropy"].append(
            steps_per_second(
                LossTrainer, "cross_entropy", data, options.steps, options.warmup, options.batch, options.accumulation
            )
        )
        runs["LossTrainer auto"].append(
            steps_per_second(
                LossTrainer, "auto", data, options.steps, options.warmup, options.batch, options.accumulation
            )
        )
    stock = "stock Trainer (model's loss)"
    print(
        f"BERT 2x64, batch {options.batch} x GA {options.accumulation}, {options.steps} timed steps, "
        f"{options.repeats} interleaved repeats, {options.threads} thread(s), torch {torch.__version__}"
    )
    print(f"| {'trainer':<30} | {'steps/s (wall)':>14} | {'ratio':>6} | {'steps/s (CPU time)':>18} | {'ratio':>6} |")
    print(f"|{'-' * 32}|{'-' * 16}|{'-' * 8}|{'-' * 20}|{'-' * 8}|")
    medians = {name: [statistics.median(v[i] for v in values) for i in (0, 1)] for name, values in runs.items()}
    for name, (wall, cpu) in medians.items():
        print(
            f"| {name:<30} | {wall:14.2f} | {wall / medians[stock][0]:6.3f} | {cpu:18.2f} | "
            f"{cpu / medians[stock][1]:6.3f} |"
        )
    ours = medians["LossTrainer cross_entropy"]
    print(
        f"ratio LossTrainer(cross_entropy) / stock Trainer: wall {ours[0] / medians[stock][0]:.3f}, "
        f"CPU time {ours[1] / medians[stock][1]:.3f} (target >= 0.98)"
    )


if __name__ == "__main__":
    main()
