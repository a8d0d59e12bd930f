"""Loss resolution, a pure step: from the training arguments, the model and the training data to a :class:`LossPlan`
(the loss, the task, the resolved parameters, class counts and weights, and the record for ``loss_config.json``).

Testable without a Trainer: ``resolve_loss(args, model, train_dataset)`` is all :class:`LossTrainer` calls at init
(and again for every hyper-parameter-search trial).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import HiddenStatesLoss, labels_compatible
from hf_losses.losses.class_weights import WEIGHT_METHODS, weights_from_counts
from hf_losses.losses.segmentation_base import SegmentationLoss
from hf_losses.registry import component_names, describe_loss, get_loss, is_expression
from hf_losses.tasks import Task, build_task
from hf_losses.trainers.class_counts import read_class_counts
from hf_losses.trainers.model_card import loss_config

#: tasks whose labels are maps (images) that segmentation losses can measure overlap on; "unknown": a custom model
SPATIAL_TASKS = ("semantic_segmentation", "unknown")
#: loss parameters that receive ``class_weights``, in order of preference
WEIGHT_PARAMETERS = ("weight", "alpha", "class_weights")
#: loss parameters that receive the training set's class counts when the user does not give them
COUNT_PARAMETERS = ("samples_per_class",)


@dataclass
class LossPlan:
    """What the trainer trains with; ``loss`` is None for ``loss_type="auto"`` (the model's own loss)."""

    loss: nn.Module | None
    loss_type: str
    task: Task
    #: the parameters the loss was built with (class weights and counts filled in)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the parameters as the user gave them
    loss_kwargs_given: dict[str, Any] = field(default_factory=dict)
    class_weight_values: list[float] | None = None
    class_counts: list[int] | None = None
    #: the record written to ``loss_config.json`` and the model card
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def decomposable(self) -> bool:
        """Whether the loss is a sum of per-item terms (the model's own loss is, once rescaled)."""
        return self.loss is None or bool(getattr(self.loss, "decomposable", True))


def resolve_loss(
    args: Any, model: nn.Module | None, train_dataset: Any = None, loss: nn.Module | None = None
) -> LossPlan:
    """The :class:`LossPlan` for ``args`` (``loss_type``, ``loss_kwargs``, ``class_weights``, ``loss_task``; plain
    ``TrainingArguments`` mean ``loss_type="auto"``). ``loss``, when given, is used as it is."""
    loss_type = getattr(args, "loss_type", "auto")
    given = dict(getattr(args, "loss_kwargs", None) or {})
    weight_spec = getattr(args, "class_weights", None)
    counts = weights = None
    if loss is not None:
        loss_type, resolved = getattr(loss, "name", "") or type(loss).__name__, given
    elif loss_type == "auto":
        resolved = {}
    else:
        if weight_spec in WEIGHT_METHODS or missing_count_parameters(loss_type, given):
            counts = read_class_counts(
                train_dataset, model, getattr(args, "loss_task", "auto"), getattr(args, "label_names", None), loss_type
            )
        weights = class_weight_values(weight_spec, counts, getattr(args, "class_weights_beta", 0.999))
        resolved = fill_class_information(loss_type, given, weights, counts)
        loss = build_loss(loss_type, resolved)
    task = build_task(
        getattr(args, "loss_task", "auto"), model, ignore_index=getattr(loss, "ignore_index", IGNORE_INDEX)
    )
    if loss is not None:
        check_loss_fits_task(loss, loss_type, task)
    config = loss_config(
        loss, loss_type if loss is not None else "auto", resolved, task.name, weight_spec, weights, counts
    )
    config["loss_kwargs_given"] = given
    return LossPlan(
        loss=loss,
        loss_type=loss_type,
        task=task,
        loss_kwargs=resolved,
        loss_kwargs_given=given,
        class_weight_values=weights,
        class_counts=counts,
        config=config,
    )


def class_weight_values(
    spec: str | Sequence[float] | None, counts: Sequence[int] | None, beta: float
) -> list[float] | None:
    """The numbers ``class_weights`` stands for: given numbers as they are, a method applied to the counts."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return weights_from_counts(counts, spec, beta)
    return [float(w) for w in spec]


def check_loss_fits_task(loss: nn.Module, loss_type: str, task: Task) -> None:
    """A loss whose labels the task cannot give, or a hidden-state loss outside a causal LM, is refused at init."""
    reduction = getattr(loss, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(
            f"LossTrainer: loss '{loss_type}' has reduction={reduction!r}; the trainer needs one number per step "
            f"(reduction='mean', reduced exactly by the step's item count). reduction='none' / 'sum' are for use "
            f"outside the trainer (hard-example mining, logging)."
        )
    if isinstance(loss, HiddenStatesLoss):
        if task.name != "causal_lm":
            raise ValueError(
                f"LossTrainer: loss '{loss_type}' works from hidden states and needs "
                f"loss_task='causal_lm' (or a causal-LM model), got task '{task.name}'."
            )
        return
    spatial = [name for name, part in _parts(loss, loss_type) if isinstance(part, SegmentationLoss)]
    if spatial and task.name not in SPATIAL_TASKS:
        raise ValueError(
            f"LossTrainer: loss '{spatial[0]}' is a segmentation loss (overlap of label maps, per image or over the "
            f"batch) but the task '{task.name}' has no spatial labels: every sample would be a one-pixel image. Use "
            f"it with loss_task='semantic_segmentation' (or a segmentation model), or choose a loss for this task."
        )
    kind = getattr(loss, "label_kind", None)
    if not labels_compatible(kind, task.label_kind):
        wanted = "integer class ids" if kind == "index" else "float targets shaped like the logits"
        raise ValueError(
            f"LossTrainer: loss '{loss_type}' expects {kind} labels ({wanted}) but the task "
            f"'{task.name}' gives {task.label_kind} labels; choose a loss for this task or set "
            f"`loss_task`."
        )


def _parts(loss: nn.Module, loss_type: str) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of a composite's components, else of the loss itself."""
    components = getattr(loss, "losses", None)
    if isinstance(components, nn.ModuleDict):
        return list(components.items())
    return [(loss_type, loss)]


def _parameters(name: str) -> dict[str, Any]:
    return {p.name: p for p in describe_loss(name).parameters}


def _takes_list(parameter: Any) -> bool:
    """Whether a loss parameter accepts a list of per-class values (its type as ``describe_loss`` prints it)."""
    return "list" in str(getattr(parameter, "type", "list"))


def fill_class_information(
    loss_type: str,
    loss_kwargs: Mapping[str, Any],
    class_weights: Sequence[float] | None,
    class_counts: Sequence[int] | None,
) -> dict[str, Any]:
    """``loss_kwargs`` with the class weights put into the loss's weight parameter (``weight``, else ``alpha``,
    else ``class_weights``) and the class counts into ``samples_per_class`` when the user left it out.
    For an expression, each component that takes them gets them."""
    kwargs = {key: (dict(value) if isinstance(value, Mapping) else value) for key, value in loss_kwargs.items()}
    expression = is_expression(loss_type)
    targets = component_names(loss_type)
    weighted = []
    for name in targets:
        options = kwargs.setdefault(name, {}) if expression else kwargs
        parameters = _parameters(name)
        if class_weights is not None:
            # the first weight parameter that takes a list: distillation's `alpha` is a mixing number, not weights
            target = next((p for p in WEIGHT_PARAMETERS if p in parameters and _takes_list(parameters[p])), None)
            if target is not None:
                if options.get(target) is not None:
                    raise ValueError(
                        f"loss '{name}': class weights are given twice, by `class_weights` and by "
                        f"loss_kwargs['{target}']; keep one."
                    )
                options[target] = [float(w) for w in class_weights]
                weighted.append(name)
        if class_counts is not None:
            for target in COUNT_PARAMETERS:
                if target in parameters and options.get(target) is None:
                    options[target] = [int(c) for c in class_counts]
    if class_weights is not None and not weighted:
        raise ValueError(
            f"loss '{loss_type}' takes no class weights (none of its parameters is one of "
            f"{list(WEIGHT_PARAMETERS)}); drop `class_weights` or choose e.g. 'cross_entropy' or 'focal'."
        )
    if expression:
        kwargs = {key: value for key, value in kwargs.items() if value != {} or key not in targets}
    return kwargs


def missing_count_parameters(loss_type: str, loss_kwargs: Mapping[str, Any]) -> list[str]:
    """Required count parameters (``samples_per_class``) the user left for the trainer to read from the data."""
    missing = []
    for name in component_names(loss_type):
        options = loss_kwargs.get(name, {}) if is_expression(loss_type) else loss_kwargs
        for parameter in _parameters(name).values():
            if parameter.required and parameter.name in COUNT_PARAMETERS and parameter.name not in options:
                missing.append(f"{name}.{parameter.name}")
    return missing


def build_loss(loss_type: str, loss_kwargs: Mapping[str, Any]) -> nn.Module:
    """The registered loss (or composite expression) ``loss_type`` built with ``loss_kwargs`` (validated)."""
    if not isinstance(loss_kwargs, Mapping):
        raise TypeError(f"`loss_kwargs` must be a dict (a JSON object on the command line), got {loss_kwargs!r}.")
    return get_loss(loss_type, **dict(loss_kwargs))
