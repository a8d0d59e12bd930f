"""Peak extra memory and time of one forward+backward of causal-LM distillation: chunked vs materialised logits.

Methods (each gets the student's hidden states ``(N*T, H)`` and head ``(V, H)``, both requiring grad, and the
teacher's hidden states ``(N*T, H_t)`` and head ``(V, H_t)``, detached):
  full     the formula on materialised logits: student logits with autograd, teacher logits under no_grad, then
           hf_losses' per-item distillation (log-softmaxes, divergence, CE) and backward through it
  trl      TRL's chunked divergence (``trl.trainer.distillation_trainer._chunked_divergence_loss`` ->
           ``ChunkedDivergenceFunction``; its torch path on CPU); the divergence only, so compare at ``--alpha 1``
  ours     hf_losses ``causal_lm_distillation`` (gradients computed chunk by chunk in forward; neither model's
           logits materialised); ``ours@512``: with chunk_size=512

Memory and time are measured as ``benchmarks/lm_loss_memory.py`` does: on CPU every (method, case) runs in a fresh
process, extra memory is the RSS high-water mark minus the high-water mark after the inputs were allocated, time is
the fastest of ``--repeats`` calls (the first, which is the memory run, included) and the fastest over ``--rounds``
processes run in alternating method order. On CUDA: ``max_memory_allocated`` minus the allocation after the inputs.

    python benchmarks/distillation_memory.py                               # 4096 tokens x H 1024 x V 32000
    python benchmarks/distillation_memory.py --vocab 128000 --methods ours,trl
    python benchmarks/distillation_memory.py --tokens 512 --vocab 4000 --hidden 256   # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lm_loss_memory import rss_high_water_bytes  # noqa: E402  (the same memory measure as the LM-loss benchmark)

SEQUENCE_LENGTH = 1024
GIB = 1024**3


# ------------------------------------------------------------------------------------------ the methods
def targets_of(labels: torch.Tensor) -> torch.Tensor:
    return F.pad(labels[..., 1:], (0, 1), value=-100)


def run_full(inputs: dict, options: dict) -> torch.Tensor:
    from hf_losses.losses.distillation import per_item_distillation

    hidden, weight, teacher_hidden, teacher_weight, labels = (
        inputs[k] for k in ("hidden", "weight", "teacher_hidden", "teacher_weight", "labels")
    )
    logits = F.linear(hidden, weight).float()
    with torch.no_grad():
        teacher_logits = F.linear(teacher_hidden, teacher_weight).float()
    targets = targets_of(labels).reshape(-1)
    vocab = weight.shape[0]
    soft, hard = per_item_distillation(logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), targets, **options)
    return (soft + hard).sum() / (targets != -100).sum()


def run_trl(inputs: dict, options: dict) -> torch.Tensor:
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    if options["alpha"] != 1.0:
        raise ValueError("TRL's chunked loss is the divergence alone: compare at --alpha 1")
    targets = targets_of(inputs["labels"])
    loss, _, _ = _chunked_divergence_loss(
        inputs["hidden"],
        inputs["teacher_hidden"],
        inputs["weight"],
        inputs["teacher_weight"],
        targets != -100,
        options["beta"],
        temperature=options["temperature"],
    )
    # TRL does not multiply by T^2; ours and full do (Hinton et al.)
    return loss * options["temperature"] ** 2


def run_ours(inputs: dict, options: dict, chunk_size: int | None = None) -> torch.Tensor:
    from hf_losses.losses.distillation import CausalLMDistillationLoss

    loss = CausalLMDistillationLoss(chunk_size=chunk_size, **options)
    return loss(
        inputs["hidden"],
        inputs["labels"],
        weight=inputs["weight"],
        teacher_hidden_states=inputs["teacher_hidden"],
        teacher_weight=inputs["teacher_weight"],
    )


METHODS = {"full": run_full, "trl": run_trl, "ours": run_ours}


def prepare(method: str) -> None:
    """Import what ``method`` needs before the baseline is taken (imports are not the loss's memory or time)."""
    import hf_losses.losses.distillation  # noqa: F401

    if method == "trl":
        import trl.trainer.distillation_trainer  # noqa: F401


def make_inputs(tokens: int, vocab: int, hidden: int, teacher_hidden: int, device: str, dtype: torch.dtype) -> dict:
    generator = torch.Generator(device=device).manual_seed(0)
    batch = max(1, tokens // SEQUENCE_LENGTH)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=device, dtype=dtype, generator=generator) * scale).to(dtype)

    return {
        "hidden": randn(batch, tokens // batch, hidden).requires_grad_(),
        "weight": randn(vocab, hidden, scale=hidden**-0.5).requires_grad_(),
        "teacher_hidden": randn(batch, tokens // batch, teacher_hidden),
        "teacher_weight": randn(vocab, teacher_hidden, scale=2 * teacher_hidden**-0.5),
        "labels": torch.randint(0, vocab, (batch, tokens // batch), device=device, generator=generator),
    }


def step(method: str, inputs: dict, options: dict) -> float:
    """One forward+backward."""
    inputs["hidden"].grad = inputs["weight"].grad = None
    if method.startswith("ours@"):
        loss = run_ours(inputs, options, chunk_size=int(method.split("@")[1]))
    else:
        loss = METHODS[method](inputs, options)
    loss.backward()
    return float(loss.detach())


# ------------------------------------------------------------------------------------------ CPU: one process per case
def cpu_worker(method: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    prepare(method)
    inputs = make_inputs(args.tokens, args.vocab, args.hidden, args.teacher_hidden, "cpu", getattr(torch, args.dtype))
    baseline = rss_high_water_bytes()
    start = time.perf_counter()
    value = step(method, inputs, options_of(args))
    times = [time.perf_counter() - start]
    peak = rss_high_water_bytes() - baseline
    for _ in range(args.repeats - 1):
        start = time.perf_counter()
        step(method, inputs, options_of(args))
        times.append(time.perf_counter() - start)
    return {"method": method, "loss": value, "extra_bytes": peak, "seconds": min(times)}


def run_cpu(methods: list[str], args: argparse.Namespace) -> list[dict]:
    """Each method in a fresh process, ``--rounds`` times in alternating order; the rounds' minima."""
    rows: dict[str, dict] = {}
    logits_bytes = args.tokens * args.vocab * 4
    runnable = []
    for method in methods:
        # the materialised formula keeps ~6 float32 tokens x V tensors alive at its peak
        if method == "full" and 6 * logits_bytes > args.max_gib * GIB:
            rows[method] = {"method": method, "skipped": f"exceeds --max-gib {args.max_gib:g}"}
            continue
        runnable.append(method)
    for round_index in range(args.rounds):
        for method in runnable if round_index % 2 == 0 else runnable[::-1]:
            row = _cpu_case(method, args)
            previous = rows.get(method)
            if previous is None or "skipped" in previous:
                rows[method] = row
            elif "skipped" not in row:
                previous["extra_bytes"] = min(previous["extra_bytes"], row["extra_bytes"])
                previous["seconds"] = min(previous["seconds"], row["seconds"])
            print_progress(row)
    return [rows[method] for method in methods]


def _cpu_case(method: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", method] + [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in ("tokens", "vocab", "hidden", "teacher_hidden", "dtype", "repeats", "temperature", "alpha", "beta")
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    line = [row for row in completed.stdout.splitlines() if row.startswith("RESULT ")]
    if completed.returncode != 0 or not line:
        return {"method": method, "skipped": f"failed: {completed.stderr.strip().splitlines()[-1:]}"}
    return json.loads(line[0][len("RESULT ") :])


# ------------------------------------------------------------------------------------------ CUDA: one process
def run_cuda(methods: list[str], args: argparse.Namespace) -> list[dict]:
    results = []
    for method in methods:
        torch.cuda.empty_cache()
        try:
            prepare(method)
            inputs = make_inputs(
                args.tokens, args.vocab, args.hidden, args.teacher_hidden, "cuda", getattr(torch, args.dtype)
            )
            value = step(method, inputs, options_of(args))  # warm-up (Triton compiles here)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            inputs["hidden"].grad = inputs["weight"].grad = None
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            step(method, inputs, options_of(args))
            torch.cuda.synchronize()
            extra = torch.cuda.max_memory_allocated() - baseline
            times = []
            for _ in range(args.repeats):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                step(method, inputs, options_of(args))
                end.record()
                torch.cuda.synchronize()
                times.append(begin.elapsed_time(end) / 1000)
            results.append({"method": method, "loss": value, "extra_bytes": extra, "seconds": min(times)})
        except torch.cuda.OutOfMemoryError:
            results.append({"method": method, "skipped": "out of memory"})
        except Exception as error:  # a competitor failing must not hide the other rows
            results.append({"method": method, "skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"})
        finally:
            inputs = None
        print_progress(results[-1])
    return results


# ------------------------------------------------------------------------------------------ table
def options_of(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, "alpha": args.alpha, "beta": args.beta}


def print_progress(row: dict) -> None:
    summary = row["skipped"] if "skipped" in row else f"{row['extra_bytes'] / 2**20:.0f} MiB, {row['seconds']:.3f} s"
    print(f"  done {row['method']:>8}: {summary}", file=sys.stderr, flush=True)


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\nforward+backward of causal-LM distillation, {args.tokens} tokens, H={args.hidden} (teacher "
        f"{args.teacher_hidden}), V={args.vocab}, device={args.device}, dtype={args.dtype}, T={args.temperature:g}, "
        f"alpha={args.alpha:g}, beta={args.beta:g}"
    )
    print(
        "extra memory = peak minus after allocating inputs; ratios are relative to 'full' (materialised logits) "
        "and to 'trl' (TRL's chunked divergence)\n"
    )
    header = (
        f"| {'method':<9} | {'extra MiB':>9} | {'x full':>6} | {'x trl':>6} | {'time s':>7} | {'x full':>6} | "
        f"{'x trl':>6} | {'loss':>9} |"
    )
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    by_method = {row["method"]: row for row in results}

    def ratio(row: dict, base: str, key: str, digits: int) -> str:
        other = by_method.get(base)
        if other is None or "skipped" in other:
            return "-"
        return f"{row[key] / max(other[key], 1e-12):.{digits}f}"

    for row in results:
        if "skipped" in row:
            print(
                f"| {row['method']:<9} | {'-':>9} | {'-':>6} | {'-':>6} | {'-':>7} | {'-':>6} | {'-':>6} | {'-':>9} | "
                f"{row['skipped']}"
            )
            continue
        print(
            f"| {row['method']:<9} | {row['extra_bytes'] / 2**20:>9.0f} | {ratio(row, 'full', 'extra_bytes', 3):>6} | "
            f"{ratio(row, 'trl', 'extra_bytes', 3):>6} | {row['seconds']:>7.3f} | "
            f"{ratio(row, 'full', 'seconds', 2):>6} | {ratio(row, 'trl', 'seconds', 2):>6} | {row['loss']:>9.5f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--methods", default="full,trl,ours", help="comma list of full, trl, ours, ours@CHUNK")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=1024, help="the student's hidden size")
    parser.add_argument("--teacher-hidden", type=int, default=None, help="the teacher's (default: --hidden)")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=1.0, help="1: the divergence alone, as TRL computes it")
    parser.add_argument("--beta", type=float, default=0.0, help="0 forward KL, 1 reverse KL, between: JSD")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per process (CPU 2, CUDA 5)")
    parser.add_argument("--rounds", type=int, default=2, help="CPU: fresh processes per method")
    parser.add_argument("--max-gib", type=float, default=20.0, help="CPU: skip 'full' when it would need more")
    parser.add_argument("--timeout", type=float, default=1800.0, help="CPU: seconds per process")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.repeats = args.repeats or (5 if args.device == "cuda" else 2)
    args.teacher_hidden = args.teacher_hidden or args.hidden
    if args.worker:
        print("RESULT " + json.dumps(cpu_worker(args.worker, args)))
        return
    methods = args.methods.split(",")
    results = run_cuda(methods, args) if args.device == "cuda" else run_cpu(methods, args)
    print_table(results, args)


if __name__ == "__main__":
    main()
