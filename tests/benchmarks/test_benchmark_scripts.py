"""The benchmark scripts run end to end on tiny settings and print their tables (they are not timed tests: the
ratios they print are measured side by side in one run; here only that they still run and report what they
claim)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_script(*arguments: str, timeout: float = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, *arguments], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_loss_speed_prints_every_pair_with_its_control_row():
    pytest.importorskip("monai")
    out = run_script(
        "benchmarks/loss_speed.py", "--repeats", "2", "--rounds", "1", "--shapes", "4096x1000", "--devices", "cpu"
    )
    rows = [line for line in out.splitlines() if line.startswith("| ") and "4096x1000" in line]
    names = {line.split("|")[1].strip() for line in rows}
    assert {"cross_entropy", "focal", "sigmoid_focal", "(control)"} <= names
    # the values of ours and the peer agree wherever the definitions coincide
    for line in rows:
        cells = [cell.strip() for cell in line.split("|")]
        if cells[1] in ("cross_entropy", "sigmoid_focal"):
            assert float(cells[7].split()[0]) < 1e-5, line


def test_lm_loss_memory_reports_memory_beyond_the_gradients():
    out = run_script(
        "benchmarks/lm_loss_memory.py",
        "--cases",
        "256x2000",
        "--methods",
        "hf,ours",
        "--rounds",
        "1",
        "--repeats",
        "1",
        "--threads",
        "1",
    )
    assert "beyond grads MiB" in out
    rows = {line.split("|")[3].strip(): line for line in out.splitlines() if "|   256 |" in line}
    assert set(rows) == {"hf", "ours"}
    # same loss value from both methods
    assert rows["hf"].split("|")[-2].strip() == rows["ours"].split("|")[-2].strip()


def test_trainer_throughput_runs_every_scenario_and_logs_the_components():
    out = run_script("benchmarks/trainer_throughput.py", "--repeats", "1", "--steps", "3", "--warmup", "1", timeout=600)
    for scenario in ("plain", "ga4", "composite"):
        assert sum(line.startswith(f"| {scenario}") for line in out.splitlines()) == 2, out
    assert "loss/cross_entropy" in out and "loss/focal" in out
