"""Tuning loss parameters with trainer.hyperparameter_search(backend="optuna") and LossTrainer: each trial trains
with the loss parameters optuna proposed, and the best trial's parameters come back as the tuned setting."""

from __future__ import annotations

import pytest
from transformers import AutoModelForSequenceClassification, TrainerCallback, set_seed

from hf_losses.cli.comparison import LossSetting
from hf_losses.cli.tuning import default_search_space, tune_loss
from hf_losses.trainers import LossTrainer, LossTrainingArguments

pytest.importorskip("optuna")


class RecordLoss(TrainerCallback):
    """Which loss object each trial trained with (read at on_train_begin, after the trial's set-up)."""

    def __init__(self) -> None:
        self.trainer = None
        self.losses: list = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.losses.append(self.trainer.loss)


def tiny_setup(example, tmp_path, **argument_overrides):
    medical = example("medical_diagnosis")
    train, test = medical.load_data(0.3, seed=0, max_train_samples=32)
    config = medical.TabularMLPConfig(num_features=10, hidden_size=8, num_hidden_layers=1, num_labels=2)
    recorder = RecordLoss()

    def model_init(trial=None):
        set_seed(0)
        return AutoModelForSequenceClassification.from_config(config)

    def make_trainer(args):
        trainer = LossTrainer(
            model_init=model_init,
            args=args,
            train_dataset=train,
            eval_dataset=test,
            compute_metrics=medical.make_compute_metrics(5.0),
            callbacks=[recorder],
        )
        recorder.trainer = trainer
        return trainer

    args = LossTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=16,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="no",
        **argument_overrides,
    )
    return make_trainer, args, recorder


def test_two_optuna_trials_train_with_the_proposed_focal_gamma(example, tmp_path):
    make_trainer, args, recorder = tiny_setup(example, tmp_path, loss_type="focal", loss_kwargs={"gamma": 2.0})
    tuned, trials = tune_loss(
        make_trainer,
        args,
        LossSetting.from_args(args),
        n_trials=2,
        objective_metric="expected_cost",
        direction="minimize",
        seed=1,
    )
    assert len(trials) == 2 and len(recorder.losses) == 2
    proposed = [trial["params"]["gamma"] for trial in trials]
    assert proposed[0] != proposed[1]
    # each trial's freshly built loss carries that trial's gamma (not the 2.0 the arguments started with)
    assert [loss.gamma for loss in recorder.losses] == pytest.approx(proposed)
    assert all(trial["objective"] is not None for trial in trials)
    best = min(trials, key=lambda trial: trial["objective"])
    assert tuned.loss_type == "focal" and tuned.loss_kwargs == pytest.approx({"gamma": best["params"]["gamma"]})


def test_plain_hyperparameter_search_trains_each_trial_with_its_own_loss_parameters(example, tmp_path):
    make_trainer, args, recorder = tiny_setup(example, tmp_path, loss_type="focal", loss_kwargs={"gamma": 2.0})
    trainer = make_trainer(args)
    gammas = []

    def hp_space(trial):
        gammas.append(trial.suggest_float("gamma", 0.0, 5.0))
        return {"loss_kwargs": {"gamma": gammas[-1]}}

    trainer.hyperparameter_search(
        hp_space=hp_space,
        n_trials=2,
        direction="minimize",
        backend="optuna",
        compute_objective=lambda metrics: metrics["eval_loss"],
    )
    assert [loss.gamma for loss in recorder.losses] == pytest.approx(gammas)


def test_tuning_a_composite_moves_the_weight_between_its_two_terms(example, tmp_path):
    space = default_search_space("0.5*cross_entropy+0.5*focal")

    class Trial:
        params: dict = {}

        def suggest_float(self, name, low, high, log=False):
            self.params[name] = 0.25
            return 0.25

    assert space(Trial()) == {"loss_type": "0.75*cross_entropy+0.25*focal"}


def test_a_loss_without_a_default_search_space_is_a_clear_error():
    with pytest.raises(ValueError, match="no default search space for loss 'bce'"):
        default_search_space("bce")


def test_example_flag_runs_two_tiny_trials_then_compares_with_the_best(example, tmp_path):
    medical = example("medical_diagnosis")
    table = medical.main(
        [
            "--output_dir",
            str(tmp_path),
            "--max_train_samples",
            "32",
            "--max_steps",
            "1",
            "--eval_strategy",
            "no",
            "--disable_tqdm",
            "True",
            "--tune_trials",
            "2",
            "--save_models",
            "False",
        ]
    )
    results = (tmp_path / "results.md").read_text()
    assert "Tuning (optuna" in results
    trial_rows = [line for line in results.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(trial_rows) == 2
    assert table.splitlines()[-1].startswith("| tuned fn_penalty(fn_cost=")
