"""2-process DeepSpeed ZeRO-2 run of the two-task problem with uncertainty weighting (CPU, gloo), launched by
``test_multiobjective_trainer.py`` as ``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml
--num_processes 2 <this file> STEPS``: the learned log-variances must reach DeepSpeed's optimizer. Every rank
prints one ``RESULT {json}`` line.
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


def main() -> None:
    max_steps = int(sys.argv[1])
    with tempfile.TemporaryDirectory() as directory:
        trainer = train(os.path.join(directory, "deepspeed"), "uncertainty", max_steps, processes=2)
        result = summary(trainer)
        del result["logged"]
        engine = trainer.model_wrapped
        state = torch.cat([value.detach().double().reshape(-1).cpu() for value in trainer.loss.state_dict().values()])
        gathered = [torch.zeros_like(state) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, state)
        result.update(
            rank=dist.get_rank(),
            distributed_type=str(trainer.accelerator.distributed_type),
            engine=type(engine).__name__,
            zero_stage=int(engine.zero_optimization_stage()),
            same_state_on_all_ranks=all(torch.equal(gathered[0], other) for other in gathered),
        )
        print("RESULT " + json.dumps(result), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
