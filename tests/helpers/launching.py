"""Launch a script in several real processes (gloo on CPU) and return what they printed.

Every multi-process test goes through here: a fresh port per launch, a timeout, and the whole output in
the error when a rank fails. :func:`launch_machines` starts several "machines" on this host (one ``accelerate
launch --machine_rank r`` per machine, all at once) the way a multi-node job is started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
    full_env = _environment(env)
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


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment, offline, one thread, the repository and the helpers importable, plus ``env``."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(HELPERS_DIR), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }


def launch_machines(
    script: str | os.PathLike,
    *script_args: str,
    accelerate_config: str | os.PathLike,
    num_machines: int = 2,
    processes_per_machine: int = 1,
    launch_args: tuple[str, ...] | list[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> list[subprocess.CompletedProcess]:
    """Run ``script`` as a ``num_machines``-machine job on this host; return each machine's output, by machine rank.

    Every machine is one ``accelerate launch --config_file accelerate_config --num_machines N --machine_rank r
    --num_processes N x processes_per_machine --main_process_ip 127.0.0.1 --main_process_port <free port>
    [launch_args] script [script_args]``, all started at once (machine 0 hosts the rendezvous the others join).
    They are waited for together under one ``timeout``; when one fails or time runs out, every machine still
    running is killed with its whole process group (the launcher and its workers), and the error shows every
    machine's output.
    """
    port = str(free_port())
    full_env = _environment(env)
    # a DeepSpeed config without `deepspeed_multinode_launcher: standard` makes accelerate write the whole
    # environment into ./.deepspeed_env for its pdsh launcher: never leave one behind in the repository
    deepspeed_env = REPO_ROOT / ".deepspeed_env"
    deepspeed_env_existed = deepspeed_env.exists()
    machines = []
    for machine_rank in range(num_machines):
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(accelerate_config),
            "--num_machines",
            str(num_machines),
            "--machine_rank",
            str(machine_rank),
            "--num_processes",
            str(num_machines * processes_per_machine),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
            *launch_args,
            str(script),
            *script_args,
        ]
        # output to files, not pipes: a machine blocked on a full pipe would hold up the others' collectives
        stdout = tempfile.TemporaryFile("w+", errors="replace")
        stderr = tempfile.TemporaryFile("w+", errors="replace")
        process = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, text=True, env=full_env, cwd=REPO_ROOT, start_new_session=True
        )
        machines.append((command, process, stdout, stderr))
    deadline = time.monotonic() + timeout
    failure = None
    try:
        while any(process.poll() is None for _, process, _, _ in machines):
            failed = [rank for rank, (_, process, _, _) in enumerate(machines) if process.poll() not in (None, 0)]
            if failed:
                failure = f"machine {failed[0]} exited with {machines[failed[0]][1].returncode}"
                break
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout:g} s"
                break
            time.sleep(0.2)
        else:
            failed = [rank for rank, (_, process, _, _) in enumerate(machines) if process.returncode != 0]
            if failed:
                failure = f"machine {failed[0]} exited with {machines[failed[0]][1].returncode}"
    finally:
        for _, process, _, _ in machines:
            _kill_group(process)
        if not deepspeed_env_existed:
            deepspeed_env.unlink(missing_ok=True)
    results = []
    for command, process, stdout, stderr in machines:
        stdout.seek(0)
        stderr.seek(0)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout.read(), stderr.read()))
        stdout.close()
        stderr.close()
    if failure is not None:
        report = "\n".join(
            f"=== machine {rank}: {' '.join(result.args)} -> {result.returncode}\n--- stdout\n"
            f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
            for rank, result in enumerate(results)
        )
        raise AssertionError(f"{num_machines}-machine launch failed: {failure}\n{report}")
    return results


def _kill_group(process: subprocess.Popen) -> None:
    """Kill a launcher started with ``start_new_session=True`` that is still running, and every process it
    started (its process group): SIGTERM, then SIGKILL for whatever is left of the group."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:  # workers that outlive their launcher or ignore SIGTERM
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


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
