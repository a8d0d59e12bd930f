"""Example tests: the example helpers importable, one torch thread per process."""

from __future__ import annotations

import sys
from pathlib import Path

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)

import pytest  # noqa: E402
import torch  # noqa: E402
from example_helpers import load_example  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def example():
    return load_example
