"""Example tests: the example helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)

import pytest  # noqa: E402
from example_helpers import load_example  # noqa: E402


@pytest.fixture
def example():
    return load_example
