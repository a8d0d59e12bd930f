"""The settings a launch config can be written for (precision, ZeRO stage) and the check of a chosen value."""

from __future__ import annotations

from typing import Any, Literal

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
ZeroStage = Literal[0, 1, 2, 3]

MIXED_PRECISIONS: tuple[str, ...] = ("auto", "no", "fp16", "bf16")
ZERO_STAGES: tuple[int, ...] = (0, 1, 2, 3)


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed`` (``True``/``False`` never pass for 1/0)."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"config writer: `{name}` must be one of {list(allowed)}, got {value!r}.")
