"""Which kernel ``linear_cross_entropy(backend=...)`` runs, and the glue around the peers (Liger, Cut Cross-Entropy).

The peers are Triton kernels for CUDA; here they are stand-ins that compute their documented definition on full
logits (Liger: ``reduction="sum"`` with ``ce_weight``, ``lse_square_scale``, ``label_smoothing``, ``softcap``; CCE:
``reduction="sum"`` / ``"none"`` with ``softcap``), so these tests check what we send and what we make of the
answer. Their exactness against our kernel on a GPU is checked by ``benchmarks/gpu_lm_loss.py``.
"""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import hf_losses.losses.linear_cross_entropy_backends as backends
from hf_losses.losses.linear_cross_entropy import linear_cross_entropy

V, H = 40, 8


def inputs(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, H, generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=generator) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (2, 6), generator=generator)
    targets[0, :2] = -100
    return hidden, targets, weight


def full_logits(hidden, weight, bias, softcap):
    logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


@dataclass
class CrossEntropyOutput:
    loss: torch.Tensor
    z_loss: torch.Tensor | None = None


def fake_liger(calls):
    def liger_fused_linear_cross_entropy(input, weight, target, bias=None, ce_weight=None, ignore_index=-100,
                                         lse_square_scale=0.0, label_smoothing=0.0, reduction="mean", softcap=None,
                                         return_z_loss=False, accum_dtype=None):  # fmt: skip
        calls.append({"reduction": reduction, "accum_dtype": accum_dtype, "shape": tuple(input.shape)})
        logits = full_logits(input, weight, bias, softcap)
        per_token = F.cross_entropy(
            logits, target, weight=ce_weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
            reduction="none",
        )  # fmt: skip
        z_loss = torch.where(target != ignore_index, lse_square_scale * logits.logsumexp(-1).square(), 0.0).sum()
        loss = per_token.sum() + z_loss
        return CrossEntropyOutput(loss, z_loss) if return_z_loss else loss

    return liger_fused_linear_cross_entropy


def fake_cce(calls):
    def linear_cross_entropy(e, c, targets, bias=None, ignore_index=-100, softcap=None, reduction="mean",
                             shift=False, filter_eps="auto", accum_e_fp32=False, accum_c_fp32=False):  # fmt: skip
        calls.append({"reduction": reduction, "filter_eps": filter_eps, "fp32": (accum_e_fp32, accum_c_fp32)})
        logits = full_logits(e, c, bias, softcap)
        losses = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index, reduction="none"
        ).reshape(targets.shape)
        return losses.sum() if reduction == "sum" else losses

    return linear_cross_entropy


@pytest.fixture
def peers(monkeypatch):
    """Both peers installed (stand-ins), and the CPU accepted as their device; returns the recorded calls."""
    calls = {"liger": [], "cce": []}
    liger = types.ModuleType("liger_kernel")
    liger_transformers = types.ModuleType("liger_kernel.transformers")
    liger_functional = types.ModuleType("liger_kernel.transformers.functional")
    liger_functional.liger_fused_linear_cross_entropy = fake_liger(calls["liger"])
    cce = types.ModuleType("cut_cross_entropy")
    cce.linear_cross_entropy = fake_cce(calls["cce"])
    for name, module in {
        "liger_kernel": liger,
        "liger_kernel.transformers": liger_transformers,
        "liger_kernel.transformers.functional": liger_functional,
        "cut_cross_entropy": cce,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backends, "_installed", lambda name: True)
    monkeypatch.setattr(backends, "_on_cuda", lambda tensor: True)
    monkeypatch.setattr(backends, "_LOGGED", set())
    return calls


# ------------------------------------------------------------------------------------------ choice
def test_default_backend_is_our_kernel(peers):
    hidden, targets, weight = inputs()
    linear_cross_entropy(hidden, targets, weight)
    assert peers == {"liger": [], "cce": []}


def test_auto_prefers_liger_and_falls_to_cce_for_token_weights(peers):
    hidden, targets, weight = inputs()
    linear_cross_entropy(hidden, targets, weight, backend="auto")
    assert len(peers["liger"]) == 1 and not peers["cce"]
    linear_cross_entropy(hidden, targets, weight, backend="auto", token_weight=torch.ones(2, 6))
    assert len(peers["cce"]) == 0  # CCE takes half precision only: float32 runs our kernel
    half = [t.detach().bfloat16().requires_grad_() for t in (hidden, weight)]
    linear_cross_entropy(half[0], targets, half[1], backend="auto", token_weight=torch.ones(2, 6))
    assert len(peers["cce"]) == 1 and len(peers["liger"]) == 1


@pytest.mark.parametrize(
    "backend,options,reason",
    [
        ("liger", {"token_weight": torch.ones(2, 6)}, "liger: computes no token_weight"),
        ("cce", {"z_loss": 1e-3}, "cce: computes no z_loss"),
        ("cce", {"label_smoothing": 0.1, "class_weights": torch.ones(V)}, "cce: computes no class_weights, label_sm"),
    ],
)
def test_an_option_the_peer_lacks_runs_our_kernel_with_a_log_line(peers, caplog, backend, options, reason):
    hidden, targets, weight = inputs(torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger=backends.__name__):
        value = linear_cross_entropy(hidden, targets, weight, backend=backend, **options)[0]
        linear_cross_entropy(hidden, targets, weight, backend=backend, **options)  # logged once
    assert peers == {"liger": [], "cce": []}
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert f"backend='{backend}' runs hf_losses' own kernel ({reason}" in caplog.records[0].getMessage()
    assert torch.allclose(value, linear_cross_entropy(hidden, targets, weight, **options)[0])


def test_not_installed_not_cuda_autocast_and_mixed_dtypes_run_our_kernel(peers, monkeypatch):
    hidden, targets, weight = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert backends._why_not("liger", hidden, weight, None, _options()) == (
            "autocast is on (it would compute in the parameters' dtype)"
        )
    assert "one dtype" in backends._why_not("liger", hidden, weight.detach().double(), None, _options())
    monkeypatch.setattr(backends, "_on_cuda", lambda tensor: False)
    assert (
        backends._why_not("liger", hidden, weight, None, _options()) == "its Triton kernels run on CUDA only, not cpu"
    )
    monkeypatch.setattr(backends, "_installed", lambda name: False)
    assert backends.choose_backend("auto", hidden, weight, None, _options()) == "torch"


def test_unknown_backend_is_refused():
    hidden, targets, weight = inputs()
    with pytest.raises(ValueError, match=r"`backend` must be one of \['torch', 'auto', 'liger', 'cce'\]"):
        linear_cross_entropy(hidden, targets, weight, backend="triton")


def _options(**overrides):
    from hf_losses.losses.linear_cross_entropy import _Options

    values = dict(
        class_weights=None, label_smoothing=0.0, z_loss=0.0, softcap=None, ignore_index=-100, chunk_size=None,
        scale=1.0, token_weight=None, compile=None,
    )  # fmt: skip
    return _Options(**{**values, **overrides})


# ------------------------------------------------------------------------------------------ glue
@pytest.mark.parametrize(
    "options",
    [{}, {"z_loss": 1e-2}, {"label_smoothing": 0.1, "softcap": 3.0}, {"class_weights": torch.rand(V) + 0.5}],
    ids=["plain", "z-loss", "smoothing+softcap", "class weights"],
)
def test_liger_glue_returns_what_our_kernel_returns(peers, options):
    hidden, targets, weight = inputs()
    bias = torch.randn(V, requires_grad=True)
    total, z_total = linear_cross_entropy(hidden, targets, weight, bias, backend="liger", scale=0.1, **options)
    expected, expected_z = linear_cross_entropy(hidden, targets, weight, bias, scale=0.1, **options)
    assert peers["liger"] == [{"reduction": "sum", "accum_dtype": torch.float32, "shape": (12, H)}]
    assert torch.allclose(total, expected, rtol=1e-5) and torch.allclose(z_total, expected_z, rtol=1e-5)
    assert not z_total.requires_grad
    ours = torch.autograd.grad(expected, (hidden, weight, bias))
    for a, b in zip(torch.autograd.grad(total, (hidden, weight, bias)), ours):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_cce_glue_is_exact_and_weighs_tokens(peers):
    hidden, targets, weight = inputs(torch.bfloat16)
    token_weight = torch.rand(2, 6, generator=torch.Generator().manual_seed(1))
    total, _ = linear_cross_entropy(hidden, targets, weight, backend="cce", softcap=3.0, token_weight=token_weight)
    plain, _ = linear_cross_entropy(hidden, targets, weight, backend="cce", scale=0.5)
    assert [call["reduction"] for call in peers["cce"]] == ["none", "sum"]
    assert all(call["filter_eps"] is None and call["fp32"] == (True, True) for call in peers["cce"])
    expected, _ = linear_cross_entropy(hidden, targets, weight, softcap=3.0, token_weight=token_weight)
    assert torch.allclose(total, expected, rtol=1e-2)
    assert torch.allclose(plain, linear_cross_entropy(hidden, targets, weight, scale=0.5)[0], rtol=1e-2)


def test_a_peer_with_another_signature_runs_our_kernel(peers, monkeypatch, caplog):
    def old_liger(input, weight, target):
        raise AssertionError("not called with keywords it lacks")

    monkeypatch.setattr(
        sys.modules["liger_kernel.transformers.functional"], "liger_fused_linear_cross_entropy", old_liger
    )
    hidden, targets, weight = inputs()
    with caplog.at_level(logging.WARNING, logger=backends.__name__):
        value = linear_cross_entropy(hidden, targets, weight, backend="liger")[0]
    assert "backend 'liger' refused the call" in caplog.text
    assert torch.allclose(value, linear_cross_entropy(hidden, targets, weight)[0])
