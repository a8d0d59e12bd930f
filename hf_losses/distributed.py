"""Collective operations for losses: the one module of hf-losses that talks to ``torch.distributed``.

Two kinds of operation live here:

* **Differentiable** -- :func:`all_reduce_sum_with_grad` and :func:`all_gather_with_grad`. Losses that need
  whole-batch statistics (batch Dice, generalized Dice, Tversky, Lovasz over the batch, in-batch-negative
  contrastive losses) use them to compute the statistic over the *global* batch with gradients flowing back
  to every rank. ``accelerate.utils.gather`` / ``reduce`` are not differentiable (they return tensors cut
  from the graph), and ``torch.distributed.nn.functional`` is deprecated in torch 2.13 (a ``FutureWarning`` on
  every call, its suggested replacement is a private module), so the two autograd functions are written out
  here; their backward is the same as torch's: a sum over ranks.
* **Non-differentiable** -- :func:`sum_across_processes`, :func:`mean_across_processes`,
  :func:`gather_across_processes`: counts and running averages (e.g. the trainer's ``num_items_in_batch``).

Every function is a no-op (identity, or a one-element list) when ``torch.distributed`` is not initialized,
so a loss built on them works unchanged in a plain single-process loop.

Why the gradient of a global batch loss is exact under DDP
----------------------------------------------------------
Let rank ``r`` hold local statistics ``S_r`` (sums over its part of the batch) and let every rank compute
the same loss ``L = f(S)`` of the global sum ``S = sum_r S_r`` obtained with :func:`all_reduce_sum_with_grad`.
On each rank autograd sends the upstream gradient ``g = dL/dS`` into the all-reduce; its backward sums the
``W`` identical upstream gradients, so rank ``r`` back-propagates ``W * g`` into ``S_r`` and obtains
``W * dL/dtheta|_r`` (the part of the gradient that flows through its own inputs). DDP (like DeepSpeed and
FSDP) then *averages* the parameter gradients over the ``W`` ranks:
``(1/W) * sum_r W * dL/dtheta|_r = sum_r dL/dtheta|_r = dL/dtheta`` -- exactly the gradient of one process
that saw the whole batch. The same holds for :func:`all_gather_with_grad` (its backward sums, over ranks, the
gradients that every rank sends to each gathered slice). Two consequences: the gradient w.r.t. a rank's own
*inputs* (logits, embeddings) is ``W`` times the single-process one -- the factor that DDP's averaging
cancels -- and a trainer must not multiply such a loss by ``W`` (only decomposable losses, divided by a
global item count, need that). ``tests/distributed/test_batch_losses_multiprocess.py`` checks both facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_with_grad",
    "all_reduce_sum_with_grad",
    "gather_across_processes",
    "is_distributed",
    "mean_across_processes",
    "process_sizes",
    "shut_down",
    "rank",
    "sum_across_processes",
    "world_size",
]


def is_distributed() -> bool:
    """True when a default process group with more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without an initialized process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without an initialized process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _collective_device(tensor: Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU (and CUDA) tensors."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


# ------------------------------------------------------------------------------------------ differentiable
class _AllReduceSum(torch.autograd.Function):
    """Forward: sum over ranks. Backward: sum over ranks of the upstream gradients (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        output = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(output, op=dist.ReduceOp.SUM)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _AllGather(torch.autograd.Function):
    """Forward: concatenate every rank's rows (uneven sizes allowed). Backward: the sum over ranks of the
    gradient each rank sends to this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, sizes: list[int]) -> Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        largest = max(sizes)
        padded = tensor.new_zeros((largest,) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded.contiguous())
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # All-reduce of the whole gathered gradient then the local slice: a reduce-scatter that also works
        # on gloo and with uneven sizes (the gathered tensor is a batch of embeddings or statistics, small).
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def all_reduce_sum_with_grad(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all processes, differentiable (backward: sum over ranks); identity when not
    distributed. Every rank gets the same result."""
    if not is_distributed():
        return tensor
    device = _collective_device(tensor)
    return _AllReduceSum.apply(tensor.to(device)).to(tensor.device)


def process_sizes(local_size: int, device: torch.device | str = "cpu") -> list[int]:
    """The first-dimension size of every rank's tensor, in rank order (``[local_size]`` when not distributed)."""
    if not is_distributed():
        return [int(local_size)]
    size = torch.tensor([int(local_size)], dtype=torch.long, device=device)
    size = size.to(_collective_device(size))
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def all_gather_with_grad(tensor: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (rank order), differentiable; identity when not distributed.

    Ranks may hold different numbers of rows (e.g. the last batch of an epoch); pass ``sizes`` (from
    :func:`process_sizes`) when you already know them, to save one collective. The rows of this rank start at
    ``sum(sizes[:rank()])``.
    """
    if not is_distributed():
        return tensor
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    sizes = list(sizes) if sizes is not None else process_sizes(tensor.shape[0], tensor.device)
    if sizes[rank()] != tensor.shape[0]:
        raise ValueError(
            f"all_gather_with_grad: `sizes[{rank()}]`={sizes[rank()]} but this rank's tensor has "
            f"{tensor.shape[0]} rows."
        )
    device = _collective_device(tensor)
    return _AllGather.apply(tensor.to(device), sizes).to(tensor.device)


# ------------------------------------------------------------------------------------------ non-differentiable
def sum_across_processes(value: Tensor | int | float) -> Tensor:
    """Sum of a number or tensor over all processes, detached (counts, statistics); a tensor even when not
    distributed."""
    tensor = value.detach().clone() if isinstance(value, Tensor) else torch.tensor(value)
    if not is_distributed():
        return tensor
    original_device = tensor.device
    tensor = tensor.to(_collective_device(tensor))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.to(original_device)


def mean_across_processes(value: Tensor | int | float) -> Tensor:
    """Mean of a number or tensor over all processes, detached (floating point)."""
    tensor = value.detach() if isinstance(value, Tensor) else torch.tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.double()
    return sum_across_processes(tensor) / world_size()


def gather_across_processes(tensor: Tensor) -> Tensor:
    """Every rank's rows concatenated along dim 0 (uneven sizes allowed), detached."""
    tensor = tensor.detach()
    if not is_distributed():
        return tensor
    with torch.no_grad():
        return all_gather_with_grad(tensor)


def shut_down() -> None:
    """End a distributed run cleanly: barrier, then destroy the process group (no-op when none exists).

    Without the barrier a rank that finishes first tears gloo down while the other still talks to it, and the
    process aborts at exit ("terminate called without an active exception") after its work is done.
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
