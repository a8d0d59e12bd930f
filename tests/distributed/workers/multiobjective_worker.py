"""2-process half of ``test_multiobjective_trainer.py``, run by ``torchrun --nproc_per_node 2``: the two-task
problem of ``multiobjective_problem`` with uncertainty weighting (batch split over processes, with and without
accumulation) and with DWA. Every rank prints one ``RESULT {json}`` line per run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import accelerate  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

torch.set_num_threads(1)
accelerate.Accelerator.free_memory = lambda self, *objects: objects  # gc.collect per train() is slow, frees nothing

from multiobjective_problem import summary, train  # noqa: E402

RUNS = (("uncertainty", 1), ("uncertainty", 2), ("dwa", 1))


def main() -> None:
    max_steps = int(sys.argv[1])
    with tempfile.TemporaryDirectory() as directory:
        for weighting, accumulation in RUNS:
            trainer = train(
                os.path.join(directory, f"{weighting}-{accumulation}"),
                weighting,
                max_steps,
                processes=2,
                accumulation=accumulation,
            )
            result = summary(trainer)
            del result["logged"]  # keep each line short: lines under 4 KiB are written atomically by both ranks
            # the learned state must be identical on every rank (gradients averaged, DWA sums all-reduced)
            state = torch.cat(
                [value.detach().double().reshape(-1).cpu() for value in trainer.loss.state_dict().values()]
            )
            gathered = [torch.zeros_like(state) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, state)
            result.update(
                run=f"{weighting}-{accumulation}",
                rank=dist.get_rank(),
                process_group_size=dist.get_world_size(),
                same_state_on_all_ranks=all(torch.equal(gathered[0], other) for other in gathered),
            )
            print("RESULT " + json.dumps(result), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
