"""The launch configs shipped in ``configs/``: which presets there are, and their text as the writer renders it.

Regenerate the folder with ``python -m hf_losses.launch.shipped_configs configs`` (a test checks that
``configs/`` equals :func:`shipped_config_texts`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hf_losses.launch.config_writer import launch_config_texts

#: name in configs/accelerate -> launch_config_texts arguments, plus "json": the DeepSpeed JSON's name in
#: configs/deepspeed
SHIPPED_ACCELERATE_CONFIGS: dict[str, dict[str, Any]] = {
    "cpu_multiprocess": {"num_processes": 2, "use_cpu": True},
    "single_gpu": {"num_processes": 1},
    "multi_gpu_ddp": {"num_processes": 8},
    "fsdp": {"num_processes": 8, "fsdp": True},
    "deepspeed_zero2": {"num_processes": 8, "zero_stage": 2, "json": "zero2"},
    "deepspeed_zero3": {"num_processes": 8, "zero_stage": 3, "json": "zero3"},
    "deepspeed_zero3_offload": {"num_processes": 8, "zero_stage": 3, "offload": True, "json": "zero3_offload"},
    "multi_node": {"num_processes": 16, "num_machines": 2, "main_process_ip": "10.0.0.1", "main_process_port": 29500},
}


def shipped_config_texts() -> dict[str, str]:
    """``{relative path under configs/: text}`` for every shipped file, as the writer renders them.

    The YAMLs name their JSON relative to the repository root (``configs/deepspeed/<json>.json``).
    """
    texts: dict[str, str] = {}
    for name, settings in SHIPPED_ACCELERATE_CONFIGS.items():
        settings = dict(settings)
        json_name = settings.pop("json", None)
        deepspeed_file = None if json_name is None else f"configs/deepspeed/{json_name}.json"
        rendered = launch_config_texts(**settings, deepspeed_config_file=deepspeed_file, shipped_name=name)
        if rendered.deepspeed_json is not None:
            texts[f"deepspeed/{json_name}.json"] = rendered.deepspeed_json
        texts[f"accelerate/{name}.yaml"] = rendered.accelerate_yaml
    return texts


def write_shipped_configs(config_root: str | Path) -> list[Path]:
    """Regenerate ``configs/`` (``python -m hf_losses.launch.shipped_configs configs``)."""
    written = []
    for relative, text in shipped_config_texts().items():
        path = Path(config_root) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """``python -m hf_losses.launch.shipped_configs [CONFIG_ROOT]``: write every shipped file, print its path."""
    argv = sys.argv[1:] if argv is None else argv
    for written_path in write_shipped_configs(argv[0] if argv else "configs"):
        print(written_path)


if __name__ == "__main__":
    main()
