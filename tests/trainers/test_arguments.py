"""LossTrainingArguments: command-line parsing, validation before any model is loaded, CPU multi-process settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from transformers import HfArgumentParser

from hf_losses import LossTrainingArguments, list_losses
from hf_losses.launch.cpu import distributed_cpu_settings


def parse(*flags: str) -> LossTrainingArguments:
    (args,) = HfArgumentParser((LossTrainingArguments,)).parse_args_into_dataclasses(
        ["--output_dir", "unused", "--report_to", "none", *flags]
    )
    return args


def test_cli_parses_loss_type_json_kwargs_and_class_weights():
    args = parse("--loss_type", "focal", "--loss_kwargs", '{"gamma": 2.0}', "--class_weights", "balanced")
    assert (args.loss_type, args.loss_kwargs, args.class_weights) == ("focal", {"gamma": 2.0}, "balanced")
    assert args.loss_task == "auto" and args.class_weights_beta == 0.999


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,5.5,2", [1.0, 5.5, 2.0]),
        ("[1, 2]", [1.0, 2.0]),
        ("effective_num", "effective_num"),
        ("none", None),
    ],
)
def test_cli_class_weights_forms(text, expected):
    assert parse("--loss_type", "cross_entropy", "--class_weights", text).class_weights == expected


def test_cli_composite_expression_with_per_component_kwargs():
    args = parse(
        "--loss_type",
        "0.5*cross_entropy+0.5*focal",
        "--loss_kwargs",
        '{"focal": {"gamma": 1.0}, "cross_entropy": {"label_smoothing": 0.1}}',
        "--loss_task",
        "sequence_classification",
    )
    assert args.loss_kwargs == {"focal": {"gamma": 1.0}, "cross_entropy": {"label_smoothing": 0.1}}


def test_cli_typo_exits_nonzero_with_did_you_mean(tmp_path):
    assert "focal" in list_losses()
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent("""
        from transformers import HfArgumentParser
        from hf_losses import LossTrainingArguments
        HfArgumentParser((LossTrainingArguments,)).parse_args_into_dataclasses()
        print("parsed")
    """)
    )
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--output_dir",
            str(tmp_path / "out"),
            "--loss_type",
            "focall",
            "--report_to",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "parsed" not in result.stdout
    assert "did you mean 'focal'" in result.stderr.lower()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"loss_type": "crossentropy"}, ValueError, "did you mean 'cross_entropy'"),
        (
            {"loss_type": "focal", "loss_kwargs": {"gama": 2.0}},
            ValueError,
            "unknown parameter 'gama'. did you mean 'gamma'",
        ),
        ({"loss_type": "focal", "loss_kwargs": {"gamma": -1.0}}, ValueError, "`gamma` must be in [0"),
        ({"loss_type": "focal", "loss_kwargs": {"gamma": "two"}}, TypeError, "parameter 'gamma' must be float"),
        ({"loss_type": "focal", "loss_kwargs": "{gamma: 2}"}, ValueError, "must be a json object"),
        ({"loss_type": "auto", "loss_kwargs": {"gamma": 2.0}}, ValueError, "loss_type='auto'"),
        ({"loss_type": "auto", "class_weights": "balanced"}, ValueError, "needs a loss that takes them"),
        ({"loss_type": "poly1", "class_weights": "balanced"}, ValueError, "takes no class weights"),
        (
            {"loss_type": "cross_entropy", "class_weights": "balance"},
            ValueError,
            "one of ['balanced', 'effective_num']",
        ),
        ({"loss_type": "cross_entropy", "class_weights": [1.0, -2.0]}, ValueError, ">= 0"),
        (
            {"loss_type": "cross_entropy", "class_weights": "effective_num", "class_weights_beta": 1.0},
            ValueError,
            "class_weights_beta",
        ),
        (
            {"loss_type": "cross_entropy", "loss_kwargs": {"weight": [1.0]}, "class_weights": [1.0, 2.0]},
            ValueError,
            "given twice",
        ),
        (
            {"loss_type": "cross_entropy", "loss_task": "token_clasification"},
            ValueError,
            "did you mean 'token_classification'",
        ),
        ({"loss_type": "0.5*cross_entropy+0.5*focl"}, ValueError, "did you mean 'focal'"),
    ],
)
def test_bad_loss_configuration_fails_at_construction(kwargs, error, message, tmp_path):
    with pytest.raises(error) as info:
        LossTrainingArguments(output_dir=str(tmp_path), report_to=[], **kwargs)
    assert message.lower() in str(info.value).lower()


def test_losses_needing_class_counts_validate_without_data(tmp_path):
    """ldam/class_balanced need samples_per_class, which the trainer reads from the data: the arguments still
    validate every other value."""
    LossTrainingArguments(output_dir=str(tmp_path), report_to=[], loss_type="ldam", loss_kwargs={"max_margin": 0.3})
    with pytest.raises(ValueError, match="max_margin"):
        LossTrainingArguments(
            output_dir=str(tmp_path), report_to=[], loss_type="ldam", loss_kwargs={"max_margin": -1.0}
        )


@pytest.mark.parametrize(
    ("environ", "accelerator", "backend", "use_cpu", "expected"),
    [
        ({}, False, None, False, {}),  # one process: nothing
        ({"WORLD_SIZE": "1"}, False, "gloo", False, {"ddp_backend": None}),  # gloo alone fails to initialise
        ({"WORLD_SIZE": "2"}, False, None, False, {"ddp_backend": "gloo", "use_cpu": True}),  # DDP and DeepSpeed alike
        ({"WORLD_SIZE": "2"}, False, "mpi", False, {"use_cpu": True}),  # the user's backend is kept
        ({"WORLD_SIZE": "2"}, True, None, False, {}),  # GPUs: transformers' defaults are right
    ],
)
def test_distributed_cpu_settings(environ, accelerator, backend, use_cpu, expected):
    assert distributed_cpu_settings(environ, accelerator, backend, use_cpu) == expected


def test_single_process_gloo_is_dropped(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = LossTrainingArguments(output_dir=str(tmp_path), report_to=[], ddp_backend="gloo", use_cpu=True)
    assert args.ddp_backend is None
    assert args.device.type == "cpu"  # initialising the device does not ask for a process group
