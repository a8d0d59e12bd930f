"""causal_lm: chunked token cross-entropy from hidden states equals the loss on materialised logits.

References: transformers' ``ForCausalLMLoss`` on ``hidden @ W.T + b`` (plain options), and the option formulas
written out with torch functions on the full logits (label smoothing and class weights through
``F.cross_entropy``, z-loss ``lse^2``, soft-capping ``c * tanh(x / c)``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.loss.loss_utils import ForCausalLMLoss

from hf_losses import describe_loss, get_loss
from hf_losses.losses.base import HiddenStatesLoss
from hf_losses.losses.language import CausalLMLoss, shift_causal_labels
from hf_losses.losses.linear_cross_entropy import linear_cross_entropy

N, T, H, V = 3, 7, 16, 50


def make_inputs(dtype=torch.float32, seed=0, bias=True, n=N, t=T, h=H, v=V):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, h, generator=generator, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=generator, dtype=dtype) * 0.5).requires_grad_()
    bias_ = (torch.randn(v, generator=generator, dtype=dtype) * 0.1).requires_grad_() if bias else None
    labels = torch.randint(0, v, (n, t), generator=generator)
    labels[0, 2] = -100
    labels[1, :4] = -100
    return hidden, labels, weight, bias_


def reference_loss(
    hidden,
    labels,
    weight,
    bias=None,
    *,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    class_weights=None,
    num_items_in_batch=None,
    shift_labels=None,
):
    """The same loss on materialised float32 logits, written with torch functions."""
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    targets = shift_labels if shift_labels is not None else F.pad(labels[:, 1:], (0, 1), value=-100)
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    per_token = F.cross_entropy(
        flat_logits,
        flat_targets,
        weight=class_weights,
        label_smoothing=label_smoothing,
        ignore_index=-100,
        reduction="none",
    )
    valid = flat_targets != -100
    total = per_token.sum() + z_loss * torch.logsumexp(flat_logits, -1)[valid].square().sum()
    count = num_items_in_batch if num_items_in_batch is not None else valid.sum().clamp(min=1)
    return total / count


def gradients(value, tensors):
    tensors = [t for t in tensors if t is not None]
    return torch.autograd.grad(value, tensors)


def assert_close_relative(actual, expected, tolerance):
    for a, e in zip(actual, expected):
        error = (a.float() - e.float()).abs().max() / e.float().abs().max().clamp(min=1e-12)
        assert error <= tolerance, f"relative error {error:.3g} > {tolerance:g}"


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_loss_and_gradients_equal_transformers_for_causal_lm_loss(chunk_size, with_bias):
    hidden, labels, weight, bias = make_inputs(bias=with_bias)
    loss = get_loss("causal_lm", chunk_size=chunk_size)
    value = loss(hidden, labels, weight=weight, bias=bias)
    logits = hidden @ weight.t() + (bias if bias is not None else 0)
    expected = ForCausalLMLoss(logits, labels, vocab_size=V)
    assert torch.allclose(value, expected, rtol=1e-5, atol=0)
    assert_close_relative(gradients(value, (hidden, weight, bias)), gradients(expected, (hidden, weight, bias)), 1e-5)


def test_num_items_in_batch_divides_like_transformers():
    hidden, labels, weight, _ = make_inputs()
    value = get_loss("causal_lm")(hidden, labels, weight=weight, num_items_in_batch=torch.tensor(40))
    expected = ForCausalLMLoss(hidden @ weight.t(), labels, vocab_size=V, num_items_in_batch=torch.tensor(40))
    assert torch.allclose(value, expected, rtol=1e-5, atol=0)
    # the trainer's per-unit mapping form
    mapped = get_loss("causal_lm")(hidden, labels, weight=weight, num_items_in_batch={"label": 40})
    assert torch.allclose(mapped, expected, rtol=1e-5, atol=0)


# (options, description): each compared with the formula on full logits
OPTION_CASES = [
    ({"label_smoothing": 0.1}, "label smoothing as F.cross_entropy"),
    ({"z_loss": 1e-2}, "PaLM z-loss lse^2"),
    ({"softcap": 2.5}, "Gemma soft-capping"),
    ({"class_weights": [0.5 + (i % 7) / 4 for i in range(V)]}, "class weights over the vocabulary"),
    (
        {
            "class_weights": [0.5 + (i % 5) / 3 for i in range(V)],
            "label_smoothing": 0.2,
            "z_loss": 1e-3,
            "softcap": 4.0,
            "chunk_size": 4,
        },
        "everything at once",
    ),
]


@pytest.mark.parametrize("options,description", OPTION_CASES, ids=[c[1] for c in OPTION_CASES])
def test_options_equal_their_formula_on_full_logits(options, description):
    hidden, labels, weight, bias = make_inputs()
    loss = get_loss("causal_lm", **options)
    value = loss(hidden, labels, weight=weight, bias=bias)
    reference_options = {k: v for k, v in options.items() if k != "chunk_size"}
    if "class_weights" in reference_options:
        reference_options["class_weights"] = torch.tensor(reference_options["class_weights"])
    expected = reference_loss(hidden, labels, weight, bias, **reference_options)
    assert torch.allclose(value, expected, rtol=1e-5, atol=0), description
    assert_close_relative(gradients(value, (hidden, weight, bias)), gradients(expected, (hidden, weight, bias)), 1e-5)


def test_z_loss_component_is_reported_and_is_the_hand_computed_term():
    hidden, labels, weight, _ = make_inputs()
    loss = get_loss("causal_lm", z_loss=1e-2)
    value = loss(hidden, labels, weight=weight)
    targets = shift_causal_labels(labels)
    lse = torch.logsumexp((hidden @ weight.t())[targets != -100], -1)
    expected_z = 1e-2 * lse.square().sum() / (targets != -100).sum()
    assert torch.allclose(loss.last_components["z_loss"], expected_z, rtol=1e-5)
    assert torch.allclose(loss.last_components["cross_entropy"] + loss.last_components["z_loss"], value.detach())


def test_label_smoothing_one_hand_computed_case():
    # one token, V=2, logits (0, 0): lse = log 2; eps=0.5 -> 0.5*log2 + 0.5*(1/2)*(2*log2) = log 2
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    weight = torch.zeros(2, 2)
    labels = torch.tensor([[5 % 2, 1]])
    value = get_loss("causal_lm", label_smoothing=0.5)(hidden, labels, weight=weight)
    assert torch.allclose(value, torch.log(torch.tensor(2.0)))


# ------------------------------------------------------------------------------------------ labels
def test_shift_labels_replace_the_shifted_labels():
    hidden, labels, weight, _ = make_inputs()
    shift_labels = torch.randint(0, V, (N, T), generator=torch.Generator().manual_seed(3))
    shift_labels[2, 3:] = -100
    loss = get_loss("causal_lm")
    value = loss(hidden, labels, weight=weight, shift_labels=shift_labels)
    expected = ForCausalLMLoss(hidden @ weight.t(), labels, vocab_size=V, shift_labels=shift_labels)
    assert torch.allclose(value, expected, rtol=1e-5, atol=0)
    assert_close_relative(gradients(value, (hidden, weight)), gradients(expected, (hidden, weight)), 1e-5)
    assert loss.num_items(labels, shift_labels=shift_labels)["label"] == (shift_labels != -100).sum()


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_no_ignored_position_takes_the_slicing_path_and_stays_exact(chunk_size):
    hidden, _, weight, bias = make_inputs()
    shift_labels = torch.randint(0, V, (N, T), generator=torch.Generator().manual_seed(5))  # every position counts
    value = get_loss("causal_lm", chunk_size=chunk_size)(
        hidden, None, weight=weight, bias=bias, shift_labels=shift_labels
    )
    expected = ForCausalLMLoss(hidden @ weight.t() + bias, None, vocab_size=V, shift_labels=shift_labels)
    assert torch.allclose(value, expected, rtol=1e-5, atol=0)
    assert_close_relative(gradients(value, (hidden, weight, bias)), gradients(expected, (hidden, weight, bias)), 1e-5)


def test_num_items_counts_shifted_non_ignored_tokens():
    labels = torch.tensor([[-100, 4, 5, -100, 6], [1, 2, -100, -100, -100]])
    # shifted targets: [4, 5, -100, 6, pad] and [2, -100, -100, -100, pad] -> 3 + 1
    assert get_loss("causal_lm").num_items(labels) == {"label": torch.tensor(4)}


def test_all_ignored_batch_gives_zero_and_zero_gradient():
    hidden, labels, weight, bias = make_inputs()
    labels = torch.full_like(labels, -100)
    labels[:, 0] = 3  # only first positions valid: shifted away, nothing is predicted
    value = get_loss("causal_lm")(hidden, labels, weight=weight, bias=bias)
    assert value.item() == 0.0 and torch.isfinite(value)
    for grad in gradients(value, (hidden, weight, bias)):
        assert torch.count_nonzero(grad) == 0


def test_custom_ignore_index_is_honoured():
    hidden, labels, weight, _ = make_inputs()
    relabelled = labels.masked_fill(labels == -100, -1)
    value = get_loss("causal_lm", ignore_index=-1)(hidden, relabelled, weight=weight)
    expected = get_loss("causal_lm")(hidden, labels, weight=weight)
    assert torch.allclose(value, expected)


# ------------------------------------------------------------------------------------------ reduction
def test_gradient_equal_across_micro_batches_with_num_items_in_batch():
    hidden, labels, weight, bias = make_inputs(n=4)
    loss = get_loss("causal_lm", chunk_size=5)
    full = gradients(loss(hidden, labels, weight=weight, bias=bias), (hidden, weight, bias))
    total = sum(loss.num_items(labels[i : i + 2])["label"] for i in (0, 2))
    accumulated = None
    for i in (0, 2):
        part = loss(hidden[i : i + 2], labels[i : i + 2], weight=weight, bias=bias, num_items_in_batch=total)
        grads = gradients(part, (hidden, weight, bias))
        accumulated = grads if accumulated is None else [a + g for a, g in zip(accumulated, grads)]
    assert_close_relative(accumulated, full, 1e-5)


# ------------------------------------------------------------------------------------------ precision
def test_gradcheck_float64_with_every_option():
    hidden, labels, weight, bias = make_inputs(dtype=torch.float64, n=2, t=4, h=3, v=6)
    loss = get_loss(
        "causal_lm",
        chunk_size=2,
        label_smoothing=0.1,
        z_loss=0.05,
        softcap=3.0,
        class_weights=[1.0, 0.5, 2.0, 1.5, 0.7, 1.2],
    )
    assert torch.autograd.gradcheck(lambda h, w, b: loss(h, labels, weight=w, bias=b), (hidden, weight, bias))


def test_float64_inputs_are_computed_in_float64():
    hidden, labels, weight, _ = make_inputs(dtype=torch.float64)
    value = get_loss("causal_lm")(hidden, labels, weight=weight)
    assert value.dtype == torch.float64


def test_bf16_autocast_close_to_transformers_under_autocast():
    hidden, labels, weight, _ = make_inputs(n=4, t=16, h=32, v=300)
    loss = get_loss("causal_lm", chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(hidden, labels, weight=weight)
        expected = ForCausalLMLoss(F.linear(hidden, weight), labels, vocab_size=300)
    assert value.dtype == torch.float32
    assert torch.allclose(value, expected, rtol=2e-3)
    exact = ForCausalLMLoss(hidden @ weight.t(), labels, vocab_size=300)
    ours_grads = gradients(value, (hidden, weight))
    assert_close_relative(ours_grads, gradients(expected, (hidden, weight)), 2e-2)
    # and both are bf16-close to the float32 truth
    assert_close_relative(ours_grads, gradients(exact, (hidden, weight)), 2e-2)
    assert all(g.dtype == torch.float32 for g in ours_grads)


def test_bf16_parameters_give_bf16_gradients_close_to_float32():
    hidden, labels, weight, _ = make_inputs(n=4, t=16, h=32, v=300)
    value = get_loss("causal_lm", chunk_size=8)(
        hidden.detach().bfloat16().requires_grad_(), labels, weight=weight.detach().bfloat16().requires_grad_()
    )
    assert value.dtype == torch.float32
    expected = ForCausalLMLoss(hidden @ weight.t(), labels, vocab_size=300)
    assert torch.allclose(value, expected, rtol=1e-2)


# ------------------------------------------------------------------------------------------ memory
class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_never_materialises_the_logits_in_forward_or_backward():
    n, t, h, v, chunk = 4, 32, 8, 1000, 8
    hidden, labels, weight, bias = make_inputs(n=n, t=t, h=h, v=v)
    loss = get_loss("causal_lm", chunk_size=chunk)
    with LargestTensor() as forward_mode:
        value = loss(hidden, labels, weight=weight, bias=bias)
    with LargestTensor() as backward_mode:
        value.backward()
    bound = max(chunk * v, v * h, n * t * h)
    assert forward_mode.largest <= bound < n * t * v
    assert backward_mode.largest <= bound
    # while the materialised path does create N*T*V tensors (so the probe can see them)
    with LargestTensor() as reference_mode:
        ForCausalLMLoss(hidden @ weight.t(), labels, vocab_size=v).backward()
    assert reference_mode.largest >= n * t * v


def test_no_gradients_are_stored_without_autograd():
    hidden, labels, weight, _ = make_inputs()
    with torch.no_grad():
        value = get_loss("causal_lm")(hidden, labels, weight=weight)
    assert value.grad_fn is None
    assert torch.allclose(value, ForCausalLMLoss(hidden @ weight.t(), labels, vocab_size=V).detach(), rtol=1e-5)


def test_frozen_head_gets_no_gradient_and_hidden_gradient_is_unchanged():
    hidden, labels, weight, _ = make_inputs()
    frozen = weight.detach()
    value = get_loss("causal_lm")(hidden, labels, weight=frozen)
    (grad_hidden,) = gradients(value, (hidden,))
    expected = ForCausalLMLoss(hidden @ frozen.t(), labels, vocab_size=V)
    assert_close_relative([grad_hidden], gradients(expected, (hidden,)), 1e-5)


def test_backward_through_a_retained_graph_twice_accumulates_twice():
    hidden, labels, weight, _ = make_inputs()
    value = get_loss("causal_lm")(hidden, labels, weight=weight)
    (value * 3.0).backward(retain_graph=True)
    first = [hidden.grad.clone(), weight.grad.clone()]
    value.backward()
    expected = gradients(ForCausalLMLoss(hidden @ weight.t(), labels, vocab_size=V), (hidden, weight))
    assert_close_relative(first, [3 * g for g in expected], 1e-5)
    assert_close_relative([hidden.grad, weight.grad], [4 * g for g in expected], 1e-5)


def test_functional_core_returns_sum_and_z_part():
    hidden, labels, weight, _ = make_inputs()
    targets = shift_causal_labels(labels)
    total, z_total = linear_cross_entropy(hidden, targets, weight, z_loss=0.1, chunk_size=2)
    logits = (hidden @ weight.t()).reshape(-1, V)
    valid = targets.reshape(-1) != -100
    lse = torch.logsumexp(logits[valid], -1)
    expected = F.cross_entropy(logits, targets.reshape(-1), reduction="sum") + 0.1 * lse.square().sum()
    assert torch.allclose(total, expected, rtol=1e-5)
    assert torch.allclose(z_total, 0.1 * lse.square().sum(), rtol=1e-5)


# ------------------------------------------------------------------------------------------ validation & registry
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 2.5}, TypeError, "chunk_size"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"class_weights": [1.0, -1.0]}, ValueError, "class_weights"),
        ({"chunk_sizes": 4}, ValueError, "did you mean 'chunk_size'"),
    ],
)
def test_constructor_rejects_bad_arguments_naming_them(kwargs, error, match):
    with pytest.raises(error, match=f"(?i){match}"):
        get_loss("causal_lm", **kwargs)


@pytest.mark.parametrize(
    "case,match",
    [
        ("weight_hidden_size", r"weight.*\(V, H\)"),
        ("bias_shape", "bias"),
        ("label_range", r"\[0, 50\)"),
        ("float_labels", "integer token ids"),
        ("label_shape", "labels shape"),
        ("class_weights_length", "class_weights"),
        ("no_labels", "labels"),
    ],
)
def test_call_rejects_bad_inputs_with_clear_messages(case, match):
    hidden, labels, weight, _ = make_inputs()
    loss, kwargs = get_loss("causal_lm"), {"weight": weight}
    if case == "weight_hidden_size":
        kwargs["weight"] = torch.randn(V, H + 1)
    elif case == "bias_shape":
        kwargs["bias"] = torch.randn(V + 1)
    elif case == "label_range":
        labels = labels.clone()
        labels[0, 3] = V
    elif case == "float_labels":
        labels = labels.float()
    elif case == "label_shape":
        labels = labels[:, :-1]
    elif case == "class_weights_length":
        loss = get_loss("causal_lm", class_weights=[1.0] * (V - 1))
    elif case == "no_labels":
        labels = None
    with pytest.raises((ValueError, TypeError), match=match):
        loss(hidden, labels, **kwargs)


def test_registered_with_aliases_and_metadata():
    for name in ("causal_lm", "chunked_causal_lm", "lm_cross_entropy"):
        assert isinstance(get_loss(name), CausalLMLoss)
    description = describe_loss("causal_lm")
    assert {"chunk_size", "label_smoothing", "z_loss", "softcap", "class_weights", "ignore_index"} <= {
        p.name for p in description.parameters
    }
    assert description.item_unit == "label" and description.decomposable
    assert isinstance(get_loss("causal_lm"), HiddenStatesLoss)


def test_calling_with_logits_and_labels_only_asks_for_the_head_weight():
    with pytest.raises(TypeError, match=r"loss 'causal_lm': works from hidden states .*weight=model\.get_output"):
        get_loss("causal_lm")(torch.randn(2, 5), torch.tensor([1, 2]))


def test_losses_module_does_not_import_transformers():
    code = (
        "import sys, torch; from hf_losses.losses.language import CausalLMLoss; "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_float32_equals_transformers_and_bf16_autocast_is_close():
    hidden, labels, weight, bias = make_inputs(n=4, t=64, h=64, v=5000)
    hidden, weight, bias = (t.detach().cuda().requires_grad_() for t in (hidden, weight, bias))
    labels = labels.cuda()
    loss = get_loss("causal_lm", chunk_size=48)
    value = loss(hidden, labels, weight=weight, bias=bias)
    expected = ForCausalLMLoss(F.linear(hidden, weight, bias), labels, vocab_size=5000)
    assert torch.allclose(value, expected, rtol=1e-5, atol=0)
    assert_close_relative(gradients(value, (hidden, weight, bias)), gradients(expected, (hidden, weight, bias)), 1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        value = loss(hidden, labels, weight=weight, bias=bias)
        stock = ForCausalLMLoss(F.linear(hidden, weight, bias), labels, vocab_size=5000)
    assert value.dtype == torch.float32 and torch.allclose(value, stock, rtol=2e-3)
    assert_close_relative(gradients(value, (hidden, weight)), gradients(stock, (hidden, weight)), 3e-2)
