"""``LossTrainerMixin``: everything hf-losses adds to a ``transformers.Trainer`` -- a loss chosen by name, exact
under gradient accumulation and any number of processes -- as a mixin that goes before any Trainer class:
``class MyTrainer(LossTrainerMixin, Seq2SeqTrainer)``. :class:`~hf_losses.trainers.trainer.LossTrainer` is
``LossTrainerMixin + Trainer``. Every override adds to the Trainer's behaviour and calls ``super()``.

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

Loss state (learned weights, schedules): see :mod:`hf_losses.trainers.loss_state`. A teacher for distillation losses
(``teacher_model=``): see :mod:`hf_losses.trainers.teacher`.

Notes: labels are read from the batch's ``labels`` (and ``shift_labels``) entries; evaluation uses per-batch means
(``eval_loss`` as the stock Trainer computes it); the global count is always taken across processes
(``average_tokens_across_devices`` is not consulted); a loss with trainable parameters is not supported under FSDP.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from hf_losses.compat import declare_loss_scaling
from hf_losses.distributed import sum_across_processes
from hf_losses.trainers import loss_state
from hf_losses.trainers.callbacks import ComponentAverager, LossStateCallback, weights_to_log
from hf_losses.trainers.checkpoints import check_resume, last_complete_checkpoint
from hf_losses.trainers.data_weights import (
    WEIGHT_COLUMNS,
    DataWeightsCollator,
    raise_model_loss_weights,
    weight_columns_of,
)
from hf_losses.trainers.loss_calls import LossCall, loss_call_for
from hf_losses.trainers.model_card import LOSS_CONFIG_NAME, add_training_loss_section, write_loss_config
from hf_losses.trainers.nonfinite import NonFiniteGuard, NonFiniteLossError, nonfinite_report
from hf_losses.trainers.resolution import LossPlan, resolve_loss
from hf_losses.trainers.teacher import Teacher, load_teacher

logger = logging.getLogger(__name__)


class LossTrainerMixin:
    """The loss named by ``loss_type`` (or given as ``loss=``) for any ``transformers.Trainer`` subclass; put it
    first: ``class MyTrainer(LossTrainerMixin, MyOwnTrainer)``. With plain ``TrainingArguments`` the model's own
    loss is trained, exactly."""

    def __init__(
        self, *args: Any, loss: nn.Module | None = None, teacher_model: nn.Module | str | None = None, **kwargs: Any
    ) -> None:
        self._explicit_loss = loss
        self.loss: nn.Module | None = None
        self._teacher: Teacher | None = None
        self._loss_ready = False
        if not isinstance(self, Trainer):
            raise TypeError(
                f"{type(self).__name__}: LossTrainerMixin goes before a transformers.Trainer subclass, "
                f"e.g. class {type(self).__name__}(LossTrainerMixin, Trainer)."
            )
        super().__init__(*args, **kwargs)
        if self._has_weight_columns() and not isinstance(self.data_collator, DataWeightsCollator):
            # only where the data has weight columns: the stock collator stays untouched otherwise (with
            # transformers 4.57 / accelerate 1.4 a wrapped collator changed 2-process batches)
            self.data_collator = DataWeightsCollator(self.data_collator)
        self._predicting = False
        self._components = ComponentAverager()
        self.add_callback(LossStateCallback(self._components))
        # a teacher (distillation) is loaded and checked against the student before the (costly) preparation;
        # it stays an attribute of the trainer, never a submodule of the model: checkpoints hold the student alone
        source = teacher_model if teacher_model is not None else getattr(self.args, "teacher_model", None)
        self._teacher = load_teacher(source, self.model)
        self._setup_loss(self.model)
        if self._teacher is not None:
            self._teacher.prepare(self.accelerator, self.args)
        self.teacher_model: nn.Module | None = None if self._teacher is None else self._teacher.model
        self._loss_ready = True

    # ------------------------------------------------------------------------------------------ set-up
    def _setup_loss(self, model: nn.Module) -> None:
        """Resolve the loss (:func:`resolve_loss`), check it against the Trainer's own loss options, tell the
        Trainer how the loss is scaled, and attach trainable loss parameters to the model."""
        plan: LossPlan = resolve_loss(self.args, model, self.train_dataset, loss=self._explicit_loss)
        self.plan, self.loss, self.task = plan, plan.loss, plan.task
        self._loss_config = plan.config
        self._call: LossCall = loss_call_for(plan.loss, plan.task, self._teacher)
        if self._teacher is not None:
            self._teacher.check_fits(model, plan.task)
            self._loss_config = {**plan.config, "teacher_model": self._teacher.name}
        self._stock = plan.loss is None and (self.compute_loss_func is not None or self.label_smoother is not None)
        if plan.loss is not None:
            self._refuse_stock_loss_options(plan.loss_type)
        if self._stock:
            logger.warning(
                "LossTrainer: loss_type='auto' with `compute_loss_func` or `label_smoothing_factor`: the "
                "stock Trainer's loss handling is used unchanged (not rescaled by hf-losses)."
            )
        else:
            # our losses (and the rescaled model loss) are normalised by the step's global item count; losses
            # with whole-batch statistics keep the stock division by the accumulation steps
            declare_loss_scaling(self, scaled_for_accumulation=plan.decomposable)
        self._guard = self._nonfinite_guard()
        self._loss_attached = False
        if plan.loss is not None and model is not None:
            plan.loss.to(self.args.device)
            if self.is_fsdp_enabled and any(p.requires_grad for p in plan.loss.parameters()):
                raise NotImplementedError(
                    "LossTrainer: a loss with trainable parameters (e.g. uncertainty "
                    "weighting) is not supported under FSDP yet; use DDP or DeepSpeed ZeRO."
                )
            self._loss_attached = loss_state.attach_loss(model, plan.loss)

    def _nonfinite_guard(self) -> NonFiniteGuard | None:
        mode = getattr(self.args, "nonfinite_loss", "raise")
        if mode == "skip" and self.is_deepspeed_enabled:
            raise ValueError(
                "LossTrainer: nonfinite_loss='skip' is not available under DeepSpeed (its engine steps inside "
                "backward); use 'raise', or fp16 whose dynamic loss scaling skips overflowing steps itself."
            )
        previous = getattr(self, "_guard", None)
        guard = None if mode == "ignore" else NonFiniteGuard(mode)
        if guard is not None and previous is not None:
            guard.skipped_steps = previous.skipped_steps
        return guard

    def _refuse_stock_loss_options(self, loss_type: str) -> None:
        if self.compute_loss_func is not None:
            raise ValueError(
                f"LossTrainer: both `compute_loss_func` and loss '{loss_type}' are given; use one "
                f"(loss_type='auto' keeps `compute_loss_func`)."
            )
        if self.label_smoother is not None:
            raise ValueError(
                f"LossTrainer: `label_smoothing_factor` applies to the model's own loss only; with "
                f"loss '{loss_type}' pass label smoothing in `loss_kwargs` "
                f'(e.g. {{"label_smoothing": 0.1}} for cross_entropy).'
            )

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

    def _has_weight_columns(self) -> bool:
        """Whether the training or evaluation data has ``sample_weight`` / ``token_weight`` columns."""
        evaluation = self.eval_dataset
        evaluation = list(evaluation.values()) if isinstance(evaluation, dict) else [evaluation]
        return any(weight_columns_of(d) for d in [self.train_dataset, *evaluation] if d is not None)

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the data-weight columns through ``remove_unused_columns`` (the model never sees them)."""
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [
            column for column in WEIGHT_COLUMNS if column not in self._signature_columns
        ]

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Loss parameters (learned log-variances...) get no weight decay: it would bias them towards 0."""
        return [name for name in super().get_decay_parameter_names(model) if not loss_state.is_loss_parameter(name)]

    # ------------------------------------------------------------------------------------------ counting
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Any:
        """``{item_unit: count}`` of the whole accumulation window, summed across processes (None for losses
        with whole-batch statistics and during evaluation, which uses per-batch means)."""
        if self._stock:
            return super()._get_num_items_in_batch(batch_samples, device)
        if self._predicting or not self.plan.decomposable or not batch_samples or "labels" not in batch_samples[0]:
            return None
        totals: dict[str, Tensor] = {}
        for batch in batch_samples:
            for unit, count in self._call.num_items(batch).items():
                # counts are summed exactly as integers, weight sums (normalize="weight") in float64
                dtype = torch.float64 if unit.endswith("_weight") else torch.int64
                count = torch.as_tensor(count).to(device=device, dtype=dtype)
                totals[unit] = count if unit not in totals else totals[unit] + count
        if not totals:
            return None
        units = sorted(totals)
        result = {}
        for dtype in (torch.int64, torch.float64):
            group = [unit for unit in units if totals[unit].dtype == dtype]
            if not group:
                continue
            stacked = torch.stack([totals[unit].reshape(()) for unit in group])
            if self.args.world_size > 1:
                stacked = sum_across_processes(stacked)
            result.update({unit: stacked[index] for index, unit in enumerate(group)})
        self._refuse_weightless_step(result)
        return result

    def _refuse_weightless_step(self, totals: dict[str, Tensor]) -> None:
        """A whole optimizer step whose data weights sum to 0 has no weighted mean (0/0): a clear error rather than
        a silent step that only weight decay and momentum would move (one host read per step, on the trainer's
        side)."""
        for unit, total in totals.items():
            if unit.endswith("_weight") and float(total) == 0.0:
                raise ValueError(
                    f"LossTrainer: the items of optimizer step {self.state.global_step + 1} have total weight 0 "
                    f"(normalize='weight' divides by it); every `sample_weight` / `token_weight` (times the class "
                    f"weights) of the step's batches is 0. Drop those examples, or use normalize='count'."
                )

    # ------------------------------------------------------------------------------------------ loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, Any]:
        training = model.training and not self._predicting
        if self._stock and any(column in inputs for column in WEIGHT_COLUMNS):
            raise_model_loss_weights(inputs)
        if self._stock:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        else:
            result = self._loss_and_outputs(model, inputs, num_items_in_batch, training, return_outputs)
        if training and self._guard is not None:
            self._check_finite(model, result[0] if return_outputs else result, inputs)
        return result

    def _loss_and_outputs(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any, training: bool, return_outputs: bool
    ) -> Tensor | tuple[Tensor, Any]:
        if not training:
            num_items_in_batch = None  # evaluation: per-batch means, as the stock Trainer
        if self.loss is None and any(column in inputs for column in WEIGHT_COLUMNS):
            raise_model_loss_weights(inputs)
        if self.loss is not None:
            self._prepare_loss(training)
        loss, outputs = self._call.call(model, inputs, num_items_in_batch)
        if training and self.loss is not None:
            self._record_components(num_items_in_batch)
        if num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP / DeepSpeed average gradients over processes
        return (loss, outputs) if return_outputs else loss

    def _check_finite(self, model: nn.Module, loss: Tensor, inputs: dict[str, Any]) -> None:
        """Keep the micro-batch's finiteness on the device; decide on the window's last micro-batch, before its
        backward (see :mod:`hf_losses.trainers.nonfinite`)."""
        self._guard.observe(loss, inputs)
        if not self.accelerator.sync_gradients:
            return
        if not self._guard.window_is_nonfinite(self.args.world_size):
            self._guard.reset()
        elif self._guard.mode == "skip":
            self._guard.skip_pending = True  # the gradients are dropped after this backward (training_step)
        else:
            message = nonfinite_report(
                self._guard, model, self._call, self.plan, self.state.global_step + 1, self.args.process_index
            )
            self._guard.reset()
            raise NonFiniteLossError(message)

    def _prepare_loss(self, training: bool) -> None:
        """The loss's train/eval mode, and the global step for losses with schedules."""
        if self.loss.training != training:
            self.loss.train(training)
        if training and hasattr(self.loss, "set_step"):
            self.loss.set_step(self.state.global_step)

    def _record_components(self, num_items_in_batch: Any) -> None:
        """Keep the named parts of the loss (``last_components``) for the next log."""
        components = getattr(self.loss, "last_components", None)
        if not components:
            return
        # decomposable: each value is (local sum / global count), times world_size so that the mean over
        # processes adds up to the step's value; batch statistics: per-batch values, averaged over the window
        factor = (
            self.accelerator.num_processes
            if num_items_in_batch is not None
            else 1.0 / max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1)
        )
        self._components.add(components, factor)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._guard is not None and self._guard.skip_pending:
            self._drop_update(model)
        if (
            self._loss_attached
            and self.accelerator.sync_gradients
            and self.args.world_size > 1
            and not self.is_deepspeed_enabled
        ):
            loss_state.average_loss_gradients(self.loss, self.args.world_size)
        return loss

    def _drop_update(self, model: nn.Module) -> None:
        """``nonfinite_loss="skip"``: discard the window's gradients so the optimizer step changes nothing (an fp16
        scaler finds the non-finite gradients and skips the step itself)."""
        self._guard.skip_pending = False
        self._guard.reset()
        self._guard.skipped_steps += 1
        if getattr(self.accelerator, "scaler", None) is not None:
            return
        for parameter in model.parameters():
            parameter.grad = None
        if self.loss is not None:
            for parameter in self.loss.parameters():
                parameter.grad = None
        logger.warning(
            "LossTrainer: non-finite loss at optimizer step %d; the step's update is skipped "
            "(nonfinite_loss='skip', %d skipped so far).",
            self.state.global_step + 1,
            self._guard.skipped_steps,
        )

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> Any:
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
        if "loss" in logs and self._guard is not None and self._guard.skipped_steps:
            logs = {**logs, "nonfinite_skipped_steps": self._guard.skipped_steps}
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        attached_state = None
        if self._loss_attached and state_dict is not None:
            state_dict, attached_state = loss_state.split_loss_state(state_dict)
        with loss_state.loss_detached(self.model):
            super()._save(output_dir, state_dict)
        if self.args.should_save:
            write_loss_config(output_dir, self._loss_config)
            if self.loss is not None:
                loss_state.save_loss_state(output_dir, self.loss, attached_state)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        with loss_state.loss_detached(self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_loss_state(checkpoint)

    def load_loss_state(self, checkpoint: str) -> None:
        """Restore the loss's state (learned weights, schedules, running averages) from ``loss_state.pt``; with
        ``allow_loss_change`` a state that does not fit the new loss is left out (the loss starts afresh)."""
        if self.loss is None:
            return
        try:
            loss_state.load_loss_state(self.loss, checkpoint, parameters_restored_elsewhere=self.is_deepspeed_enabled)
        except ValueError as error:
            if not getattr(self.args, "allow_loss_change", False):
                raise
            logger.warning("LossTrainer: allow_loss_change: the loss state is not restored (%s)", error)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:  # transformers would take the newest folder, complete or not
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        if isinstance(resume_from_checkpoint, str):
            has_state = self.loss is not None and bool(self.loss.state_dict())
            check_resume(
                resume_from_checkpoint,
                self._loss_config,
                has_state,
                bool(getattr(self.args, "allow_loss_change", False)),
            )
        output = super().train(resume_from_checkpoint, *args, **kwargs)
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
        source = os.path.join(checkpoint_folder, LOSS_CONFIG_NAME)
        if self.is_world_process_zero() and os.path.isfile(source):
            os.makedirs(self.args.output_dir, exist_ok=True)
            shutil.copy(source, os.path.join(self.args.output_dir, LOSS_CONFIG_NAME))
        super()._push_from_checkpoint(checkpoint_folder)
