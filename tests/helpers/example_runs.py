"""Helpers of the example tests: where an example lives, load its files as modules, smoke-run flags."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from launching import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "examples"

#: flags that make any example a seconds-long smoke run
SMOKE_FLAGS = [
    "--max_steps",
    "2",
    "--logging_steps",
    "1",
    "--eval_strategy",
    "no",
    "--disable_tqdm",
    "True",
    "--report_to",
    "none",
    "--dataloader_num_workers",
    "0",
]


def example_script(name: str, file: str = "train") -> Path:
    """``examples/<name>/<file>.py``."""
    return EXAMPLES_DIR / name / f"{file}.py"


def load_example(name: str, file: str = "train") -> ModuleType:
    """``examples/<name>/<file>.py`` imported (once) as module ``example_<name>`` (``example_<name>_<file>`` for
    a file other than train.py)."""
    module_name = f"example_{name}" if file == "train" else f"example_{name}_{file}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, example_script(name, file))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module
