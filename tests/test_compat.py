"""Every shim of ``hf_losses.compat``, both branches: the installed versions' and the old ones', the latter through
stand-ins with the old signatures (the real old versions are installed by the minimum-versions CI job)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import Trainer

from hf_losses.compat import autocast_dtype, call_trainer_log, counts_items_in_hook, declare_loss_scaling


def test_trainer_log_gets_start_time_only_where_it_takes_one():
    calls = []

    def new_log(logs, start_time=None):  # transformers >= 4.47
        calls.append(("new", logs, start_time))

    def old_log(logs):  # transformers < 4.47
        calls.append(("old", logs))

    call_trainer_log(new_log, {"loss": 1.0}, 12.5)
    call_trainer_log(old_log, {"loss": 2.0}, 12.5)
    assert calls == [("new", {"loss": 1.0}, 12.5), ("old", {"loss": 2.0})]


def test_item_counting_hook_is_detected():
    class OldTrainer:  # transformers < 4.57: get_batch_samples counts inline
        def get_batch_samples(self): ...

    assert counts_items_in_hook(Trainer) is hasattr(Trainer, "_get_num_items_in_batch")
    assert counts_items_in_hook(Trainer)  # the pinned version has the hook
    assert not counts_items_in_hook(OldTrainer)


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
