"""A weighted sum of registered losses, each reduced by its own item unit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hf_losses.losses.base import Loss, NumItems, check_logits_labels
from hf_losses.losses.checks import check_number
from hf_losses.registry import get_loss, register_loss, resolve_name


@register_loss("composite")
class CompositeLoss(Loss):
    """Weighted sum ``sum_k w_k * L_k`` of registered losses, e.g. ``0.5*cross_entropy + 0.5*dice``.

    ``num_items_in_batch`` may be a mapping ``{item_unit: count}`` so that a per-pixel CE and a per-image
    Dice are each divided by their own global count. ``last_components`` holds the detached value of each
    (unweighted) component from the latest call, for logging.
    """

    summary = "Weighted sum of registered losses, e.g. '0.5*cross_entropy+0.5*dice'; logs each component."
    reference = "hf-losses"

    def __init__(self, components: Mapping[str, Mapping[str, Any]] | list[str],
                 weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if isinstance(components, (list, tuple)):
            components = {name: {} for name in components}
        if not isinstance(components, Mapping) or not components:
            raise ValueError(f"{self._label()}: `components` must be a non-empty dict "
                             f"{{loss_name: {{kwargs}}}}, got {components!r}.")
        weights = dict(weights or {})
        self.losses = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, options in components.items():
            canonical = resolve_name(name)
            if canonical == "composite":
                raise ValueError(f"{self._label()}: a composite cannot contain another composite.")
            self.losses[canonical] = get_loss(canonical, **dict(options or {}))
            self.weights[canonical] = check_number(self._label(), f"weights['{name}']", weights.pop(name, 1.0))
        if weights:
            raise ValueError(f"{self._label()}: `weights` names {sorted(weights)} which are not components; "
                             f"components are {list(self.losses)}.")
        kinds = {loss.label_kind for loss in self.losses.values()}
        if len(kinds) > 1:
            raise ValueError(f"{self._label()}: components mix integer-label and float-label losses "
                             f"({', '.join(f'{n}: {l.label_kind}' for n, l in self.losses.items())}).")
        self.label_kind = kinds.pop()
        self.decomposable = all(loss.decomposable for loss in self.losses.values())
        self.ignore_index = next(iter(self.losses.values())).ignore_index
        self.last_components: dict[str, Tensor] = {}

    def component_weights(self) -> dict[str, float]:
        """Current weight of each component (constant here; schedules and learned weights override this)."""
        return dict(self.weights)

    def num_items(self, labels: Tensor) -> dict[str, Tensor]:
        counts: dict[str, Tensor] = {}
        for loss in self.losses.values():
            counts.update(loss.num_items(labels))
        return counts

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        for loss in self.losses.values():
            loss.check_inputs(logits, labels)

    def forward(self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems = None) -> Tensor:
        weights = self.component_weights()
        total = None
        components = {}
        for name, loss in self.losses.items():
            value = loss(logits, labels, num_items_in_batch=num_items_in_batch)
            components[name] = value.detach()
            term = weights[name] * value
            total = term if total is None else total + term
        self.last_components = components
        return total

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{n}={w:g}" for n, w in self.weights.items())
