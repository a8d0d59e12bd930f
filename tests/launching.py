"""Launch a script in several real processes (gloo on CPU) and return what they printed.

Every multi-process test goes through here: a fresh port per launch, a timeout, and the whole output in
the error when a rank fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: str | os.PathLike, *script_args: str, nproc: int = 2, launcher: str = "torchrun",
           accelerate_config: str | os.PathLike | None = None, env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``script`` under ``torchrun --nproc_per_node nproc`` (or ``accelerate launch``); raise on failure."""
    port = str(free_port())
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", port]
    elif launcher == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
                   "--main_process_port", port]
        if accelerate_config is not None:
            command += ["--config_file", str(accelerate_config)]
    elif launcher == "python":
        command = [sys.executable]
    else:
        raise ValueError(f"launcher must be 'torchrun', 'accelerate' or 'python', got {launcher!r}")
    command += [str(script), *script_args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {result.returncode}\n--- stdout\n"
                             f"{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return result


def read_json_lines(output: str, prefix: str = "RESULT ") -> list[Any]:
    """Objects printed by the ranks as ``RESULT {json}`` lines, in print order."""
    return [json.loads(line[len(prefix):]) for line in output.splitlines() if line.startswith(prefix)]
