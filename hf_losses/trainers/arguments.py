"""``LossTrainingArguments``: ``TrainingArguments`` plus the loss, as dataclass fields ``HfArgumentParser`` turns
into command-line flags (``--loss_type focal --loss_kwargs '{"gamma": 2.0}' --class_weights balanced``).

Everything about the loss is validated in ``__post_init__`` -- unknown names (with "did you mean"), unknown or
mistyped parameters, out-of-range values -- so a typo fails when the arguments are parsed, before any model is
loaded. :func:`hf_losses.trainers.resolution.resolve_loss` then builds the loss for
:class:`~hf_losses.trainers.LossTrainer`.
"""

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from hf_losses.launch.checks import check_launch_config
from hf_losses.launch.cpu import accelerator_available, distributed_cpu_settings
from hf_losses.losses.class_weights import WEIGHT_METHODS
from hf_losses.registry import component_names
from hf_losses.suggestions import did_you_mean
from hf_losses.tasks import TASKS
from hf_losses.trainers.nonfinite import NONFINITE_MODES
from hf_losses.trainers.resolution import build_loss, fill_class_information

logger = logging.getLogger(__name__)


def parse_class_weights(value: Any) -> str | list[float] | None:
    """``None``, a method name, or numbers; a command-line string ``"1,2,3"`` / ``"[1, 2, 3]"`` becomes numbers."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none"):
            return None
        if text in WEIGHT_METHODS:
            return text
        try:
            numbers = [float(part) for part in text.strip("[]").split(",") if part.strip()]
        except ValueError:
            raise ValueError(
                f"`class_weights` must be one of {list(WEIGHT_METHODS)} or numbers such as '1.0,5.0', got {value!r}."
            ) from None
        value = numbers
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        numbers = list(value.tolist() if hasattr(value, "tolist") else value)
        if not numbers or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise ValueError(f"`class_weights` must be a non-empty list of numbers, got {value!r}.")
        if any(not math.isfinite(v) or v < 0 for v in numbers):
            raise ValueError(f"`class_weights` must be finite numbers >= 0, got {numbers}.")
        if not any(numbers):
            raise ValueError(f"`class_weights` are all 0, which makes the loss identically 0; got {numbers}.")
        return [float(v) for v in numbers]
    raise TypeError(f"`class_weights` must be one of {list(WEIGHT_METHODS)}, a list of numbers or None, got {value!r}.")


def _refuse_nonfinite_json(constant: str) -> float:
    """``json.loads`` hook for the non-standard ``NaN`` / ``Infinity`` / ``-Infinity``."""
    raise ValueError(f"`loss_kwargs` must be strict JSON: {constant} is not a number a loss parameter can take.")


@dataclass
class LossArgumentsMixin:
    """The loss flags, for any ``TrainingArguments`` subclass: put it first,
    ``@dataclass class MyArguments(LossArgumentsMixin, MyTrainingArguments)``. See the field help for each flag."""

    loss_type: str = field(
        default="auto",
        metadata={
            "help": "Loss to train with: 'auto' (the model's own loss, made exact under gradient accumulation and "
            "several processes), any registered name (see `hf-losses list`), or an expression such as "
            "'0.5*cross_entropy+0.5*dice'."
        },
    )
    loss_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Parameters of the loss as a JSON object, e.g. '{\"gamma\": 2.0}'; for an expression, one object "
            'per component: \'{"dice": {"smooth": 1.0}}\'.'
        },
    )
    class_weights: list[float] | str | None = field(
        default=None,
        metadata={
            "help": "Per-class weights: 'balanced' (n / (C * n_c)), 'effective_num' (Cui et al. 2019, see "
            "--class_weights_beta), or numbers '1.0,5.0'. Counts are read from the train dataset's label "
            "column and also feed losses that take them (class_balanced, ldam)."
        },
    )
    class_weights_beta: float = field(
        default=0.999,
        metadata={
            "help": "beta of the effective number of samples (1 - beta^n) / (1 - beta) for "
            "--class_weights effective_num."
        },
    )
    loss_task: str = field(
        default="auto",
        metadata={
            "help": f"How logits and labels are read from the model: one of {', '.join(TASKS)}. 'auto' decides from "
            f"the model class and config.problem_type."
        },
    )

    nonfinite_loss: str = field(
        default="raise",
        metadata={
            "help": "What a NaN or infinite training loss does: 'raise' (stop before the optimizer step, saying "
            "where and why), 'skip' (drop that step's update on every process, count it in the logs) or 'ignore' "
            "(train on, as transformers does)."
        },
    )
    allow_loss_change: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint trained with another loss (or other loss parameters or weights), or "
            "one missing its loss state; by default that is refused with the list of differences."
        },
    )
    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "Teacher of a distillation loss ('distillation', 'causal_lm_distillation'): a local path or Hub "
            "name, loaded with the student's Auto class, frozen, prepared like the student (DeepSpeed ZeRO-3: "
            "partitioned), never saved with it. A model object can be passed as LossTrainer(teacher_model=...)."
        },
    )

    def __post_init__(self) -> None:
        self._validate_loss()
        changes = distributed_cpu_settings(
            os.environ, accelerator_available(), ddp_backend=self.ddp_backend, use_cpu=self.use_cpu
        )
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
                self.loss_kwargs = json.loads(self.loss_kwargs, parse_constant=_refuse_nonfinite_json)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"`loss_kwargs` must be a JSON object such as '{{\"gamma\": 2.0}}', got "
                    f"{self.loss_kwargs!r} ({error})."
                ) from None
        if not isinstance(self.loss_kwargs, Mapping):
            raise TypeError(
                f"`loss_kwargs` must be a dict (a JSON object on the command line), got {self.loss_kwargs!r}."
            )
        self.loss_kwargs = dict(self.loss_kwargs)
        if self.nonfinite_loss not in NONFINITE_MODES:
            raise ValueError(
                f"`nonfinite_loss` must be one of {list(NONFINITE_MODES)}, got {self.nonfinite_loss!r}."
                f"{did_you_mean(self.nonfinite_loss, NONFINITE_MODES)}"
            )
        self.class_weights = parse_class_weights(self.class_weights)
        if not isinstance(self.class_weights_beta, (int, float)) or not 0.0 <= self.class_weights_beta < 1.0:
            raise ValueError(f"`class_weights_beta` must be in [0, 1), got {self.class_weights_beta!r}.")
        if self.loss_task not in TASKS:
            raise ValueError(
                f"Unknown loss_task {self.loss_task!r}.{did_you_mean(self.loss_task, TASKS)} "
                f"Choose one of {list(TASKS)}."
            )
        if isinstance(self.teacher_model, str) and not self.teacher_model.strip():
            self.teacher_model = None
        if self.loss_type == "auto":
            if self.teacher_model is not None:
                raise ValueError(
                    f"`teacher_model` {self.teacher_model!r} given with loss_type='auto' (the model's own loss uses "
                    f"no teacher); name a distillation loss, e.g. --loss_type distillation."
                )
            if self.loss_kwargs:
                raise ValueError(
                    f"`loss_kwargs` {self.loss_kwargs} given with loss_type='auto' (the model's own "
                    f"loss takes none); name the loss, e.g. --loss_type focal."
                )
            if self.class_weights is not None:
                raise ValueError(
                    "`class_weights` needs a loss that takes them (the model's own loss does not); "
                    "use e.g. --loss_type cross_entropy --class_weights balanced."
                )
            return
        component_names(self.loss_type)  # unknown names raise here, with "Did you mean"
        # Build the loss once to validate every value. Class counts and weights that the trainer will read from
        # the training data are stood in for by placeholders (per-class lengths are checked against the logits).
        explicit = self.class_weights if isinstance(self.class_weights, list) else None
        size = len(explicit) if explicit else 2
        weights = explicit if explicit else ([1.0] * size if self.class_weights is not None else None)
        loss = build_loss(self.loss_type, fill_class_information(self.loss_type, self.loss_kwargs, weights, [1] * size))
        if self.teacher_model is not None and not getattr(loss, "needs_teacher", False):
            raise ValueError(
                f"`teacher_model` {self.teacher_model!r} given but loss '{self.loss_type}' does not use a teacher; "
                f"choose a distillation loss ('distillation', 'causal_lm_distillation') or drop `teacher_model`."
            )


@dataclass
class LossTrainingArguments(LossArgumentsMixin, TrainingArguments):
    """``TrainingArguments`` with the loss to train with. See the field help for each flag."""


@dataclass
class LossSeq2SeqTrainingArguments(LossArgumentsMixin, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` with the loss to train with (token-level losses on the decoder's labels)."""
