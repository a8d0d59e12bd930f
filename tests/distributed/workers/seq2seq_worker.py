"""2-process worker of ``tests/distributed/test_seq2seq_multiprocess.py`` (``torchrun --nproc_per_node 2``):
LossSeq2SeqTrainer on tiny T5/BART, 2 processes x batch 2 x GA 2 over the same 8 samples, one optimizer step per
case. Rank 0 prints one ``RESULT {json}`` line per case: what it ran with and the gradient."""

from __future__ import annotations

import json
import tempfile

import accelerate
import torch
import torch.distributed as dist
from seq2seq_models import build_dataset, build_model
from tiny_tasks import GradientCapture, sequential_sampling

from hf_losses import LossSeq2SeqTrainer, LossSeq2SeqTrainingArguments

torch.set_num_threads(1)
accelerate.Accelerator.free_memory = lambda self, *objects: objects  # gc.collect per train() is slow, frees nothing
CASES = [
    ("t5", "cross_entropy", {"label_smoothing": 0.1}, None),
    ("bart", "focal", {"gamma": 2.0}, None),
    ("t5", "cross_entropy", {}, "balanced"),
    ("bart", "auto", {}, None),
]


def run(name: str, loss_type: str, loss_kwargs: dict, class_weights: str | None, output_dir: str) -> dict:
    args = LossSeq2SeqTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=0.0,
        optim="sgd",
        max_grad_norm=0.0,
        num_train_epochs=1,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        **sequential_sampling(),
        disable_tqdm=True,
        dataloader_num_workers=0,
        loss_type=loss_type,
        loss_kwargs=loss_kwargs,
        class_weights=class_weights,
    )
    capture = GradientCapture()
    trainer = LossSeq2SeqTrainer(
        model=build_model(name), args=args, train_dataset=build_dataset(8), callbacks=[capture]
    )
    trainer.train()
    return {
        "case": [name, loss_type, loss_kwargs, class_weights],
        "world_size": trainer.args.world_size,
        "wrapper": type(trainer.model_wrapped).__name__,
        "task": trainer.task.name,
        "steps": len(capture.gradients),
        "class_weight_values": trainer.plan.class_weight_values,
        "gradient": capture.gradients[0].tolist(),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as output_dir:
        for case in CASES:
            record = run(*case, output_dir)
            if dist.get_rank() == 0:
                print("RESULT " + json.dumps(record), flush=True)
    from hf_losses.distributed import shut_down

    shut_down()


if __name__ == "__main__":
    main()
