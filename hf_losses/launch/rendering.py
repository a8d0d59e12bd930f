"""The text of launch files: an accelerate YAML with ``#`` comments, a DeepSpeed JSON as shipped."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml


def render_yaml(config: Mapping[str, Any], header: str = "", comments: Mapping[str, str] | None = None) -> str:
    """YAML text for an accelerate config: a ``#`` header, then one key per line with optional ``# why`` notes.

    ``comments`` maps a top-level key (or ``"parent.child"``) to a note written on the line above it.
    """
    comments = comments or {}
    lines = _comment_lines(header, "")

    def emit(key: str, value: Any, indent: str, path: str) -> None:
        if path in comments:
            lines.extend(_comment_lines(comments[path], indent))
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key}:")
            for child_key, child_value in value.items():
                emit(child_key, child_value, indent + "  ", f"{path}.{child_key}")
        else:
            lines.append(f"{indent}{key}: {yaml_scalar(value)}")

    for key, value in config.items():
        emit(key, value, "", key)
    return "\n".join(lines) + "\n"


def render_json(config: Mapping[str, Any]) -> str:
    """JSON text as shipped: two-space indent, trailing newline."""
    return json.dumps(config, indent=2) + "\n"


def yaml_scalar(value: Any) -> str:
    """One YAML value on one line, quoted where YAML would read it back as something else."""
    if isinstance(value, str):
        # quote what YAML would read back as something else ('no' is a boolean in YAML 1.1)
        plain_ok = value and value != "all" and yaml.safe_load(value) == value and ": " not in value
        return value if plain_ok else "'" + value.replace("'", "''") + "'"
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _comment_lines(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.strip().splitlines()]
