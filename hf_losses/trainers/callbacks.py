"""Per-component logging of multi-term losses: ``loss/<name>`` averaged over the logging interval and across
processes, ``loss_weight/<name>`` as the loss reports its current weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback

from hf_losses.distributed import mean_across_processes


class ComponentAverager:
    """Sums ``loss.last_components`` over the micro-batches of a logging interval.

    Each value is added times ``factor`` so that the sum over one optimizer step, averaged over processes, is the
    step's value of that component: ``factor = world_size`` for decomposable losses (each micro-batch holds
    ``local sum / global count``), ``1 / accumulation steps`` for batch-statistic losses (per-batch values).
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.last_logged_step = 0

    def reset(self, step: int) -> None:
        self.sums = {}
        self.last_logged_step = step

    def add(self, components: Mapping[str, Tensor], factor: float) -> None:
        for name, value in components.items():
            value = value.detach().float() * factor
            self.sums[name] = value if name not in self.sums else self.sums[name] + value.to(self.sums[name].device)

    def pop_means(self, step: int, reduce: Callable[[Tensor], Tensor] = mean_across_processes) -> dict[str, float]:
        """``{name: mean per optimizer step}`` since the last call, averaged across processes (a collective: call
        on every rank)."""
        steps = step - self.last_logged_step
        self.last_logged_step = step
        if not self.sums or steps <= 0:
            self.sums = {}
            return {}
        names = sorted(self.sums)
        device = self.sums[names[0]].device
        stacked = torch.stack([self.sums[name].to(device) for name in names])
        self.sums = {}
        values = reduce(stacked).double() / steps
        return {name: float(value) for name, value in zip(names, values.tolist())}


def weights_to_log(loss: Any) -> dict[str, float]:
    """``{"loss_weight/<name>": w}`` from ``loss.component_weights()`` when the loss has it."""
    if loss is None or not hasattr(loss, "component_weights"):
        return {}
    weights = loss.component_weights()
    return {f"loss_weight/{name}": float(value) for name, value in weights.items()}


class LossStateCallback(TrainerCallback):
    """Starts each ``train()`` call with an empty component interval at the current (possibly resumed) step."""

    def __init__(self, averager: ComponentAverager) -> None:
        self.averager = averager

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.averager.reset(state.global_step)
