"""examples/sft: TRL's SFTTrainer through LossSFTTrainer on Rotten Tomatoes prompt-completion pairs, TRL's ``nll`` vs
``causal_lm`` with label smoothing and z-loss; smoke runs with ``python`` and under ``accelerate launch`` with 2 CPU
processes (real DDP over gloo)."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("trl")

from example_runs import SMOKE_FLAGS, example_script, load_example  # noqa: E402
from launching import REPO_ROOT, launch  # noqa: E402

#: "=== trained with <label>: <s> s, world size <n>, model run as <wrapper>" (hf_losses.cli.comparison)
TRAINED = r"=== trained with (.+?): [\d.]+ s, world size (\d+), model run as (\w+)"
SETTINGS = ["nll", "causal_lm(label_smoothing=0.1, z_loss=0.0001)"]
SMOKE_ARGS = ["--max_train_samples", "32", "--max_eval_samples", "16", "--save_models", "False", "--vocab_size", "300"]


def table_rows(results: str) -> dict[str, list[str]]:
    rows = {}
    for line in results.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in SETTINGS:
            rows[cells[0]] = cells[1:]
    return rows


def test_prompt_completion_pairs_split_each_review_in_halves():
    example = load_example("sft")
    rows = example.review_pairs(["one two three four five", "too short", "a b c d"], [1, 0, 0])
    assert rows == [
        {"prompt": "fresh review: one two", "completion": " three four five"},
        {"prompt": "rotten review: a b", "completion": " c d"},
    ]


def test_default_loss_is_causal_lm_with_label_smoothing_and_z_loss():
    example = load_example("sft")
    training_args, _ = example.parse_arguments(["--output_dir", "unused"])
    assert (training_args.loss_type, training_args.loss_kwargs) == ("causal_lm", example.DEFAULT_CAUSAL_LM_KWARGS)
    training_args, _ = example.parse_arguments(["--output_dir", "unused", "--loss_type", "dft"])
    assert training_args.loss_type == "dft" and not training_args.loss_kwargs


def test_sft_example_smoke_run_with_python(tmp_path):
    result = launch(
        example_script("sft"), "--output_dir", str(tmp_path), *SMOKE_ARGS, *SMOKE_FLAGS, launcher="python", timeout=300
    )
    runs = re.findall(TRAINED, result.stdout)
    assert [(label, world, wrapper) for label, world, wrapper in runs] == [
        (label, "1", "LlamaForCausalLM") for label in SETTINGS
    ]
    results = (tmp_path / "results.md").read_text()
    rows = table_rows(results)
    assert list(rows) == SETTINGS
    for cells in rows.values():  # held-out NLL, perplexity, token accuracy, entropy, eval_loss, time: all measured
        assert "n/a" not in cells and all(float(cell) >= 0 for cell in cells)
    nll, perplexity = float(rows["nll"][0]), float(rows["nll"][1])
    assert perplexity == pytest.approx(2.718281828**nll, rel=1e-3)
    assert float(rows["nll"][4]) == pytest.approx(nll, rel=1e-3)  # TRL's eval loss is the plain NLL
    assert "world size 1" in results
    assert "| held-out NLL | perplexity | token accuracy |" in result.stdout  # printed too


@pytest.mark.multiprocess
def test_sft_example_under_accelerate_launch_with_two_processes(tmp_path):
    result = launch(
        example_script("sft"),
        "--output_dir",
        str(tmp_path),
        *SMOKE_ARGS,
        *SMOKE_FLAGS,
        nproc=2,
        launcher="accelerate",
        accelerate_config=REPO_ROOT / "configs" / "accelerate" / "cpu_multiprocess.yaml",
        timeout=600,
    )
    runs = re.findall(TRAINED, result.stdout)
    assert [(label, world, wrapper) for label, world, wrapper in runs] == [
        (label, "2", "DistributedDataParallel") for label in SETTINGS
    ]
    assert result.stdout.count("| held-out NLL | perplexity |") == 1  # printed by the main process only
    results = (tmp_path / "results.md").read_text()
    assert "world size 2" in results and list(table_rows(results)) == SETTINGS
