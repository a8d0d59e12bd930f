"""A loss with state (learned weights, schedules, running averages) inside a Trainer run.

A loss with trainable parameters is registered as the submodule ``hf_losses_loss`` of the model, so the Trainer's
optimizer (and DeepSpeed's) trains it; it is excluded from weight decay, from DDP (its gradients are averaged across
processes by the trainer before clipping), and from the saved model weights. Its ``state_dict()`` is written to
``loss_state.pt`` in every checkpoint and restored by ``resume_from_checkpoint``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from hf_losses.distributed import sum_across_processes
from hf_losses.trainers.model_card import LOSS_STATE_NAME

#: name of the loss submodule inside the model when the loss has trainable parameters
LOSS_MODULE_NAME = "hf_losses_loss"


def attach_loss(model: nn.Module, loss: nn.Module) -> bool:
    """Register ``loss`` in ``model`` when it has trainable parameters (returns whether it did); DDP is told to
    leave its parameters alone (the loss runs outside DDP's forward)."""
    if not any(p.requires_grad for p in loss.parameters()):
        return False
    model.add_module(LOSS_MODULE_NAME, loss)
    names = [f"{LOSS_MODULE_NAME}.{name}" for name, _ in loss.named_parameters()]
    names += [f"{LOSS_MODULE_NAME}.{name}" for name, _ in loss.named_buffers()]
    ignored = set(getattr(model, "_ddp_params_and_buffers_to_ignore", []) or []) | set(names)
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(ignored))
    return True


@contextlib.contextmanager
def loss_detached(model: nn.Module) -> Iterator[None]:
    """Take the loss out of the model while its weights are saved or loaded."""
    if LOSS_MODULE_NAME not in model._modules:
        yield
        return
    module = model._modules.pop(LOSS_MODULE_NAME)
    try:
        yield
    finally:
        model._modules[LOSS_MODULE_NAME] = module


def is_loss_parameter(name: str) -> bool:
    """Whether a model parameter name belongs to the attached loss."""
    return name.split(".", 1)[0] == LOSS_MODULE_NAME or f".{LOSS_MODULE_NAME}." in f".{name}"


def split_loss_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model weights, loss state)`` from a state dict of the model with the loss attached."""
    prefix = f"{LOSS_MODULE_NAME}."
    loss_state = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    weights = {key: value for key, value in state_dict.items() if not key.startswith(prefix)}
    return weights, loss_state


def save_loss_state(output_dir: str, loss: nn.Module, extra_state: dict[str, Any] | None = None) -> None:
    """``loss_state.pt``: the loss's ``state_dict()`` (updated with ``extra_state``), when it has any."""
    state = dict(loss.state_dict())
    if extra_state:
        state.update(extra_state)
    if state:
        torch.save(
            {key: value.detach().cpu() if isinstance(value, Tensor) else value for key, value in state.items()},
            os.path.join(output_dir, LOSS_STATE_NAME),
        )


def load_loss_state(loss: nn.Module, checkpoint: str, parameters_restored_elsewhere: bool = False) -> None:
    """Restore ``loss_state.pt`` from ``checkpoint`` (nothing to do without one). Under DeepSpeed the parameters
    come back from DeepSpeed's own checkpoint: only buffers are loaded here. A damaged file, or one holding the state
    of another loss, is an error naming the file."""
    path = os.path.join(checkpoint, LOSS_STATE_NAME)
    if not os.path.isfile(path):
        return
    device = next(iter(loss.state_dict().values()), torch.empty(0)).device
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding more than tensors
        raise ValueError(
            f"cannot read the loss state {path}: {error}. The checkpoint is damaged; resume from another one."
        ) from None
    try:
        if parameters_restored_elsewhere:
            parameter_names = {name for name, _ in loss.named_parameters()}
            loss.load_state_dict(
                {key: value for key, value in state.items() if key not in parameter_names}, strict=False
            )
            return
        with torch.no_grad():
            loss.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the loss state {path} does not fit the loss {type(loss).__name__}: {error}") from None


def average_loss_gradients(loss: nn.Module, world_size: int) -> None:
    """Average the loss parameters' gradients over processes (what DDP does for the model's), before clipping."""
    parameters = [p for p in loss.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads]).float()
    flat = sum_across_processes(flat) / world_size
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).to(parameter.dtype)
        offset += size
