"""Example tests: ``example`` loads ``examples/<name>/train.py`` as a module."""

from __future__ import annotations

import pytest
from example_runs import load_example


@pytest.fixture
def example():
    return load_example
