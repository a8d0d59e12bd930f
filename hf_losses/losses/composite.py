"""A weighted sum of registered losses, each reduced by its own item unit, with scheduled or learned weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from hf_losses.losses.base import LogitsLoss, NumItems, labels_compatible, select_num_items
from hf_losses.losses.checks import check_number
from hf_losses.losses.inputs import index_labels, label_pass
from hf_losses.losses.weighting import ComponentWeighting, Weighting, item_fraction
from hf_losses.registry import get_loss, register_loss, resolve_name


@register_loss("composite")
class CompositeLoss(LogitsLoss):
    """Weighted sum ``sum_k w_k * L_k`` of registered losses, e.g. ``0.5*cross_entropy + 0.5*dice``.

    Each component is reduced by its own item unit: ``num_items_in_batch`` may be a mapping
    ``{item_unit: count}`` so that a per-pixel CE and a per-image Dice are each divided by their own global count.

    Weights (see :mod:`hf_losses.losses.weighting`): ``weights`` are static; ``schedules`` multiply them over
    optimizer steps (``{"dice": {"schedule": "linear", "start_value": 0.0, "end_value": 1.0, "start_step": 0,
    "end_step": 1000}}``), driven by :meth:`set_step`; ``weighting="uncertainty"`` learns one log-variance per
    component (Kendall et al. 2018, ``sum_k w_k (exp(-s_k) L_k + s_k)``), ``weighting="dwa"`` rescales by the
    components' rates of decrease (Liu et al. 2019). All of it is in ``state_dict()``.

    For logging: ``last_components`` holds each unweighted component's value from the latest call (detached,
    reduced like the component itself: local sum / ``num_items_in_batch``, or the local mean without it);
    :meth:`component_weights` the factor each component is multiplied by now.
    """

    summary = (
        "Weighted sum of registered losses, e.g. '0.5*cross_entropy+0.5*dice'; scheduled or learned "
        "(uncertainty, DWA) weights; logs each component."
    )
    reference = "hf-losses; Kendall, Gal and Cipolla 2018 (uncertainty); Liu, Johns and Davison 2019 (DWA)"

    def __init__(
        self,
        components: Mapping[str, Mapping[str, Any]] | list[str],
        weights: Mapping[str, float] | None = None,
        schedules: Mapping[str, Any] | None = None,
        weighting: Weighting = "fixed",
        temperature: float = 2.0,
        dwa_period_steps: int = 100,
        initial_log_variance: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(components, (list, tuple)):
            components = {name: {} for name in components}
        if not isinstance(components, Mapping) or not components:
            raise ValueError(
                f"{self._label()}: `components` must be a non-empty dict {{loss_name: {{kwargs}}}}, got {components!r}."
            )
        self.losses = nn.ModuleDict()
        static_weights, canonical_schedules = self._build_components(components, weights, schedules)
        self.weighting = ComponentWeighting(
            self._label(),
            list(self.losses),
            static_weights,
            canonical_schedules,
            weighting,
            temperature,
            dwa_period_steps,
            initial_log_variance,
        )
        kinds = [loss.label_kind for loss in self.losses.values()]
        if not all(labels_compatible(kind, kinds[0]) for kind in kinds):
            raise ValueError(
                f"{self._label()}: components mix integer-label and float-label losses "
                f"({', '.join(f'{n}: {loss.label_kind}' for n, loss in self.losses.items())})."
            )
        self.label_kind = kinds[0]
        self.decomposable = all(loss.decomposable for loss in self.losses.values())
        self.ignore_index = next(iter(self.losses.values())).ignore_index
        teachers = {getattr(loss, "teacher_input", None) for loss in self.losses.values() if _needs_teacher(loss)}
        if len(teachers) > 1:
            raise ValueError(f"{self._label()}: components need a teacher's {sorted(teachers)}; use one kind.")
        #: a component distils from a teacher: the trainer passes the teacher's outputs (see distillation losses)
        self.needs_teacher = bool(teachers)
        self.teacher_input = next(iter(teachers), None)
        self.last_components: dict[str, Tensor] = {}

    def _build_components(
        self,
        components: Mapping[str, Mapping[str, Any]],
        weights: Mapping[str, float] | None,
        schedules: Mapping[str, Any] | None,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Build each component into ``self.losses``; its static weight and schedule, keyed by canonical name."""
        weights = dict(weights or {})
        schedules = dict(schedules or {})
        static_weights: dict[str, float] = {}
        canonical_schedules: dict[str, Any] = {}
        for name, options in components.items():
            canonical = resolve_name(name)
            if canonical == "composite":
                raise ValueError(f"{self._label()}: a composite cannot contain another composite.")
            self.losses[canonical] = get_loss(canonical, **dict(options or {}))
            static_weights[canonical] = check_number(self._label(), f"weights['{name}']", weights.pop(name, 1.0))
            for key in (name, canonical):
                if key in schedules:
                    canonical_schedules[canonical] = schedules.pop(key)
        for argument, left in (("weights", weights), ("schedules", schedules)):
            if left:
                raise ValueError(
                    f"{self._label()}: `{argument}` names {sorted(left)} which are not components; "
                    f"components are {list(self.losses)}."
                )
        return static_weights, canonical_schedules

    @property
    def weights(self) -> dict[str, float]:
        """The static weight of each component (before schedules and learned factors)."""
        return dict(self.weighting.static_weights)

    def set_step(self, step: int) -> None:
        """Optimizer step driving schedules and DWA periods (LossTrainer calls it before every forward)."""
        self.weighting.set_step(step)

    def component_weights(self) -> dict[str, float]:
        """Current effective weight of each component (static x schedule x learned/DWA factor)."""
        return self.weighting.effective_weights()

    def num_items(self, labels: Tensor, sample_weight: Tensor | None = None) -> dict[str, Tensor]:
        """Each component's count; weight sums (``normalize="weight"``) are keyed per component, as components'
        class weights differ."""
        counts: dict[str, Tensor] = {}
        for name, loss in self.losses.items():
            extra = {} if sample_weight is None else {"sample_weight": sample_weight}
            for unit, count in loss.num_items(labels, **extra).items():
                counts[_component_unit(name, unit)] = count
        return counts

    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        for loss in self.losses.values():
            loss.check_inputs(logits, labels)

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        num_items_in_batch: NumItems = None,
        sample_weight: Tensor | None = None,
        **loss_inputs: Any,
    ) -> Tensor:
        """The weighted sum; ``sample_weight`` reaches every component, ``loss_inputs`` (a teacher's logits) the
        components that need a teacher."""
        if self.label_kind == "index":
            labels = index_labels(labels)  # once, not once per component
        self._check_count_per_unit(num_items_in_batch)
        values: dict[str, Tensor] = {}
        fractions: dict[str, Tensor | float] = {}
        with label_pass():  # the components share one read of the labels' min/max
            for name, loss in self.losses.items():
                count = _component_count(name, loss, num_items_in_batch)
                weights = {} if sample_weight is None else {"sample_weight": sample_weight}
                extra = dict(loss_inputs) if _needs_teacher(loss) else {}
                values[name] = loss(logits, labels, num_items_in_batch=count, **weights, **extra)
                # the share of the step's items in this call scales the once-per-step parts of learned weightings
                fractions[name] = 1.0
                if loss.decomposable:
                    local = loss.num_items(labels, **weights).get(loss.count_unit)
                    fractions[name] = item_fraction(local, select_num_items(count, loss.count_unit, self._label()))
        self.last_components = {name: value.detach() for name, value in values.items()}
        return self.weighting.combine(values, fractions)

    def _check_count_per_unit(self, num_items_in_batch: NumItems) -> None:
        """One plain count cannot serve components that count different items (labels and images)."""
        if num_items_in_batch is None or isinstance(num_items_in_batch, Mapping):
            return
        units = {name: loss.item_unit for name, loss in self.losses.items() if loss.decomposable}
        if len(set(units.values())) > 1:
            raise ValueError(
                f"{self._label()}: `num_items_in_batch` must be a mapping {{item_unit: count}} because the components "
                f"count different items ({', '.join(f'{n}: {u}' for n, u in units.items())}), got "
                f"{num_items_in_batch!r}; loss.num_items(labels) gives each unit's count."
            )

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{n}={w:g}" for n, w in self.weighting.static_weights.items())


def _needs_teacher(loss: nn.Module) -> bool:
    return bool(getattr(loss, "needs_teacher", False))


def _component_unit(name: str, unit: str) -> str:
    """A component's ``num_items_in_batch`` key: counts are shared by unit (the same labels give the same count),
    weight sums are per component (``"focal:label_weight"``)."""
    return f"{name}:{unit}" if unit.endswith("_weight") else unit


def _component_count(name: str, loss: nn.Module, num_items_in_batch: NumItems) -> NumItems:
    """The count a component divides by, out of the composite's mapping (its weight sum renamed to its unit)."""
    if not isinstance(num_items_in_batch, Mapping):
        return num_items_in_batch
    unit = getattr(loss, "count_unit", getattr(loss, "item_unit", "label"))
    key = _component_unit(name, unit)
    if key in num_items_in_batch:
        return {unit: num_items_in_batch[key]}
    return num_items_in_batch
