"""The record of the loss a model was trained with: ``loss_config.json`` and the model card's "Training loss"
section, so a model pushed to the Hub says how it was trained."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

LOSS_CONFIG_NAME = "loss_config.json"
LOSS_STATE_NAME = "loss_state.pt"
SECTION_TITLE = "## Training loss"
_SECTION_END = "<!-- end hf-losses training loss -->"


def _jsonable(value: Any) -> Any:
    """Plain JSON values; a non-finite float becomes the string ``"inf"``/``"-inf"``/``"nan"`` (strict JSON has
    no such numbers, and readers other than Python's reject a bare ``Infinity``)."""
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def loss_config(
    loss: torch.nn.Module | None,
    loss_type: str,
    loss_kwargs: Mapping[str, Any],
    task: str,
    class_weights: Any = None,
    class_weight_values: Any = None,
    class_counts: Any = None,
) -> dict:
    """Everything needed to rebuild the loss: name, parameters as given and as built, class weights and counts."""
    from hf_losses import __version__

    name = loss_type
    if loss is not None and loss_type == "auto":
        name = getattr(loss, "name", "") or type(loss).__name__
    return {
        "loss_type": name,
        "loss_class": None if loss is None else f"{type(loss).__module__}.{type(loss).__qualname__}",
        "loss_kwargs": _jsonable(dict(loss_kwargs)),
        "loss_task": task,
        "class_weights": _jsonable(class_weights),
        "class_weight_values": _jsonable(class_weight_values),
        "class_counts": _jsonable(class_counts),
        "reduction": (
            "model's own loss, rescaled to a mean over the global items of each optimizer step"
            if loss is None
            else "sum of per-item losses / global item count of each optimizer step"
            if getattr(loss, "decomposable", True)
            else "per-batch value (whole-batch statistics)"
        ),
        "hf_losses_version": __version__,
    }


def write_loss_config(output_dir: str, config: Mapping[str, Any]) -> str:
    """Write ``loss_config.json`` into ``output_dir``; returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOSS_CONFIG_NAME)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(_jsonable(config), file, indent=2, sort_keys=True, allow_nan=False)
        file.write("\n")
    return path


def training_loss_section(config: Mapping[str, Any]) -> str:
    """Markdown "Training loss" section of the model card."""
    lines = [
        SECTION_TITLE,
        "",
        f"Trained with the hf-losses `LossTrainer` (hf-losses {config.get('hf_losses_version')}).",
        "",
    ]
    loss_type = config.get("loss_type")
    if loss_type == "auto" or config.get("loss_class") is None:
        lines.append(
            '- loss: the model\'s own loss (`loss_type="auto"`), rescaled to be exact under gradient '
            "accumulation and several processes"
        )
    else:
        lines.append(f"- loss: `{loss_type}`")
        try:
            from hf_losses.registry import component_names, describe_loss

            for name in component_names(str(loss_type)):
                description = describe_loss(name)
                reference = f" ({description.reference})" if description.reference else ""
                lines.append(f"  - `{name}`: {description.summary}{reference}")
        except Exception:  # a loss passed as an object may not be registered
            pass
    if config.get("loss_kwargs"):
        lines.append(f"- parameters: `{json.dumps(config['loss_kwargs'], sort_keys=True)}`")
    if config.get("class_weights") is not None:
        values = config.get("class_weight_values")
        shown = ", ".join(f"{v:.4g}" for v in values) if values else ""
        lines.append(
            f"- class weights: `{config['class_weights'] if isinstance(config['class_weights'], str) else 'explicit'}`"
            + (f" = [{shown}]" if shown else "")
        )
    if config.get("class_counts") is not None:
        lines.append(f"- training-set class counts: {config['class_counts']}")
    lines.append(f"- task: `{config.get('loss_task')}`")
    if config.get("teacher_model"):
        lines.append(f"- teacher (distillation, not part of this model): `{config['teacher_model']}`")
    lines.append(f"- reduction: {config.get('reduction')}")
    lines += ["", f"The full configuration is in `{LOSS_CONFIG_NAME}`.", _SECTION_END, ""]
    return "\n".join(lines)


def add_training_loss_section(readme_path: str, config: Mapping[str, Any]) -> None:
    """Append (or replace) the "Training loss" section of the model card at ``readme_path``."""
    text = ""
    if os.path.exists(readme_path):
        with open(readme_path, encoding="utf-8") as file:
            text = file.read()
    start = text.find(SECTION_TITLE)
    if start >= 0:
        end = text.find(_SECTION_END, start)
        end = len(text) if end < 0 else end + len(_SECTION_END)
        text = text[:start] + text[end:].lstrip("\n")
    if text and not text.endswith("\n"):
        text += "\n"
    text = text + ("\n" if text else "") + training_loss_section(config)
    with open(readme_path, "w", encoding="utf-8") as file:
        file.write(text)
