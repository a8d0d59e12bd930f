"""Launch a script in several real processes (gloo on CPU) and return what they printed.

Every multi-process test goes through here: a fresh port per launch, a timeout, and the whole output in
the error when a rank fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hf_losses.launch.cpu import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
#: this folder: every launched script imports the shared test helpers from here
HELPERS_DIR = Path(__file__).resolve().parent


def launch(
    script: str | os.PathLike,
    *script_args: str,
    nproc: int = 2,
    launcher: str = "torchrun",
    accelerate_config: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``script`` under ``torchrun --nproc_per_node nproc`` (or ``accelerate launch``); raise on failure.

    Under torchrun each rank writes to its own log files, and the returned stdout/stderr are the launcher's
    followed by every rank's in rank order: ranks printing at the same moment cannot interleave their lines.
    """
    port = str(free_port())
    log_dir = tempfile.mkdtemp(prefix="hf_losses_ranks_")
    if launcher == "torchrun":
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            "--log-dir",
            log_dir,
            "--redirects",
            "3",
        ]
    elif launcher == "accelerate":
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(nproc),
            "--main_process_port",
            port,
        ]
        if accelerate_config is not None:
            command += ["--config_file", str(accelerate_config)]
    elif launcher == "python":
        command = [sys.executable]
    else:
        raise ValueError(f"launcher must be 'torchrun', 'accelerate' or 'python', got {launcher!r}")
    command += [str(script), *script_args]
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(HELPERS_DIR), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO_ROOT)
        result.stdout += _rank_logs(log_dir, "stdout.log")
        result.stderr += _rank_logs(log_dir, "stderr.log")
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited with {result.returncode}\n--- stdout\n"
            f"{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def _rank_logs(log_dir: str, name: str) -> str:
    """The ``name`` files torchrun wrote under ``log_dir/<run>/attempt_<k>/<rank>/``, concatenated in rank order."""
    files = sorted(Path(log_dir).glob(f"*/attempt_*/*/{name}"), key=lambda path: (path.parts[-3], int(path.parts[-2])))
    return "".join(path.read_text(errors="replace") for path in files)


def read_json_lines(output: str, prefix: str = "RESULT ") -> list[Any]:
    """Objects printed by the ranks as ``RESULT {json}`` lines, in print order.

    Ranks printing at the same moment through one pipe can glue records together (``print`` writes the text
    and the newline separately): every ``RESULT`` occurrence is decoded on its own.
    """
    decoder = json.JSONDecoder()
    records = []
    for line in output.splitlines():
        if not line.startswith(prefix):
            continue
        start = 0
        while (found := line.find(prefix, start)) != -1:
            record, end = decoder.raw_decode(line, found + len(prefix))
            records.append(record)
            start = end
    return records
