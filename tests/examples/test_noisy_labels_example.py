"""examples/noisy_labels: the label noise, the cross-validated weights, and smoke runs (python and 2 processes)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from example_runs import SMOKE_FLAGS, example_script
from launching import REPO_ROOT, launch


def test_noise_flips_the_given_share_to_another_class(example):
    noisy = example("noisy_labels")
    data = noisy.load_digits_with_noise(0.4, 0.3, seed=0)
    flipped = data["flipped"]
    assert abs(flipped.mean() - 0.4) < 0.05
    assert np.all(data["noisy_y"][flipped] != data["clean_y"][flipped])
    assert np.all(data["noisy_y"][~flipped] == data["clean_y"][~flipped])
    assert len(data["test_y"]) == 540


def test_cross_validated_weights_are_lower_on_flipped_labels(example):
    noisy = example("noisy_labels")
    data = noisy.load_digits_with_noise(0.4, 0.3, seed=0, max_train_samples=400)
    weights = noisy.confidence_weights(data["train_x"], data["noisy_y"], folds=5, seed=0)
    assert weights.shape == (400,) and np.all((weights >= 0) & (weights <= 1))
    assert weights[~data["flipped"]].mean() > 3 * weights[data["flipped"]].mean()


def test_smoke_run_trains_the_four_runs(example, tmp_path):
    noisy = example("noisy_labels")
    table = noisy.main(["--output_dir", str(tmp_path), "--max_train_samples", "64", *SMOKE_FLAGS])
    rows = table.splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == [
        "clean labels",
        "noisy labels",
        "noisy + sample_weight (cross-validated confidence)",
        "noisy + oracle weights (0 for flipped labels)",
    ]
    assert table in (tmp_path / "results.md").read_text()
    config = (tmp_path / "noisy_plus_sample_weight" / "loss_config.json").read_text()
    assert '"normalize": "weight"' in config


@pytest.mark.multiprocess
def test_noisy_labels_example_under_accelerate_launch_with_two_processes(tmp_path):
    result = launch(
        example_script("noisy_labels"),
        "--output_dir",
        str(tmp_path),
        "--max_train_samples",
        "64",
        "--per_device_train_batch_size",
        "8",
        *SMOKE_FLAGS,
        nproc=2,
        launcher="accelerate",
        accelerate_config=REPO_ROOT / "configs" / "accelerate" / "cpu_multiprocess.yaml",
        timeout=600,
    )
    runs = re.findall(r"=== trained with (.+?): world size (\d+), model run as (\w+)", result.stdout)
    assert [(world, wrapper) for _, world, wrapper in runs] == [("2", "DistributedDataParallel")] * 4
    assert result.stdout.count("| training labels | accuracy |") == 1
