"""No loss makes the host wait for the accelerator: every registered loss runs forward and backward on the device
path without one device->host synchronisation.

There is no GPU in CI, so the device is simulated on the CPU (:class:`SimulatedDevice`):

* every tensor reports ``device`` ``cuda:0`` (``is_cuda`` True), so each "is this on the CPU?" decision in the
  losses takes its device branch, wherever it is written;
* a ``TorchFunctionMode`` sends any tensor that code asks to put on ``cuda`` to the CPU, and fails on every Python
  call that reads a tensor's value on the host (``item``, ``tolist``, ``bool()``, ``float()``, ``int()``, indexing
  with a boolean mask, ``nonzero``, ``unique``, ``torch.equal``, ``.cpu()``...);
* a ``TorchDispatchMode`` fails on the operators that synchronise inside C++ code (``aten._local_scalar_dense``,
  ``aten.nonzero``, ``aten.masked_select``, ``aten.unique*``, ``aten.equal``, ...), forward and backward. Two
  operators are exempt because they synchronise on the CPU only: ``torch._assert_async`` (a queued device assert
  on CUDA) and ``F.one_hot`` (CUDA relies on its scatter's device assert).

``test_guard_catches_every_kind_of_host_sync`` proves the guard fails on each kind of sync (a guard that passes
everything would prove nothing); the loss tests then run every registered loss under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from hf_losses import describe_loss, get_loss, list_losses
from hf_losses.losses.base import CUDA_RANGE_CHECKED_CALLS, HiddenStatesLoss
from hf_losses.losses.linear_cross_entropy import linear_cross_entropy

SIMULATED = torch.device("cuda", 0)


class HostSyncError(AssertionError):
    """A loss read a device tensor's value on the host (a device->host synchronisation on a real GPU)."""


# Python-level calls that read values on the host
_SYNC_FUNCTIONS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.__complex__,
    torch.Tensor.cpu,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.argwhere,
    torch.argwhere,
    torch.Tensor.masked_select,
    torch.masked_select,
    torch.Tensor.unique,
    torch.unique,
    torch.unique_consecutive,
    torch.Tensor.unique_consecutive,
    torch.equal,
    torch.Tensor.equal,
    torch.allclose,
    torch.Tensor.allclose,
    torch.is_nonzero,
    torch.Tensor.is_nonzero,
    torch.bincount,
    torch.Tensor.bincount,
}
# operators that synchronise inside C++ (what the Python calls above and boolean indexing reach)
_SYNC_OPERATORS = {
    "_local_scalar_dense",
    "item",
    "nonzero",
    "argwhere",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
    "is_nonzero",
    "bincount",
}
# torch functions that synchronise on the CPU only (on CUDA they rely on a device assert)
_CPU_ONLY_SYNCS = {torch._assert_async, F.one_hot, torch._C._nn.one_hot}


def _to_cpu(value: Any) -> Any:
    """A device argument naming the simulated GPU, sent to the CPU; anything else unchanged."""
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("cpu")
    if isinstance(value, str) and (value == "cuda" or value.startswith("cuda:")):
        return "cpu"
    return value


def _explicit_host_copy(func: Callable, args: tuple, kwargs: dict) -> bool:
    """``tensor.to("cpu")`` / ``.to(device="cpu")``: a device->host copy on a real GPU."""
    if func is not torch.Tensor.to:
        return False
    targets = list(args[1:2]) + [kwargs.get("device")]
    return any(
        (isinstance(t, torch.device) and t.type == "cpu") or (isinstance(t, str) and t.startswith("cpu"))
        for t in targets
    )


def _host_data_to_device(func: Callable, args: tuple, kwargs: dict) -> bool:
    """``torch.tensor(python_data, device="cuda")``: a copy from pageable host memory, which waits for the stream."""
    if func not in (torch.tensor, torch.as_tensor, torch.asarray):
        return False
    device = kwargs.get("device", args[2] if func is torch.as_tensor and len(args) > 2 else None)
    on_gpu = (isinstance(device, torch.device) and device.type == "cuda") or (
        isinstance(device, str) and device.startswith("cuda")
    )
    data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
    return on_gpu and not isinstance(data, torch.Tensor)


def _boolean_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(item, torch.Tensor) and item.dtype == torch.bool for item in items)


class _FunctionGuard(TorchFunctionMode):
    def __init__(self, exempt: list[int]) -> None:
        super().__init__()
        self.exempt = exempt

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
        if func in _SYNC_FUNCTIONS or _explicit_host_copy(func, args, kwargs):
            raise HostSyncError(f"host sync: {name}")
        if _host_data_to_device(func, args, kwargs):
            raise HostSyncError(f"host sync: {name} of Python data onto the GPU (the copy waits for the stream)")
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and _boolean_index(args[1]):
            raise HostSyncError(f"host sync: {name} with a boolean mask (nonzero)")
        if func is torch.where and len(args) + len(kwargs) == 1:
            raise HostSyncError("host sync: torch.where(condition) (nonzero)")
        if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and "output_size" not in kwargs:
            if len(args) > 1 and isinstance(args[1], torch.Tensor):
                raise HostSyncError("host sync: repeat_interleave with tensor repeats and no output_size")
        args = tuple(_to_cpu(a) for a in args)
        kwargs = {k: _to_cpu(v) for k, v in kwargs.items()}
        if func in _CPU_ONLY_SYNCS:
            self.exempt.append(1)
            try:
                return func(*args, **kwargs)
            finally:
                self.exempt.pop()
        return func(*args, **kwargs)


class _DispatchGuard(TorchDispatchMode):
    def __init__(self, exempt: list[int]) -> None:
        super().__init__()
        self.exempt = exempt

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in _SYNC_OPERATORS and not self.exempt:
            raise HostSyncError(f"host sync: aten.{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def simulated_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tensors report ``cuda:0`` and every host read fails (see the module docstring)."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "device", property(lambda self: SIMULATED))
        patch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
        patch.setattr(torch.Tensor, "is_cpu", property(lambda self: False), raising=False)
        exempt: list[int] = []
        with _DispatchGuard(exempt), _FunctionGuard(exempt):
            yield


def backward(value: torch.Tensor) -> None:
    """``value.backward()`` through the engine itself: ``Tensor.backward`` would switch the function guard off for
    the backward pass (a mode is suspended while it handles a call)."""
    torch.autograd.graph._engine_run_backward(
        (value,), (torch.ones_like(value),), False, False, (), allow_unreachable=True, accumulate_grad=True
    )


# ------------------------------------------------------------------------------------------ the guard itself
SYNCS = {
    "item": lambda x, m: x.sum().item(),
    "tolist": lambda x, m: x.tolist(),
    "bool": lambda x, m: bool(x.any()),
    "if tensor": lambda x, m: 1 if (x > 0).all() else 0,
    "float": lambda x, m: float(x.sum()),
    "int": lambda x, m: int(x.sum()),
    "index with a tensor": lambda x, m: [0, 1, 2][x.argmax()],
    "boolean mask": lambda x, m: x[m],
    "boolean mask assignment": lambda x, m: x.clone().__setitem__(m, 0.0),
    "masked_select": lambda x, m: x.masked_select(m),
    "nonzero": lambda x, m: m.nonzero(),
    "where(condition)": lambda x, m: torch.where(m),
    "unique": lambda x, m: x.round().unique(),
    "equal": lambda x, m: torch.equal(x, x),
    "allclose": lambda x, m: torch.allclose(x, x),
    "to cpu": lambda x, m: x.to("cpu"),
    "cpu()": lambda x, m: x.cpu(),
    "numpy": lambda x, m: x.numpy(),
    "aminmax tolist (the old label check)": lambda x, m: torch.stack(x.aminmax()).tolist(),
    "cross_entropy + item": lambda x, m: F.cross_entropy(x[None], torch.tensor([1])).item(),
    "Python number onto the GPU": lambda x, m: x * torch.tensor(2.0, device=x.device),
    "as_tensor of a float onto the GPU": lambda x, m: torch.as_tensor(0.5, dtype=x.dtype, device=x.device),
}


@pytest.mark.parametrize("kind", list(SYNCS))
def test_guard_catches_every_kind_of_host_sync(monkeypatch, kind):
    x = torch.tensor([0.5, -1.0, 2.0])
    mask = torch.tensor([True, False, True])
    with simulated_device(monkeypatch), pytest.raises(HostSyncError):
        SYNCS[kind](x, mask)


def test_guard_catches_a_host_read_inside_a_backward_pass(monkeypatch):
    class ReadsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2 if bool((grad == 1).all()) else grad

    with simulated_device(monkeypatch):
        value = ReadsInBackward.apply(torch.ones(3, requires_grad=True)).sum()
        with pytest.raises(HostSyncError):
            backward(value)


def test_simulated_tensors_report_the_gpu_and_factories_still_work(monkeypatch):
    with simulated_device(monkeypatch):
        x = torch.zeros(3, device="cuda")
        y = torch.ones(2, device=torch.device("cuda", 0)).to(x.device)
        assert x.device.type == "cuda" and y.is_cuda
        assert (x.sum() + y.sum()).device == SIMULATED
        torch._assert_async(torch.tensor(True))  # exempt: queued on the device on CUDA


# ------------------------------------------------------------------------------------------ every registered loss
N, C, SPATIAL, VOCAB, HIDDEN = 4, 3, (5, 6), 11, 8
REQUIRED = {
    "class_balanced": {"samples_per_class": [50, 20, 5]},
    "ldam": {"samples_per_class": [50, 20, 5]},
    "cost_sensitive": {"cost_matrix": [[0.0, 1.0, 4.0], [2.0, 0.0, 1.0], [8.0, 3.0, 0.0]]},
    "composite": {"components": {"cross_entropy": {}, "dice": {}}, "weights": {"cross_entropy": 0.5, "dice": 0.5}},
    "relevance_diversity": {
        "top_k": 2,
        "diversity_weight": 0.3,
        "popularity_weight": 0.1,
        "item_popularity": [3.0, 2.0, 1.0],
        "item_embeddings": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],
    },
}
#: losses on label maps (N, H, W); the others get (N,) labels
SPATIAL_LOSSES = {"dice", "generalized_dice", "tversky", "focal_tversky", "lovasz", "lovasz_hinge", "composite"}
TWO_CLASS_LOSSES = {"fn_penalty"}
ONE_CHANNEL_LOSSES = {"lovasz_hinge"}
#: options whose code paths differ (weighted means, unreduced losses, the hidden-states kernel's options)
OPTION_CASES = [
    ("cross_entropy", {"normalize": "weight", "weight": [1.0, 2.0, 0.5]}, True),
    ("cross_entropy", {"reduction": "none"}, False),
    ("cross_entropy", {"label_smoothing": 0.1}, True),
    ("causal_lm", {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0, "chunk_size": 5}, False),
    ("causal_lm", {"class_weights": [0.5 + i / 10 for i in range(VOCAB)]}, True),
    ("0.5*cross_entropy+0.5*dice", {}, True),
]


def _teacher(name: str, first: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The teacher's outputs a distillation loss is called with."""
    if name == "distillation":
        return {"teacher_logits": torch.randn(first.shape, generator=generator)}
    if name == "causal_lm_distillation":
        return {
            "teacher_hidden_states": torch.randn(first.shape, generator=generator),
            "teacher_weight": torch.randn(VOCAB, first.shape[-1], generator=generator),
        }
    return {}


def _logits_inputs(name: str, kind: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(first input, second input) of the right kind for the logits loss ``name``, with ignored entries."""
    classes = 1 if name in ONE_CHANNEL_LOSSES else 2 if name in TWO_CLASS_LOSSES else C
    spatial = SPATIAL if name in SPATIAL_LOSSES else ()
    logits = torch.randn((N, classes) + spatial, generator=generator)
    if kind == "index":
        labels = torch.randint(0, max(classes, 2), (N,) + spatial, generator=generator)
        labels.view(-1)[::5] = -100
        return logits, labels
    if kind == "binary":
        targets = (torch.rand(logits.shape, generator=generator) < 0.4).float()
        targets.view(-1)[::7] = -100.0
        return logits, targets
    if kind == "target":
        return logits, torch.randn(logits.shape, generator=generator)
    if kind == "embedding":
        return torch.randn(N, 8, generator=generator), torch.randn(N, 8, generator=generator)
    raise AssertionError(f"no inputs for label kind {kind!r} of loss {name!r}: add them to this test")


def prepare_step(name: str, loss: torch.nn.Module, with_count: bool, device: str = "cpu") -> Callable[[], None]:
    """What a training step does with a loss, its inputs made (on ``device``) beforehand: the item count, forward,
    backward."""
    generator = torch.Generator().manual_seed(0)
    base_name = name if name in list_losses() else "composite"
    if isinstance(loss, HiddenStatesLoss):
        first = torch.randn(2, 6, HIDDEN, generator=generator)
        weight = torch.randn(VOCAB, HIDDEN, generator=generator)
        second = torch.randint(0, VOCAB, (2, 6), generator=generator)
        second[0, :2] = -100
        call = {"weight": weight, **_teacher(base_name, first, generator)}
    else:
        first, second = _logits_inputs(base_name, describe_loss(base_name).label_kind, generator)
        call = _teacher(base_name, first, generator)
    first, second = first.to(device).requires_grad_(), second.to(device)
    call = {key: value.to(device).requires_grad_(key == "weight") for key, value in call.items()}
    tensors = (first, call["weight"]) if "weight" in call else (first,)
    loss.to(device)

    def step() -> None:
        if with_count:  # the trainer's count: loss.num_items on the device labels, a mapping of device tensors
            call["num_items_in_batch"] = {unit: count * 2 for unit, count in loss.num_items(second).items()}
        value = loss(first, second, **call)
        backward(value.sum() if value.dim() > 0 else value)
        assert all(t.grad is not None for t in tensors)

    return step


#: losses known to synchronise, with the reason; each is an expected failure until it is fixed
#: losses known to synchronise (none today); listed here they are expected failures until fixed
KNOWN_SYNCS: dict[str, str] = {}


def _cases() -> list[tuple[str, dict, bool]]:
    cases = []
    for name in list_losses():
        cases.append((name, {}, False))
        if describe_loss(name).decomposable:
            cases.append((name, {}, True))
    return cases + OPTION_CASES


def _param(case: tuple) -> Any:
    reason = KNOWN_SYNCS.get(case[0])
    marks = [pytest.mark.xfail(raises=HostSyncError, reason=reason, strict=False)] if reason else []
    return pytest.param(case, id=_case_id(case), marks=marks)


def _case_id(case: tuple) -> str:
    name, options, with_count = case
    described = ",".join(f"{k}={v}" for k, v in options.items() if k not in ("weight", "class_weights"))
    described += ",weights" if {"weight", "class_weights"} & set(options) else ""
    return name + (f"[{described.strip(',')}]" if options else "") + ("+num_items_in_batch" if with_count else "")


CASES = _cases()


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_forward_and_backward_never_synchronise(monkeypatch, case):
    name, options, with_count = case
    loss = get_loss(name, **{**REQUIRED.get(name, {}), **options})  # construction may read values: not a step
    step = prepare_step(name, loss, with_count)
    with simulated_device(monkeypatch):
        step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_on_a_real_gpu_forward_and_backward_never_synchronise(case):
    """The same steps on CUDA under ``torch.cuda.set_sync_debug_mode("error")``, after one warm-up step (a first
    ``torch.compile`` may synchronise while it tunes)."""
    name, options, with_count = case
    step = prepare_step(name, get_loss(name, **{**REQUIRED.get(name, {}), **options}), with_count, "cuda")
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    except RuntimeError as error:
        if "synchroniz" not in str(error):
            raise
        raise HostSyncError(str(error)) from error
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_kernel_with_token_weights_and_every_option_never_synchronises(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, HIDDEN, generator=generator).requires_grad_()
    weight = torch.randn(VOCAB, HIDDEN, generator=generator).requires_grad_()
    targets = torch.randint(0, VOCAB, (2, 6), generator=generator)
    targets[0, :2] = -100
    options = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0, "class_weights": torch.rand(VOCAB) + 0.5}
    with simulated_device(monkeypatch):
        total, z_total = linear_cross_entropy(
            hidden, targets, weight, token_weight=torch.rand(2, 6), chunk_size=4, scale=torch.tensor(0.1), **options
        )
        backward(total * 2.0)
        z_total.detach()
    assert hidden.grad is not None and weight.grad is not None


# ------------------------------------------------------------------------------------------ label range on the device
@pytest.mark.parametrize(
    "name,first,second,message",
    [
        ("cross_entropy", torch.randn(4, 3), torch.tensor([0, 3, 1, -100]), r"`labels` must be in \[0, 3\)"),
        ("dice", torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), -1), r"`labels` must be in \[0, 3\)"),
        ("bce", torch.randn(4, 3), torch.full((4, 3), 2.0), r"`labels` must be targets in \[0, 1\]"),
        ("mse", torch.randn(4, 3), torch.full((4, 3), float("nan")), "`labels` must be finite regression targets"),
    ],
)
def test_bad_labels_are_a_device_assert_naming_the_loss(monkeypatch, name, first, second, message):
    """On the device the range check is ``torch._assert_async`` with the message (CUDA prints it with its device-side
    assert); run on the CPU, the same call raises it at once, which shows the message travels with it."""
    loss = get_loss(name)
    with simulated_device(monkeypatch), pytest.raises(RuntimeError, match=f"loss '{name}': {message}"):
        loss(first, second)


@pytest.mark.parametrize("name", ["cross_entropy", "focal"])
def test_on_cuda_kernel_checked_losses_queue_their_range_check_on_the_first_calls_only(monkeypatch, name):
    """After ``CUDA_RANGE_CHECKED_CALLS`` calls the kernels' own device asserts guard the range (their passes over
    the labels cost a quarter of cross-entropy's memory traffic); dice, whose kernels are not trusted, checks on
    every call."""
    queued: list[str] = []
    real_assert = torch._assert_async
    monkeypatch.setattr(torch, "_assert_async", lambda ok, message="": (queued.append(message), real_assert(ok))[1])
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    loss, dice = get_loss(name), get_loss("dice")
    per_call, dice_per_call = [], []
    with simulated_device(monkeypatch):
        for _ in range(CUDA_RANGE_CHECKED_CALLS + 4):
            before = len(queued)
            backward(loss(logits.clone().requires_grad_(), labels, num_items_in_batch=32))
            per_call.append(len(queued) - before)
            before = len(queued)
            dice(logits, labels)
            dice_per_call.append(len(queued) - before)
        bad = labels.clone()
        bad[1, 2, 3] = 7
        with pytest.raises(RuntimeError):  # simulated: the CPU kernel refuses (CUDA: its device-side assert)
            loss(logits, bad)
    assert per_call == [1] * CUDA_RANGE_CHECKED_CALLS + [0] * 4
    assert all(n >= 1 for n in dice_per_call)
    assert all("`labels` must be in [0, 3)" in m for m in queued)


def test_causal_lm_token_ids_out_of_range_are_a_device_assert(monkeypatch):
    hidden, weight = torch.randn(1, 4, HIDDEN), torch.randn(VOCAB, HIDDEN)
    with simulated_device(monkeypatch), pytest.raises(RuntimeError, match=r"token ids in \[0, 11\) or ignore_index"):
        get_loss("causal_lm")(hidden, torch.tensor([[1, 2, VOCAB, 3]]), weight=weight)


def test_on_the_cpu_bad_labels_stay_a_value_error_with_the_bad_value():
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 3\) or ignore_index=-100; found 3\."):
        get_loss("cross_entropy")(torch.randn(4, 3), torch.tensor([0, 3, 1, -100]))
    with pytest.raises(ValueError, match=r"targets in \[0, 1\] or ignore_index=-100; found nan\."):
        get_loss("bce")(torch.randn(2, 2), torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))


def test_kernel_with_a_python_number_as_scale_never_copies_it_from_the_host(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, HIDDEN, generator=generator).requires_grad_()
    weight = torch.randn(VOCAB, HIDDEN, generator=generator).requires_grad_()
    targets = torch.randint(0, VOCAB, (2, 6), generator=generator)
    with simulated_device(monkeypatch):
        total, _ = linear_cross_entropy(hidden, targets, weight, scale=0.25)
        backward(total)
