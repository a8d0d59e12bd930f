"""2-process half of the gradient-equality matrix, run by ``torchrun --nproc_per_node 2`` (see
``test_multiprocess_exactness.py``): every case of ``exactness_cases.cases()`` as 2 processes x batch 2 x GA 2 and
2 processes x batch 4 x GA 1 over the same 8 samples, plus a loss with trainable parameters. Rank 0 saves the
gradients to ``argv[1]``; every rank prints one ``RESULT {json}`` line describing what it ran with.

``use_cpu`` and ``ddp_backend`` are left at their defaults on purpose: ``LossTrainingArguments`` must make the
plain command data-parallel on a machine without GPUs.
"""

from __future__ import annotations

import json
import sys
import tempfile

import accelerate  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

torch.set_num_threads(1)
accelerate.Accelerator.free_memory = lambda self, *objects: objects  # gc.collect per train() is slow, frees nothing

from exactness_cases import cases, ignored_labels, kwargs_for, num_classes  # noqa: E402
from tiny_tasks import trainer_gradients  # noqa: E402

CONFIGURATIONS = ((2, 2), (4, 1))
#: a loss with a trainable parameter (uncertainty weighting): its gradient must be reduced across processes
TRAINABLE = (
    "relevance_diversity",
    "sequence_classification",
    {
        "top_k": 2,
        "diversity_weight": 0.3,
        "weighting": "uncertainty",
        "initial_log_variance": 0.2,
        "item_embeddings": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
    },
)


def hidden_states_module_available() -> bool:
    try:
        import hf_losses.trainers.hidden_states  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def main() -> None:
    output = sys.argv[1]
    results: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    seen: dict = {}
    with tempfile.TemporaryDirectory() as directory:
        for loss_type, task in cases():
            for batch, accumulation in CONFIGURATIONS:
                key = f"{loss_type}|{task}|{batch}x{accumulation}"
                if loss_type == "causal_lm" and not hidden_states_module_available():
                    skipped.append(key)
                    continue
                grads, trainer = trainer_gradients(
                    task,
                    loss_type,
                    kwargs_for(loss_type, task),
                    8,
                    batch,
                    accumulation,
                    directory,
                    ignored=ignored_labels(loss_type, task),
                    num_labels=num_classes(task, loss_type),
                    use_cpu=False,
                )
                assert len(grads) == 1, (key, len(grads))
                results[key] = grads[0]
                seen = {
                    "world_size": trainer.args.world_size,
                    "wrapper": type(trainer.model_wrapped).__name__,
                    "distributed_type": str(trainer.accelerator.distributed_type),
                    "use_cpu": trainer.args.use_cpu,
                    "ddp_backend": trainer.args.ddp_backend,
                    "process_group": dist.is_initialized() and dist.get_world_size(),
                }
        # trainable loss parameters: one step of SGD with lr > 0, then compare across ranks
        loss_type, task, kwargs = TRAINABLE
        for batch, accumulation in CONFIGURATIONS:
            from hf_losses import LossTrainer

            grad_key = f"trainable|{batch}x{accumulation}|loss_grad"

            class Capture(LossTrainer):
                def training_step(self, *args, key=grad_key, **kwargs):  # the loss gradients as averaged
                    loss = super().training_step(*args, **kwargs)
                    if self.accelerator.sync_gradients:
                        results[key] = torch.cat([p.grad.detach().reshape(-1).double() for p in self.loss.parameters()])
                    return loss

            grads, trainer = trainer_gradients(
                task,
                loss_type,
                kwargs,
                8,
                batch,
                accumulation,
                directory,
                trainer_class=Capture,
                use_cpu=False,
                learning_rate=0.5,
            )
            results[f"trainable|{batch}x{accumulation}|model_grad"] = grads[0]
            parameters = torch.cat([p.detach().reshape(-1).double() for p in trainer.loss.parameters()])
            gathered = [torch.zeros_like(parameters) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, parameters)
            results[f"trainable|{batch}x{accumulation}|params_after_step"] = parameters
            assert all(torch.equal(gathered[0], other) for other in gathered), "loss parameters diverged across ranks"
            assert "hf_losses_loss." + next(iter(dict(trainer.loss.named_parameters()))) in dict(
                trainer.model.named_parameters()
            )
        # component logging across processes: one optimizer step over the 8 samples, logged at every step
        _, trainer = trainer_gradients(
            "sequence_classification",
            "0.3*cross_entropy+0.7*focal",
            {},
            8,
            2,
            2,
            directory,
            use_cpu=False,
            logging_strategy="steps",
            logging_steps=1,
        )
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    if dist.get_rank() == 0:
        torch.save({"gradients": results, "skipped": skipped, "seen": seen, "logs": logs}, output)
    print("RESULT " + json.dumps({"rank": dist.get_rank(), **seen, "cases": len(results)}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
