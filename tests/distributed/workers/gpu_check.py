"""LossTrainer on a GPU (run by hand when one is lent; CI has none): the gradient of one optimizer step at
batch 8 x GA 1 and batch 2 x GA 4 equals the full-batch gradient computed on the same device, for each task and a
few losses; bf16 mixed precision trains with finite losses. Prints a pass/fail table.

    PYTHONPATH=.:tests/helpers python tests/distributed/workers/gpu_check.py
Needs torch, transformers, accelerate (no `datasets`: the data is a list of dicts).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from tiny_tasks import GradientCapture, as_batch, build_columns, build_model, flat_grad, relative_error  # noqa: E402

from hf_losses import LossTrainer, LossTrainingArguments, get_loss  # noqa: E402
from hf_losses.tasks import build_task  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False  # float32 exactness: no TF32 matmuls/convolutions
torch.backends.cudnn.allow_tf32 = False
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = [
    ("sequence_classification", "auto"),
    ("sequence_classification", "cross_entropy"),
    ("sequence_classification", "focal"),
    ("token_classification", "cross_entropy"),
    ("causal_lm", "auto"),
    ("causal_lm", "cross_entropy"),
    ("causal_lm", "causal_lm"),
    ("semantic_segmentation", "auto"),
    ("semantic_segmentation", "0.5*cross_entropy+0.5*dice"),
    ("multi_label", "bce"),
    ("regression", "mse"),
]


def rows(task: str, count: int, ignored: bool) -> list[dict]:
    columns = build_columns(task, count, ignored=ignored)
    return [{key: torch.tensor(value[i]) for key, value in columns.items()} for i in range(count)]


def reference(task: str, loss_type: str, ignored: bool) -> torch.Tensor:
    model = build_model(task).to(DEVICE).train()
    batch = {k: v.to(DEVICE) for k, v in as_batch(task, 8, ignored=ignored).items()}
    if loss_type == "auto":
        model(**batch).loss.backward()
    else:
        loss = get_loss("cross_entropy" if loss_type == "causal_lm" else loss_type).to(DEVICE)
        logits, labels = build_task(task, model).read(model(**{k: v for k, v in batch.items() if k != "labels"}), batch)
        loss(logits, labels).backward()
    return flat_grad(model)


def trainer_gradient(
    task: str, loss_type: str, batch: int, accumulation: int, ignored: bool, **overrides
) -> tuple[torch.Tensor, LossTrainer]:
    capture = GradientCapture()
    with tempfile.TemporaryDirectory() as directory:
        options = dict(
            output_dir=directory,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            learning_rate=0.0,
            optim="sgd",
            max_grad_norm=0.0,
            num_train_epochs=1,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            seed=0,
            disable_tqdm=True,
            loss_type=loss_type,
        )
        options.update(overrides)
        trainer = LossTrainer(
            model=build_model(task),
            args=LossTrainingArguments(**options),
            train_dataset=rows(task, 8, ignored),
            callbacks=[capture],
        )
        trainer.train()
    return capture.gradients[0], trainer


def main() -> None:
    print(
        f"device {torch.cuda.get_device_name() if DEVICE.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(f"| {'task':<24} | {'loss':<28} | {'8x1 rel.err':>11} | {'2xGA4 rel.err':>13} | {'bf16 loss':>9} | ok |")
    failures = 0
    for task, loss_type in CASES:
        ignored = not (loss_type == "auto" and task in ("multi_label", "regression"))
        start = time.time()
        exact = reference(task, loss_type, ignored)
        errors = []
        for batch, accumulation in ((8, 1), (2, 4)):
            gradient, trainer = trainer_gradient(task, loss_type, batch, accumulation, ignored)
            assert trainer.args.device.type == DEVICE.type
            errors.append(relative_error(gradient, exact.cpu()))
        bf16_loss = float("nan")
        if DEVICE.type == "cuda":
            _, trainer = trainer_gradient(
                task, loss_type, 2, 2, ignored, bf16=True, learning_rate=1e-2, logging_strategy="steps", logging_steps=1
            )
            bf16_loss = trainer.state.log_history[-1].get("train_loss", float("nan"))
        ok = all(error <= 1e-5 for error in errors) and (DEVICE.type != "cuda" or bf16_loss == bf16_loss)
        failures += not ok
        print(
            f"| {task:<24} | {loss_type:<28} | {errors[0]:11.2e} | {errors[1]:13.2e} | {bf16_loss:9.4f} | "
            f"{'yes' if ok else 'NO'} | {time.time() - start:.1f}s",
            flush=True,
        )
    print("ALL PASS" if failures == 0 else f"{failures} FAILED")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
