"""GPU checks of the chunked causal-LM loss (run by ``benchmarks/gpu_lm_loss.sh`` on a CUDA machine).

Exactness on the GPU, printed as relative errors (max |difference| / max |reference|):
  - float32: loss and gradients (hidden states, weight, bias) vs transformers' ForCausalLMLoss on full logits;
  - options (label smoothing, z-loss, soft-capping, class weights) vs their formula on full float32 logits;
  - bf16 parameters and float32 parameters under bf16 autocast vs the stock bf16 path and vs float32 truth;
  - which float32 weight-gradient accumulation path this torch takes (``addmm(out_dtype=float32)`` or fallback);
  - per-token weights (``token_weight``) vs the weighted formula on full float32 logits;
  - the compiled elementwise part (``compile=True``, the CUDA default with Triton) vs the eager one;
  - the peer backends (``backend="liger"`` / ``"cce"``, when installed) vs our kernel, for each option they take.
Exits non-zero if a float32 check exceeds 1e-5 (2e-5 for the options) or a bf16 check exceeds 3e-2.

    python benchmarks/gpu_lm_loss.py            # GPU_CHECK_DEVICE=cpu for a dry run of the script on the CPU
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_losses.losses import linear_cross_entropy as kernel  # noqa: E402
from hf_losses.losses import linear_cross_entropy_backends as backends  # noqa: E402
from hf_losses.losses.language import CausalLMLoss, shift_causal_labels  # noqa: E402
from hf_losses.losses.linear_cross_entropy import linear_cross_entropy  # noqa: E402

try:
    from transformers.loss.loss_utils import ForCausalLMLoss
except ImportError:  # the same computation, written out

    def ForCausalLMLoss(logits, labels, vocab_size, **kwargs):  # noqa: N802
        targets = F.pad(labels[..., 1:], (0, 1), value=-100)
        return F.cross_entropy(logits.float().reshape(-1, vocab_size), targets.reshape(-1))


DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")  # "cpu" for a dry run of this script
FAILURES: list[str] = []


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp(min=1e-30))


def report(name: str, errors: dict[str, float], tolerance: float) -> None:
    worst = max(errors.values())
    status = "ok" if worst <= tolerance else "FAIL"
    if status == "FAIL":
        FAILURES.append(name)
    print(f"{status:4} {name:<46} " + "  ".join(f"{k}={v:.2e}" for k, v in errors.items()) + f"  (tol {tolerance:g})")


def inputs(tokens: int, hidden_size: int, vocab: int, dtype=torch.float32, seed=0, bias=True):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    batch = max(1, tokens // 512)
    hidden = torch.randn(batch, tokens // batch, hidden_size, device=DEVICE, dtype=dtype, generator=generator)
    weight = torch.randn(vocab, hidden_size, device=DEVICE, dtype=dtype, generator=generator) * hidden_size**-0.5
    bias_ = torch.randn(vocab, device=DEVICE, dtype=dtype, generator=generator) * 0.1 if bias else None
    labels = torch.randint(0, vocab, (batch, tokens // batch), device=DEVICE, generator=generator)
    labels[:, :7] = -100  # a masked prompt
    tensors = [t.requires_grad_() for t in (hidden, weight, bias_) if t is not None]
    return hidden, labels, weight, bias_, tensors


def loss_and_grads(value: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [value.detach()] + list(torch.autograd.grad(value, tensors))


def check_float32() -> None:
    for chunk_size in (None, 1000):
        hidden, labels, weight, bias, tensors = inputs(2048, 512, 32000)
        ours = loss_and_grads(CausalLMLoss(chunk_size=chunk_size)(hidden, labels, weight=weight, bias=bias), tensors)
        stock = loss_and_grads(ForCausalLMLoss(F.linear(hidden, weight, bias), labels, vocab_size=32000), tensors)
        names = ("loss", "d_hidden", "d_weight", "d_bias")
        report(
            f"float32 vs ForCausalLMLoss, chunk_size={chunk_size}",
            {n: relative(a, b) for n, a, b in zip(names, ours, stock)},
            1e-5,
        )


def check_options() -> None:
    hidden, labels, weight, bias, tensors = inputs(1024, 256, 8000, seed=1)
    class_weights = torch.rand(8000, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(2)) + 0.5
    options = dict(label_smoothing=0.1, z_loss=1e-3, softcap=30.0)
    loss = CausalLMLoss(chunk_size=300, class_weights=class_weights, **options).to(DEVICE)
    ours = loss_and_grads(loss(hidden, labels, weight=weight, bias=bias), tensors)
    logits = 30.0 * torch.tanh(F.linear(hidden, weight, bias).float() / 30.0)
    targets = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)
    flat = logits.reshape(-1, 8000)
    valid = targets != -100
    per_token = F.cross_entropy(flat, targets, weight=class_weights, label_smoothing=0.1, reduction="none")
    reference = (per_token.sum() + 1e-3 * torch.logsumexp(flat[valid], -1).square().sum()) / valid.sum()
    expected = loss_and_grads(reference, tensors)
    report(
        "float32 options vs formula on full logits",
        {n: relative(a, b) for n, a, b in zip(("loss", "d_hidden", "d_weight", "d_bias"), ours, expected)},
        2e-5,
    )


def check_bf16() -> None:
    hidden, labels, weight, _, tensors = inputs(4096, 1024, 32000, seed=3, bias=False)
    truth = loss_and_grads(ForCausalLMLoss(F.linear(hidden, weight), labels, vocab_size=32000), tensors)
    names = ("loss", "d_hidden", "d_weight")
    # float32 parameters under bf16 autocast
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        ours = loss_and_grads(CausalLMLoss()(hidden, labels, weight=weight), tensors)
        stock = loss_and_grads(ForCausalLMLoss(F.linear(hidden, weight), labels, vocab_size=32000), tensors)
    report("autocast bf16: ours vs stock autocast", {n: relative(a, b) for n, a, b in zip(names, ours, stock)}, 3e-2)
    report("autocast bf16: ours vs float32 truth", {n: relative(a, b) for n, a, b in zip(names, ours, truth)}, 3e-2)
    report(
        "autocast bf16: stock vs float32 truth (for scale)",
        {n: relative(a, b) for n, a, b in zip(names, stock, truth)},
        3e-2,
    )
    # bf16 parameters, no autocast
    half = [t.detach().bfloat16().requires_grad_() for t in (hidden, weight)]
    ours = loss_and_grads(CausalLMLoss()(half[0], labels, weight=half[1]), half)
    stock = loss_and_grads(ForCausalLMLoss(F.linear(*half), labels, vocab_size=32000), half)
    report("bf16 params: ours vs float32 truth", {n: relative(a, b) for n, a, b in zip(names, ours, truth)}, 3e-2)
    report(
        "bf16 params: stock vs float32 truth (for scale)",
        {n: relative(a, b) for n, a, b in zip(names, stock, truth)},
        3e-2,
    )
    path = (
        "addmm(out_dtype=float32) into the float32 accumulator"
        if kernel._CUDA_OUT_DTYPE
        else "bf16 product + float32 add (no out_dtype overload)"
    )
    print(f"     weight-gradient accumulation: {path}")


def weighted_reference(hidden, targets, weight, bias, token_weight, class_weights=None, **options):
    """sum_i token_weight_i * (cross_entropy_i + z_loss lse_i^2) on full float32 logits."""
    logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    softcap = options.pop("softcap", None)
    z_loss = options.pop("z_loss", 0.0)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    per_token = F.cross_entropy(flat, flat_targets, weight=class_weights, reduction="none", **options)
    z_part = torch.where(flat_targets != -100, z_loss * flat.logsumexp(-1).square(), 0.0)
    return ((per_token + z_part) * token_weight.reshape(-1)).sum()


EVERYTHING = dict(label_smoothing=0.1, z_loss=1e-3, softcap=30.0)


def check_token_weights() -> None:
    hidden, labels, weight, bias, tensors = inputs(2048, 512, 32000, seed=4)
    targets = shift_causal_labels(labels)
    generator = torch.Generator(device=DEVICE).manual_seed(5)
    token_weight = torch.rand(targets.shape, device=DEVICE, generator=generator) * 2
    class_weights = torch.rand(32000, device=DEVICE, generator=generator) + 0.5
    ours = loss_and_grads(
        linear_cross_entropy(
            hidden, targets, weight, bias, token_weight=token_weight, class_weights=class_weights, **EVERYTHING
        )[0],
        tensors,
    )
    expected = loss_and_grads(
        weighted_reference(hidden, targets, weight, bias, token_weight, class_weights, **EVERYTHING), tensors
    )
    names = ("loss", "d_hidden", "d_weight", "d_bias")
    report(
        "float32 token weights + options vs formula",
        {n: relative(a, b) for n, a, b in zip(names, ours, expected)},
        2e-5,
    )


def check_compile() -> None:
    if DEVICE == "cpu" and not os.environ.get("GPU_CHECK_COMPILE"):
        print("skip compiled vs eager on the CPU dry run (minutes of C++ compilation; GPU_CHECK_COMPILE=1 runs it)")
        return
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        hidden, labels, weight, bias, tensors = inputs(4096, 1024, 32000, dtype=dtype, seed=6)
        targets = shift_causal_labels(labels)
        results = {}
        for compiled in (False, True):
            start = time.perf_counter()
            value = linear_cross_entropy(hidden, targets, weight, bias, compile=compiled, **EVERYTHING)[0]
            results[compiled] = loss_and_grads(value, tensors)
            if compiled:
                print(f"     first compiled call ({dtype}): {time.perf_counter() - start:.1f} s")
        names = ("loss", "d_hidden", "d_weight", "d_bias")
        errors = {n: relative(a, b) for n, a, b in zip(names, results[True], results[False])}
        report(f"{str(dtype)[6:]} compiled vs eager (options)", errors, tolerance)
        if not kernel._COMPILE_STATE["ok"]:
            FAILURES.append("torch.compile failed: the eager kernel ran")
            print("FAIL torch.compile failed (see the log): the eager kernel ran instead")


def check_backends() -> None:
    cases = {
        "liger": [{}, {"z_loss": 1e-3}, {"label_smoothing": 0.1}, {"softcap": 30.0}, {"class_weights": True}],
        "cce": [{}, {"softcap": 30.0}, {"token_weight": True}],
    }
    for name, option_sets in cases.items():
        if not backends._installed(name):
            print(f"skip {name}: not installed")
            continue
        for dtype, tolerance in ((torch.bfloat16, 3e-2), (torch.float32, 1e-5)):
            if dtype not in backends.DTYPES[name]:
                continue
            for options in option_sets:
                hidden, labels, weight, _, tensors = inputs(4096, 1024, 32000, dtype=dtype, seed=7, bias=False)
                targets = shift_causal_labels(labels)
                generator = torch.Generator(device=DEVICE).manual_seed(8)
                resolved = dict(options)
                if "class_weights" in resolved:
                    resolved["class_weights"] = torch.rand(32000, device=DEVICE, generator=generator) + 0.5
                if "token_weight" in resolved:
                    resolved["token_weight"] = torch.rand(targets.shape, device=DEVICE, generator=generator)
                ours = loss_and_grads(linear_cross_entropy(hidden, targets, weight, **resolved)[0], tensors)
                try:
                    theirs = linear_cross_entropy(hidden, targets, weight, backend=name, **resolved)
                    peer = loss_and_grads(theirs[0], tensors)
                except Exception as error:  # a peer failing is reported, not fatal to the table
                    FAILURES.append(f"{name} {options}")
                    print(f"FAIL {name} {options} {dtype}: {type(error).__name__}: {str(error)[:120]}")
                    continue
                ran = backends.choose_backend(name, hidden, weight, None, _options(resolved))
                errors = {n: relative(a, b) for n, a, b in zip(("loss", "d_hidden", "d_weight"), peer, ours)}
                label = ",".join(options) or "plain"
                report(f"{name} vs ours {str(dtype)[6:]} {label} (ran: {ran})", errors, tolerance)


def _options(resolved: dict):
    values = dict(
        class_weights=None, label_smoothing=0.0, z_loss=0.0, softcap=None, ignore_index=-100, chunk_size=None,
        scale=1.0, token_weight=None, compile=None,
    )  # fmt: skip
    return kernel._Options(**{**values, **resolved})


def main() -> None:
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    print(f"torch {torch.__version__}, device {name}")
    for check in (check_float32, check_options, check_bf16, check_token_weights, check_compile, check_backends):
        start = time.perf_counter()
        check()
        print(f"     ({check.__name__}: {time.perf_counter() - start:.1f} s)")
    if FAILURES:
        print(f"FAILED: {FAILURES}")
        sys.exit(1)
    print("all GPU checks passed")


if __name__ == "__main__":
    main()
