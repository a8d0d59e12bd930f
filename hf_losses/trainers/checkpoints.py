"""Resuming with the loss a checkpoint was trained with.

``resume_from_checkpoint=True`` takes the newest *complete* checkpoint (transformers takes the newest folder, even
one a kill left half-written); the checkpoint's ``loss_config.json`` must describe the current loss (a difference
is an error listing each field, unless ``allow_loss_change``); a loss with state needs its ``loss_state.pt``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from hf_losses.trainers.model_card import LOSS_CONFIG_NAME, LOSS_STATE_NAME

#: written last by ``Trainer._save_checkpoint``: a checkpoint without it (or with it unreadable) is incomplete
TRAINER_STATE_NAME = "trainer_state.json"
#: the fields of ``loss_config.json`` that define the loss (not the version that wrote it, nor the user's spelling)
LOSS_DEFINING_FIELDS = (
    "loss_type",
    "loss_kwargs",
    "loss_task",
    "class_weights",
    "class_weight_values",
    "teacher_model",
)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(folder: str) -> bool:
    """Whether ``folder`` holds a readable ``trainer_state.json`` (the last file a checkpoint save writes)."""
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as file:
            json.load(file)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str) -> str:
    """The newest complete ``checkpoint-<step>`` folder of ``output_dir``; an error lists incomplete ones."""
    steps = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        match = _CHECKPOINT.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps.append((int(match.group(1)), os.path.join(output_dir, name)))
    incomplete = []
    for _, folder in sorted(steps, reverse=True):
        if is_complete_checkpoint(folder):
            return folder
        incomplete.append(os.path.basename(folder))
    hint = f" (incomplete, no readable {TRAINER_STATE_NAME}: {', '.join(incomplete)})" if incomplete else ""
    raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint in {output_dir}{hint}.")


def read_loss_config(checkpoint: str) -> dict[str, Any] | None:
    """The checkpoint's ``loss_config.json``, None when it has none; a damaged file is an error naming it."""
    path = os.path.join(checkpoint, LOSS_CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}; the checkpoint is damaged.") from None


def loss_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"field: checkpoint X, now Y"`` for each loss-defining field that differs (compared as JSON)."""
    differences = []
    for field in LOSS_DEFINING_FIELDS:
        before, now = _as_json(saved.get(field)), _as_json(current.get(field))
        if before != now:
            differences.append(f"{field}: checkpoint {before}, now {now}")
    return differences


def check_resume(checkpoint: str, current: Mapping[str, Any], has_state: bool, allow_loss_change: bool) -> None:
    """Refuse to resume ``checkpoint`` with a loss other than its own, or without the loss state it needs."""
    if allow_loss_change:
        return
    saved = read_loss_config(checkpoint)
    remedy = "pass --allow_loss_change True if the change is on purpose"
    if saved is None:
        if current.get("loss_type") != "auto":
            raise ValueError(
                f"resume: {checkpoint} has no {LOSS_CONFIG_NAME} (it was not written by LossTrainer, "
                f"so it trained with the model's own loss) but this run trains with loss "
                f"'{current.get('loss_type')}'; {remedy}."
            )
        return
    differences = loss_differences(saved, current)
    if differences:
        raise ValueError(
            f"resume: the loss differs from the one {checkpoint} was trained with:\n"
            + "\n".join(f"- {line}" for line in differences)
            + f"\n{remedy}."
        )
    if has_state and not os.path.isfile(os.path.join(checkpoint, LOSS_STATE_NAME)):
        raise ValueError(
            f"resume: the loss has state (learned weights, schedules, running averages) but "
            f"{os.path.join(checkpoint, LOSS_STATE_NAME)} is missing; it would silently restart. "
            f"Resume from a checkpoint that has it, or {remedy}."
        )


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
