"""Helpers of the example tests: load an example script as a module, smoke-run flags."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]

#: flags that make any example a seconds-long smoke run
SMOKE_FLAGS = ["--max_steps", "2", "--logging_steps", "1", "--eval_strategy", "no", "--disable_tqdm", "True",
               "--report_to", "none", "--dataloader_num_workers", "0"]


def load_example(name: str) -> ModuleType:
    """``examples/<name>/train.py`` imported as module ``example_<name>`` (once)."""
    module_name = f"example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "examples" / name / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
