"""Weights from the data: down-weighting noisy labels with a ``sample_weight`` column.

scikit-learn's handwritten digits (1797 8x8 images, 10 classes), 40 % of the training labels replaced by a random
other class (a fixed seed; the held-out labels stay clean). Each example gets a weight from the noisy data alone: the
probability that a 5-fold cross-validated logistic regression gives its (possibly wrong) label, so examples whose label
disagrees with what the rest of the data says weigh little. The same MLP is trained four times with LossTrainer and
scored on the clean held-out digits:

* clean labels, no weights (the ceiling);
* noisy labels, no weights (what label noise costs);
* noisy labels, ``sample_weight`` = the cross-validated confidence, ``normalize="weight"`` (the weighted mean);
* noisy labels, oracle weights (1 for correct labels, 0 for flipped ones: the best any weighting can do).

    python examples/noisy_labels/train.py
    accelerate launch examples/noisy_labels/train.py          # 2 CPU processes with configs/cpu_2proc.yaml
    python examples/noisy_labels/train.py --max_train_samples 64 --max_steps 2   # smoke test
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import HfArgumentParser, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medical_diagnosis.train import TabularMLPConfig, TabularMLPForSequenceClassification  # noqa: E402


@dataclass
class NoisyLabelArguments:
    """The noise, the confidence estimate and the model (training flags come from LossTrainingArguments)."""

    noise_rate: float = field(default=0.4, metadata={"help": "Share of training labels replaced by another class."})
    cv_folds: int = field(default=5, metadata={"help": "Folds of the cross-validated confidence estimate."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the MLP's hidden layers."})
    test_fraction: float = field(default=0.3, metadata={"help": "Share of digits held out (clean labels)."})
    data_seed_value: int = field(default=0, metadata={"help": "Seed of the split and of the label noise."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cut the training set (smoke tests)."})


DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/noisy_labels",
    "loss_type": "cross_entropy",
    "num_train_epochs": 30.0,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 512,
    "learning_rate": 2e-3,
    "weight_decay": 0.0,
    "logging_steps": 20,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 42,
    "ddp_find_unused_parameters": False,
}


def load_digits_with_noise(
    noise_rate: float, test_fraction: float, seed: int, max_train_samples: int | None = None
) -> dict[str, np.ndarray]:
    """Standardised features, clean and noisy training labels (each flipped label moved to a random other class)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 <= noise_rate < 1.0:
        raise ValueError(f"noise_rate must be in [0, 1), got {noise_rate}.")
    data = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        data.data, data.target, test_size=test_fraction, stratify=data.target, random_state=seed
    )
    if max_train_samples is not None:
        train_x, train_y = train_x[:max_train_samples], train_y[:max_train_samples]
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-8
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(train_y)) < noise_rate
    noisy_y = train_y.copy()
    noisy_y[flipped] = (train_y[flipped] + rng.integers(1, 10, flipped.sum())) % 10  # never the true class
    return {
        "train_x": train_x.astype(np.float32),
        "clean_y": train_y.astype(np.int64),
        "noisy_y": noisy_y.astype(np.int64),
        "flipped": flipped,
        "test_x": test_x.astype(np.float32),
        "test_y": test_y.astype(np.int64),
    }


def confidence_weights(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """``p(given label)`` from a logistic regression that never saw the example (cross-validated): low for labels
    the rest of the data contradicts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = max(2, min(folds, int(np.bincount(labels).min())))
    probabilities = cross_val_predict(
        LogisticRegression(max_iter=2000, C=0.5),
        features,
        labels,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        method="predict_proba",
    )
    classes = np.unique(labels)
    column = {label: index for index, label in enumerate(classes)}
    return probabilities[np.arange(len(labels)), [column[label] for label in labels]].astype(np.float32)


def macro_f1(predictions: np.ndarray, references: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, average="macro"))


def main(argv: list[str] | None = None) -> str:
    from datasets import Dataset

    from hf_losses.trainers import LossTrainer, LossTrainingArguments

    parser = HfArgumentParser((LossTrainingArguments, NoisyLabelArguments))
    parser.set_defaults(**DEFAULTS)
    training_args, args = parser.parse_args_into_dataclasses(args=argv)
    data = load_digits_with_noise(args.noise_rate, args.test_fraction, args.data_seed_value, args.max_train_samples)
    estimated = confidence_weights(data["train_x"], data["noisy_y"], args.cv_folds, args.data_seed_value)
    oracle = (~data["flipped"]).astype(np.float32)
    test_dataset = Dataset.from_dict({"features": data["test_x"], "labels": data["test_y"]})
    runs = [
        ("clean labels", data["clean_y"], None),
        ("noisy labels", data["noisy_y"], None),
        ("noisy + sample_weight (cross-validated confidence)", data["noisy_y"], estimated),
        ("noisy + oracle weights (0 for flipped labels)", data["noisy_y"], oracle),
    ]
    rows = []
    base_dir = training_args.output_dir
    for name, labels, weights in runs:
        columns = {"features": data["train_x"], "labels": labels}
        run_args = training_args
        if weights is not None:
            columns["sample_weight"] = weights
            run_args.loss_kwargs = {**(training_args.loss_kwargs or {}), "normalize": "weight"}
        else:
            run_args.loss_kwargs = {k: v for k, v in (training_args.loss_kwargs or {}).items() if k != "normalize"}
        run_args.output_dir = os.path.join(base_dir, name.split(" (")[0].replace(" ", "_").replace("+", "plus"))
        set_seed(training_args.seed)
        config = TabularMLPConfig(
            num_features=data["train_x"].shape[1], hidden_size=args.hidden_size, num_hidden_layers=2, num_labels=10
        )
        trainer = LossTrainer(
            model=TabularMLPForSequenceClassification(config),
            args=run_args,
            train_dataset=Dataset.from_dict(columns),
            eval_dataset=test_dataset,
        )
        trainer.train()
        if trainer.is_world_process_zero():
            print(
                f"=== trained with {name}: world size {trainer.args.world_size}, model run as "
                f"{type(trainer.model_wrapped).__name__}",
                flush=True,
            )
        output = trainer.predict(test_dataset)
        predictions = np.argmax(output.predictions, axis=-1)
        rows.append((name, float(np.mean(predictions == output.label_ids)), macro_f1(predictions, output.label_ids)))
    flipped = data["flipped"]
    table = "\n".join(
        [
            "| training labels | accuracy | macro-F1 |",
            "|---|---|---|",
            *[f"| {name} | {accuracy:.3f} | {f1:.3f} |" for name, accuracy, f1 in rows],
        ]
    )
    summary = (
        f"Digits (scikit-learn): {len(flipped)} training images, {flipped.sum()} labels flipped "
        f"({flipped.mean():.0%}), {len(test_dataset)} clean held-out images. Mean cross-validated weight: "
        f"{estimated[~flipped].mean():.2f} on correct labels, {estimated[flipped].mean():.2f} on flipped ones."
    )
    text = f"# Noisy labels, down-weighted from the data\n\n{summary}\n\n{table}\n"
    if training_args.should_save:
        os.makedirs(base_dir, exist_ok=True)
        Path(base_dir, "results.md").write_text(text)
        print(text)
    return table


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    from hf_losses.distributed import shut_down

    shut_down()
