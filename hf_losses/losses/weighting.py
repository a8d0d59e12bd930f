"""Weights of a multi-objective loss: step schedules, uncertainty weighting and dynamic weight averaging.

A multi-objective loss ``L = sum_i w_i * L_i`` names its components; :class:`ComponentWeighting` holds everything
that decides the ``w_i`` and is shared by ``composite`` and ``relevance_diversity``:

* a static weight per component (``0.5`` in ``"0.5*cross_entropy + 0.5*dice"``);
* an optional :class:`WeightSchedule` per component that *multiplies* the static weight and follows the step set by
  :meth:`ComponentWeighting.set_step` (``LossTrainer`` calls ``loss.set_step(state.global_step)`` before every
  forward; in a plain loop call it once per optimizer step);
* a weighting strategy:

  - ``"fixed"``: ``L = sum_i w_i(t) L_i``.
  - ``"uncertainty"`` (Kendall, Gal and Cipolla, CVPR 2018): one learned log-variance ``s_i`` per component,
    ``L = sum_i w_i(t) * (exp(-s_i) * L_i + s_i)``. The ``s_i`` are ``nn.Parameter`` s of the loss, trained by the
    same optimizer as the model; at the optimum ``exp(-s_i) = 1 / L_i``, so a noisier task (larger irreducible loss)
    gets a smaller weight.
  - ``"dwa"`` (dynamic weight averaging, Liu, Johns and Davison, CVPR 2019):
    ``lambda_i = K * softmax_i(r_i / T)`` with ``r_i = Lbar_i(p-1) / Lbar_i(p-2)`` the ratio of the component's
    mean loss over the last two *periods* of ``dwa_period_steps`` optimizer steps (the paper uses epochs),
    ``L = sum_i w_i(t) * lambda_i * L_i``; ``lambda_i = 1`` until two periods have been seen. The running sums are
    all-reduced across processes at every training call, so every rank holds the same state (and a checkpoint
    written by rank 0 is exact for all ranks).

Decomposability: the uncertainty regulariser ``s_i`` is added once per optimizer step, not once per micro-batch
and process: each call adds ``s_i * (local items / num_items_in_batch)`` of component ``i``, which sums to ``s_i``
over the accumulation window and the processes (see :meth:`ComponentWeighting.combine`).

All state (step, learned log-variances, DWA running sums) lives in buffers/parameters, so ``state_dict()`` and
``load_state_dict()`` carry it through ``resume_from_checkpoint``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hf_losses.distributed import sum_across_processes
from hf_losses.losses.checks import check_choice, check_int, check_number

Weighting = Literal["fixed", "uncertainty", "dwa"]
WEIGHTINGS = ("fixed", "uncertainty", "dwa")
SCHEDULE_KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class WeightSchedule:
    """A weight multiplier as a function of the optimizer step.

    * ``constant``: ``start_value`` at every step.
    * ``linear``: ``start_value`` up to ``start_step``, then a straight line to ``end_value`` at ``end_step``,
      ``end_value`` afterwards.
    * ``cosine``: same end points, half-cosine ramp
      ``start + (end - start) * (1 - cos(pi * t)) / 2`` with ``t = (step - start_step) / (end_step - start_step)``.

    Written in a config as ``{"schedule": "linear", "start_value": 0.0, "end_value": 0.5, "start_step": 0,
    "end_step": 1000}`` (``{"schedule": "constant", "value": 0.3}`` for a constant).
    """

    kind: str = "constant"
    start_value: float = 1.0
    end_value: float = 1.0
    start_step: int = 0
    end_step: int = 0

    def value(self, step: int) -> float:
        """The multiplier at optimizer step ``step``."""
        if self.kind == "constant" or step <= self.start_step:
            return self.start_value
        if step >= self.end_step:
            return self.end_value
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        if self.kind == "cosine":
            progress = (1.0 - math.cos(math.pi * progress)) / 2.0
        return self.start_value + (self.end_value - self.start_value) * progress

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "constant":
            return {"schedule": "constant", "value": self.start_value}
        return {
            "schedule": self.kind,
            "start_value": self.start_value,
            "end_value": self.end_value,
            "start_step": self.start_step,
            "end_step": self.end_step,
        }

    @classmethod
    def from_config(cls, owner: str, name: str, config: Any) -> WeightSchedule:
        """Parse and validate a schedule given as a number (constant), a dict or a ``WeightSchedule``."""
        where = f"schedules['{name}']"
        if isinstance(config, WeightSchedule):
            config = config.to_dict()
        if isinstance(config, (int, float)) and not isinstance(config, bool):
            return cls("constant", check_number(owner, where, config), check_number(owner, where, config))
        if not isinstance(config, Mapping):
            raise TypeError(
                f"{owner}: `{where}` must be a number or a dict such as {{'schedule': 'linear', "
                f"'start_value': 0.0, 'end_value': 0.5, 'start_step': 0, 'end_step': 1000}}, "
                f"got {config!r}."
            )
        config = dict(config)
        kind = check_choice(owner, f"{where}['schedule']", config.pop("schedule", None), SCHEDULE_KINDS)
        if kind == "constant":
            allowed = ("value",)
            value = check_number(owner, f"{where}['value']", config.pop("value", 1.0))
            schedule = cls("constant", value, value)
        else:
            allowed = ("start_value", "end_value", "start_step", "end_step")
            missing = [key for key in allowed if key not in config]
            if missing:
                raise ValueError(
                    f"{owner}: `{where}` ({kind} schedule) is missing {missing}; give "
                    f"start_value, end_value, start_step and end_step."
                )
            start_value = check_number(owner, f"{where}['start_value']", config.pop("start_value"))
            end_value = check_number(owner, f"{where}['end_value']", config.pop("end_value"))
            steps = [
                check_int(owner, f"{where}['{key}']", config.pop(key), minimum=0) for key in ("start_step", "end_step")
            ]
            if steps[1] <= steps[0]:
                raise ValueError(
                    f"{owner}: `{where}` needs end_step > start_step, got start_step={steps[0]}, end_step={steps[1]}."
                )
            schedule = cls(kind, start_value, end_value, steps[0], steps[1])
        if config:
            raise ValueError(
                f"{owner}: `{where}` has unknown keys {sorted(config)}; a {kind} schedule takes "
                f"'schedule' and {list(allowed)}."
            )
        return schedule


class ComponentWeighting(nn.Module):
    """Static weights x step schedules x a weighting strategy, for components named ``names``.

    State (in ``state_dict``): ``step``; ``log_variances`` (uncertainty, a trainable parameter); DWA buffers
    ``dwa_sums``/``dwa_counts`` (running sums of the current period), ``dwa_history`` (means of the last two
    periods, NaN until seen), ``dwa_period`` (index of the current period) and ``dwa_lambdas`` (current factors).
    """

    def __init__(
        self,
        owner: str,
        names: Sequence[str],
        weights: Mapping[str, float],
        schedules: Mapping[str, Any] | None = None,
        weighting: str = "fixed",
        temperature: float = 2.0,
        dwa_period_steps: int = 100,
        initial_log_variance: float = 0.0,
        weight_parameters: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.owner = owner
        self.names = list(names)
        self.static_weights = {name: float(weights[name]) for name in self.names}
        schedules = dict(schedules or {})
        unknown = sorted(set(schedules) - set(self.names))
        if unknown:
            raise ValueError(
                f"{owner}: `schedules` names {unknown} which are not components; components are {self.names}."
            )
        self.schedules = {name: WeightSchedule.from_config(owner, name, config) for name, config in schedules.items()}
        self._check_some_component_active(weight_parameters or {})
        self.weighting = check_choice(owner, "weighting", weighting, WEIGHTINGS)
        self.temperature = check_number(owner, "temperature", temperature, minimum=0.0, strict=True)
        self.dwa_period_steps = check_int(owner, "dwa_period_steps", dwa_period_steps, minimum=1)
        initial_log_variance = check_number(owner, "initial_log_variance", initial_log_variance, minimum=None)
        count = len(self.names)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # a host copy of `step`, so that forward never waits on the device to read it
        self._step = 0
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._sync_step())
        if self.weighting == "uncertainty":
            self.log_variances = nn.Parameter(torch.full((count,), initial_log_variance, dtype=torch.float32))
        else:
            self.log_variances = None
        if self.weighting == "dwa":
            self.register_buffer("dwa_sums", torch.zeros(count, dtype=torch.float64))
            self.register_buffer("dwa_counts", torch.zeros(count, dtype=torch.float64))
            self.register_buffer("dwa_history", torch.full((2, count), float("nan"), dtype=torch.float64))
            self.register_buffer("dwa_period", torch.zeros((), dtype=torch.long))
            self.register_buffer("dwa_lambdas", torch.ones(count, dtype=torch.float32))

    def _check_some_component_active(self, weight_parameters: Mapping[str, str]) -> None:
        """Refuse weights that are 0 for every component at every step: the loss would be identically 0."""
        if any(self.is_active(name) for name in self.names):
            return
        reasons = [
            f"`{weight_parameters.get(name, f'weights[{name!r}]')}`=0"
            if self.static_weights[name] == 0.0
            else f"`schedules[{name!r}]` is 0 at every step"
            for name in self.names
        ]
        raise ValueError(
            f"{self.owner}: every component has weight 0 ({', '.join(reasons)}), so the loss would be identically 0 "
            f"with zero gradient; give at least one component a weight > 0."
        )

    # ------------------------------------------------------------------------------------------ step
    def set_step(self, step: int) -> None:
        """Move to optimizer step ``step`` (schedules and DWA periods follow it); idempotent for the same step."""
        step = int(step)
        if step < 0:
            raise ValueError(f"{self.owner}: set_step needs a step >= 0, got {step}.")
        self.step.fill_(step)
        self._step = step
        if self.weighting == "dwa":
            missing = step // self.dwa_period_steps - int(self.dwa_period)
            for _ in range(min(missing, 2)):  # beyond two closed periods the history holds only empty ones
                self._close_dwa_period()
            if missing > 2:
                self.dwa_period.fill_(step // self.dwa_period_steps)

    def _close_dwa_period(self) -> None:
        """Shift the finished period's means into the history and recompute ``lambda = K softmax(r / T)``."""
        means = torch.where(
            self.dwa_counts > 0,
            self.dwa_sums / self.dwa_counts.clamp(min=1e-300),
            torch.full_like(self.dwa_sums, float("nan")),
        )
        self.dwa_history[0] = self.dwa_history[1]
        self.dwa_history[1] = means
        self.dwa_sums.zero_()
        self.dwa_counts.zero_()
        self.dwa_period += 1
        self.dwa_lambdas.copy_(dwa_lambdas(self.dwa_history[1], self.dwa_history[0], self.temperature))

    def _sync_step(self) -> None:
        self._step = int(self.step)

    # ------------------------------------------------------------------------------------------ weights
    def scheduled_weight(self, name: str) -> float:
        """Static weight x schedule multiplier at the current step."""
        schedule = self.schedules.get(name)
        multiplier = 1.0 if schedule is None else schedule.value(self._step)
        return self.static_weights[name] * multiplier

    def is_active(self, name: str) -> bool:
        """False for a component whose weight is 0 at every step (it need not be computed)."""
        schedule = self.schedules.get(name)
        always_zero = schedule is not None and schedule.start_value == 0.0 and schedule.end_value == 0.0
        return self.static_weights[name] != 0.0 and not always_zero

    def effective_weights(self) -> dict[str, float]:
        """The factor multiplying each component's loss now (what ``loss_weight/<name>`` logs)."""
        weights = {}
        for index, name in enumerate(self.names):
            weight = self.scheduled_weight(name)
            if self.weighting == "uncertainty":
                weight *= math.exp(-float(self.log_variances[index].detach()))
            elif self.weighting == "dwa":
                weight *= float(self.dwa_lambdas[index])
            weights[name] = weight
        return weights

    # ------------------------------------------------------------------------------------------ combine
    def combine(self, values: Mapping[str, Tensor], item_fractions: Mapping[str, Tensor | float]) -> Tensor:
        """``sum_i w_i(t) * factor_i * values[i]`` (+ ``w_i(t) * item_fractions[i] * s_i`` for uncertainty).

        ``values`` holds the components present in this call (inactive ones may be left out);
        ``item_fractions[i]`` is the share of the optimizer step's items of component ``i`` seen in this call
        (local items / ``num_items_in_batch``, or 1 without a global count) -- it scales the once-per-step parts
        (the uncertainty regulariser, the DWA running mean) so that they add up exactly over accumulation steps
        and processes.
        """
        total: Tensor | None = None
        for index, name in enumerate(self.names):
            if name not in values:
                continue
            value = values[name]
            weight = self.scheduled_weight(name)
            if self.weighting == "uncertainty":
                # float32 at least, even when DeepSpeed holds the parameter in bf16/fp16 with the model
                log_variance = self.log_variances[index].to(
                    value.device, torch.promote_types(value.dtype, torch.float32)
                )
                term = weight * (torch.exp(-log_variance) * value + item_fractions[name] * log_variance)
            elif self.weighting == "dwa":
                term = weight * self.dwa_lambdas[index].to(value) * value
            else:
                term = weight * value
            total = term if total is None else total + term
        if self.weighting == "dwa" and self.training and torch.is_grad_enabled():
            self._record_dwa(values, item_fractions)
        if total is None:
            raise ValueError(f"{self.owner}: every component has weight 0; nothing to optimise.")
        return total

    def _record_dwa(self, values: Mapping[str, Tensor], item_fractions: Mapping[str, Tensor | float]) -> None:
        """Add this call's (value, item fraction) to the period sums, summed across processes."""
        device = next(iter(values.values())).device
        update = torch.zeros(2, len(self.names), dtype=torch.float64, device=device)
        for index, name in enumerate(self.names):
            if name in values:
                update[0, index] = values[name].detach().to(torch.float64)
                fraction = item_fractions[name]
                update[1, index] = fraction.detach().to(torch.float64) if isinstance(fraction, Tensor) else fraction
        update = sum_across_processes(update).to(self.dwa_sums.device)
        self.dwa_sums += update[0]
        self.dwa_counts += update[1]

    def extra_repr(self) -> str:
        parts = [f"weighting={self.weighting}"]
        if self.schedules:
            parts.append("schedules={" + ", ".join(f"{n}: {s.to_dict()}" for n, s in self.schedules.items()) + "}")
        if self.weighting == "dwa":
            parts.append(f"temperature={self.temperature:g}, dwa_period_steps={self.dwa_period_steps}")
        return ", ".join(parts)


def dwa_lambdas(last_means: Tensor, previous_means: Tensor, temperature: float) -> Tensor:
    """``K * softmax(r / T)`` with ``r = last / previous`` (Liu et al. 2019); all ones while a ratio is unknown."""
    ratios = last_means / previous_means
    if not torch.isfinite(ratios).all():
        return torch.ones_like(last_means, dtype=torch.float32)
    return (last_means.numel() * torch.softmax(ratios / temperature, dim=0)).float()


def item_fraction(local_count: Tensor | None, global_count: Any) -> Tensor | float:
    """Share of an optimizer step's items seen in this call: ``local / global``; without a global count, 1 when
    the call has items (0 when all are ignored, so an all-ignored batch adds nothing)."""
    if local_count is None:
        return 1.0
    if global_count is None:
        return (local_count > 0).to(torch.float32)
    if isinstance(global_count, Tensor):
        global_count = global_count.to(device=local_count.device, dtype=torch.float32).clamp(min=1.0)
    else:
        global_count = max(float(global_count), 1.0)
    return local_count.to(torch.float32) / global_count
