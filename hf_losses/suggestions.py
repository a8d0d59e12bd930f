"""The "did you mean" hint of every unknown-name error (losses, parameters, tasks, metrics)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> str:
    """``" Did you mean 'focal'?"`` for the closest of ``choices`` to ``value`` (up to ``n``, joined by "or"),
    or ``""`` when nothing is close; meant to be appended to an error message."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=cutoff)
    if not close:
        return ""
    return f" Did you mean {' or '.join(repr(name) for name in close)}?"
