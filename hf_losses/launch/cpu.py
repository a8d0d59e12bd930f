"""Process settings that make a launch really do what it says on a machine without GPUs (gloo, ``use_cpu``) and
let a single DeepSpeed process start without a launcher."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

_MPI_WORLD_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK")


def distributed_cpu_settings(
    environ: Mapping[str, str], accelerator_available: bool, ddp_backend: str | None, use_cpu: bool
) -> dict[str, Any]:
    """Settings that make a multi-process launch on a machine without GPUs really data-parallel.

    Under ``torchrun``/``accelerate launch`` on CPU, transformers 5 wraps the model in DDP only with
    ``use_cpu=True`` (otherwise each process silently trains alone on its shard); the backend must be gloo,
    and gloo must not be chosen in a single, non-distributed process ("Default process group has not been
    initialized"). DeepSpeed needs ``use_cpu`` too: without it Accelerate sees world size 1 under ``--deepspeed``
    and bf16 is refused on CPU; DeepSpeed still wraps the model in its engine.
    """
    try:
        world_size = int(environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world_size = 1
    changes: dict[str, Any] = {}
    if world_size <= 1:
        if ddp_backend == "gloo":
            changes["ddp_backend"] = None
        return changes
    if accelerator_available:
        return changes
    if ddp_backend is None:
        changes["ddp_backend"] = "gloo"
    if not use_cpu:
        changes["use_cpu"] = True
    return changes


def accelerator_available() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def set_single_process_rendezvous() -> dict[str, str]:
    """Give a DeepSpeed run started with plain ``python`` (no launcher, no MPI) a one-process world.

    Without RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT DeepSpeed tries MPI discovery and fails asking for
    ``mpi4py``. Returns the variables that were set (none when a launcher already set them).
    """
    if any(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", *_MPI_WORLD_VARIABLES)):
        return {}
    values = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": os.environ.get("MASTER_PORT", str(free_port())),
    }
    os.environ.update(values)
    logger.info(
        "DeepSpeed in a single process without a launcher: set %s.",
        ", ".join(f"{key}={value}" for key, value in values.items()),
    )
    return values


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
