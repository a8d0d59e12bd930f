"""The final hidden states and the LM head of a causal LM, without the model computing its logits.

``lm_hidden_states_and_head(model, inputs)`` runs the model *through its wrappers* (DDP, DeepSpeed's engine,
PEFT), so that DDP's gradient synchronisation and DeepSpeed's hooks behave as in a normal step, and intercepts
the LM head with a forward pre-hook: the hook keeps the head's input (the final hidden states, after the final
norm and whatever else the model applies before its head) and hands the head an empty slice of it, so the head
computes ``(N, 0, V)`` logits -- nothing. The chunked ``causal_lm`` loss then takes those hidden states and the
head's ``weight``/``bias``.

Works for any model that calls its output-embedding module (``get_output_embeddings()``) on the hidden states:
GPT-2, Llama-style models, tied embeddings (the head's weight *is* the embedding matrix: both uses get their
gradient), PEFT LoRA models (LoRA on the attention/MLP layers; the head may be in ``modules_to_save``), under
DDP and DeepSpeed ZeRO-1/2. LoRA on the head itself is refused (the chunked loss would miss the adapter's
delta). Under DeepSpeed ZeRO-3 the head weight is partitioned outside the head's forward: the hook takes a
gathered copy inside it and ties its gradient back through the head's (empty) output, so DeepSpeed gathers the
weight again for the gradient and reduce-scatters it as usual.

Not handled by this route (the loss would differ from the model's own): models that transform the logits after
the head -- Gemma 2/3 ``final_logit_softcapping`` (give the loss ``softcap`` equal to it), Cohere's
``logit_scale``, Granite's ``logits_scaling``; :func:`check_logit_processing` raises for them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hf_losses.tasks import unwrap

__all__ = ["check_logit_processing", "lm_hidden_states_and_head"]

#: model-config attributes that transform the logits after the head, and how the chunked loss can match them
_LOGIT_PROCESSING = {
    "final_logit_softcapping": "pass loss_kwargs {'softcap': <that value>}",
    "logit_scale": "not supported by the chunked loss (the head output is rescaled)",
    "logits_scaling": "not supported by the chunked loss (the head output is divided by it)",
}


def lm_hidden_states_and_head(
    model: nn.Module, inputs: Mapping[str, Any], loss: nn.Module | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(hidden_states (N, T, H), head weight (V, H), head bias (V,) or None)`` for ``model(**inputs)``.

    ``model`` may be wrapped (DDP, DeepSpeed engine, PEFT); ``inputs`` are the model's keyword inputs without
    ``labels`` (they are dropped here if present, so the model computes no loss). With ``loss`` given, a model
    that post-processes its logits in a way the loss does not reproduce raises (:func:`check_logit_processing`);
    without it, it warns.
    """
    check_logit_processing(model, getattr(loss, "softcap", None), strict=loss is not None)
    inner = unwrap(model)
    head, linears = _head_linears(inner)
    model_inputs = {
        key: value for key, value in inputs.items() if key not in ("labels", "shift_labels", "num_items_in_batch")
    }
    captured = _run_with_head_intercepted(model, linears, model_inputs)
    if "hidden" not in captured:
        raise NotImplementedError(
            f"{type(inner).__name__} did not call its LM head module "
            f"({type(head).__name__}) in forward; hidden-state losses cannot intercept it."
        )
    module = captured["module"]
    if "weight" in captured:  # ZeRO-3
        output = captured.get("output")
        weight, bias = captured["weight"], captured["bias"]
        if output is not None:
            weight = _GradientThrough.apply(weight, output)
            bias = None if bias is None else _GradientThrough.apply(bias, output)
        return captured["hidden"], weight, bias
    return captured["hidden"], module.weight, module.bias


def _head_linears(inner: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The model's LM head and the Linear-like modules inside it that own a ``(V, H)`` weight."""
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        raise NotImplementedError(
            f"hidden-state losses need a model with output embeddings (an LM head); "
            f"{type(inner).__name__}.get_output_embeddings() returned None."
        )
    _refuse_adapted_head(head)
    linears = [module for module in head.modules() if _own_weight(module) is not None]
    if not linears:
        raise NotImplementedError(
            f"the LM head {type(head).__name__} of {type(inner).__name__} has no weight "
            f"matrix the chunked loss could use."
        )
    return head, linears


def _run_with_head_intercepted(
    model: nn.Module, linears: list[nn.Module], model_inputs: Mapping[str, Any]
) -> dict[str, Any]:
    """Run ``model`` with hooks that keep the head's input (and, under ZeRO-3, a gathered weight copy) and hand
    the head an empty slice, so it computes no logits."""
    captured: dict[str, Any] = {}

    def keep_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs.pop("input")
        if "hidden" not in captured:
            captured["hidden"], captured["module"] = hidden, module
            weight = module.weight
            if _is_zero3_partitioned(weight):
                # ZeRO-3: gathered only inside this forward; keep a differentiable copy (see _GradientThrough)
                captured["weight"] = weight.clone()
                captured["bias"] = None if module.bias is None else module.bias.clone()
        return (hidden[..., :0, :],) + tuple(args[1:]), kwargs

    def keep_output(module: nn.Module, args: tuple, output: Tensor) -> None:
        if captured.get("module") is module and "output" not in captured:
            captured["output"] = output

    handles = [linear.register_forward_pre_hook(keep_input, with_kwargs=True) for linear in linears]
    handles += [linear.register_forward_hook(keep_output) for linear in linears]
    try:
        model(**model_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def check_logit_processing(model: nn.Module, softcap: float | None = None, strict: bool = True) -> None:
    """Raise (warn if not ``strict``) when the model transforms its logits after the head in a way the chunked
    loss does not reproduce."""
    config = getattr(unwrap(model), "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    for attribute, remedy in _LOGIT_PROCESSING.items():
        value = getattr(config, attribute, None)
        if value is None or (attribute != "final_logit_softcapping" and float(value) == 1.0):
            continue
        if attribute == "final_logit_softcapping" and softcap is not None and float(softcap) == float(value):
            continue
        message = (
            f"hidden-state loss: the model's config has {attribute}={value}, applied to the logits after "
            f"the LM head; {remedy}."
        )
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=3)


class _GradientThrough(torch.autograd.Function):
    """Identity on ``weight`` (or bias); in backward also sends a (zero, empty) gradient into the head's output.

    Under ZeRO-3 the head's output carries DeepSpeed's pre-backward hook, which gathers the partitioned weight
    again before its gradient is accumulated (the weight's gradient node waits for both paths).
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, head_output: Tensor) -> Tensor:
        ctx.output_meta = (head_output.shape, head_output.dtype, head_output.device)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad_weight: Tensor) -> tuple[Tensor, Tensor]:
        shape, dtype, device = ctx.output_meta
        return grad_weight, torch.zeros(shape, dtype=dtype, device=device)


def _own_weight(module: nn.Module) -> Tensor | None:
    """The module's own (V, H) weight parameter (a Linear-like head), else None."""
    weight = module._parameters.get("weight")
    if weight is None or not hasattr(module, "bias"):
        return None
    return weight if weight.dim() == 2 or _is_zero3_partitioned(weight) else None


def _is_zero3_partitioned(parameter: Tensor) -> bool:
    return hasattr(parameter, "ds_id") and hasattr(parameter, "ds_shape")


def _refuse_adapted_head(head: nn.Module) -> None:
    """PEFT tuner layers (LoRA...) on the head add a delta the chunked loss does not see."""
    for module in head.modules():
        if hasattr(module, "base_layer") and hasattr(module, "active_adapters"):
            raise NotImplementedError(
                "the LM head carries a PEFT adapter (e.g. LoRA on lm_head); the chunked causal_lm loss uses the "
                "head's base weight only. Leave the head out of target_modules (or put it in modules_to_save), "
                "or train with loss_type='cross_entropy' on the full logits."
            )
