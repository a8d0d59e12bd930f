"""Checkpoints carry the loss: loss_config.json everywhere, loss_state.pt for a loss with state, loss parameters
never in the model weights; resuming gives the same final weights as an uninterrupted run; push_to_hub uploads the
model card's "Training loss" section."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest
import safetensors.torch
import torch
from tiny_tasks import build_dataset, build_model
from transformers import TrainerCallback

from hf_losses import LossTrainer, LossTrainingArguments, __version__

TASK = "sequence_classification"
STATEFUL_KWARGS = {
    "top_k": 2,
    "diversity_weight": 0.3,
    "weighting": "uncertainty",
    "initial_log_variance": 0.1,
    "item_embeddings": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
    "schedules": {
        "diversity": {"schedule": "linear", "start_value": 0.0, "end_value": 1.0, "start_step": 0, "end_step": 6}
    },
}


def make_args(output_dir, **overrides) -> LossTrainingArguments:
    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=0.05,
        num_train_epochs=2,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        seed=3,
        disable_tqdm=True,
        loss_type="relevance_diversity",
        loss_kwargs=STATEFUL_KWARGS,
    )
    defaults.update(overrides)
    return LossTrainingArguments(**defaults)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def final_state(trainer: LossTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    model = torch.cat(
        [p.detach().reshape(-1) for n, p in trainer.model.named_parameters() if not n.startswith("hf_losses_loss.")]
    )
    return model, torch.cat([p.detach().reshape(-1) for p in trainer.loss.parameters()])


def run(output_dir, callbacks=(), resume=None, **overrides) -> LossTrainer:
    trainer = LossTrainer(
        model=build_model(TASK),
        args=make_args(output_dir, **overrides),
        train_dataset=build_dataset(TASK, 12),
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    trainer = run(tmp_path_factory.mktemp("full"))
    assert trainer.state.global_step == 6
    return final_state(trainer), trainer


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stopped")
    run(directory, callbacks=[StopAt(4)], save_strategy="steps", save_steps=2)
    return directory / "checkpoint-4"


def test_checkpoint_holds_loss_config_and_state_but_no_loss_weights(interrupted):
    config = json.loads((interrupted / "loss_config.json").read_text())
    assert config["loss_type"] == "relevance_diversity" and config["hf_losses_version"] == __version__
    assert config["loss_kwargs"]["weighting"] == "uncertainty" and config["loss_task"] == TASK
    state = torch.load(interrupted / "loss_state.pt", weights_only=True)
    assert int(state["weighting.step"]) == 3  # set before each forward: the last step trained was step index 3
    assert not torch.allclose(
        state["weighting.log_variances"], torch.full_like(state["weighting.log_variances"], 0.1)
    )  # trained
    weights = safetensors.torch.load_file(interrupted / "model.safetensors")
    assert weights and not any("hf_losses_loss" in key for key in weights)


def test_resume_gives_the_same_final_weights_and_loss_state(uninterrupted, interrupted, tmp_path):
    (model_full, loss_full), _ = uninterrupted
    resumed = run(tmp_path / "resumed", resume=str(interrupted))
    model_resumed, loss_resumed = final_state(resumed)
    assert resumed.state.global_step == 6
    torch.testing.assert_close(model_resumed, model_full, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss_resumed, loss_full, rtol=0, atol=1e-6)


def test_resume_without_loss_state_would_differ(uninterrupted, interrupted, tmp_path):
    """The check above can fail: dropping loss_state.pt on resume changes the learned loss weights."""
    (_, loss_full), _ = uninterrupted
    with mock.patch.object(LossTrainer, "load_loss_state", lambda self, checkpoint: None):
        resumed = run(tmp_path / "resumed", resume=str(interrupted))
    assert not torch.allclose(final_state(resumed)[1], loss_full, atol=1e-6)


def test_loss_parameters_are_trained_without_weight_decay(uninterrupted):
    _, trainer = uninterrupted
    names = set(trainer.get_decay_parameter_names(trainer.model))
    assert "hf_losses_loss.weighting.log_variances" not in names
    assert any(name.startswith("bert.") for name in names)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in trainer.loss.parameters())


def test_output_dir_gets_loss_config_after_training(uninterrupted):
    _, trainer = uninterrupted
    assert os.path.isfile(os.path.join(trainer.args.output_dir, "loss_config.json"))


def test_push_to_hub_uploads_model_card_section_config_and_weights(tmp_path):
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(os.listdir(folder_path))
        readme = open(os.path.join(folder_path, "README.md"), encoding="utf-8").read()
        weights = safetensors.torch.load_file(os.path.join(folder_path, "model.safetensors"))
        uploads.append({"repo_id": repo_id, "files": files, "readme": readme, "weight_keys": list(weights)})
        return "https://huggingface.co/user/tiny/commit/0"

    import transformers.trainer

    repo = mock.Mock(repo_id="user/tiny")
    if hasattr(transformers.trainer, "create_repo"):  # transformers 4.x calls huggingface_hub's functions
        patches = (
            mock.patch("transformers.trainer.create_repo", return_value=repo),
            mock.patch("transformers.trainer.upload_folder", lambda **kwargs: upload_folder(None, **kwargs)),
        )
    else:
        patches = (
            mock.patch("huggingface_hub.HfApi.create_repo", return_value=repo),
            mock.patch("huggingface_hub.HfApi.upload_folder", upload_folder),
        )
    with patches[0] as create_repo, patches[1]:
        args = make_args(
            tmp_path / "out",
            loss_type="focal",
            loss_kwargs={"gamma": 2.0},
            class_weights="balanced",
            push_to_hub=True,
            hub_model_id="user/tiny",
            num_train_epochs=1,
        )
        trainer = LossTrainer(model=build_model(TASK), args=args, train_dataset=build_dataset(TASK, 8))
        trainer.train()
        trainer.push_to_hub()
    assert create_repo.called and uploads[-1]["repo_id"] == "user/tiny"
    upload = uploads[-1]
    assert {"README.md", "loss_config.json", "model.safetensors", "config.json"} <= set(upload["files"])
    assert "## Training loss" in upload["readme"] and "`focal`" in upload["readme"]
    assert "class weights: `balanced`" in upload["readme"] and "Lin et al. 2017" in upload["readme"]
    assert not any("hf_losses_loss" in key for key in upload["weight_keys"])


def test_a_different_teacher_is_a_different_loss():
    from hf_losses.trainers.checkpoints import loss_differences

    saved = {"loss_type": "distillation", "loss_kwargs": {"alpha": 0.5}, "teacher_model": "teacher-a"}
    assert loss_differences(saved, dict(saved)) == []
    changed = loss_differences(saved, {**saved, "teacher_model": "teacher-b"})
    assert len(changed) == 1 and "teacher_model" in changed[0] and "teacher-b" in changed[0]
