"""Checks of the launch configuration against TrainingArguments (filled in by the launch/config work)."""

from __future__ import annotations

from typing import Any


def check_launch_config(args: Any) -> None:
    """Raise a clear error when the DeepSpeed/Accelerate config contradicts ``args``; no-op for now."""
    return None
