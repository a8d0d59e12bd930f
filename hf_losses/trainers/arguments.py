"""``LossTrainingArguments``: ``TrainingArguments`` plus the loss, as dataclass fields ``HfArgumentParser`` turns
into command-line flags (``--loss_type focal --loss_kwargs '{"gamma": 2.0}' --class_weights balanced``).

Everything about the loss is validated in ``__post_init__`` -- unknown names (with "did you mean"), unknown or
mistyped parameters, out-of-range values -- so a typo fails when the arguments are parsed, before any model is
loaded. The same helpers build the loss for :class:`~hf_losses.trainers.LossTrainer`.
"""

import difflib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from hf_losses.registry import describe_loss, get_loss, parse_composite_expression, resolve_name
from hf_losses.tasks import TASKS
from hf_losses.trainers.class_weights import parse_class_weights
from hf_losses.launch.checks import check_launch_config
from hf_losses.launch.cpu import accelerator_available, distributed_cpu_settings

logger = logging.getLogger(__name__)

#: loss parameters that receive ``class_weights``, in order of preference
WEIGHT_PARAMETERS = ("weight", "alpha", "class_weights")
#: loss parameters that receive the training set's class counts when the user does not give them
COUNT_PARAMETERS = ("samples_per_class",)


def is_expression(loss_type: str) -> bool:
    """True for a composite expression such as ``"0.5*cross_entropy+0.5*dice"``."""
    return "+" in loss_type or "*" in loss_type


def component_names(loss_type: str) -> list[str]:
    """Registered names the loss is made of: the components of an expression, else the single canonical name."""
    if is_expression(loss_type):
        return list(parse_composite_expression(loss_type))
    return [resolve_name(loss_type)]


def _parameters(name: str) -> dict[str, Any]:
    return {p.name: p for p in describe_loss(name).parameters}


def fill_class_information(loss_type: str, loss_kwargs: Mapping[str, Any], class_weights: Sequence[float] | None,
                           class_counts: Sequence[int] | None) -> dict[str, Any]:
    """``loss_kwargs`` with the class weights put into the loss's weight parameter (``weight``, else ``alpha``,
    else ``class_weights``) and the class counts into ``samples_per_class`` when the user left it out.
    For an expression, each component that takes them gets them."""
    kwargs = {key: (dict(value) if isinstance(value, Mapping) else value) for key, value in loss_kwargs.items()}
    targets = component_names(loss_type)
    weighted = []
    for name in targets:
        options = kwargs.setdefault(name, {}) if is_expression(loss_type) else kwargs
        parameters = _parameters(name)
        if class_weights is not None:
            target = next((p for p in WEIGHT_PARAMETERS if p in parameters), None)
            if target is not None:
                if options.get(target) is not None:
                    raise ValueError(f"loss '{name}': class weights are given twice, by `class_weights` and by "
                                     f"loss_kwargs['{target}']; keep one.")
                options[target] = [float(w) for w in class_weights]
                weighted.append(name)
        if class_counts is not None:
            for target in COUNT_PARAMETERS:
                if target in parameters and options.get(target) is None:
                    options[target] = [int(c) for c in class_counts]
    if class_weights is not None and not weighted:
        raise ValueError(f"loss '{loss_type}' takes no class weights (none of its parameters is one of "
                         f"{list(WEIGHT_PARAMETERS)}); drop `class_weights` or choose e.g. 'cross_entropy' or 'focal'.")
    if is_expression(loss_type):
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


def build_loss(loss_type: str, loss_kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """The registered loss (or composite expression) ``loss_type`` built with ``loss_kwargs`` (validated)."""
    if not isinstance(loss_kwargs, Mapping):
        raise TypeError(f"`loss_kwargs` must be a dict (a JSON object on the command line), got {loss_kwargs!r}.")
    return get_loss(loss_type, **dict(loss_kwargs))


@dataclass
class LossTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the loss to train with. See the field help for each flag."""

    loss_type: str = field(default="auto", metadata={
        "help": "Loss to train with: 'auto' (the model's own loss, made exact under gradient accumulation and "
                "several processes), any registered name (see `hf-losses list`), or an expression such as "
                "'0.5*cross_entropy+0.5*dice'."})
    loss_kwargs: dict | str | None = field(default=None, metadata={
        "help": "Parameters of the loss as a JSON object, e.g. '{\"gamma\": 2.0}'; for an expression, one object "
                "per component: '{\"dice\": {\"smooth\": 1.0}}'."})
    class_weights: list[float] | str | None = field(default=None, metadata={
        "help": "Per-class weights: 'balanced' (n / (C * n_c)), 'effective_num' (Cui et al. 2019, see "
                "--class_weights_beta), or numbers '1.0,5.0'. Counts are read from the train dataset's label "
                "column and also feed losses that take them (class_balanced, ldam)."})
    class_weights_beta: float = field(default=0.999, metadata={
        "help": "beta of the effective number of samples (1 - beta^n) / (1 - beta) for "
                "--class_weights effective_num."})
    loss_task: str = field(default="auto", metadata={
        "help": f"How logits and labels are read from the model: one of {', '.join(TASKS)}. 'auto' decides from "
                f"the model class and config.problem_type."})

    def __post_init__(self) -> None:
        self._validate_loss()
        changes = distributed_cpu_settings(
            os.environ, accelerator_available(), ddp_backend=self.ddp_backend, use_cpu=self.use_cpu)
        for key, value in changes.items():
            logger.info("hf-losses: %s=%r (multi-process launch on a machine without GPUs)", key, value)
            setattr(self, key, value)
        super().__post_init__()
        check_launch_config(self)

    def _validate_loss(self) -> None:
        if not isinstance(self.loss_type, str) or not self.loss_type.strip():
            raise ValueError(f"`loss_type` must be 'auto' or a registered loss name, got {self.loss_type!r}.")
        self.loss_type = self.loss_type.strip()
        if self.loss_kwargs is None or (isinstance(self.loss_kwargs, str) and not self.loss_kwargs.strip()):
            self.loss_kwargs = {}
        if isinstance(self.loss_kwargs, str):
            try:
                self.loss_kwargs = json.loads(self.loss_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(f"`loss_kwargs` must be a JSON object such as '{{\"gamma\": 2.0}}', got "
                                 f"{self.loss_kwargs!r} ({error}).") from None
        if not isinstance(self.loss_kwargs, Mapping):
            raise TypeError(f"`loss_kwargs` must be a dict (a JSON object on the command line), got "
                            f"{self.loss_kwargs!r}.")
        self.loss_kwargs = dict(self.loss_kwargs)
        self.class_weights = parse_class_weights(self.class_weights)
        if not isinstance(self.class_weights_beta, (int, float)) or not 0.0 <= self.class_weights_beta < 1.0:
            raise ValueError(f"`class_weights_beta` must be in [0, 1), got {self.class_weights_beta!r}.")
        if self.loss_task not in TASKS:
            close = difflib.get_close_matches(str(self.loss_task), TASKS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"Unknown loss_task {self.loss_task!r}.{hint} Choose one of {list(TASKS)}.")
        if self.loss_type == "auto":
            if self.loss_kwargs:
                raise ValueError(f"`loss_kwargs` {self.loss_kwargs} given with loss_type='auto' (the model's own "
                                 f"loss takes none); name the loss, e.g. --loss_type focal.")
            if self.class_weights is not None:
                raise ValueError("`class_weights` needs a loss that takes them (the model's own loss does not); "
                                 "use e.g. --loss_type cross_entropy --class_weights balanced.")
            return
        component_names(self.loss_type)  # unknown names raise here, with "Did you mean"
        # Build the loss once to validate every value. Class counts and weights that the trainer will read from
        # the training data are stood in for by placeholders (per-class lengths are checked against the logits).
        explicit = self.class_weights if isinstance(self.class_weights, list) else None
        size = len(explicit) if explicit else 2
        weights = explicit if explicit else ([1.0] * size if self.class_weights is not None else None)
        build_loss(self.loss_type, fill_class_information(self.loss_type, self.loss_kwargs, weights, [1] * size))
