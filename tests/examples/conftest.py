"""Example tests: the real `multiprocess` package before `datasets`, one torch thread per process."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest puts tests/ on sys.path, where tests/multiprocess.py shadows the PyPI `multiprocess` that `datasets`
# imports: load the real one first.
if not hasattr(sys.modules.get("multiprocess"), "__path__"):
    sys.modules.pop("multiprocess", None)
    _tests_dir, _saved = str(Path(__file__).resolve().parents[1]), list(sys.path)
    sys.path[:] = [entry for entry in sys.path if str(Path(entry or ".").resolve()) != _tests_dir]
    try:
        import multiprocess  # noqa: F401
    finally:
        sys.path[:] = _saved

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
