"""Every shim of ``hf_losses.compat``, both branches: the installed versions' and the old ones', the latter through
stand-ins with the old signatures (the real old versions are installed by the minimum-versions CI job)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from hf_losses.compat import autocast_dtype, declare_loss_scaling


def test_loss_scaling_is_declared_for_old_and_new_trainers():
    trainer = SimpleNamespace(loss_is_scaled_for_ga=None, model_accepts_loss_kwargs=False)
    declare_loss_scaling(trainer, scaled_for_accumulation=False)
    assert (trainer.loss_is_scaled_for_ga, trainer.model_accepts_loss_kwargs) == (False, True)
    declare_loss_scaling(trainer, scaled_for_accumulation=True)
    assert trainer.loss_is_scaled_for_ga is True


def test_autocast_dtype_reads_the_autocast_state(monkeypatch):
    assert autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype("cpu") is torch.bfloat16
    # torch < 2.4: is_autocast_enabled() takes no device type; the per-device functions answer
    original = torch.is_autocast_enabled

    def old_is_autocast_enabled(*args):
        if args:
            raise TypeError("is_autocast_enabled() takes 0 positional arguments")
        return original("cuda")

    with torch.autocast("cpu", dtype=torch.bfloat16):  # (autocast's own __enter__/__exit__ use the new function)
        with monkeypatch.context() as patch:
            patch.setattr(torch, "is_autocast_enabled", old_is_autocast_enabled)
            assert autocast_dtype("cpu") is torch.bfloat16
    with monkeypatch.context() as patch:
        patch.setattr(torch, "is_autocast_enabled", old_is_autocast_enabled)
        assert autocast_dtype("cpu") is None and autocast_dtype("cuda") is None
