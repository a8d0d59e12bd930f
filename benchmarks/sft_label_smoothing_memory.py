"""Label smoothing in SFT without the full logits: peak extra memory and time of one forward+backward step.

TRL's ``SFTTrainer`` computes its own ``nll`` through a fused LM head, but with ``label_smoothing_factor`` it falls
back to a forward pass that returns the full ``(N, T, V)`` logits (transformers' ``LabelSmoother``), plus a second,
no-gradient fused forward for its metrics. hf-losses' ``LossSFTTrainer`` with ``loss_type="causal_lm"`` and
``loss_kwargs={"label_smoothing": 0.1}`` computes the smoothed cross-entropy chunk by chunk from the final hidden
states (no full logits). Methods:

  trl_nll        TRL SFTTrainer, loss_type="nll" (no smoothing): the baseline
  trl_nll_ls     TRL SFTTrainer, loss_type="nll", label_smoothing_factor=0.1
  ours_ls        LossSFTTrainer, loss_type="causal_lm", loss_kwargs={"label_smoothing": 0.1}

Each method runs in a fresh process (``--rounds`` times, alternating order; minima kept): a Llama from a config
(``--vocab`` x ``--hidden``, one decoder layer, untied head) and pre-tokenized rows of random token ids,
``--batch`` x ``--seq`` tokens per step, AdamW, float32 on CPU. The trainer's ``training_step`` (forward, loss,
backward; no optimizer step, no data loading) is timed and measured; the first call is a warm-up (the optimizer
state exists afterwards), the next ``--repeats`` are measured. Extra memory: the process's peak resident set
(VmHWM, reset through ``/proc/self/clear_refs`` before each step) minus its resident set before the step.

    python benchmarks/sft_label_smoothing_memory.py              # 32000 x 2048 tokens, ~1-2 minutes on 2 cores
    python benchmarks/sft_label_smoothing_memory.py --vocab 128000 --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

METHODS = ("trl_nll", "trl_nll_ls", "ours_ls")
BASELINE = "trl_nll"
MIB = 1024**2


# ------------------------------------------------------------------------------------------ memory probes (Linux)
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset the peak resident set (VmHWM) to the current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


# ------------------------------------------------------------------------------------------ one method, one process
def build_trainer(method: str, args: argparse.Namespace, output_dir: str):
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<pad>", "<eos>", "<unk>"]
    vocab = {token: index for index, token in enumerate(special + [f"w{i}" for i in range(args.vocab - len(special))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=args.seq,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(len(special), args.vocab, (args.batch * (args.repeats + 2), args.seq), generator=generator)
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})

    options = dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch,
        max_steps=args.repeats + 1,
        learning_rate=1e-4,
        max_length=args.seq,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    if method == "ours_ls":
        from hf_losses.integrations.trl import LossSFTConfig, LossSFTTrainer

        config_class, trainer_class = LossSFTConfig, LossSFTTrainer
        options.update(loss_type="causal_lm", loss_kwargs={"label_smoothing": args.label_smoothing})
    else:
        from trl import SFTConfig, SFTTrainer

        config_class, trainer_class = SFTConfig, SFTTrainer
        options.update(loss_type="nll")
        if method == "trl_nll_ls":
            options.update(label_smoothing_factor=args.label_smoothing)
    return trainer_class(model=model, args=config_class(**options), train_dataset=dataset, processing_class=tokenizer)


def worker(method: str, args: argparse.Namespace) -> dict:
    import tempfile
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(method, args, output_dir)
        original = trainer.training_step
        steps: list[dict] = []

        def measured_training_step(*step_args, **step_kwargs):
            before = rss_bytes()
            reset_peak_rss()
            start = time.perf_counter()
            loss = original(*step_args, **step_kwargs)
            seconds = time.perf_counter() - start
            steps.append({"seconds": seconds, "extra_bytes": peak_rss_bytes() - before, "loss": float(loss)})
            return loss

        trainer.training_step = measured_training_step
        trainer.train()
    measured = steps[1:] or steps  # the first step is the warm-up
    return {
        "method": method,
        "loss": measured[0]["loss"],
        "extra_bytes": min(step["extra_bytes"] for step in measured),
        "seconds": min(step["seconds"] for step in measured),
    }


# ------------------------------------------------------------------------------------------ driver
def run_one(method: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", method, *forwarded(args)]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # a fixed mmap threshold: freed large blocks go back to the OS at once, so the resident set before a step
        # does not hold memory a previous step freed (glibc's dynamic threshold would keep up to 32 MiB blocks)
        "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    }
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        return {"method": method, "skipped": f"failed: {completed.stderr.strip().splitlines()[-3:]}"}
    return json.loads(lines[0][len("RESULT ") :])


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--repeats",
        str(args.repeats),
        "--label-smoothing",
        str(args.label_smoothing),
        "--threads",
        str(args.threads),
    ]


def table(rows: dict[str, dict], args: argparse.Namespace) -> str:
    logits_mib = args.batch * args.seq * args.vocab * 4 / MIB
    base = rows.get(BASELINE, {})
    lines = [
        f"SFT step (forward + loss + backward), Llama 1 layer, hidden {args.hidden}, vocab {args.vocab}, "
        f"{args.batch} x {args.seq} tokens, float32, CPU ({args.threads or os.cpu_count()} threads); one float32 "
        f"logits tensor = {logits_mib:.0f} MiB. Ratios against {BASELINE} measured in the same run.",
        "",
        "| method | loss | extra memory (MiB) | x baseline | step time (s) | x baseline |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        row = rows.get(method)
        if row is None:
            continue
        if "skipped" in row:
            lines.append(f"| {method} | {row['skipped']} | | | | |")
            continue
        memory, seconds = row["extra_bytes"] / MIB, row["seconds"]
        memory_ratio = row["extra_bytes"] / base["extra_bytes"] if base.get("extra_bytes") else float("nan")
        time_ratio = seconds / base["seconds"] if base.get("seconds") else float("nan")
        lines.append(
            f"| {method} | {row['loss']:.4f} | {memory:.0f} | {memory_ratio:.2f} | {seconds:.3f} | {time_ratio:.2f} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2, help="measured steps after the warm-up step")
    parser.add_argument("--rounds", type=int, default=1, help="processes per method (alternating order; minima)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)), flush=True)
        return
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    rows: dict[str, dict] = {}
    for round_index in range(args.rounds):
        for method in methods if round_index % 2 == 0 else methods[::-1]:
            row = run_one(method, args)
            print(f"  {method}: {json.dumps(row)}", flush=True)
            previous = rows.get(method)
            if previous is None or "skipped" in previous:
                rows[method] = row
            elif "skipped" not in row:
                previous["extra_bytes"] = min(previous["extra_bytes"], row["extra_bytes"])
                previous["seconds"] = min(previous["seconds"], row["seconds"])
    print()
    print(table(rows, args))


if __name__ == "__main__":
    main()
