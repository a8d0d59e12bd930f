"""Peak extra memory and time of one forward+backward of the causal-LM loss: chunked vs materialised logits.

Methods (each gets hidden states ``(N*T, H)`` and an LM head ``(V, H)``, both requiring grad):
  hf       transformers' ForCausalLMLoss on ``logits = hidden @ W.T`` (the stock path; logits upcast to float32)
  naive    a Python loop over token chunks with plain autograd (autograd keeps every chunk's logits for backward)
  ours     hf_losses ``causal_lm`` (gradients computed chunk by chunk in forward; logits never materialised)
  ours@N   the same with N tokens per chunk
  ours:X   its kernel called directly with X = eager / compile (``compile=False/True``), liger / cce (``backend=X``)
  liger    Liger-Kernel's LigerFusedLinearCrossEntropyLoss (``--device cuda``, if importable)
  cce      cut-cross-entropy's ``linear_cross_entropy`` (``--device cuda``, if importable)

CPU: every (method, case) runs in a fresh process; extra memory is the RSS high-water mark
(``resource.getrusage``) minus the high-water mark after the inputs were allocated (tracemalloc does not see
torch's allocations). CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation after the inputs, in one
process. Time: the fastest of ``--repeats`` forward+backward calls after one warm-up (CPU: the memory run, and
the fastest over ``--rounds`` processes run in alternating method order, since a shared machine's load drifts).
On a loaded machine, ``--threads 1 --clock cpu`` times the process's own CPU time on one thread, which other
processes barely change (wall time with OpenMP threads competing for cores does not measure the kernel).

    python benchmarks/lm_loss_memory.py                     # CPU, float32, the cases that fit --max-gib
    python benchmarks/lm_loss_memory.py --cases 8192x32000,2048x128000 --threads 1 --clock cpu
    python benchmarks/lm_loss_memory.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

HIDDEN_SIZE = 1024
SEQUENCE_LENGTH = 1024
DEFAULT_CASES = [(2048, 32000), (8192, 32000), (2048, 128000), (8192, 128000)]
GIB = 1024**3


# ------------------------------------------------------------------------------------------ the methods
def targets_of(labels: torch.Tensor) -> torch.Tensor:
    return F.pad(labels[..., 1:], (0, 1), value=-100)


def stock_causal_lm_loss():
    try:
        from transformers.loss.loss_utils import ForCausalLMLoss
    except ImportError:  # same computation, written out

        def ForCausalLMLoss(logits, labels, vocab_size):  # noqa: N802
            return F.cross_entropy(logits.float().view(-1, vocab_size), targets_of(labels).view(-1))

    return ForCausalLMLoss


def run_hf(hidden, labels, weight):
    logits = F.linear(hidden, weight)
    return stock_causal_lm_loss()(logits, labels, vocab_size=weight.shape[0])


def run_naive(hidden, labels, weight, chunk_size=1024):
    targets = targets_of(labels).reshape(-1)
    rows = hidden.reshape(-1, hidden.shape[-1])
    total = 0.0
    for start in range(0, rows.shape[0], chunk_size):
        logits = F.linear(rows[start : start + chunk_size], weight).float()
        total = total + F.cross_entropy(logits, targets[start : start + chunk_size], reduction="sum")
    return total / (targets != -100).sum()


def run_ours(hidden, labels, weight, chunk_size=None):
    from hf_losses.losses.language import CausalLMLoss

    return CausalLMLoss(chunk_size=chunk_size)(hidden, labels, weight=weight)


def run_ours_variant(hidden, labels, weight, variant: str):
    """Our kernel with one option changed, reduced as ``causal_lm`` reduces (sum / count of predicted tokens)."""
    from hf_losses.losses.linear_cross_entropy import linear_cross_entropy

    targets = targets_of(labels)
    scale = 1.0 / (targets != -100).sum().clamp(min=1)
    options = {"compile": variant == "compile"} if variant in ("eager", "compile") else {"backend": variant}
    return linear_cross_entropy(hidden, targets, weight, scale=scale, **options)[0]


def run_liger(hidden, labels, weight):
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    loss = LigerFusedLinearCrossEntropyLoss()
    return loss(weight, hidden.reshape(-1, hidden.shape[-1]), targets_of(labels).reshape(-1))


def run_cce(hidden, labels, weight):
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(hidden, weight, labels, shift=True)


METHODS = {"hf": run_hf, "naive": run_naive, "ours": run_ours, "liger": run_liger, "cce": run_cce}


def prepare(method: str) -> None:
    """Import what ``method`` needs before the baseline is taken (imports are not the loss's memory or time)."""
    if method == "hf":
        stock_causal_lm_loss()
    elif method.startswith("ours"):
        import hf_losses.losses.language  # noqa: F401
        import hf_losses.losses.linear_cross_entropy_backends  # noqa: F401


def make_inputs(tokens: int, vocab: int, device: str, dtype: torch.dtype):
    generator = torch.Generator(device=device).manual_seed(0)
    batch = max(1, tokens // SEQUENCE_LENGTH)
    hidden = torch.randn(batch, tokens // batch, HIDDEN_SIZE, device=device, dtype=dtype, generator=generator)
    weight = torch.randn(vocab, HIDDEN_SIZE, device=device, dtype=dtype, generator=generator)
    weight.mul_(HIDDEN_SIZE**-0.5)
    labels = torch.randint(0, vocab, (batch, tokens // batch), device=device, generator=generator)
    return hidden.requires_grad_(), labels, weight.requires_grad_()


def step(method: str, hidden, labels, weight) -> float:
    """One forward+backward; ``ours@1024`` is ours with chunk_size=1024, ``ours:eager`` our kernel uncompiled."""
    hidden.grad = weight.grad = None
    if method.startswith("ours@"):
        loss = run_ours(hidden, labels, weight, chunk_size=int(method.split("@")[1]))
    elif method.startswith("ours:"):
        loss = run_ours_variant(hidden, labels, weight, method.split(":")[1])
    else:
        loss = METHODS[method](hidden, labels, weight)
    loss.backward()
    return float(loss.detach())


# ------------------------------------------------------------------------------------------ CPU: one process per case
def rss_high_water_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def cpu_worker(method: str, tokens: int, vocab: int, dtype_name: str, repeats: int, clock: str = "wall") -> dict:
    torch.manual_seed(0)
    prepare(method)
    now = time.process_time if clock == "cpu" else time.perf_counter
    hidden, labels, weight = make_inputs(tokens, vocab, "cpu", getattr(torch, dtype_name))
    baseline = rss_high_water_bytes()
    start = now()
    value = step(method, hidden, labels, weight)
    first = now() - start
    peak = rss_high_water_bytes() - baseline
    times = [first]
    for _ in range(repeats - 1):
        start = now()
        step(method, hidden, labels, weight)
        times.append(now() - start)
    return {
        "method": method,
        "tokens": tokens,
        "vocab": vocab,
        "loss": value,
        "extra_bytes": peak,
        "seconds": min(times),
    }


def run_cpu(cases, methods, args) -> list[dict]:
    """Each (method, case) in a fresh process, ``--rounds`` times in alternating order (the machine's load drifts:
    the first method of a case must not always get the quietest minute); memory and time are the rounds' minima."""
    results = []
    for tokens, vocab in cases:
        logits_bytes = tokens * vocab * 4
        runnable = []
        for method in methods:
            if method in ("liger", "cce", "ours:liger", "ours:cce"):  # GPU kernels (Triton)
                continue
            # hf / naive keep ~4 float32 copies of the logits alive at their peak
            if method in ("hf", "naive") and 4 * logits_bytes > args.max_gib * GIB:
                results.append({"method": method, "tokens": tokens, "vocab": vocab, "skipped": "exceeds --max-gib"})
                print_progress(results[-1])
                continue
            runnable.append(method)
        rows: dict[str, dict] = {}
        for round_index in range(args.rounds):
            for method in runnable if round_index % 2 == 0 else runnable[::-1]:
                row = _cpu_case(method, tokens, vocab, args)
                previous = rows.get(method)
                if previous is None or "skipped" in previous:
                    rows[method] = row
                elif "skipped" not in row:
                    previous["extra_bytes"] = min(previous["extra_bytes"], row["extra_bytes"])
                    previous["seconds"] = min(previous["seconds"], row["seconds"])
                print_progress(row)
        results.extend(rows[method] for method in runnable)
    return results


def _cpu_case(method: str, tokens: int, vocab: int, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        str(tokens),
        str(vocab),
        "--dtype",
        args.dtype,
        "--repeats",
        str(args.repeats),
        "--clock",
        args.clock,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    if args.threads:
        env["BENCH_THREADS"] = str(args.threads)
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    line = [row for row in completed.stdout.splitlines() if row.startswith("RESULT ")]
    if completed.returncode != 0 or not line:
        return {
            "method": method,
            "tokens": tokens,
            "vocab": vocab,
            "skipped": f"failed: {completed.stderr.strip().splitlines()[-1:]}",
        }
    return json.loads(line[0][len("RESULT ") :])


# ------------------------------------------------------------------------------------------ CUDA: one process
def run_cuda(cases, methods, args) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    results = []
    for tokens, vocab in cases:
        for method in methods:
            torch.cuda.empty_cache()
            try:
                hidden, labels, weight = make_inputs(tokens, vocab, "cuda", dtype)
                torch.cuda.synchronize()
                value = step(method, hidden, labels, weight)  # warm-up (Triton compiles here)
                hidden.grad = weight.grad = None
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                baseline = torch.cuda.memory_allocated()
                step(method, hidden, labels, weight)
                torch.cuda.synchronize()
                extra = torch.cuda.max_memory_allocated() - baseline
                times = []
                for _ in range(args.repeats):
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    step(method, hidden, labels, weight)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(begin.elapsed_time(end) / 1000)
                results.append(
                    {
                        "method": method,
                        "tokens": tokens,
                        "vocab": vocab,
                        "loss": value,
                        "extra_bytes": extra,
                        "seconds": min(times),
                    }
                )
            except ImportError as error:
                results.append(
                    {"method": method, "tokens": tokens, "vocab": vocab, "skipped": f"not installed ({error.name})"}
                )
            except torch.cuda.OutOfMemoryError:
                results.append({"method": method, "tokens": tokens, "vocab": vocab, "skipped": "out of memory"})
            except Exception as error:  # a competitor failing must not hide the other rows
                results.append(
                    {
                        "method": method,
                        "tokens": tokens,
                        "vocab": vocab,
                        "skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}",
                    }
                )
            finally:
                hidden = labels = weight = None
            print_progress(results[-1])
            if args.json:  # written after every row: a run stopped at its time limit keeps what it measured
                Path(args.json).write_text(json.dumps(results, indent=1))
    return results


# ------------------------------------------------------------------------------------------ table
def print_progress(row: dict) -> None:
    if "skipped" in row:
        summary = row["skipped"]
    else:
        summary = f"{row['extra_bytes'] / 2**20:.0f} MiB, {row['seconds']:.3f} s"
    print(f"  done {row['method']:>6} {row['tokens']}x{row['vocab']}: {summary}", file=sys.stderr, flush=True)


def print_table(results: list[dict], device: str, dtype: str) -> None:
    print(f"\nforward+backward of the causal-LM loss, H={HIDDEN_SIZE}, device={device}, dtype={dtype}")
    print("extra memory = peak minus after allocating inputs; ratios are relative to 'hf' (materialised logits)")
    print(
        "beyond grads = extra memory minus the gradients every method returns (the head's V x H and the hidden "
        "states' N*T x H, in the inputs' dtype): what the loss itself costs\n"
    )
    element_size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    header = (
        f"| {'N*T':>5} | {'V':>6} | {'method':<11} | {'extra MiB':>9} | {'x hf':>6} | {'beyond grads MiB':>16} | "
        f"{'x hf':>6} | {'time s':>7} | {'x hf':>5} | {'loss':>8} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    by_case = {}
    for row in results:
        by_case.setdefault((row["tokens"], row["vocab"]), {})[row["method"]] = row
    for (tokens, vocab), rows in by_case.items():
        hf = rows.get("hf")
        grad_bytes = (vocab + tokens) * HIDDEN_SIZE * element_size
        for method, row in rows.items():
            if "skipped" in row:
                print(
                    f"| {tokens:>5} | {vocab:>6} | {method:<11} | {'-':>9} | {'-':>6} | {'-':>16} | {'-':>6} | "
                    f"{'-':>7} | {'-':>5} | {'-':>8} | {row['skipped']}"
                )
                continue
            beyond = max(row["extra_bytes"] - grad_bytes, 0)
            memory_ratio = beyond_ratio = time_ratio = "-"
            if hf is not None and "skipped" not in hf:
                memory_ratio = f"{row['extra_bytes'] / max(hf['extra_bytes'], 1):.3f}"
                beyond_ratio = f"{beyond / max(hf['extra_bytes'] - grad_bytes, 1):.3f}"
                time_ratio = f"{row['seconds'] / hf['seconds']:.2f}"
            print(
                f"| {tokens:>5} | {vocab:>6} | {method:<11} | {row['extra_bytes'] / 2**20:>9.0f} | "
                f"{memory_ratio:>6} | {beyond / 2**20:>16.0f} | {beyond_ratio:>6} | "
                f"{row['seconds']:>7.3f} | {time_ratio:>5} | {row['loss']:>8.4f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--methods", default=None, help="comma list; default hf,naive,ours (+liger,cce on cuda)")
    parser.add_argument("--cases", default=None, help="comma list of TOKENSxVOCAB, e.g. 8192x32000")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (CPU 2, CUDA 5)")
    parser.add_argument("--rounds", type=int, default=2, help="CPU: fresh processes per (method, case)")
    parser.add_argument("--max-gib", type=float, default=24.0, help="CPU: skip hf/naive cases that would need more")
    parser.add_argument("--timeout", type=float, default=900.0, help="CPU: seconds per case")
    parser.add_argument("--threads", type=int, default=None, help="CPU: torch threads per worker (default: all)")
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"], help="CPU: time wall-clock or the process's CPU time"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "TOKENS", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.repeats = args.repeats or (5 if args.device == "cuda" else 2)
    if args.worker:
        method, tokens, vocab = args.worker
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
        result = cpu_worker(method, int(tokens), int(vocab), args.dtype, args.repeats, args.clock)
        print("RESULT " + json.dumps(result))
        return
    default_methods = "hf,naive,ours,liger,cce" if args.device == "cuda" else "hf,naive,ours"
    methods = (args.methods or default_methods).split(",")
    cases = (
        DEFAULT_CASES
        if args.cases is None
        else [tuple(int(x) for x in case.lower().split("x")) for case in args.cases.split(",")]
    )
    results = run_cuda(cases, methods, args) if args.device == "cuda" else run_cpu(cases, methods, args)
    if args.device == "cpu":
        threads = args.threads or torch.get_num_threads()
        print(f"\nCPU: {threads} thread(s) per worker, {args.clock} time, {args.rounds} rounds x {args.repeats} calls")
    print_table(results, args.device, args.dtype)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
