"""Worker for test_batch_losses_multiprocess.py: run under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each rank builds the same global batch of 8 (same seeds), keeps its own rows, and computes a batch loss with
statistics over the global batch (``across_processes=True``). Every rank also computes the single-process
reference on all 8 rows (``across_processes=False``, no collective). Printed per case, as ``RESULT {json}``:
the two loss values (rank 0 prints every rank's records), the relative error of the DDP-averaged parameter
gradients of a tiny linear model, and the
relative error of the gradient w.r.t. the rank's own inputs divided by the world size (see
``hf_losses/distributed.py`` for why a rank's input gradient is W times the single-process one).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hf_losses import get_loss
from hf_losses.distributed import (
    all_gather_with_grad,
    all_reduce_sum_with_grad,
    gather_across_processes,
    mean_across_processes,
    process_sizes,
    sum_across_processes,
)

GLOBAL_BATCH = 8
FEATURES, CLASSES, SIDE, EMBEDDING = 3, 3, 4, 5


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp(min=1e-30)).item()


def rows_of_rank(rank: int, split: tuple[int, ...]) -> slice:
    start = sum(split[:rank])
    return slice(start, start + split[rank])


RECORDS: list[dict] = []


def emit(**record) -> None:
    """Collected here and printed by rank 0 at the end (two ranks printing at once interleave their lines)."""
    RECORDS.append(record)


def print_all_records() -> None:
    everything: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(everything, RECORDS)
    if dist.get_rank() == 0:
        for records in everything:
            for record in records:
                print("RESULT " + json.dumps(record), flush=True)


class PixelClassifier(nn.Module):
    """A linear layer applied to every pixel: features (N, H, W, F) -> logits (N, C, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).permute(0, 3, 1, 2)


class DualEncoder(nn.Module):
    """Two linear encoders: query inputs and key inputs -> embeddings (N, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(FEATURES, EMBEDDING)
        self.key = nn.Linear(FEATURES, EMBEDDING)

    def forward(self, query_inputs: torch.Tensor, key_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(query_inputs), self.key(key_inputs)


def compare(
    case: str,
    loss_name: str,
    kwargs: dict,
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor | None,
    split: tuple[int, ...],
) -> None:
    """One case: distributed (DDP, local rows, global statistics) vs single process on the whole batch."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = rows_of_rank(rank, split)
    reference_loss = get_loss(loss_name, across_processes=False, **kwargs)
    distributed_loss = get_loss(loss_name, **kwargs)

    # gradients w.r.t. the model parameters: DDP averages over ranks
    reference_model = copy.deepcopy(model)
    outputs = reference_model(*inputs)
    reference = reference_loss(*outputs) if labels is None else reference_loss(outputs, labels)
    reference.backward()
    ddp = DistributedDataParallel(copy.deepcopy(model))
    assert isinstance(ddp, DistributedDataParallel)
    outputs = ddp(*(x[rows] for x in inputs))
    value = distributed_loss(*outputs) if labels is None else distributed_loss(outputs, labels[rows])
    value.backward()
    parameter_errors = [
        relative_error(p.grad, r.grad) for p, r in zip(ddp.module.parameters(), reference_model.parameters())
    ]

    # control: the same DDP step with local-batch statistics only must NOT match (the check can fail)
    ddp_local = DistributedDataParallel(copy.deepcopy(model))
    outputs = ddp_local(*(x[rows] for x in inputs))
    (reference_loss(*outputs) if labels is None else reference_loss(outputs, labels[rows])).backward()
    local_only_errors = [
        relative_error(p.grad, r.grad) for p, r in zip(ddp_local.module.parameters(), reference_model.parameters())
    ]

    # gradients w.r.t. the inputs of the loss (leaf logits / embeddings), divided by the world size
    with torch.no_grad():
        loss_inputs = model(*inputs)
    loss_inputs = loss_inputs if isinstance(loss_inputs, tuple) else (loss_inputs,)
    full = [x.clone().requires_grad_() for x in loss_inputs]
    local = [x[rows].clone().requires_grad_() for x in loss_inputs]
    reference_value = reference_loss(*full) if labels is None else reference_loss(full[0], labels)
    reference_value.backward()
    local_value = distributed_loss(*local) if labels is None else distributed_loss(local[0], labels[rows])
    local_value.backward()
    input_errors = [relative_error(x.grad / world, r.grad[rows]) for x, r in zip(local, full)]

    emit(
        case=case,
        loss=loss_name,
        rank=rank,
        world_size=world,
        split=list(split),
        value=value.item(),
        reference=reference.item(),
        leaf_value=local_value.item(),
        parameter_error=max(parameter_errors),
        input_error=max(input_errors),
        local_only_parameter_error=max(local_only_errors),
    )


def check_collectives(rank: int, world: int) -> None:
    """Our autograd collectives against torch.distributed.nn.functional (deprecated but independent)."""
    from torch.distributed.nn import functional as reference_collectives

    generator = torch.Generator().manual_seed(100 + rank)
    local = torch.randn(3 + rank, 4, generator=generator).requires_grad_()
    weights = torch.randn(3 + 4 + (world - 1), 4, generator=torch.Generator().manual_seed(7))

    gathered = all_gather_with_grad(local)
    (weights[: gathered.shape[0]] * gathered).sum().backward()
    ours_gather = local.grad.clone()
    local.grad = None
    padded = torch.cat([local, local.new_zeros((world - 1) - rank, 4)])  # reference needs equal sizes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pieces = reference_collectives.all_gather(padded)
    sizes = [3 + r for r in range(world)]
    reference_gathered = torch.cat([p[:s] for p, s in zip(pieces, sizes)])
    (weights[: reference_gathered.shape[0]] * reference_gathered).sum().backward()
    torch.testing.assert_close(gathered, reference_gathered)
    torch.testing.assert_close(ours_gather, local.grad)

    local.grad = None
    (all_reduce_sum_with_grad(local[:3]) ** 2).sum().backward()
    ours_reduce = local.grad.clone()
    local.grad = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        (reference_collectives.all_reduce(local[:3]) ** 2).sum().backward()
    torch.testing.assert_close(ours_reduce, local.grad)

    assert process_sizes(3 + rank) == sizes
    assert sum_across_processes(torch.tensor(rank + 1)).item() == world * (world + 1) // 2
    assert mean_across_processes(float(rank)).item() == (world - 1) / 2
    assert gather_across_processes(torch.full((rank + 1,), rank)).tolist() == [
        r for r in range(world) for _ in range(r + 1)
    ]
    emit(case="collectives", rank=rank, world_size=world, ok=True)


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2 and int(os.environ["WORLD_SIZE"]) == 2, f"expected 2 processes, got {world}"
    torch.manual_seed(0)

    check_collectives(rank, world)

    # segmentation: 8 images of 4 x 4 pixels, 3 classes, some pixels ignored
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(GLOBAL_BATCH, SIDE, SIDE, FEATURES, generator=generator)
    labels = torch.randint(0, CLASSES, (GLOBAL_BATCH, SIDE, SIDE), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.15] = -100
    torch.manual_seed(2)
    pixel_model = PixelClassifier()
    segmentation_cases = [
        ("dice", {"per_image": False}),
        ("tversky", {"per_image": False, "alpha": 0.3, "beta": 0.7}),
        ("generalized_dice", {"per_image": False}),
        ("focal_tversky", {"per_image": False, "gamma": 0.75}),
        ("lovasz", {"per_image": False}),
    ]
    for name, kwargs in segmentation_cases:
        for split in ((4, 4), (5, 3)):
            compare(f"{name}_{split[0]}+{split[1]}", name, kwargs, pixel_model, (features,), labels, split)

    # contrastive: 8 pairs, two linear encoders
    queries = torch.randn(GLOBAL_BATCH, FEATURES, generator=generator)
    keys = queries + 0.5 * torch.randn(GLOBAL_BATCH, FEATURES, generator=generator)
    torch.manual_seed(3)
    encoder = DualEncoder()
    for symmetric in (False, True):
        for split in ((4, 4), (5, 3)):
            compare(
                f"info_nce_{'symmetric' if symmetric else 'one_way'}_{split[0]}+{split[1]}",
                "info_nce",
                {"symmetric": symmetric, "temperature": 0.1},
                encoder,
                (queries, keys),
                None,
                split,
            )

    print_all_records()
    gc.collect()  # free the DDP wrappers (their reducers hold the process group) before tearing it down
    dist.barrier()  # no rank tears gloo down while the other still talks to it ("terminate called ...")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
