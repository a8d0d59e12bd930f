"""examples/recommendation: the data split, the top-10 metrics against hand-computed values, and a smoke run of
train.py (LossTrainer with loss_type="relevance_diversity") that writes the results table and the plot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from example_runs import example_script, load_example


def test_top_k_metrics_equal_hand_computed_values():
    data = load_example("recommendation", "data")
    genres = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
    lists = torch.tensor([[0, 1], [2, 3], [4, 5]])
    metrics = data.top_k_metrics(lists, [1, 5, 5], genres, num_items=6)
    # hits: user 0 at rank 1 (NDCG 1/log2(3)), user 1 misses, user 2 at rank 1
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["ndcg@2"] == pytest.approx((2 / math.log2(3)) / 3)
    # 1 - cos per list: same direction 0, orthogonal 1, 45 degrees 1 - 1/sqrt(2)
    assert metrics["intra_list_diversity@2"] == pytest.approx((0 + 1 + (1 - 1 / math.sqrt(2))) / 3)
    assert metrics["coverage@2"] == pytest.approx(6 / 6)


def test_popularity_baseline_skips_seen_items():
    data = load_example("recommendation", "data")
    counts = torch.tensor([5.0, 9.0, 1.0, 7.0, 0.0])
    lists = data.popularity_lists(counts, [[1], [3, 0]], num_items=4, k=2)
    assert lists.tolist() == [[3, 0], [1, 2]]


def test_movielens_split_is_chronological_and_users_are_disjoint():
    data = load_example("recommendation", "data")
    full = data.load_movielens(max_length=20, eval_items_per_user=5)
    assert full.num_items == 2245 and full.pad_id == 2245
    assert len(full.eval_targets) == len(full.eval_histories) == 134 * 5  # 20% of 671 users, 5 targets each
    assert all(2 <= len(s) <= 20 for s in full.train_sequences)
    assert all(1 <= len(h) <= 19 for h in full.eval_histories)
    # a user's targets are consecutive: each next history ends with the previous target
    assert full.eval_histories[1][-1] == full.eval_targets[0]
    assert full.item_genres.shape == (2246, 19) and (full.item_genres[:-1].sum(dim=1) >= 1).all()
    torch.testing.assert_close(full.item_genres[full.pad_id], full.item_genres[:-1].mean(dim=0))
    # held-out users' interactions are not counted: the training counts miss at least their 134 * 5 targets
    assert 0 < full.item_counts.sum() <= 81915 - 134 * 5 and full.item_counts[full.pad_id] == 0


@pytest.mark.slow
def test_smoke_run_writes_results_table_plot_and_loss_config(tmp_path):
    command = [
        sys.executable,
        str(example_script("recommendation")),
        "--output_dir",
        str(tmp_path),
        "--max_train_samples",
        "64",
        "--max_eval_cases",
        "32",
        "--num_train_epochs",
        "1",
        "--diversity_weights",
        "0,2",
        "--hidden_size",
        "16",
        "--max_length",
        "20",
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    table = (tmp_path / "results.md").read_text()
    assert "| model | recall@10 | ndcg@10 | intra_list_diversity@10 | coverage@10 |" in table
    rows = [
        line
        for line in table.splitlines()
        if line.startswith(("| diversity_weight=0 |", "| diversity_weight=2 |", "| most popular unseen (no model) |"))
    ]
    assert len(rows) == 3
    for row in rows:
        values = [float(cell) for cell in row.strip("|").split("|")[1:]]
        assert all(0.0 <= value <= 1.0 for value in values)
    assert table.split("\n\n")[1] in result.stdout
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    config = json.loads((tmp_path / "diversity_2" / "loss_config.json").read_text())
    assert json.dumps(config).count("relevance_diversity") >= 1
    assert config["loss_kwargs"]["diversity_weight"] == 2.0
