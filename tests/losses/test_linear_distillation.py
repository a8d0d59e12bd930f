"""causal_lm_distillation (chunked, from hidden states) against the same formula on materialised logits (float64
references), TRL's ChunkedDivergenceFunction, gradcheck, and a dispatch-level check that no ``tokens x vocabulary``
tensor is ever created.

The kernel has two paths: the CPU gathers the predicted rows (their positions are free to read there); on an
accelerator every row goes through with weight 0 when ignored, since reading the positions would be a device->host
sync. The ``path`` fixture runs a test on both, patching where the kernel asks whether reading values is free.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hf_losses import get_loss
from hf_losses.losses import linear_distillation as kernel
from hf_losses.losses.distillation import CausalLMDistillationLoss, per_item_distillation
from hf_losses.losses.linear_distillation import DistillationOptions, linear_distillation


@pytest.fixture(params=["cpu path", "device path"])
def path(request, monkeypatch):
    """The kernel's CPU path (gathering the predicted rows) or its accelerator path (every row, ignored ones 0)."""
    if request.param == "device path":
        monkeypatch.setattr(kernel, "values_are_free", lambda tensor: False)
    return request.param


def make_inputs(n=2, t=9, hidden=8, teacher_hidden=12, vocab=37, bias=False, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    inputs = {
        "hidden_states": randn(n, t, hidden),
        "weight": randn(vocab, hidden),
        "bias": randn(vocab) if bias else None,
        "teacher_hidden_states": randn(n, t, teacher_hidden),
        "teacher_weight": randn(vocab, teacher_hidden),
        "teacher_bias": randn(vocab) if bias else None,
    }
    labels = torch.randint(0, vocab, (n, t), generator=generator)
    labels[0, :3] = -100  # a prompt
    return inputs, labels


def shift(tensor, fill):
    return F.pad(tensor[..., 1:], (0, 1), value=fill)


def full_logits_loss(inputs, labels, sample_weight=None, **options):
    """The formula on materialised logits: hf_losses' per-item distillation of the shifted tokens, / count."""
    logits = inputs["hidden_states"] @ inputs["weight"].t()
    teacher = inputs["teacher_hidden_states"] @ inputs["teacher_weight"].t()
    if inputs["bias"] is not None:
        logits, teacher = logits + inputs["bias"], teacher + inputs["teacher_bias"]
    vocab = logits.shape[-1]
    targets = shift(labels, -100).reshape(-1)
    soft, hard = per_item_distillation(
        logits.reshape(-1, vocab), teacher.detach().reshape(-1, vocab), targets, **options
    )
    items = soft + hard
    if sample_weight is not None:
        items = items * sample_weight.reshape(-1)
    return items.sum() / (targets != -100).sum().clamp(min=1)


def value_and_grads(function, inputs, dtype):
    """``function(inputs)`` with the student's tensors (cast to ``dtype``) requiring grad, and their gradients."""
    cast = {key: None if value is None else value.to(dtype) for key, value in inputs.items()}
    student = [cast[key].requires_grad_() for key in ("hidden_states", "weight", "bias") if cast[key] is not None]
    value = function(cast)
    return value.double(), [grad.double() for grad in torch.autograd.grad(value, student)]


def relative_error(value, reference):
    return ((value - reference).abs().max() / reference.abs().max().clamp(min=1e-30)).item()


def chunked(loss, labels, **extra):
    def call(inputs):
        return loss(
            inputs["hidden_states"], labels, **{k: v for k, v in inputs.items() if k != "hidden_states"}, **extra
        )

    return call


# ------------------------------------------------------------------------------------------------ exactness
MATRIX = list(itertools.product([1.0, 2.0], [0.0, 0.5, 1.0], [0.0, 0.5, 1.0], [False, True], [3, 64, None]))


@pytest.mark.parametrize(("temperature", "alpha", "beta", "bias", "chunk_size"), MATRIX)
def test_equals_the_formula_on_materialised_logits(temperature, alpha, beta, bias, chunk_size, path):
    inputs, labels = make_inputs(bias=bias, seed=int(100 * temperature + 10 * alpha + 4 * beta + bias))
    options = {"temperature": temperature, "alpha": alpha, "beta": beta}
    loss = get_loss("causal_lm_distillation", chunk_size=chunk_size, **options)
    reference, reference_grads = value_and_grads(
        lambda x: full_logits_loss(x, labels, **options), inputs, torch.float64
    )
    # float64: the same numbers up to rounding
    value, grads = value_and_grads(chunked(loss, labels), inputs, torch.float64)
    assert relative_error(value, reference) < 1e-12
    assert max(relative_error(g, r) for g, r in zip(grads, reference_grads)) < 1e-11
    # float32: as close to the exact value as the materialised formula computed in float32 is
    value, grads = value_and_grads(chunked(loss, labels), inputs, torch.float32)
    assert relative_error(value, reference) < 1e-6
    assert max(relative_error(g, r) for g, r in zip(grads, reference_grads)) < 1e-5


@pytest.mark.parametrize("per_token", [False, True])
def test_class_weights_smoothing_and_sample_weights_inside_the_kernel(per_token, path):
    inputs, labels = make_inputs(bias=True, seed=3)
    class_weights = (torch.rand(37, generator=torch.Generator().manual_seed(4)) + 0.5).tolist()
    options = {"temperature": 2.0, "alpha": 0.4, "beta": 0.5, "label_smoothing": 0.1}
    generator = torch.Generator().manual_seed(5)
    sample_weight = torch.rand((2, 9) if per_token else (2,), generator=generator, dtype=torch.float64)
    # per-token weights sit on the labels and are shifted with them; per-sequence weights cover every token
    aligned = shift(sample_weight, 0.0) if per_token else sample_weight[:, None].expand(2, 9)
    reference, reference_grads = value_and_grads(
        lambda x: full_logits_loss(x, labels, aligned, weight=torch.tensor(class_weights), **options),
        inputs,
        torch.float64,
    )
    loss = get_loss("causal_lm_distillation", chunk_size=4, class_weights=class_weights, **options)
    value, grads = value_and_grads(chunked(loss, labels, sample_weight=sample_weight), inputs, torch.float64)
    assert relative_error(value, reference) < 1e-12
    assert max(relative_error(g, r) for g, r in zip(grads, reference_grads)) < 1e-11


def test_equals_the_logits_loss_on_the_materialised_logits():
    inputs, labels = make_inputs(seed=6, dtype=torch.float32)
    options = {"temperature": 1.5, "alpha": 0.7, "beta": 0.2}
    logits = inputs["hidden_states"] @ inputs["weight"].t()
    teacher = inputs["teacher_hidden_states"] @ inputs["teacher_weight"].t()
    logits_loss = get_loss("distillation", **options)
    expected = logits_loss(
        logits.reshape(-1, 37), shift(labels, -100).reshape(-1), teacher_logits=teacher.reshape(-1, 37)
    )
    value = chunked(get_loss("causal_lm_distillation", **options), labels)(inputs)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_pure_distillation_equals_trl_chunked_divergence_times_t_squared(beta, temperature):
    chunked_divergence = pytest.importorskip("trl.kernels.chunked_divergence")
    inputs, labels = make_inputs(bias=True, seed=7, dtype=torch.float32)
    targets = shift(labels, -100).reshape(-1)
    valid = targets != -100

    def trl(x):
        divergence, _ = chunked_divergence.ChunkedDivergenceFunction.apply(
            x["hidden_states"].reshape(-1, 8)[valid],
            x["weight"],
            x["bias"],
            x["teacher_hidden_states"].reshape(-1, 12)[valid],
            x["teacher_weight"],
            x["teacher_bias"],
            beta,
            temperature,
        )
        return temperature**2 * divergence.sum() / valid.sum()

    reference, reference_grads = value_and_grads(trl, inputs, torch.float32)
    loss = get_loss("causal_lm_distillation", alpha=1.0, beta=beta, temperature=temperature, chunk_size=5)
    value, grads = value_and_grads(chunked(loss, labels), inputs, torch.float32)
    assert relative_error(value, reference) < 1e-6
    assert max(relative_error(g, r) for g, r in zip(grads, reference_grads)) < 1e-5


def test_gradcheck_in_float64():
    inputs, labels = make_inputs(n=1, t=5, hidden=3, teacher_hidden=4, vocab=6, bias=True, seed=8)
    targets = shift(labels, -100)
    options = DistillationOptions(temperature=1.7, alpha=0.6, beta=0.3, label_smoothing=0.1, chunk_size=2)
    teacher = (inputs["teacher_hidden_states"], inputs["teacher_weight"], inputs["teacher_bias"])
    row_weights = torch.rand(1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def function(hidden, weight, bias):
        return linear_distillation(
            hidden, targets, weight, bias, *teacher, row_weights=row_weights, options=options, scale=0.25
        )[0]

    student = [inputs[key].clone().requires_grad_() for key in ("hidden_states", "weight", "bias")]
    assert torch.autograd.gradcheck(function, student)


# ------------------------------------------------------------------------------------------------ memory
class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any operation creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return output


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_no_tokens_by_vocabulary_tensor_is_ever_created(beta):
    inputs, labels = make_inputs(
        n=4, t=32, hidden=4, teacher_hidden=6, vocab=50, bias=True, seed=10, dtype=torch.float32
    )
    student = [inputs[key].requires_grad_() for key in ("hidden_states", "weight", "bias")]
    loss = get_loss("causal_lm_distillation", temperature=2.0, alpha=0.5, beta=beta, label_smoothing=0.1, chunk_size=8)
    with LargestTensor() as mode:
        value = chunked(loss, labels)(inputs)
        value.backward()
    assert all(tensor.grad is not None for tensor in student)
    largest_input = max(value.numel() for value in inputs.values())  # the teacher's hidden states, 4 x 32 x 6
    # one chunk's logits (8 x 50) or an input's copy / gradient; the logits of all 128 tokens would be 6400
    assert mode.largest <= max(8 * 50, largest_input) < 128 * 50


# ------------------------------------------------------------------------------------------------ contract
def test_labels_are_shifted_unless_shift_labels_are_given_and_token_weights_with_them():
    inputs, labels = make_inputs(seed=11)
    loss = get_loss("causal_lm_distillation", beta=0.5)
    token_weight = torch.rand(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    from_labels = chunked(loss, labels, sample_weight=token_weight)(inputs)
    from_shifted = chunked(loss, None, shift_labels=shift(labels, -100), sample_weight=shift(token_weight, 0.0))(inputs)
    assert from_labels.item() == pytest.approx(from_shifted.item(), rel=1e-12)


def test_divides_by_num_items_in_batch_as_the_trainer_gives_it():
    inputs, labels = make_inputs(seed=13)
    loss = get_loss("causal_lm_distillation")
    local = chunked(loss, labels)(inputs)
    count = loss.num_items(labels, sample_weight=torch.ones(2))["label"]
    assert count.item() == 14  # 2 x 8 predicted positions; the prompt's labels 1 and 2 are -100
    for given in (40, torch.tensor(40), {"label": torch.tensor(40)}):
        value = chunked(loss, labels, num_items_in_batch=given)(inputs)
        assert value.item() == pytest.approx(local.item() * 14 / 40, rel=1e-12)


def test_all_ignored_gives_zero_and_zero_gradients(path):
    inputs, labels = make_inputs(seed=14)
    value, grads = value_and_grads(
        chunked(get_loss("causal_lm_distillation"), torch.full_like(labels, -100)), inputs, torch.float32
    )
    assert value.item() == 0.0 and all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_nan_hidden_states_at_ignored_positions_reach_nothing(path):
    """A padded position's hidden states can be NaN (attention saw nothing): ignored, they must not reach the value
    or a gradient -- on the device path they go through the chunks with weight 0, so they are zeroed first."""
    inputs, labels = make_inputs(seed=16, bias=True)
    options = {"temperature": 2.0, "alpha": 0.5, "beta": 0.5}
    reference, reference_grads = value_and_grads(
        lambda x: full_logits_loss(x, labels, **options), inputs, torch.float64
    )
    inputs, labels = make_inputs(seed=16, bias=True)  # fresh tensors (the reference made those require grad)
    # labels[0, :3] are ignored: the (shifted) targets of positions 0 and 1 of sequence 0
    for key in ("hidden_states", "teacher_hidden_states"):
        inputs[key][0, :2] = float("nan")
    loss = get_loss("causal_lm_distillation", chunk_size=4, **options)
    value, grads = value_and_grads(chunked(loss, labels), inputs, torch.float64)
    assert relative_error(value, reference) < 1e-12
    # the NaN rows' own gradient is 0 (ignored), every other entry as without the NaN
    assert all(torch.isfinite(g).all() for g in grads)
    assert max(relative_error(g, r) for g, r in zip(grads[1:], reference_grads[1:])) < 1e-11


def test_the_teacher_gets_no_gradient():
    inputs, labels = make_inputs(bias=True, seed=15)
    for value in inputs.values():
        value.requires_grad_()
    chunked(get_loss("causal_lm_distillation"), labels)(inputs).backward()
    assert all(inputs[key].grad is not None for key in ("hidden_states", "weight", "bias"))
    assert all(inputs[key].grad is None for key in ("teacher_hidden_states", "teacher_weight", "teacher_bias"))


def test_last_components_split_the_value():
    inputs, labels = make_inputs(seed=16)
    loss = get_loss("causal_lm_distillation", alpha=0.25, beta=0.5)
    value = chunked(loss, labels)(inputs)
    soft = chunked(get_loss("causal_lm_distillation", alpha=1.0, beta=0.5), labels)(inputs)
    assert loss.last_components["distillation"].item() == pytest.approx(0.25 * soft.item(), rel=1e-12)
    total = loss.last_components["distillation"] + loss.last_components["cross_entropy"]
    assert total.item() == pytest.approx(value.item(), rel=1e-12)


def test_bfloat16_autocast_runs_the_products_in_bfloat16_and_the_softmax_in_float32():
    inputs, labels = make_inputs(seed=17, dtype=torch.float32)
    loss = get_loss("causal_lm_distillation", beta=0.5)
    rounded = {k: None if v is None else v.bfloat16().float() for k, v in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, grads = value_and_grads(chunked(loss, labels), inputs, torch.float32)
    reference, _ = value_and_grads(lambda x: full_logits_loss(x, labels, beta=0.5), rounded, torch.float32)
    assert value.dtype == torch.float64 and all(torch.isfinite(g).all() for g in grads)
    assert value.item() == pytest.approx(reference.item(), rel=2e-2)


# ------------------------------------------------------------------------------------------------ errors
def test_a_call_without_the_teacher_or_the_head_says_what_to_give():
    inputs, labels = make_inputs()
    loss = get_loss("causal_lm_distillation")
    with pytest.raises(TypeError, match=r"needs the teacher's final hidden states and LM head"):
        loss(inputs["hidden_states"], labels, weight=inputs["weight"])
    with pytest.raises(TypeError, match=r"works from hidden states and the LM heads.*for logits use 'distillation'"):
        loss(inputs["hidden_states"], labels)


def test_student_and_teacher_with_different_vocabularies_or_positions_are_refused():
    inputs, labels = make_inputs()
    loss = get_loss("causal_lm_distillation")
    with pytest.raises(ValueError, match=r"student and teacher disagree on the vocabulary: weight \(37, 8\)"):
        loss(
            inputs["hidden_states"],
            labels,
            weight=inputs["weight"],
            teacher_hidden_states=inputs["teacher_hidden_states"],
            teacher_weight=torch.zeros(40, 12, dtype=torch.float64),
        )
    with pytest.raises(ValueError, match=r"must cover the student's positions"):
        loss(
            inputs["hidden_states"],
            labels,
            weight=inputs["weight"],
            teacher_hidden_states=inputs["teacher_hidden_states"][:, :5],
            teacher_weight=inputs["teacher_weight"],
        )
    with pytest.raises(ValueError, match=r"`teacher_weight` is the teacher's LM head weight \(V, H'\) with H'=12"):
        loss(
            inputs["hidden_states"],
            labels,
            weight=inputs["weight"],
            teacher_hidden_states=inputs["teacher_hidden_states"],
            teacher_weight=inputs["weight"],
        )


def test_sample_weights_of_the_wrong_shape_are_refused():
    inputs, labels = make_inputs()
    with pytest.raises(ValueError, match=r"`sample_weight` shape \(3,\) fits neither one weight per example"):
        chunked(get_loss("causal_lm_distillation"), labels, sample_weight=torch.ones(3))(inputs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"chunk_size": 0}, r"`chunk_size` must be a positive int"),
        ({"temperature": -1.0}, r"`temperature` must be in \(0, inf\)"),
        ({"alpha": 2.0}, r"`alpha` must be in \[0, 1\]"),
    ],
)
def test_parameters_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=r"loss 'causal_lm_distillation': " + message):
        CausalLMDistillationLoss(**kwargs)
