"""What happens when a training loss is NaN or infinite (``LossTrainingArguments.nonfinite_loss``).

transformers trains on: the weights become NaN and ``logging_nan_inf_filter`` even hides the value in the logs.
The guard looks at each micro-batch's loss on the device (no host read) and decides once per optimizer step,
on the last micro-batch of the accumulation window and *before* its backward pass: the flags of the window are
summed across processes (one 4-byte all-reduce) and read once -- the Trainer itself reads every micro-batch's
loss for its NaN filter, so no extra wait is added. Every process reaches the same decision.

* ``"raise"``: stop before the optimizer step, with the step, the loss, its components and how many of the
  logits (hidden states for hidden-state losses) were non-finite;
* ``"skip"``: the step's update is dropped on every process (the gradients are discarded, so the optimizer
  leaves the weights and its moments as they were; under fp16 loss scaling the scaler's own overflow skip does
  it); skipped steps are counted and logged as ``nonfinite_skipped_steps``;
* ``"ignore"``: transformers' behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from hf_losses.distributed import sum_across_processes

NONFINITE_MODES = ("raise", "skip", "ignore")


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or infinite and ``nonfinite_loss="raise"``."""


class NonFiniteGuard:
    """Per-window flags of non-finite micro-batch losses and the one decision per optimizer step."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        # a device tensor per micro-batch, or a bool where reading the loss is free (the CPU)
        self.flags: list[Tensor | bool] = []
        self.losses: list[Tensor] = []
        self.window_inputs: list[Mapping[str, Any]] = []
        self.skipped_steps = 0
        self.skip_pending = False

    def observe(self, loss: Tensor, inputs: Mapping[str, Any]) -> None:
        """Keep the micro-batch's non-finite flag (a device tensor; on the CPU, where reading it is free, a bool)
        and its inputs (already held by the Trainer)."""
        loss = loss.detach()
        if loss.device.type == "cpu" and loss.numel() == 1:
            self.flags.append(not math.isfinite(float(loss)))
        else:
            self.flags.append((~torch.isfinite(loss)).any().reshape(1))
        self.losses.append(loss)
        self.window_inputs.append(inputs)

    def window_is_nonfinite(self, world_size: int) -> bool:
        """Whether any micro-batch of the window, on any process, had a non-finite loss (one host read)."""
        on_device = [flag for flag in self.flags if isinstance(flag, Tensor)]
        local = sum(flag for flag in self.flags if not isinstance(flag, Tensor))
        if not on_device and world_size == 1:
            return local > 0
        device = on_device[0].device if on_device else torch.device("cpu")
        count = torch.tensor([local], dtype=torch.int64, device=device)
        if on_device:
            count = count + torch.cat(on_device).sum().to(torch.int64).reshape(1)
        if world_size > 1:
            count = sum_across_processes(count)
        return bool(count.item())

    def first_nonfinite_index(self) -> int:
        """The first local micro-batch with a non-finite loss (0 when this process had none)."""
        for index, flag in enumerate(self.flags):
            if bool(flag.item() if isinstance(flag, Tensor) else flag):
                return index
        return 0

    def reset(self) -> None:
        self.flags.clear()
        self.losses.clear()
        self.window_inputs.clear()


def nonfinite_report(guard: NonFiniteGuard, model: Any, call: Any, plan: Any, step: int, rank: int) -> str:
    """The ``"raise"`` message: where, which loss, which parts, and how much of the model's output was non-finite
    (the first bad micro-batch is run again without gradient to count it; failure path only)."""
    index = guard.first_nonfinite_index()
    components = dict(getattr(plan.loss, "last_components", None) or {})
    values, what = None, "logits"
    try:
        with torch.no_grad():
            inputs = guard.window_inputs[index]
            _, outputs = call.call(model, inputs, None)
            if isinstance(outputs, Mapping) and "last_hidden_state" in outputs and plan.loss is not None:
                values, what = outputs["last_hidden_state"], "final hidden states"
            else:
                values = plan.task.read(outputs, inputs)[0]
    except Exception:  # the report must not hide the original problem
        values = None
    parts = ", ".join(f"{name}={float(value):g}" for name, value in components.items()) or "none"
    return (
        f"LossTrainer: the training loss is not finite at optimizer step {step} (loss '{plan.loss_type}' = "
        f"{float(guard.losses[index]):g} on micro-batch {index} of the window, rank {rank}; components: {parts}); "
        f"{count_nonfinite(values)} {what} are non-finite. Training stopped before the optimizer step "
        f"(nonfinite_loss='raise'). Look for NaN/inf in the inputs or labels, lower the learning rate, or set "
        f"--nonfinite_loss skip to drop such steps (counted in the logs) or ignore to train on."
    )


def count_nonfinite(values: Tensor | None) -> str:
    """``"k of n"`` non-finite entries of ``values`` (failure path only)."""
    if values is None:
        return "an unknown number of"
    bad = int((~torch.isfinite(values.detach())).sum().item())
    return f"{bad} of {values.numel()}"
