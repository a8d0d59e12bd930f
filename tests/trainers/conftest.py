"""Trainer tests: skip the ``gc.collect()`` that every ``Trainer.train`` starts with."""

import pytest


@pytest.fixture(autouse=True)
def _no_gc_in_free_memory(monkeypatch):
    """``Trainer.train`` starts with ``Accelerator.free_memory`` -> ``gc.collect()`` (~0.5 s with many tiny
    trainers alive); nothing to free on CPU, so skip it in these tests."""
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "free_memory", lambda self, *objects: objects)
    yield
