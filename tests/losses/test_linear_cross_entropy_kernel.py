"""The chunked kernel itself: per-token weights against the formula on full logits, and the GPU code path (every row
through the chunks, ignored rows weighing 0, gradients scaled in place on the device) run on the CPU and held to
the same answers as the CPU path and the materialised logits.

The device path is chosen where the kernel asks whether reading values is free
(``hf_losses.losses.linear_cross_entropy.values_are_free``); the tests patch that to "no". That the device path
never reads a value is ``test_no_host_sync.py``'s job.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import hf_losses.losses.linear_cross_entropy as kernel
from hf_losses.losses.language import shift_causal_labels
from hf_losses.losses.linear_cross_entropy import linear_cross_entropy, softmax_gradient

N, T, H, V = 3, 9, 16, 50
OPTIONS = {
    "plain": {},
    "label smoothing": {"label_smoothing": 0.1},
    "z-loss": {"z_loss": 1e-2},
    "soft-cap": {"softcap": 2.5},
    "class weights": {"class_weights": "weights"},
    "everything": {"class_weights": "weights", "label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 4.0},
}


def make_inputs(dtype=torch.float32, seed=0, bias=True, n=N, t=T, h=H, v=V):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, h, generator=generator, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=generator, dtype=dtype) * 0.5).requires_grad_()
    bias_ = (torch.randn(v, generator=generator, dtype=dtype) * 0.1).requires_grad_() if bias else None
    labels = torch.randint(0, v, (n, t), generator=generator)
    labels[0, 2] = -100
    labels[1, :4] = -100
    token_weight = torch.rand(n, t, generator=generator, dtype=torch.float64).to(dtype) * 2
    token_weight[-1, 1] = 0.0
    return hidden, shift_causal_labels(labels), weight, bias_, token_weight


def class_weights(v=V, dtype=torch.float32):
    return torch.tensor([0.5 + (i % 7) / 4 for i in range(v)], dtype=dtype)


def resolve(options, v=V, dtype=torch.float32):
    return {k: (class_weights(v, dtype) if val == "weights" else val) for k, val in options.items()}


def reference_sum(hidden, targets, weight, bias=None, *, token_weight=None, class_weights=None, label_smoothing=0.0,
                  z_loss=0.0, softcap=None):  # fmt: skip
    """The weighted sum on materialised float32 (float64) logits: F.cross_entropy per token, plus z-loss, times
    the token weight; returns (total, z part)."""
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = hidden.to(dtype) @ weight.to(dtype).t()
    if bias is not None:
        logits = logits + bias.to(dtype)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    per_token = F.cross_entropy(
        flat, flat_targets, weight=class_weights, label_smoothing=label_smoothing, reduction="none"
    )
    valid = flat_targets != -100
    z_part = torch.where(valid, z_loss * torch.logsumexp(flat, -1).square(), 0.0)
    weights = torch.ones_like(per_token) if token_weight is None else token_weight.reshape(-1).to(dtype)
    return ((per_token + z_part) * weights).sum(), (z_part * weights).sum()


def grads(value, tensors):
    return torch.autograd.grad(value, [t for t in tensors if t is not None])


def assert_close(actual, expected, tolerance):
    for a, e in zip(actual, expected):
        error = (a.double() - e.double()).abs().max() / e.double().abs().max().clamp(min=1e-12)
        assert error <= tolerance, f"relative error {error:.3g} > {tolerance:g}"


@pytest.fixture(params=["cpu path", "device path"])
def path(request, monkeypatch):
    """Runs the test on the CPU path (ignored rows gathered out) and on the GPU's (every row, weighted 0)."""
    if request.param == "device path":
        monkeypatch.setattr(kernel, "values_are_free", lambda tensor: False)
    return request.param


# ------------------------------------------------------------------------------------------ token weights
@pytest.mark.parametrize("name", list(OPTIONS))
def test_token_weight_multiplies_each_token_loss_and_gradient(path, name):
    hidden, targets, weight, bias, token_weight = make_inputs()
    options = resolve(OPTIONS[name])
    total, z_total = linear_cross_entropy(
        hidden, targets, weight, bias, token_weight=token_weight, chunk_size=4, scale=0.25, **options
    )
    expected, expected_z = reference_sum(hidden, targets, weight, bias, token_weight=token_weight, **options)
    assert torch.allclose(total, expected * 0.25, rtol=1e-5, atol=1e-7), name
    assert torch.allclose(z_total, expected_z.detach() * 0.25, rtol=1e-5, atol=1e-9), name
    assert_close(grads(total, (hidden, weight, bias)), grads(expected * 0.25, (hidden, weight, bias)), 2e-5)


def test_a_token_of_weight_zero_is_left_out(path):
    hidden, targets, weight, bias, _ = make_inputs()
    token_weight = torch.ones(N, T)
    token_weight[0, :5] = 0.0
    dropped = targets.clone()
    dropped[0, :5] = -100
    value = linear_cross_entropy(hidden, targets, weight, bias, token_weight=token_weight, z_loss=0.1)[0]
    expected = linear_cross_entropy(hidden, dropped, weight, bias, z_loss=0.1)[0]
    assert torch.allclose(value, expected, rtol=1e-6)
    ours = grads(value, (hidden, weight, bias))
    assert_close(ours, grads(expected, (hidden, weight, bias)), 1e-6)
    assert torch.count_nonzero(ours[0][0, :5]) == 0


def test_token_weight_may_be_flat_or_integer_and_is_not_differentiated():
    hidden, targets, weight, _, _ = make_inputs(bias=False)
    integer = torch.randint(0, 3, (N, T), generator=torch.Generator().manual_seed(1))
    learned = integer.float().requires_grad_()
    shaped = linear_cross_entropy(hidden, targets, weight, token_weight=integer)[0]
    flat = linear_cross_entropy(hidden, targets, weight, token_weight=learned.reshape(-1))[0]
    assert torch.allclose(shaped, flat)
    assert torch.autograd.grad(flat, (hidden,))[0] is not None
    assert learned.grad is None


@pytest.mark.parametrize(
    "token_weight,error,match",
    [
        (torch.ones(N, T - 1), ValueError, r"shaped like the targets \(3, 9\) \(or flat, \(27,\)\)"),
        (torch.ones(N * T, 1), ValueError, "shaped like the targets"),
        (torch.ones(N, T, dtype=torch.bool), TypeError, "real tensor"),
        ([1.0] * (N * T), TypeError, "real tensor"),
    ],
)
def test_token_weight_of_the_wrong_shape_or_kind_is_refused(token_weight, error, match):
    hidden, targets, weight, _, _ = make_inputs(bias=False)
    with pytest.raises(error, match=match):
        linear_cross_entropy(hidden, targets, weight, token_weight=token_weight)


# ------------------------------------------------------------------------------------------ the GPU code path on CPU
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 64])
def test_device_path_equals_the_materialised_logits(path, name, chunk_size):
    hidden, targets, weight, bias, _ = make_inputs()
    options = resolve(OPTIONS[name])
    total, _ = linear_cross_entropy(hidden, targets, weight, bias, chunk_size=chunk_size, scale=1 / 7, **options)
    expected, _ = reference_sum(hidden, targets, weight, bias, **options)
    assert torch.allclose(total, expected / 7, rtol=1e-5, atol=0)
    assert_close(grads(total, (hidden, weight, bias)), grads(expected / 7, (hidden, weight, bias)), 2e-5)


def test_device_path_scales_stored_gradients_by_the_incoming_gradient(path):
    hidden, targets, weight, bias, _ = make_inputs()
    total, _ = linear_cross_entropy(hidden, targets, weight, bias, chunk_size=5)
    (total * 3.0).backward()
    expected, _ = reference_sum(hidden, targets, weight, bias)
    assert_close([hidden.grad, weight.grad, bias.grad], [3 * g for g in grads(expected, (hidden, weight, bias))], 1e-5)


def test_device_path_refuses_a_second_backward_with_the_reason(monkeypatch):
    monkeypatch.setattr(kernel, "values_are_free", lambda tensor: False)
    hidden, targets, weight, _, _ = make_inputs(bias=False)
    total, _ = linear_cross_entropy(hidden, targets, weight)
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward through the same graph"):
        total.backward()


def test_device_path_all_ignored_gives_zero_and_zero_gradient(path):
    hidden, targets, weight, bias, _ = make_inputs()
    total, z_total = linear_cross_entropy(hidden, torch.full_like(targets, -100), weight, bias, z_loss=0.1)
    assert total.item() == 0.0 and z_total.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in grads(total, (hidden, weight, bias)))


def test_a_nan_in_an_ignored_row_reaches_neither_the_value_nor_a_gradient(path):
    """A padded position whose hidden state is NaN (a fully masked attention row) must not poison the step."""
    hidden, targets, weight, bias, _ = make_inputs()
    poisoned = hidden.detach().clone()
    poisoned[1, 0] = float("nan")  # targets[1, 0] is ignored
    assert targets[1, 0] == -100
    poisoned.requires_grad_()
    value = linear_cross_entropy(poisoned, targets, weight, bias, z_loss=0.1)[0]
    expected = linear_cross_entropy(hidden, targets, weight, bias, z_loss=0.1)[0]
    assert torch.allclose(value, expected)
    ours = grads(value, (poisoned, weight, bias))
    assert all(torch.isfinite(g).all() for g in ours)
    assert_close(ours, grads(expected, (hidden, weight, bias)), 1e-6)


def test_device_path_under_bf16_autocast_matches_the_cpu_path(monkeypatch):
    hidden, targets, weight, bias, _ = make_inputs(n=4, t=16, h=32, v=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cpu_total, _ = linear_cross_entropy(hidden, targets, weight, bias, chunk_size=8, z_loss=1e-3)
        cpu_grads = grads(cpu_total, (hidden, weight, bias))
        monkeypatch.setattr(kernel, "values_are_free", lambda tensor: False)
        device_total, _ = linear_cross_entropy(hidden, targets, weight, bias, chunk_size=8, z_loss=1e-3)
        device_grads = grads(device_total, (hidden, weight, bias))
    assert torch.allclose(device_total, cpu_total, rtol=1e-6)
    assert_close(device_grads, cpu_grads, 1e-6)
    exact, _ = reference_sum(hidden, targets, weight, bias, z_loss=1e-3)
    assert_close(device_grads, grads(exact, (hidden, weight, bias)), 2e-2)  # bf16 products


def test_device_path_bf16_parameters_give_bf16_gradients_close_to_float32(path):
    hidden, targets, weight, _, _ = make_inputs(n=4, t=16, h=32, v=300, bias=False)
    half = [t.detach().bfloat16().requires_grad_() for t in (hidden, weight)]
    total, _ = linear_cross_entropy(half[0], targets, half[1], chunk_size=8)
    ours = grads(total, half)
    assert all(g.dtype == torch.bfloat16 for g in ours)
    exact, _ = reference_sum(hidden, targets, weight)
    assert torch.allclose(total, exact, rtol=1e-2)
    assert_close(ours, grads(exact, (hidden, weight)), 2e-2)
    (linear_cross_entropy(half[0], targets, half[1], chunk_size=8)[0] * 2).backward()  # scaled while cast
    assert_close([half[1].grad], [2 * g for g in ours[1:]], 1e-2)


def test_device_path_gradcheck_float64_with_every_option(path):
    hidden, targets, weight, bias, token_weight = make_inputs(dtype=torch.float64, n=2, t=4, h=3, v=6)
    options = resolve(OPTIONS["everything"], v=6, dtype=torch.float64)
    if path == "device path":  # a second backward is refused there; gradcheck needs several: compare instead
        total, _ = linear_cross_entropy(
            hidden, targets, weight, bias, chunk_size=3, token_weight=token_weight, **options
        )
        expected, _ = reference_sum(hidden, targets, weight, bias, token_weight=token_weight, **options)
        assert_close(grads(total, (hidden, weight, bias)), grads(expected, (hidden, weight, bias)), 1e-10)
        return

    def value(h, w, b):
        return linear_cross_entropy(h, targets, w, b, chunk_size=3, token_weight=token_weight, **options)[0]

    assert torch.autograd.gradcheck(value, (hidden, weight, bias))


# ------------------------------------------------------------------------------------------ the elementwise core
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("weighted_rows", [False, True])
def test_in_place_and_out_of_place_elementwise_core_agree(name, weighted_rows):
    """The compiled kernel runs the out-of-place form; the eager one the in-place form."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(7, V, generator=generator) * 3
    target = torch.randint(0, V, (7,), generator=generator)
    row_weight = torch.rand(7, generator=generator) if weighted_rows else None
    options = kernel._Options(**{**dict.fromkeys(kernel._Options._fields), **resolve(OPTIONS[name])})
    options = options._replace(
        label_smoothing=options.label_smoothing or 0.0, z_loss=options.z_loss or 0.0, ignore_index=-100
    )
    constants = kernel._Constants.of(options, V, logits.device, torch.float32)
    scale = torch.tensor(0.5)
    kept = softmax_gradient(logits.clone(), target, row_weight, scale, constants, torch.float32, in_place=False)
    overwritten = softmax_gradient(logits.clone(), target, row_weight, scale, constants, torch.float32, in_place=True)
    for a, b in zip(kept, overwritten):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(
    not os.environ.get("HF_LOSSES_TEST_COMPILE"),
    reason="torch.compile on CPU takes minutes; set HF_LOSSES_TEST_COMPILE=1 (the GPU script compiles on CUDA)",
)
def test_compiled_elementwise_core_equals_eager(path):
    hidden, targets, weight, bias, token_weight = make_inputs(n=2, t=40, v=300)
    options = resolve(OPTIONS["everything"], v=300)
    eager = linear_cross_entropy(hidden, targets, weight, bias, chunk_size=32, compile=False, **options)[0]
    compiled = linear_cross_entropy(hidden, targets, weight, bias, chunk_size=32, compile=True, **options)[0]
    assert kernel._COMPILE_STATE["ok"]
    assert torch.allclose(compiled, eager, rtol=1e-6)
    assert_close(grads(compiled, (hidden, weight, bias)), grads(eager, (hidden, weight, bias)), 1e-5)


# ------------------------------------------------------------------------------------------ chunking
def test_default_chunk_size_per_device():
    assert kernel.default_chunk_size(8192, 1024, 32000, "cuda") == 256  # Liger-Kernel's choice
    assert kernel.default_chunk_size(8192, 4096, 128256, "cuda") == 256
    assert kernel.default_chunk_size(65536, 4096, 32000, "cuda") == 4096  # 65536 / ceil(V / H) = 8192, capped
    assert kernel.default_chunk_size(64, 16, 50, "cuda") == 256
    assert kernel.default_chunk_size(8192, 1024, 32000, "cpu") == 512  # 62.5 MiB of float32 logits
    assert kernel.default_chunk_size(2048, 1024, 128000, "cpu") == 256
    assert kernel.default_chunk_size(64, 16, 50, "cpu") == 1024
