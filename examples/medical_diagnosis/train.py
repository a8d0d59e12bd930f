"""Cost-sensitive diagnosis: a missed malignancy costs more than a false alarm.

scikit-learn's Wisconsin breast cancer set (569 patients, 212 malignant, 30 features), a small MLP written as a
``PreTrainedModel`` with its own ``PretrainedConfig`` (registered with ``AutoConfig`` and
``AutoModelForSequenceClassification``, so the saved model loads back with the Auto classes), trained once with
plain cross-entropy and once with a cost-sensitive loss (``fn_penalty``: a false negative costs ``fn_cost`` false
alarms). Reported on the held-out patients at the default threshold (argmax): sensitivity, specificity and the
expected cost per patient under the same cost matrix.

    accelerate launch examples/medical_diagnosis/train.py
    accelerate launch examples/medical_diagnosis/train.py --loss_type cost_sensitive \\
        --loss_kwargs '{"cost_matrix": [[0, 1], [5, 0]], "cost_weight": 2.0}'
    accelerate launch examples/medical_diagnosis/train.py --tune_trials 8        # optuna over fn_cost
    python examples/medical_diagnosis/train.py --max_train_samples 32 --max_steps 2   # smoke test
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    HfArgumentParser,
    PretrainedConfig,
    PreTrainedModel,
    set_seed,
)
from transformers.modeling_outputs import SequenceClassifierOutput

LABEL_NAMES = ["benign", "malignant"]  # 1 = malignant: the positive class a test must not miss


# ------------------------------------------------------------------------------------------ the model
class TabularMLPConfig(PretrainedConfig):
    """An MLP over a fixed-length feature vector."""

    model_type = "hf_losses_tabular_mlp"

    def __init__(
        self,
        num_features: int = 30,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        self.num_features = num_features
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.dropout = dropout
        super().__init__(**kwargs)


class TabularMLPForSequenceClassification(PreTrainedModel):
    """``features (N, num_features) -> logits (N, num_labels)``; computes cross-entropy itself when given labels
    (``--loss_type auto``), like any transformers classifier."""

    config_class = TabularMLPConfig
    base_model_prefix = "mlp"
    main_input_name = "features"

    def __init__(self, config: TabularMLPConfig) -> None:
        super().__init__(config)
        layers: list[nn.Module] = []
        width = config.num_features
        for _ in range(config.num_hidden_layers):
            layers += [nn.Linear(width, config.hidden_size), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden_size
        self.mlp = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=5**0.5)  # nn.Linear's own default
            nn.init.zeros_(module.bias)

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> SequenceClassifierOutput:
        logits = self.classifier(self.mlp(features))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(TabularMLPConfig.model_type, TabularMLPConfig, exist_ok=True)
AutoModelForSequenceClassification.register(TabularMLPConfig, TabularMLPForSequenceClassification, exist_ok=True)


# ------------------------------------------------------------------------------------------ arguments
@dataclass
class DiagnosisArguments:
    """Data, model and decision costs of the example (training and loss flags come from LossTrainingArguments)."""

    fn_cost: float = field(
        default=5.0,
        metadata={
            "help": "Cost of a missed malignancy in units of a false alarm, used by the expected-cost metric (and by "
            "the default loss, fn_penalty)."
        },
    )
    hidden_size: int = field(default=32, metadata={"help": "Width of the MLP's hidden layers."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Hidden layers of the MLP."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout after each hidden layer."})
    feature_set: Literal["mean", "se", "worst", "all"] = field(
        default="mean",
        metadata={
            "help": "Which of the 30 measurements the model sees: 'mean' (the 10 per-patient means, default), 'se', "
            "'worst' or 'all'. With 'all' or 'worst' the classes barely overlap, which leaves little for any "
            "loss to change at the decision threshold."
        },
    )
    test_fraction: float = field(default=0.3, metadata={"help": "Share of patients held out (stratified)."})
    data_seed_value: int = field(default=0, metadata={"help": "Seed of the train/held-out split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cut the training set (smoke tests)."})
    baseline_loss_type: str = field(default="cross_entropy", metadata={"help": "The loss compared against."})
    tune_trials: int = field(
        default=0,
        metadata={
            "help": "Run this many optuna trials over the cost-sensitive loss's parameters first (objective: expected "
            "cost, minimised), then compare with the best."
        },
    )
    save_models: bool = field(default=True, metadata={"help": "Save each trained model in its run folder."})


DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/medical_diagnosis",
    "loss_type": "fn_penalty",
    "num_train_epochs": 20.0,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "logging_steps": 5,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "report_to": "none",
    "seed": 42,
    # every parameter gets a gradient at every step: without this, transformers asks DDP for
    # find_unused_parameters=True (its default for any PreTrainedModel without gradient checkpointing), which costs
    # an extra traversal of the autograd graph per step and makes every rank warn about it
    "ddp_find_unused_parameters": False,
}


# ------------------------------------------------------------------------------------------ data
FEATURE_SETS = {"mean": slice(0, 10), "se": slice(10, 20), "worst": slice(20, 30), "all": slice(0, 30)}


def load_data(
    test_fraction: float, seed: int, max_train_samples: int | None = None, feature_set: str = "mean"
) -> tuple[Any, Any]:
    """Standardised features (train statistics), label 1 = malignant; a stratified held-out split."""
    from datasets import Dataset
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {list(FEATURE_SETS)}, got {feature_set!r}.")
    data = load_breast_cancer()
    labels = (data.target == 0).astype(np.int64)  # scikit-learn codes malignant as 0
    features = data.data[:, FEATURE_SETS[feature_set]]
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-8
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    if max_train_samples is not None:
        train_x, train_y = train_x[:max_train_samples], train_y[:max_train_samples]
    train = Dataset.from_dict({"features": train_x.astype(np.float32), "labels": train_y})
    test = Dataset.from_dict({"features": test_x.astype(np.float32), "labels": test_y})
    return train, test


def cost_matrix(fn_cost: float) -> list[list[float]]:
    """cost[true][predicted]: a missed malignancy costs ``fn_cost``, a false alarm 1."""
    return [[0.0, 1.0], [fn_cost, 0.0]]


def make_compute_metrics(fn_cost: float):
    """Sensitivity, specificity, expected cost (and accuracy) from the metric modules shipped with hf-losses."""
    import evaluate

    from hf_losses.metrics import load_metric

    metrics = evaluate.combine([load_metric("expected_cost"), load_metric("accuracy")])

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return metrics.compute(
            predictions=np.argmax(logits, axis=-1),
            references=prediction.label_ids,
            cost_matrix=cost_matrix(fn_cost),
            positive_label=1,
        )

    return compute_metrics


# ------------------------------------------------------------------------------------------ main
#: (metric key, table header) of the results table
COLUMNS = [
    ("eval_sensitivity", "sensitivity"),
    ("eval_specificity", "specificity"),
    ("eval_expected_cost", "expected cost"),
    ("eval_accuracy", "accuracy"),
]


def main(argv: list[str] | None = None) -> str:
    from hf_losses.cli.comparison import run_comparison
    from hf_losses.trainers import LossTrainer, LossTrainingArguments

    parser = HfArgumentParser((LossTrainingArguments, DiagnosisArguments))
    parser.set_defaults(**DEFAULTS)
    training_args, args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.loss_type == "fn_penalty" and not training_args.loss_kwargs:
        training_args.loss_kwargs = {"fn_cost": args.fn_cost}
    train_dataset, test_dataset = load_data(
        args.test_fraction, args.data_seed_value, args.max_train_samples, args.feature_set
    )
    config = TabularMLPConfig(
        num_features=len(train_dataset[0]["features"]),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        dropout=args.dropout,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: i for i, name in enumerate(LABEL_NAMES)},
    )

    def model_init(trial: Any = None) -> TabularMLPForSequenceClassification:
        set_seed(training_args.seed)
        return AutoModelForSequenceClassification.from_config(config)

    def make_trainer(run_args: Any) -> Any:
        return LossTrainer(
            model_init=model_init,
            args=run_args,
            train_dataset=train_dataset,
            eval_dataset=test_dataset,
            compute_metrics=make_compute_metrics(args.fn_cost),
        )

    positives = int(np.sum(test_dataset["labels"]))
    intro = (
        f"Breast cancer (scikit-learn): {len(train_dataset)} training patients, {len(test_dataset)} held out "
        f"({positives} malignant), the {config.num_features} '{args.feature_set}' measurements. "
        f"MLP {args.num_hidden_layers}x{args.hidden_size}, {training_args.num_train_epochs:g} epochs, "
        f"seed {training_args.seed}. Decisions at the default threshold (argmax); expected cost per patient "
        f"with a missed malignancy costing {args.fn_cost:g} false alarms. One seed: one patient moves "
        f"sensitivity by {1 / max(positives, 1):.1%}; rerun with other --seed values to see the spread."
    )
    return run_comparison(
        make_trainer,
        training_args,
        baseline_loss_type=args.baseline_loss_type,
        title="Cost-sensitive diagnosis",
        intro=intro,
        columns=COLUMNS,
        plot_metrics=("eval_sensitivity", "eval_expected_cost"),
        tune_trials=args.tune_trials,
        objective_metric="expected_cost",
        direction="minimize",
        save_models=args.save_models,
        model_card={"dataset": "Wisconsin breast cancer (scikit-learn)"},
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    from hf_losses.distributed import shut_down

    shut_down()  # barrier + destroy_process_group: no abort at exit under 2 processes
