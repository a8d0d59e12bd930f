"""Launch tests: a stand-in for the training arguments the checks read, and an environment without launcher
variables."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

#: variables a launcher (torchrun, accelerate launch, mpirun) sets and the launch checks read or set
LAUNCH_VARIABLES = (
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_DEEPSPEED_CONFIG_FILE",
    "ACCELERATE_GRADIENT_CLIPPING",
    "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
    "ACCELERATE_USE_FSDP",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "PMIX_RANK",
)


@pytest.fixture
def trainer_args():
    """``trainer_args(**overrides)``: the attributes HfTrainerDeepSpeedConfig / check_launch_config read from
    TrainingArguments (batch 4, accumulation 3, clipping 0.7, CPU)."""

    def make(**overrides):
        values = dict(
            world_size=1,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=3,
            max_grad_norm=0.7,
            learning_rate=2e-4,
            adam_beta1=0.9,
            adam_beta2=0.98,
            adam_epsilon=1e-7,
            weight_decay=0.01,
            fp16=False,
            bf16=False,
            fp16_full_eval=False,
            bf16_full_eval=False,
            save_on_each_node=False,
            auto_find_batch_size=False,
            deepspeed=None,
            fsdp=None,
            use_cpu=True,
            mixed_precision="no",
            ddp_backend=None,
            device=torch.device("cpu"),
            get_warmup_steps=lambda steps: 0,
        )
        values.update(overrides)
        return SimpleNamespace(**values)

    return make


@pytest.fixture
def clean_launch_env(monkeypatch):
    """No launcher variables; whatever the test (or check_launch_config) sets is undone afterwards."""
    for name in LAUNCH_VARIABLES:
        # set first so that monkeypatch records the original state and undoes what check_launch_config sets
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    return monkeypatch
