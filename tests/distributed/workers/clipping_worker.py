"""2-process DDP worker on CPU (gloo): gradient clipping and bf16 with LossTrainer.

Launched ONCE by tests/distributed/test_clipping_precision.py as
``accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml --num_processes 2 <this file>``.
"""

from __future__ import annotations

import os
import sys
import tempfile

import deepspeed_support as support
import torch

from hf_losses.distributed import shut_down

# (name, max_grad_norm): the raw norm of this step is ~1.55, so 0.05 clips and 1000 does not
CLIPPING_CASES = [("ddp_clip_small", 0.05), ("ddp_clip_none_needed", 1000.0)]


def clipping_case(name: str, max_grad_norm: float, output_dir: str) -> dict:
    from hf_losses import LossTrainer

    task = "token_classification"
    args = support.training_arguments(
        os.path.join(output_dir, name), max_grad_norm=max_grad_norm, loss_type="cross_entropy"
    )
    probe = support.ClippedNormProbe()
    trainer = LossTrainer(
        model=support.build_model(task),
        args=args,
        train_dataset=support.build_dataset(task),
        callbacks=[probe.callback()],
    )
    trainer.train()
    return {
        "case": name,
        **support.describe_run(trainer),
        "max_grad_norm": max_grad_norm,
        "seen_norms": probe.seen_norms,
        "logged_grad_norm": support.logged(trainer, "grad_norm"),
        "reference_norm": float(support.reference_gradient(task, "cross_entropy").norm()),
    }


def bf16_case(output_dir: str) -> dict:
    from hf_losses import LossTrainer

    task = "token_classification"
    args = support.training_arguments(
        os.path.join(output_dir, "ddp_bf16"),
        bf16=True,
        learning_rate=1e-2,
        max_steps=3,
        gradient_accumulation_steps=1,
        max_grad_norm=1.0,
        loss_type="cross_entropy",
    )
    model = support.build_model(task)
    logits_dtypes: list[str] = []
    model.classifier.register_forward_hook(
        lambda module, inputs, output: logits_dtypes.append(str(output.dtype).replace("torch.", ""))
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer = LossTrainer(model=model, args=args, train_dataset=support.build_dataset(task))
    trainer.train()
    after = list(trainer.model.parameters())
    return {
        "case": "ddp_bf16",
        **support.describe_run(trainer),
        "losses": support.logged(trainer, "loss"),
        "logits_dtypes": sorted(set(logits_dtypes)),
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "weights_changed": any(not torch.equal(b, a.detach()) for b, a in zip(before, after)),
        "weights_finite": all(bool(torch.isfinite(a).all()) for a in after),
    }


def main() -> None:
    torch.set_num_threads(1)
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as output_dir:
        for name, max_grad_norm in CLIPPING_CASES:
            if not only or name in only:
                record = clipping_case(name, max_grad_norm, output_dir)
                if support.is_main():
                    support.emit(record)
        if not only or "ddp_bf16" in only:
            record = bf16_case(output_dir)
            if support.is_main():
                support.emit(record)


if __name__ == "__main__":
    main()
    shut_down()
