"""``LossTrainer``: ``transformers.Trainer`` with a loss chosen by name, exact under gradient accumulation and
any number of processes.

Exactness. An hf-losses loss returns ``sum of per-item losses / num_items_in_batch``. The trainer counts the
items of the *whole optimizer step* before its first forward pass -- per item unit (a label entry, a sample),
summed over the micro-batches of the accumulation window (the last, shorter window of an epoch included) and
across processes -- and passes that mapping as ``num_items_in_batch``. Each micro-batch's loss is then its share
of the step's global mean, so the accumulated gradient is the gradient of that mean: no division by the
accumulation steps, and a factor ``world_size`` because DDP and DeepSpeed average gradients over processes.

``loss_type="auto"`` keeps the model's own loss (a mean over the batch's items, e.g. ``CrossEntropyLoss`` inside
``BertForSequenceClassification``) and rescales it by ``local items * world_size / global items`` -- the stock
Trainer instead trusts any model that accepts ``**kwargs`` to honour ``num_items_in_batch``, which BERT does not,
and gives it a gradient 3.8x too large at 4 accumulation steps.

Losses with whole-batch statistics (``decomposable = False``) keep batch-mean semantics: each micro-batch's value
is divided by the accumulation steps, as the stock Trainer does, which is exact only when every micro-batch of a
window has the same statistics weight; across processes they are exact when they reduce their statistics with
``hf_losses.distributed`` (the trainer does not multiply them by ``world_size``).

Loss state. A loss with trainable parameters (uncertainty weights) is registered as the submodule
``hf_losses_loss`` of the model, so the Trainer's optimizer (and DeepSpeed's) trains it; it is excluded from weight
decay, from DDP (its gradients are averaged across processes by the trainer before clipping), and from the saved
model weights. Its ``state_dict()`` (parameters, buffers such as step counters and running averages) is written to
``loss_state.pt`` in every checkpoint and restored by ``resume_from_checkpoint``.

Notes: labels are read from the batch's ``labels`` (and ``shift_labels``) entries; evaluation uses per-batch means
(``eval_loss`` as the stock Trainer computes it); the global count is always taken across processes
(``average_tokens_across_devices`` is not consulted); a loss with trainable parameters is not supported under FSDP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from hf_losses.distributed import sum_across_processes
from hf_losses.tasks import Task, build_task, unwrap
from hf_losses.trainers.arguments import build_loss, fill_class_information, missing_count_parameters
from hf_losses.trainers.callbacks import ComponentAverager, LossStateCallback, weights_to_log
from hf_losses.trainers.class_weights import WEIGHT_METHODS, class_counts, label_column_of, weights_from_counts
from hf_losses.trainers.hidden_states import lm_hidden_states_and_head
from hf_losses.trainers.model_card import (
    LOSS_CONFIG_NAME,
    LOSS_STATE_NAME,
    add_training_loss_section,
    loss_config,
    write_loss_config,
)

logger = logging.getLogger(__name__)

#: name of the loss submodule inside the model when the loss has trainable parameters
LOSS_MODULE_NAME = "hf_losses_loss"
#: ``num_items_in_batch`` unit used for the model's own loss (``loss_type="auto"``)
MODEL_LOSS_UNIT = "model_loss_items"


class LossTrainer(Trainer):
    """``transformers.Trainer`` whose loss is named by ``LossTrainingArguments.loss_type`` (or given as ``loss=``).

    Use it as the stock Trainer: ``LossTrainer(model=model, args=LossTrainingArguments(..., loss_type="focal"),
    train_dataset=...)``. With plain ``TrainingArguments`` it trains the model's own loss, exactly.
    """

    def __init__(self, *args: Any, loss: nn.Module | None = None, **kwargs: Any) -> None:
        self._explicit_loss = loss
        self.loss: nn.Module | None = None
        self._loss_ready = False
        super().__init__(*args, **kwargs)
        self._predicting = False
        self._components = ComponentAverager()
        self.add_callback(LossStateCallback(self._components))
        self._setup_loss(self.model)
        self._loss_ready = True

    # ------------------------------------------------------------------------------------------ set-up
    def _setup_loss(self, model: nn.Module) -> None:
        """Build the loss from the arguments (counts and weights from the training data), choose the task, attach
        trainable loss parameters to the model."""
        args = self.args
        loss_type = getattr(args, "loss_type", "auto")
        user_kwargs = dict(getattr(args, "loss_kwargs", None) or {})
        weight_spec = getattr(args, "class_weights", None)
        self._class_weight_values = None
        self._class_counts = None
        if self._explicit_loss is not None:
            self.loss = self._explicit_loss
            loss_type = getattr(self.loss, "name", "") or type(self.loss).__name__
            resolved_kwargs = user_kwargs
        elif loss_type == "auto":
            self.loss = None
            resolved_kwargs = {}
        else:
            counts_needed = weight_spec in WEIGHT_METHODS or bool(missing_count_parameters(loss_type, user_kwargs))
            if counts_needed:
                self._class_counts = self._read_class_counts(model, loss_type)
            if isinstance(weight_spec, list):
                self._class_weight_values = list(weight_spec)
            elif weight_spec in WEIGHT_METHODS:
                self._class_weight_values = weights_from_counts(self._class_counts, weight_spec,
                                                                getattr(args, "class_weights_beta", 0.999))
            resolved_kwargs = fill_class_information(loss_type, user_kwargs, self._class_weight_values,
                                                     self._class_counts)
            self.loss = build_loss(loss_type, resolved_kwargs)
        self._loss_type = loss_type
        self._resolved_kwargs = resolved_kwargs
        ignore_index = getattr(self.loss, "ignore_index", -100)
        self.task: Task = build_task(getattr(args, "loss_task", "auto"), model, ignore_index=ignore_index)
        self._stock = self.loss is None and (self.compute_loss_func is not None or self.label_smoother is not None)
        if self.loss is not None:
            if self.compute_loss_func is not None:
                raise ValueError(f"LossTrainer: both `compute_loss_func` and loss '{loss_type}' are given; use one "
                                 f"(loss_type='auto' keeps `compute_loss_func`).")
            if self.label_smoother is not None:
                raise ValueError(f"LossTrainer: `label_smoothing_factor` applies to the model's own loss only; with "
                                 f"loss '{loss_type}' pass label smoothing in `loss_kwargs` "
                                 f"(e.g. {{\"label_smoothing\": 0.1}} for cross_entropy).")
            kind = getattr(self.loss, "label_kind", None)
            if self.task.label_kind is not None and kind is not None and kind != self.task.label_kind \
                    and not getattr(self.loss, "takes_hidden_states", False):
                raise ValueError(f"LossTrainer: loss '{loss_type}' expects {kind} labels "
                                 f"({'integer class ids' if kind == 'index' else 'float targets shaped like the logits'}"
                                 f") but the task '{self.task.name}' gives {self.task.label_kind} labels; choose a "
                                 f"loss for this task or set `loss_task`.")
            if getattr(self.loss, "takes_hidden_states", False) and self.task.name != "causal_lm":
                raise ValueError(f"LossTrainer: loss '{loss_type}' works from hidden states and needs "
                                 f"loss_task='causal_lm' (or a causal-LM model), got task '{self.task.name}'.")
        if self._stock:
            logger.warning("LossTrainer: loss_type='auto' with `compute_loss_func` or `label_smoothing_factor`: the "
                           "stock Trainer's loss handling is used unchanged (not rescaled by hf-losses).")
        else:
            # our losses (and the rescaled model loss) are normalised by the step's global item count; losses
            # with whole-batch statistics keep the stock division by the accumulation steps. Older transformers
            # (no `loss_is_scaled_for_ga`) skip that division when the model "accepts loss kwargs" and a count is
            # passed -- which LossTrainer does exactly for decomposable losses.
            self.loss_is_scaled_for_ga = self._decomposable
            self.model_accepts_loss_kwargs = True
        self._attach_loss(model)
        self._loss_config = loss_config(self.loss, loss_type if self.loss is not None else "auto",
                                        resolved_kwargs if self._explicit_loss is None else user_kwargs,
                                        self.task.name, weight_spec, self._class_weight_values, self._class_counts)
        self._loss_config["loss_kwargs_given"] = user_kwargs

    @property
    def _decomposable(self) -> bool:
        return self.loss is None or bool(getattr(self.loss, "decomposable", True))

    def _read_class_counts(self, model: nn.Module, loss_type: str) -> list[int]:
        """Class counts of the training set's label column (Arrow column operations, no Python loop)."""
        if self.train_dataset is None:
            raise ValueError(f"LossTrainer: loss '{loss_type}' needs class counts from the training data "
                             f"(class weights or samples_per_class) but no train_dataset was given.")
        config = getattr(unwrap(model), "config", None)
        task = build_task(getattr(self.args, "loss_task", "auto"), model)
        label_kind = "binary" if task.name in ("multi_label", "regression") else "index"
        if task.name == "causal_lm":
            embeddings = unwrap(model).get_output_embeddings() if hasattr(unwrap(model), "get_output_embeddings") \
                else None
            num_classes = embeddings.weight.shape[0] if embeddings is not None else getattr(config, "vocab_size", None)
        else:
            num_classes = getattr(config, "num_labels", None)
        column = label_column_of(self.train_dataset, self.args.label_names)
        counts = class_counts(self.train_dataset, num_classes, column, label_kind,
                              ignore_value=getattr(config, "semantic_loss_ignore_index", None))
        return [int(c) for c in counts]

    def _attach_loss(self, model: nn.Module | None) -> None:
        """Move the loss to the training device; register it in the model when it has trainable parameters."""
        self._loss_attached = False
        if self.loss is None or model is None:
            return
        self.loss.to(self.args.device)
        if not any(p.requires_grad for p in self.loss.parameters()):
            return
        if self.is_fsdp_enabled:
            raise NotImplementedError("LossTrainer: a loss with trainable parameters (e.g. uncertainty weighting) is "
                                      "not supported under FSDP yet; use DDP or DeepSpeed ZeRO.")
        model.add_module(LOSS_MODULE_NAME, self.loss)
        self._loss_attached = True
        names = [f"{LOSS_MODULE_NAME}.{name}" for name, _ in self.loss.named_parameters()]
        names += [f"{LOSS_MODULE_NAME}.{name}" for name, _ in self.loss.named_buffers()]
        # DDP must not reduce them: the loss runs outside DDP's forward (find_unused_parameters would mark them
        # unused); the trainer averages their gradients itself before clipping
        ignored = set(getattr(model, "_ddp_params_and_buffers_to_ignore", []) or []) | set(names)
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(ignored))

    def call_model_init(self, trial: Any = None) -> nn.Module:
        model = super().call_model_init(trial)
        if getattr(self, "_loss_ready", False):  # a new trial: fresh loss (and state) for the new model
            self._setup_loss(model)
        return model

    def _hp_search_setup(self, trial: Any) -> None:
        """A search trial's ``loss_kwargs``/``loss_type`` reach ``args`` only here, after ``call_model_init`` built
        the loss (transformers 5.24 order): validate them and rebuild the loss, else each trial would train with
        the previous trial's loss parameters."""
        super()._hp_search_setup(trial)
        if trial is None or self._explicit_loss is not None or not getattr(self, "_loss_ready", False):
            return
        validate = getattr(self.args, "_validate_loss", None)
        if validate is not None:
            validate()
        self._setup_loss(self.model)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Loss parameters (learned log-variances...) get no weight decay: it would bias them towards 0."""
        return [name for name in super().get_decay_parameter_names(model)
                if not name.split(".", 1)[0] == LOSS_MODULE_NAME and f".{LOSS_MODULE_NAME}." not in f".{name}"]

    # ------------------------------------------------------------------------------------------ counting
    def _local_num_items(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        if self.loss is None:
            return {MODEL_LOSS_UNIT: self.task.model_loss_items(batch)}
        if getattr(self.loss, "takes_hidden_states", False):
            return dict(self.loss.num_items(batch.get("labels"), shift_labels=batch.get("shift_labels")))
        return dict(self.loss.num_items(self.task.loss_labels(batch)))

    def get_batch_samples(self, *args: Any, **kwargs: Any) -> tuple[list, Any]:
        batch_samples, num_items_in_batch = super().get_batch_samples(*args, **kwargs)
        if not self._stock and not hasattr(Trainer, "_get_num_items_in_batch"):  # older transformers count inline
            num_items_in_batch = self._get_num_items_in_batch(batch_samples, self.args.device)
        return batch_samples, num_items_in_batch

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Any:
        """``{item_unit: count}`` of the whole accumulation window, summed across processes (None for losses
        with whole-batch statistics and during evaluation, which uses per-batch means)."""
        if self._stock:
            return super()._get_num_items_in_batch(batch_samples, device)
        if self._predicting or not self._decomposable or not batch_samples or "labels" not in batch_samples[0]:
            return None
        totals: dict[str, Tensor] = {}
        for batch in batch_samples:
            for unit, count in self._local_num_items(batch).items():
                count = torch.as_tensor(count).to(device=device, dtype=torch.int64)
                totals[unit] = count if unit not in totals else totals[unit] + count
        if not totals:
            return None
        units = sorted(totals)
        stacked = torch.stack([totals[unit].reshape(()) for unit in units])
        if self.args.world_size > 1:
            stacked = sum_across_processes(stacked)
        return {unit: stacked[index] for index, unit in enumerate(units)}

    # ------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Tensor | tuple[Tensor, Any]:
        if self._stock:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        training = model.training and not self._predicting
        if not training:
            num_items_in_batch = None  # evaluation: per-batch means, as the stock Trainer
        if self.loss is None:
            loss, outputs = self._model_loss(model, inputs, num_items_in_batch)
        else:
            loss, outputs = self._hf_losses_loss(model, inputs, num_items_in_batch, training)
        if num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP / DeepSpeed average gradients over processes
        return (loss, outputs) if return_outputs else loss

    def _model_loss(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any) -> tuple[Tensor, Any]:
        """The model's own (per-batch mean) loss, rescaled to its share of the step's global mean."""
        outputs = model(**inputs)  # num_items_in_batch is not passed: every model then returns a local mean
        if isinstance(outputs, Mapping):
            if outputs.get("loss") is None:
                raise ValueError(f"LossTrainer: loss_type='auto' but the model returned no loss (keys: "
                                 f"{', '.join(outputs.keys())}); give it labels, or name a loss with `loss_type`.")
            loss = outputs["loss"]
        else:
            loss = outputs[0]
        if num_items_in_batch is None:
            return loss, outputs
        local = self.task.model_loss_items(inputs).to(device=loss.device, dtype=torch.float32)
        total = num_items_in_batch[MODEL_LOSS_UNIT].to(device=loss.device, dtype=torch.float32).clamp(min=1.0)
        # a micro-batch with no item has a NaN mean (0/0) and zero gradient: it contributes 0
        loss = torch.where(local > 0, loss.float() * (local / total), torch.zeros_like(loss, dtype=torch.float32))
        return loss, outputs

    def _hf_losses_loss(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any,
                        training: bool) -> tuple[Tensor, Any]:
        loss_fn = self.loss
        if loss_fn.training != training:
            loss_fn.train(training)
        if training and hasattr(loss_fn, "set_step"):
            loss_fn.set_step(self.state.global_step)
        model_inputs = {key: value for key, value in inputs.items() if key not in ("labels", "shift_labels")}
        if getattr(loss_fn, "takes_hidden_states", False):
            hidden_states, weight, bias = lm_hidden_states_and_head(model, model_inputs, loss=loss_fn)
            loss = loss_fn(hidden_states, inputs.get("labels"), weight=weight, bias=bias,
                           num_items_in_batch=num_items_in_batch, shift_labels=inputs.get("shift_labels"))
            outputs = {"last_hidden_state": hidden_states}
        else:
            outputs = model(**model_inputs)
            logits, labels = self.task.read(outputs, inputs)
            loss = loss_fn(logits, labels, num_items_in_batch=num_items_in_batch)
        components = getattr(loss_fn, "last_components", None)
        if training and components:
            # decomposable: each value is (local sum / global count), times world_size so that the mean over
            # processes adds up to the step's value; batch statistics: per-batch values, averaged over the window
            factor = self.accelerator.num_processes if num_items_in_batch is not None else \
                1.0 / max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1)
            self._components.add(components, factor)
        return loss, outputs

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._loss_attached and self.accelerator.sync_gradients and self.args.world_size > 1 \
                and not self.is_deepspeed_enabled:
            self._average_loss_gradients()
        return loss

    def _average_loss_gradients(self) -> None:
        """Average the loss parameters' gradients over processes (what DDP does for the model's), before clipping."""
        parameters = [p for p in self.loss.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads]).float()
        flat = sum_across_processes(flat) / self.args.world_size
        offset = 0
        for parameter in parameters:
            size = parameter.numel()
            parameter.grad = flat[offset:offset + size].view_as(parameter).to(parameter.dtype)
            offset += size

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> Any:
        self._predicting = True
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        finally:
            self._predicting = False

    # ------------------------------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs get ``loss/<component>`` (averaged over the interval and processes) and
        ``loss_weight/<component>``, so every ``report_to`` integration sees them."""
        if "loss" in logs and self.loss is not None:
            logs = dict(logs)
            for name, value in self._components.pop_means(self.state.global_step).items():
                logs[f"loss/{name}"] = value
            logs.update(weights_to_log(self.loss))
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ saving
    @contextlib.contextmanager
    def _loss_detached(self) -> Iterator[None]:
        """Take the loss out of the model while its weights are saved or loaded."""
        if not self._loss_attached or LOSS_MODULE_NAME not in self.model._modules:
            yield
            return
        module = self.model._modules.pop(LOSS_MODULE_NAME)
        try:
            yield
        finally:
            self.model._modules[LOSS_MODULE_NAME] = module

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        loss_state = None
        if self._loss_attached and state_dict is not None:
            prefix = f"{LOSS_MODULE_NAME}."
            loss_state = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
            state_dict = {key: value for key, value in state_dict.items() if not key.startswith(prefix)}
        with self._loss_detached():
            super()._save(output_dir, state_dict)
        if self.args.should_save:
            self._write_loss_files(output_dir, loss_state)

    def _write_loss_files(self, output_dir: str, loss_state: dict | None = None) -> None:
        """``loss_config.json`` and, for a loss with state, ``loss_state.pt``."""
        write_loss_config(output_dir, self._loss_config)
        if self.loss is None:
            return
        state = dict(self.loss.state_dict())
        if loss_state:
            state.update(loss_state)
        if state:
            torch.save({key: value.detach().cpu() if isinstance(value, Tensor) else value
                        for key, value in state.items()}, os.path.join(output_dir, LOSS_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        with self._loss_detached():
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_loss_state(checkpoint)

    def load_loss_state(self, checkpoint: str) -> None:
        """Restore the loss's state (learned weights, schedules, running averages) from ``loss_state.pt``."""
        path = os.path.join(checkpoint, LOSS_STATE_NAME)
        if self.loss is None or not os.path.isfile(path):
            return
        device = next(iter(self.loss.state_dict().values()), torch.empty(0)).device
        state = torch.load(path, map_location=device, weights_only=True)
        if self.is_deepspeed_enabled:  # DeepSpeed restores the parameters from its own checkpoint
            parameter_names = {name for name, _ in self.loss.named_parameters()}
            state = {key: value for key, value in state.items() if key not in parameter_names}
            self.loss.load_state_dict(state, strict=False)
        else:
            with torch.no_grad():
                self.loss.load_state_dict(state)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        output = super().train(*args, **kwargs)
        if self.args.should_save:
            write_loss_config(self.args.output_dir, self._loss_config)
        return output

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The stock model card plus a "Training loss" section."""
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            add_training_loss_section(os.path.join(self.args.output_dir, "README.md"), self._loss_config)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # the stock push copies only the modeling files from the checkpoint into output_dir
        if self.is_world_process_zero():
            for name in (LOSS_CONFIG_NAME,):
                source = os.path.join(checkpoint_folder, name)
                if os.path.isfile(source):
                    os.makedirs(self.args.output_dir, exist_ok=True)
                    shutil.copy(source, os.path.join(self.args.output_dir, name))
        super()._push_from_checkpoint(checkpoint_folder)

