"""2-process worker of ``tests/distributed/test_nonfinite_multiprocess.py`` (``torchrun --nproc_per_node 2``): only
rank 1 sees a NaN loss, on the first micro-batch of optimizer step 2 (batch 2 x GA 2, 3 steps). Runs
``nonfinite_loss="raise"``, ``"skip"`` and ``"ignore"``; every rank prints one ``RESULT {json}`` line per mode:
what it ran with, whether it raised (and the message), and the weights after each step.
"""

from __future__ import annotations

import json
import tempfile

import accelerate
import torch
import torch.distributed as dist
from tiny_tasks import build_dataset, build_model, training_arguments
from transformers import TrainerCallback

torch.set_num_threads(1)
accelerate.Accelerator.free_memory = lambda self, *objects: objects  # gc.collect per train() is slow, frees nothing
TASK = "sequence_classification"


class Snapshots(TrainerCallback):
    def __init__(self) -> None:
        self.values: list[list[float]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.values.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().tolist())


def nan_on_rank_one(model: torch.nn.Module) -> None:
    """NaN logits on rank 1's third training forward, and on the re-run the error report makes of it."""
    calls = {"n": 0}

    def hook(module, args, output):
        if not module.training:
            return output
        if torch.is_grad_enabled():
            calls["n"] += 1
        bad = calls["n"] == 3 or not torch.is_grad_enabled()
        return output * float("nan") if dist.get_rank() == 1 and bad else output

    model.classifier.register_forward_hook(hook)


def run(mode: str, output_dir: str) -> dict:
    from hf_losses import LossTrainer
    from hf_losses.trainers.nonfinite import NonFiniteLossError

    args = training_arguments(
        output_dir, 2, 2, loss_type="cross_entropy", nonfinite_loss=mode, learning_rate=0.1, max_steps=3, use_cpu=False
    )
    model = build_model(TASK)
    nan_on_rank_one(model)
    snapshots = Snapshots()
    trainer = LossTrainer(
        model=model, args=args, train_dataset=build_dataset(TASK, 16, ignored=False), callbacks=[snapshots]
    )
    record = {"mode": mode, "rank": dist.get_rank(), "world_size": trainer.args.world_size, "raised": None}
    try:
        trainer.train()
    except NonFiniteLossError as error:
        record["raised"] = str(error)
    record["wrapper"] = type(trainer.model_wrapped).__name__
    record["snapshots"] = snapshots.values
    record["skipped"] = 0 if trainer._guard is None else trainer._guard.skipped_steps
    return record


def main() -> None:
    with tempfile.TemporaryDirectory() as output_dir:
        for mode in ("raise", "skip", "ignore"):
            print("RESULT " + json.dumps(run(mode, output_dir)), flush=True)
    from hf_losses.distributed import shut_down

    shut_down()


if __name__ == "__main__":
    main()
