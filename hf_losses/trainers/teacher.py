"""A teacher model for distillation losses: ``LossTrainer(..., teacher_model=model_or_path)`` or
``LossTrainingArguments(teacher_model="path or Hub name")``.

* Loaded (when given by name) with the student's Auto class, e.g. ``AutoModelForCausalLM`` for a causal-LM student.
* Frozen: eval mode, no parameter requires a gradient, and every forward runs under ``torch.no_grad()``.
* Placed and prepared like the student: on ``args.device``, its forward in the autocast the student's forward gets
  under native mixed precision; under DeepSpeed a DeepSpeed engine without optimizer (ZeRO-3: its parameters
  partitioned across processes like the student's; other stages: stage 0, whole on every process, in the engine's
  precision); never wrapped in DDP (it has no gradient to synchronise). FSDP: placed on the device, not sharded.
* Never saved with the student: it is an attribute of the trainer, not a submodule of the model, so checkpoints and
  ``save_model`` hold the student alone; ``loss_config.json`` and the model card name it (``teacher_model``).

Each step runs it on the same model inputs as the student and hands the loss its outputs, by the loss's
``teacher_input``: ``"logits"`` -> ``teacher_logits`` (read by the same task as the student's logits);
``"hidden_states"`` -> ``teacher_hidden_states`` / ``teacher_weight`` / ``teacher_bias`` (its final hidden states and
LM head, as :mod:`hf_losses.trainers.hidden_states` gives the student's; under ZeRO-3 a gathered copy of the head).
Student and teacher must agree on the classes (``config.num_labels``) or the vocabulary (LM-head rows).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hf_losses.losses.base import HiddenStatesLoss
from hf_losses.tasks import Task, unwrap
from hf_losses.trainers.hidden_states import lm_hidden_states_and_head
from hf_losses.trainers.loss_calls import HiddenStatesLossCall, LogitsLossCall, LossCall

logger = logging.getLogger(__name__)

#: what a loss with ``needs_teacher = True`` receives, by its ``teacher_input``
TEACHER_INPUTS = ("logits", "hidden_states")
#: tasks whose distributions are over a vocabulary (the other tasks: over ``config.num_labels`` classes)
VOCABULARY_TASKS = ("causal_lm", "seq2seq_lm")
#: transformers Auto classes and the mapping of model classes each one loads (``models.auto.modeling_auto``)
AUTO_CLASSES = {
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForSeq2SeqLM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForSemanticSegmentation": "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "AutoModelForAudioClassification": "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
}
#: ZeRO settings DeepSpeed's "auto" leaves to the model, filled from the teacher's hidden size as transformers
#: fills the student's (``HfTrainerDeepSpeedConfig.trainer_config_finalize``)
_ZERO_AUTO_SIZES: dict[str, Callable[[int], int]] = {
    "reduce_bucket_size": lambda hidden: hidden * hidden,
    "stage3_prefetch_bucket_size": lambda hidden: int(0.9 * hidden * hidden),
    "stage3_param_persistence_threshold": lambda hidden: 10 * hidden,
}


class Teacher:
    """The frozen teacher of a run: ``module`` (the model), ``model`` (what a step runs: the module, or its
    DeepSpeed engine once prepared), ``name`` for the records, and the autocast its forward runs in."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.module = freeze(model)
        self.model = self.module
        self.name = name
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """No gradient, eval mode (whatever set it to train since) and the student's autocast."""
        if self.module.training:
            self.module.eval()
        with torch.no_grad(), self.autocast():
            yield

    def check_fits(self, student: nn.Module, task: Task) -> None:
        """Raise when student and teacher disagree on the vocabulary (language models) or the number of classes."""
        if task.name in VOCABULARY_TASKS:
            what, student_size, teacher_size = "vocabulary size", vocabulary_size(student), vocabulary_size(self.module)
        else:
            what, student_size, teacher_size = "number of classes", num_labels(student), num_labels(self.module)
        if student_size is None or teacher_size is None or student_size == teacher_size:
            return
        raise ValueError(
            f"LossTrainer: the student ({model_name(student)}) has {what} {student_size} but the teacher "
            f"({self.name}) has {teacher_size}; distillation compares their predictions over the same "
            f"{'tokens' if task.name in VOCABULARY_TASKS else 'classes'}: use a teacher with {what} {student_size}."
        )

    def prepare(self, accelerator: Any, args: Any) -> None:
        """Place and prepare the teacher like the student (see the module's docstring)."""
        if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
            self.model = deepspeed_teacher(self.module, accelerator.state.deepspeed_plugin.deepspeed_config, args)
            return
        self.module = self.model = self.module.to(args.device)
        self.autocast = accelerator.autocast  # a no-op context without native mixed precision


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with no parameter requiring a gradient."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_teacher(source: str | os.PathLike | nn.Module | None, student: nn.Module) -> Teacher | None:
    """The :class:`Teacher` for ``teacher_model``: a module as it is, a path or Hub name loaded with the student's
    Auto class (offline when ``HF_HUB_OFFLINE=1``); None without one."""
    if source is None or (isinstance(source, str) and not source.strip()):
        return None
    if isinstance(source, nn.Module):
        if source is student or unwrap(source) is unwrap(student):
            raise ValueError("LossTrainer: `teacher_model` is the student itself; give a separate (frozen) model.")
        return Teacher(source, model_name(source))
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"LossTrainer: `teacher_model` must be a model, a local path or a Hub name, got {type(source).__name__}."
        )
    auto_class = student_auto_class(student)
    logger.info("LossTrainer: loading the teacher %s with %s", source, auto_class.__name__)
    return Teacher(auto_class.from_pretrained(os.fspath(source)), os.fspath(source))


def student_auto_class(student: nn.Module) -> Any:
    """The transformers Auto class whose mapping holds the student's class (``AutoModelForCausalLM`` for
    ``GPT2LMHeadModel``)."""
    import transformers
    from transformers.models.auto import modeling_auto

    name = type(unwrap(student)).__name__
    for auto_name, mapping_name in AUTO_CLASSES.items():
        for classes in getattr(modeling_auto, mapping_name, {}).values():
            if name in ((classes,) if isinstance(classes, str) else tuple(classes)):
                return getattr(transformers, auto_name)
    raise ValueError(
        f"LossTrainer: cannot tell which Auto class loads a teacher for the student {name} (none of "
        f"{', '.join(AUTO_CLASSES)}); load the teacher yourself and pass the model as `teacher_model=`."
    )


def model_name(model: nn.Module) -> str:
    """``name_or_path`` of a transformers model (the class name for one built from a config)."""
    inner = unwrap(model)
    name = getattr(inner, "name_or_path", None) or getattr(getattr(inner, "config", None), "_name_or_path", None)
    return str(name) if name else type(inner).__name__


def vocabulary_size(model: nn.Module) -> int | None:
    """Rows of the LM head (its full shape under ZeRO-3), else ``config.vocab_size``; None if neither."""
    inner = unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        shape = getattr(weight, "ds_shape", None) or weight.shape  # ZeRO-3 partitions hold a flat slice
        if len(shape) == 2:
            return int(shape[0])
    config = getattr(inner, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(config, "vocab_size", None)
    return None if size is None else int(size)


def num_labels(model: nn.Module) -> int | None:
    """``config.num_labels``; None without a config."""
    size = getattr(getattr(unwrap(model), "config", None), "num_labels", None)
    return None if size is None else int(size)


# ------------------------------------------------------------------------------------------ DeepSpeed
def deepspeed_teacher(teacher: nn.Module, student_config: Mapping[str, Any], args: Any) -> nn.Module:
    """A DeepSpeed engine without optimizer for the teacher, from the student's DeepSpeed config: under ZeRO-3 its
    parameters are partitioned like the student's, otherwise ZeRO is off (stage 0) and each process holds it whole;
    precision as the student's (as TRL's ``prepare_deepspeed`` does for reference and teacher models)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=teacher, config=teacher_deepspeed_config(student_config, teacher, args))
    engine.eval()
    return engine


def teacher_deepspeed_config(student_config: Mapping[str, Any], teacher: nn.Module, args: Any) -> dict[str, Any]:
    """The student's DeepSpeed config for an engine that never trains: no optimizer, scheduler or optimizer
    offload; ZeRO stage 3 kept, other stages set to 0; "auto" values filled from ``args`` and the teacher."""
    config = copy.deepcopy(dict(student_config))
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = dict(config.get("zero_optimization") or {})
    zero.pop("offload_optimizer", None)
    if int(zero.get("stage", 0)) != 3:
        zero = {"stage": 0}
    hidden = hidden_size(teacher)
    for key, size in _ZERO_AUTO_SIZES.items():
        if zero.get(key) == "auto":
            if hidden is None:
                zero.pop(key)  # DeepSpeed's default
            else:
                zero[key] = size(hidden)
    config["zero_optimization"] = zero
    micro_batch = int(args.per_device_train_batch_size)
    accumulation = int(args.gradient_accumulation_steps)
    filled = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * int(args.world_size),
        "gradient_clipping": float(args.max_grad_norm),
    }
    for key, value in filled.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    for precision in ("fp16", "bf16"):
        section = config.get(precision)
        if isinstance(section, Mapping) and section.get("enabled") == "auto":
            config[precision] = {**section, "enabled": bool(getattr(args, precision, False))}
    return config


def hidden_size(model: nn.Module) -> int | None:
    """The width DeepSpeed's bucket sizes scale with: ``hidden_size`` (largest of ``hidden_sizes``)."""
    config = getattr(unwrap(model), "config", None)
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(max(sizes))
    size = getattr(config, "hidden_size", None)
    return None if size is None else int(size)


def is_partitioned(model: nn.Module) -> bool:
    """Whether ZeRO-3 partitions the model: some process holds only a slice of one of its parameters."""
    return any(
        getattr(parameter, "ds_tensor", None) is not None and parameter.ds_tensor.numel() < parameter.ds_numel
        for parameter in unwrap(model).parameters()
    )


# ------------------------------------------------------------------------------------------ loss calls
class TeacherLogitsLossCall(LogitsLossCall):
    """A loss on the student's logits that also takes the teacher's (``teacher_logits``), read by the same task."""

    def __init__(self, loss: nn.Module, task: Task, teacher: Teacher) -> None:
        super().__init__(loss, task)
        self.teacher = teacher

    def loss_inputs(self, model: nn.Module, inputs: Mapping[str, Any], model_inputs: Mapping[str, Any]) -> dict:
        extra = super().loss_inputs(model, inputs, model_inputs)
        with self.teacher.running():
            outputs = self.teacher.model(**model_inputs)
        teacher_logits, _ = self.task.read(outputs, inputs)
        return {**extra, "teacher_logits": teacher_logits}


class TeacherHiddenStatesLossCall(HiddenStatesLossCall):
    """A loss on the student's hidden states and LM head that also takes the teacher's: ``teacher_hidden_states``
    ``(N, T, H_teacher)``, ``teacher_weight (V, H_teacher)`` and ``teacher_bias``; the teacher never computes logits."""

    def __init__(self, loss: nn.Module, task: Task, teacher: Teacher) -> None:
        super().__init__(loss, task)
        self.teacher = teacher

    def loss_inputs(self, model: nn.Module, inputs: Mapping[str, Any], model_inputs: Mapping[str, Any]) -> dict:
        extra = super().loss_inputs(model, inputs, model_inputs)
        with self.teacher.running():
            hidden_states, weight, bias = lm_hidden_states_and_head(self.teacher.model, model_inputs)
        return {
            **extra,
            "teacher_hidden_states": hidden_states,
            "teacher_weight": _detached(weight),
            "teacher_bias": _detached(bias),
        }


def _detached(tensor: Tensor | None) -> Tensor | None:
    """The head's tensor without its (frozen) parameter identity: a parameter is never an input the loss could
    differentiate."""
    return None if tensor is None else tensor.detach()


def teacher_loss_call(loss: nn.Module | None, task: Task, teacher: Teacher | None) -> LossCall:
    """The call of a loss that distils from ``teacher``; a clear error when one of the two is missing."""
    needs_teacher = loss is not None and bool(getattr(loss, "needs_teacher", False))
    loss_name = "auto" if loss is None else (getattr(loss, "name", "") or type(loss).__name__)
    if needs_teacher and teacher is None:
        raise ValueError(
            f"LossTrainer: loss '{loss_name}' distils from a teacher model; pass one as "
            f"LossTrainer(..., teacher_model=model_or_path) or set `teacher_model` in LossTrainingArguments "
            f"(--teacher_model <path or Hub name>)."
        )
    if not needs_teacher:
        raise ValueError(
            f"LossTrainer: a teacher model ({teacher.name}) is given but loss '{loss_name}' does not use one; "
            f"choose a distillation loss ('distillation', 'causal_lm_distillation') or drop `teacher_model`."
        )
    teacher_input = getattr(loss, "teacher_input", "logits")
    hidden = isinstance(loss, HiddenStatesLoss)
    if teacher_input not in TEACHER_INPUTS or (teacher_input == "hidden_states") != hidden:
        raise ValueError(
            f"LossTrainer: loss '{loss_name}' ({'hidden states' if hidden else 'logits'} loss) asks for the "
            f"teacher's {teacher_input!r}; a logits loss takes the teacher's 'logits', a hidden-states loss its "
            f"'hidden_states'."
        )
    call = TeacherHiddenStatesLossCall if hidden else TeacherLogitsLossCall
    return call(loss, task, teacher)
