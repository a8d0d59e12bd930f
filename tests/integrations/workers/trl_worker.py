"""2-process worker of ``tests/integrations/test_trl.py``: ``torchrun --nproc_per_node 2 trl_worker.py``; rank 0
prints one ``RESULT {json}`` line per case (world size, wrapper, gradient before the optimizer step, step loss,
LM-head output shapes) for ``LossSFTTrainer`` with ``causal_lm`` at 2 processes x batch 2 x 2 accumulation steps.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/integrations: the test module's helpers

from test_trl import CASES_2PROC, step_log, train  # noqa: E402
from tiny_lm import build_tokenizer  # noqa: E402


def worker() -> None:
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory() as output_dir:
        for case, (kind, model, options) in CASES_2PROC.items():
            gradient, trainer, shapes = train(
                tokenizer, Path(output_dir), kind, 2, 2, model=model, loss_type="causal_lm", **options
            )
            record = {
                "case": case,
                "world_size": trainer.args.world_size,
                "wrapper": type(trainer.model_wrapped).__name__,
                "gradient": gradient.tolist(),
                "loss": step_log(trainer)["loss"],
                "head_shapes": shapes,
            }
            if int(os.environ.get("RANK", "0")) == 0:
                print("RESULT " + json.dumps(record), flush=True)
    from hf_losses.distributed import shut_down

    shut_down()


if __name__ == "__main__":
    worker()
