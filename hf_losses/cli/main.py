"""The ``hf-losses`` command: ``list``, ``describe NAME``, ``config``, ``plot RUN_DIR``, ``demo``.

Every error is one line on stderr (``hf-losses: error: ...``) and a non-zero exit code, never a traceback
(set ``HF_LOSSES_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ------------------------------------------------------------------------------------------ list / describe
def loss_table() -> str:
    """Markdown-style table of every registered loss: name, what it averages over, labels, summary."""
    from hf_losses.registry import describe_loss, list_losses

    rows = [("name", "averages over", "labels", "summary")]
    for name in list_losses():
        description = describe_loss(name)
        unit = description.item_unit if description.decomposable else f"{description.item_unit} (batch stats)"
        rows.append((name, unit, description.label_kind, description.summary))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + f" | {row[3]} |")
        if index == 0:
            lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|---|")
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> None:
    print(loss_table())


def _describe(args: argparse.Namespace) -> None:
    from hf_losses.registry import describe_loss

    try:
        description = describe_loss(args.name)
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from None
    print(description)


# ------------------------------------------------------------------------------------------ config
def _config(args: argparse.Namespace) -> None:
    from hf_losses.launch.config_writer import write_launch_config

    try:
        files = write_launch_config(
            args.output_dir,
            num_processes=args.num_processes,
            num_machines=args.num_machines,
            use_cpu=args.cpu,
            zero_stage=args.deepspeed,
            offload=args.offload,
            fsdp=args.fsdp,
            mixed_precision=args.mixed_precision,
            name=args.name,
            main_process_ip=args.main_process_ip,
            main_process_port=args.main_process_port,
        )
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from None
    kind = files.distributed_type
    if files.runs_as != files.distributed_type:
        kind += f", runs as {files.runs_as}"
    print(f"wrote {files.accelerate_config} ({kind})")
    if files.deepspeed_config is not None:
        print(f"wrote {files.deepspeed_config}")
    print(f"run: accelerate launch --config_file {files.accelerate_config} train.py --output_dir out ...")


# ------------------------------------------------------------------------------------------ plot
def _plot(args: argparse.Namespace) -> None:
    from hf_losses.cli.plotting import plot_run

    try:
        path = plot_run(args.run_dir, args.output, title=args.title)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------------ demo
def _demo(args: argparse.Namespace, extra: Sequence[str]) -> None:
    from hf_losses.cli.demo import run_demo

    run_demo(list(extra))


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hf-losses", description="Loss functions for Hugging Face training.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    commands.add_parser("list", help="table of the registered losses with one-line summaries")

    describe = commands.add_parser("describe", help="parameters, defaults and reference of one loss")
    describe.add_argument("name", help="a loss name from 'hf-losses list'")

    _add_config_arguments(
        commands.add_parser("config", help="write an accelerate YAML (+ DeepSpeed JSON) for your machines")
    )

    plot = commands.add_parser("plot", help="loss curves per component and eval metrics of a run -> PNG")
    plot.add_argument("run_dir", help="a Trainer output_dir or checkpoint folder (holds trainer_state.json)")
    plot.add_argument("--output", default=None, help="PNG path (default RUN_DIR/loss_curves.png)")
    plot.add_argument("--title", default=None, help="figure title")

    commands.add_parser(
        "demo",
        help="fine-tune MiniLM on imbalanced movie reviews: cross_entropy vs an "
        "imbalance loss (any training argument may follow, e.g. --output_dir)",
        add_help=False,
    )
    return parser


def _add_config_arguments(config: argparse.ArgumentParser) -> None:
    """The flags of ``hf-losses config`` (those of :func:`hf_losses.launch.config_writer.write_launch_config`)."""
    from hf_losses.launch.choices import MIXED_PRECISIONS, ZERO_STAGES

    config.add_argument("--output_dir", default=".", help="folder to write into (default: current folder)")
    config.add_argument(
        "--num_processes",
        type=int,
        default=1,
        help="processes over all machines: GPUs, or CPU processes with --cpu (default 1)",
    )
    config.add_argument("--num_machines", type=int, default=1, help="nodes (default 1)")
    config.add_argument("--cpu", action="store_true", help="CPU processes with the gloo backend, no GPU")
    config.add_argument(
        "--deepspeed",
        type=int,
        choices=ZERO_STAGES,
        default=None,
        metavar="ZERO_STAGE",
        help="DeepSpeed with this ZeRO stage (0, 1, 2 or 3); also writes the DeepSpeed JSON",
    )
    config.add_argument(
        "--offload", action="store_true", help="ZeRO-2/3: optimizer states (and ZeRO-3 parameters) in CPU memory"
    )
    config.add_argument("--fsdp", action="store_true", help="PyTorch FSDP2 instead of DDP (GPUs)")
    config.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISIONS,
        default="auto",
        help="'auto' (default): taken from --bf16/--fp16 of the training arguments",
    )
    config.add_argument("--name", default=None, help="file stem (default from the settings, e.g. deepspeed_zero2)")
    config.add_argument("--main_process_ip", default=None, help="several machines: address of the rank-0 node")
    config.add_argument("--main_process_port", type=int, default=None, help="several machines: its port")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "demo":  # the demo parses its own (HfArgumentParser) arguments
        args, extra = argparse.Namespace(command="demo"), argv[1:]
    else:
        args, extra = parser.parse_args(argv), []
    handlers = {"list": _list, "describe": _describe, "config": _config, "plot": _plot}
    try:
        if args.command == "demo":
            _demo(args, extra)
        else:
            handlers[args.command](args)
    except CommandError as error:
        print(f"hf-losses: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hf-losses: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as error:  # anything else is still one line; HF_LOSSES_DEBUG=1 shows the traceback
        if os.environ.get("HF_LOSSES_DEBUG"):
            raise
        print(f"hf-losses: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
