"""Constructor-argument checks shared by the losses; every message names the loss, the parameter and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def interval(minimum: float | None, maximum: float | None, strict: bool = False) -> str:
    """The allowed range as text: ``[0, inf)``, ``(0, 1]``, ``(-inf, inf)``; infinite ends are open (refused)."""
    low = "(-inf" if minimum is None else f"{'(' if strict else '['}{minimum:g}"
    high = "inf)" if maximum is None else f"{maximum:g}]"
    return f"{low}, {high}"


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = 0.0,
    maximum: float | None = None,
    strict: bool = False,
) -> float:
    """A finite real number in [minimum, maximum] (or (minimum, ...] when ``strict``); returns it as float.

    NaN and +-inf are refused: no parameter of a loss means anything at infinity (an infinite focusing
    parameter, smoothing or temperature makes the loss constant or NaN).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: `{name}` must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    allowed = interval(minimum, maximum, strict)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: `{name}` must be a finite number in {allowed}, got {value}.")
    low_bad = minimum is not None and (value <= minimum if strict else value < minimum)
    high_bad = maximum is not None and value > maximum
    if low_bad or high_bad:
        raise ValueError(f"{owner}: `{name}` must be in {allowed}, got {value:g}.")
    return value


def check_int(owner: str, name: str, value: Any, *, minimum: int) -> int:
    """An int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: `{name}` must be an int >= {minimum}, got {value!r}.")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """True or False (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: `{name}` must be True or False, got {value!r}.")
    return value


def check_choice(owner: str, name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """One of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{owner}: `{name}` must be one of {list(allowed)}, got {value!r}.")
    return value


def check_finite(owner: str, name: str, tensor: Tensor) -> None:
    """Every entry finite (no NaN, no +-inf); for parameters given at construction, not for per-call inputs."""
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{owner}: `{name}` must be finite (no NaN or inf), got {tensor.tolist()}.")


def as_vector(
    owner: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = 0.0,
    strict: bool = False,
    allow_all_zero: bool = False,
) -> Tensor:
    """A 1-D float32 tensor from a list/tuple/tensor of numbers, each checked against ``minimum``.

    All entries 0 are refused unless ``allow_all_zero``: as class weights they weigh every item 0, so the loss
    is identically 0 with a zero gradient.
    """
    if isinstance(value, Tensor):
        vector = value.detach().to(torch.float32)
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        vector = torch.tensor([float(v) for v in value], dtype=torch.float32)
    else:
        raise TypeError(f"{owner}: `{name}` must be a list of numbers or a 1-D tensor, got {value!r}.")
    if vector.dim() != 1 or vector.numel() == 0:
        raise ValueError(f"{owner}: `{name}` must be a non-empty 1-D list of numbers, got shape {tuple(vector.shape)}.")
    check_finite(owner, name, vector)
    if minimum is not None:
        bad = vector <= minimum if strict else vector < minimum
        if bad.any():
            relation = ">" if strict else ">="
            raise ValueError(f"{owner}: every entry of `{name}` must be {relation} {minimum:g}, got {vector.tolist()}.")
    if not allow_all_zero and not (vector != 0).any():
        raise ValueError(
            f"{owner}: `{name}` must have at least one entry > 0 (all zeros weigh every item 0), got {vector.tolist()}."
        )
    return vector


def check_num_classes(owner: str, name: str, vector: Tensor | None, num_classes: int) -> None:
    """A per-class vector's length must equal the number of classes C of the logits."""
    if vector is not None and vector.numel() != num_classes:
        raise ValueError(
            f"{owner}: `{name}` has {vector.numel()} entries but the logits have C={num_classes} "
            f"classes; give one value per class."
        )
