"""info_nce against hand-computed values and the InfoNCE / CLIP formula written out as plain loops.
Across processes: tests/distributed/test_batch_losses_multiprocess.py."""

import math

import pytest
import torch

from hf_losses import describe_loss, get_loss
from hf_losses.losses.base import EmbeddingPairLoss
from hf_losses.losses.contrastive import info_nce


def make_pairs(n=6, d=5, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(n, d, generator=generator, dtype=torch.float64)
    keys = queries + 0.8 * torch.randn(n, d, generator=generator, dtype=torch.float64)  # noisy positives
    return queries.to(dtype), keys.to(dtype)


def loop_info_nce(queries, keys, temperature, symmetric, normalize):
    """van den Oord et al. 2018 eq. 4 with in-batch negatives, one pair at a time; CLIP averages both ways."""
    q, k = queries.tolist(), keys.tolist()
    if normalize:
        q = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in q]
        k = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in k]

    def one_direction(a, b):
        total = 0.0
        for i, row in enumerate(a):
            scores = [sum(x * y for x, y in zip(row, other)) / temperature for other in b]
            total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
        return total / len(a)

    forward = one_direction(q, k)
    return 0.5 * (forward + one_direction(k, q)) if symmetric else forward


def test_registered_as_a_batch_loss():
    description = describe_loss("info_nce")
    assert description.decomposable is False and description.item_unit == "sample"
    assert description.label_kind == "embedding" and isinstance(get_loss("info_nce"), EmbeddingPairLoss)
    assert {p.name: p.default for p in description.parameters} == {
        "temperature": 0.07,
        "symmetric": False,
        "normalize": True,
        "across_processes": True,
    }
    queries, keys = make_pairs()
    loss = get_loss("info_nce")
    assert loss.num_items(keys) == {}
    torch.testing.assert_close(loss(queries, keys, num_items_in_batch=1000), loss(queries, keys))


def test_normalize_embeddings_flag_is_not_the_reduction_normalize():
    """The `normalize` parameter (L2-normalise the embeddings) is stored apart from the base class's `normalize`
    ("count" / "weight"): the loss computes, whichever value it holds."""
    queries, keys = make_pairs()
    for flag in (True, False):
        loss = get_loss("info_nce", normalize=flag, temperature=0.5)
        assert loss.normalize == "count" and loss.normalize_embeddings is flag
        expected = loop_info_nce(queries, keys, 0.5, False, flag)
        assert loss(queries, keys).item() == pytest.approx(expected, rel=1e-10)
        assert f"normalize={flag}" in repr(loss)


def test_hand_computed_orthogonal_pairs():
    """Two orthonormal pairs, t = 1: each row is -log(e / (e + 1)) = log(1 + 1/e)."""
    eye = torch.eye(2, dtype=torch.float64)
    value = get_loss("info_nce", temperature=1.0)(eye, eye)
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)
    # t = 0.5 doubles the logits: log(1 + e^-2); the symmetric loss is the same by symmetry
    assert get_loss("info_nce", temperature=0.5, symmetric=True)(eye, eye).item() == pytest.approx(
        math.log(1 + math.exp(-2)), abs=1e-12
    )


def test_hand_computed_unnormalized_dot_products():
    """q = (2, 0), (0, 1); k = (1, 0), (1, 1); t = 1: scores [[2, 2], [0, 1]] ->
    row 0: -2 + log(2 e^2) = log 2, row 1: -1 + log(1 + e)."""
    queries = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    value = get_loss("info_nce", temperature=1.0, normalize=False)(queries, keys)
    assert value.item() == pytest.approx((math.log(2) + (-1 + math.log(1 + math.e))) / 2, abs=1e-12)


@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_equals_plain_loop_formula(temperature, symmetric, normalize):
    queries, keys = make_pairs(seed=int(temperature * 100))
    loss = get_loss("info_nce", temperature=temperature, symmetric=symmetric, normalize=normalize)
    expected = loop_info_nce(queries, keys, temperature, symmetric, normalize)
    assert loss(queries, keys).item() == pytest.approx(expected, rel=1e-10)
    assert info_nce(queries, keys, temperature, symmetric, normalize).item() == pytest.approx(expected, rel=1e-10)


def test_across_processes_false_is_the_same_in_one_process():
    queries, keys = make_pairs()
    torch.testing.assert_close(
        get_loss("info_nce", across_processes=False, symmetric=True)(queries, keys),
        get_loss("info_nce", symmetric=True)(queries, keys),
    )


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcheck_float64(symmetric):
    queries, keys = make_pairs(4, 3)
    loss = get_loss("info_nce", temperature=0.2, symmetric=symmetric)
    assert torch.autograd.gradcheck(lambda q, k: loss(q, k), (queries.requires_grad_(), keys.requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_embeddings_give_float32_close_to_float32(dtype):
    queries, keys = make_pairs(8, 16, dtype=torch.float32)
    loss = get_loss("info_nce", symmetric=True)
    half_queries = queries.to(dtype).requires_grad_()
    value = loss(half_queries, keys.to(dtype))
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(half_queries.grad.float()).all()
    torch.testing.assert_close(value, loss(queries.to(dtype).float(), keys.to(dtype).float()))
    torch.testing.assert_close(value, loss(queries, keys), rtol=0, atol=5e-2)


def test_empty_batch_gives_zero_and_zero_gradient():
    queries = torch.zeros(0, 4, requires_grad=True)
    value = get_loss("info_nce")(queries, torch.zeros(0, 4))
    value.backward()
    assert value.item() == 0.0 and queries.grad.shape == (0, 4)


def test_perfectly_separated_pairs_give_almost_zero_loss():
    eye = torch.eye(8)
    assert get_loss("info_nce", temperature=0.01)(eye, eye).item() < 1e-30


BAD_CONSTRUCTION = [
    ({"temperature": 0.0}, ValueError, "`temperature` must be in (0, inf), got 0"),
    ({"temperature": -1.0}, ValueError, "`temperature` must be in (0, inf), got -1"),
    ({"symmetric": "yes"}, TypeError, "parameter 'symmetric' must be bool"),
    ({"temprature": 0.1}, ValueError, "Did you mean 'temperature'?"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_CONSTRUCTION)
def test_bad_parameters_raise(kwargs, error, message):
    with pytest.raises(error) as info:
        get_loss("info_nce", **kwargs)
    assert message in str(info.value) and "info_nce" in str(info.value)


def test_bad_inputs_raise_naming_the_call_form():
    loss = get_loss("info_nce")
    queries, keys = make_pairs(4, 3, dtype=torch.float32)
    with pytest.raises(
        TypeError,
        match=r"loss 'info_nce': query and key embeddings must be floating-point.*"
        r"integer labels\?",
    ):
        loss(queries, torch.arange(4))
    with pytest.raises(ValueError, match=r"must both be \(N, D\) with the same shape, got \(4, 3\) and \(5, 3\)"):
        loss(queries, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"must both be \(N, D\) with the same shape, got \(4, 3, 1\)"):
        loss(queries.unsqueeze(-1), keys.unsqueeze(-1))
    with pytest.raises(TypeError, match=r"call loss\(query_embeddings, key_embeddings\) with two tensors"):
        loss(queries, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("symmetric", [False, True])
def test_cuda_equals_cpu(symmetric):
    queries, keys = make_pairs(16, 8, dtype=torch.float32)
    loss = get_loss("info_nce", symmetric=symmetric)
    cpu = queries.clone().requires_grad_()
    expected = loss(cpu, keys)
    expected.backward()
    cuda = queries.cuda().requires_grad_()
    value = loss(cuda, keys.cuda())
    value.backward()
    torch.testing.assert_close(value.cpu(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cuda.grad.cpu(), cpu.grad, rtol=1e-4, atol=1e-7)
