"""2-process half of the data-weight exactness tests (``test_data_weights_multiprocess.py``), run by
``torchrun --nproc_per_node 2``: every case of ``test_data_weights_exactness.CASES`` as 2 processes x batch 2 x GA 2
over the same 8 weighted examples. Rank 0 saves the gradients to ``argv[1]``; every rank prints a ``RESULT`` line
with what it ran with."""

from __future__ import annotations

import json
import sys
import tempfile

import accelerate
import torch
import torch.distributed as dist

torch.set_num_threads(1)
accelerate.Accelerator.free_memory = lambda self, *objects: objects  # gc.collect per train() is slow, frees nothing

from tiny_tasks import trainer_gradients  # noqa: E402
from weighted_data import CASES, loss_kwargs, weight_columns  # noqa: E402


def main() -> None:
    output = sys.argv[1]
    results: dict[str, torch.Tensor] = {}
    seen: dict = {}
    with tempfile.TemporaryDirectory() as directory:
        for loss_type, task, kinds, normalize, class_weights in CASES:
            key = f"{loss_type}|{task}|{'+'.join(kinds)}|{normalize}|{class_weights is not None}"
            grads, trainer = trainer_gradients(
                task,
                loss_type,
                loss_kwargs(loss_type, normalize, class_weights),
                8,
                2,
                2,
                directory,
                extra_columns=weight_columns(task, kinds, 8),
                use_cpu=False,
            )
            assert len(grads) == 1, (key, len(grads))
            results[key] = grads[0]
            seen = {
                "world_size": trainer.args.world_size,
                "wrapper": type(trainer.model_wrapped).__name__,
                "distributed_type": str(trainer.accelerator.distributed_type),
                "process_group": dist.is_initialized() and dist.get_world_size(),
                "dtype": str(next(trainer.model.parameters()).dtype),
            }
    if dist.get_rank() == 0:
        torch.save(results, output)
    print("RESULT " + json.dumps({"rank": dist.get_rank(), **seen, "cases": len(results)}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
