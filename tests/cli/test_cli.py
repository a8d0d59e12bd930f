"""The `hf-losses` command: list / describe / config / plot, and one-line errors without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from hf_losses import describe_loss, list_losses
from hf_losses.cli.main import main
from hf_losses.cli.plotting import curve_keys, plot_run, read_log_history
from hf_losses.launch.accelerate_config import distributed_type_for, runs_as

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse exits by itself
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_console_script_points_at_main():
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "hf-losses"]
    assert script.value == "hf_losses.cli.main:main"


def test_list_shows_every_registered_loss_with_its_summary(capsys):
    code, out, err = run(capsys, "list")
    assert code == 0 and err == ""
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()[2:]}
    assert sorted(rows) == list_losses()
    for name, line in rows.items():
        assert describe_loss(name).summary in line


def test_describe_prints_parameters_defaults_and_reference(capsys):
    code, out, _ = run(capsys, "describe", "cross_entropy")
    assert code == 0
    assert "label_smoothing: float (default 0.0)" in out
    assert "ignore_index: int (default -100)" in out
    assert describe_loss("cross_entropy").reference in out


def test_describe_accepts_an_alias(capsys):
    code, out, _ = run(capsys, "describe", "ce")
    assert code == 0 and out.startswith("cross_entropy:")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (("describe", "cross_entropi"), "Did you mean 'cross_entropy'"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("describe",), "the following arguments are required: name"),
        (("config", "--deepspeed", "2", "--cpu"), "use_cpu"),
        (("config", "--num_processes", "3", "--num_machines", "2"), "multiple of `num_machines`"),
        (("config", "--deepspeed", "5"), "invalid choice: 5"),
        (("plot", "/nonexistent/run"), "does not exist"),
        (("demo", "--loss_type", "focall"), "Did you mean 'focal'"),
        (("demo", "--no_such_flag", "1"), "not used by the HfArgumentParser: ['--no_such_flag'"),
        (("demo", "--num_train_epochs", "many"), "invalid float value: 'many'"),
        (("demo", "--loss_kwargs", "{gamma: 2}"), "must be a JSON object"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code not in (0, None)
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_config_writes_a_deepspeed_pair_that_parses_to_the_requested_settings(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "config",
        "--output_dir",
        str(tmp_path),
        "--num_processes",
        "4",
        "--deepspeed",
        "3",
        "--mixed_precision",
        "bf16",
    )
    assert code == 0
    config = yaml.safe_load((tmp_path / "deepspeed_zero3.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["num_processes"] == 4
    deepspeed = json.loads(Path(config["deepspeed_config"]["deepspeed_config_file"]).read_text())
    assert deepspeed["zero_optimization"]["stage"] == 3
    assert (deepspeed["bf16"]["enabled"], deepspeed["fp16"]["enabled"]) == (True, False)
    assert str(tmp_path / "deepspeed_zero3.json") in out


def test_config_writes_a_cpu_multiprocess_yaml_without_deepspeed_json(capsys, tmp_path):
    code, _, _ = run(capsys, "config", "--output_dir", str(tmp_path), "--num_processes", "2", "--cpu")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu_multiprocess.yaml"]
    config = yaml.safe_load((tmp_path / "cpu_multiprocess.yaml").read_text())
    expected_type = distributed_type_for(num_processes=2, use_cpu=True, zero_stage=None, fsdp=False)
    assert (config["distributed_type"], config["use_cpu"], config["num_processes"]) == (expected_type, True, 2)
    assert runs_as(expected_type, use_cpu=True) == "MULTI_CPU"


def write_run(run_dir: Path) -> Path:
    history = [
        {"loss": 1.2, "loss/cross_entropy": 0.9, "loss/dice": 1.5, "learning_rate": 1e-3, "epoch": 0.5, "step": 5},
        {"loss": 0.8, "loss/cross_entropy": 0.6, "loss/dice": 1.0, "learning_rate": 5e-4, "epoch": 1.0, "step": 10},
        {"eval_loss": 0.7, "eval_dice": 0.4, "eval_iou": 0.3, "eval_runtime": 1.0, "epoch": 1.0, "step": 10},
        {"train_runtime": 3.0, "train_loss": 1.0, "epoch": 1.0, "step": 10},
    ]
    checkpoint = run_dir / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history, "global_step": 10}))
    return checkpoint


def test_curve_keys_put_components_with_the_loss_and_drop_runtime():
    keys = curve_keys(
        [
            {
                "loss": 1.0,
                "loss/dice": 1.0,
                "eval_loss": 1.0,
                "eval_dice": 0.5,
                "eval_runtime": 2.0,
                "epoch": 1.0,
                "step": 1,
            }
        ]
    )
    assert keys == {"train": ["loss", "loss/dice"], "eval_loss": ["eval_loss"], "metrics": ["eval_dice"]}


def test_plot_finds_the_newest_checkpoint_state_and_writes_a_png(capsys, tmp_path):
    write_run(tmp_path)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    assert len(read_log_history(tmp_path)) == 4  # checkpoint-10 beats checkpoint-2 numerically
    code, out, _ = run(capsys, "plot", str(tmp_path), "--output", str(tmp_path / "curves.png"))
    assert code == 0 and "curves.png" in out
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_of_an_empty_history_is_a_clear_error(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    with pytest.raises(ValueError, match="logged no losses"):
        plot_run(tmp_path)


def test_installed_command_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_losses.cli.main", "plot", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.startswith("hf-losses: error: no trainer_state.json")
    assert "Traceback" not in result.stderr
