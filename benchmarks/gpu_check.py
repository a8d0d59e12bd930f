"""GPU checks of precision and sharding through LossTrainer, for a machine with one CUDA GPU; prints a pass/fail table.

Each check runs in its own process, started the way a user starts it:

===========================  =========================================================================================
fp16_dynamic_loss_scaling    ``python``: native AMP fp16. One step gets a huge loss multiplier; its gradients overflow,
                             the step is skipped (weights unchanged), the GradScaler's scale halves, no NaN in weights.
bf16                         ``python``: bf16 autocast over float32 weights, no loss scaler, finite falling losses.
deepspeed_zero2_fp16         ``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml
                             --num_processes 1``: DeepSpeed ZeRO-2 fp16 with its dynamic loss scaler (the JSON's
                             ``loss_scale: 0``, ``initial_scale_power: 16``, ``hysteresis: 2``). Two consecutive
                             overflow steps: both skipped, the scale halves once the hysteresis is used up, fp16
                             weights, no NaN. The Trainer's torch AdamW is used: no DeepSpeed op is compiled.
deepspeed_zero2_plain_python ``python`` with ``deepspeed=configs/deepspeed/zero2.json`` and no launcher (the
                             rendezvous variables come from ``check_launch_config``): one fp32 step equals the
                             plain single-process gradient (relative error <= 1e-5).
fsdp_one_gpu                 ``accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1``:
                             FSDP2 wrapper, one fp32 step equals the plain gradient (<= 1e-5), then bf16 training
                             with finite falling losses.
===========================  =========================================================================================

Run (repository root)::

    python benchmarks/gpu_check.py            # all checks, table, exit code 1 if any fails
    python benchmarks/gpu_check.py --only bf16 fsdp_one_gpu
    python benchmarks/gpu_check.py --cpu-smoke  # plumbing only, on a machine without GPUs (fp16 -> bf16, no scaler
                                                # assertions, DeepSpeed on CPU, FSDP skipped): NOT a GPU result

Needs torch with CUDA, transformers, accelerate and deepspeed (the project's versions: transformers 5.24,
deepspeed 0.19.8). On the lent GPU machine, whose image lacks deepspeed/pydantic/hjson and has an older
transformers, the wheels in ``.whl/`` are installed first (see the report of the launch work for the command).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

VOCAB_SIZE = 64
SEQUENCE_LENGTH = 16
NUM_SAMPLES = 16
HUGE = 1e38  # times a loss of ~4, times the loss scale 2**16: inf in float32, so every gradient overflows
CHECK_TIMEOUT_S = 90


# ------------------------------------------------------------------ model, data, probes
def build_model(seed: int = 0) -> torch.nn.Module:
    """A tiny GPT-2 (dropout 0; GPT2Block is in _no_split_modules, so FSDP wraps each block)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=32,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def build_examples(num_samples: int = NUM_SAMPLES, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Token sequences with padding of varying length (labels -100 there): uneven item counts per batch."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for index in range(num_samples):
        input_ids = torch.randint(1, VOCAB_SIZE, (SEQUENCE_LENGTH,), generator=generator)
        length = 4 + (index * 5) % (SEQUENCE_LENGTH - 3)
        attention_mask = (torch.arange(SEQUENCE_LENGTH) < length).long()
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        examples.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return examples


def reference_gradient(device: torch.device) -> torch.Tensor:
    """The model's own mean loss over all examples as ONE batch, one process, float32, no Trainer."""
    model = build_model().to(device)
    model.train()
    batch = {
        key: torch.stack([example[key] for example in build_examples()]).to(device)
        for key in ("input_ids", "attention_mask", "labels")
    }
    model(**batch).loss.backward()
    return flat_grad(model)


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    parts = []
    for _, parameter in model.named_parameters():
        grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad  # FSDP2 DTensor
        parts.append(grad.detach().reshape(-1).double().cpu())
    return torch.cat(parts)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm().clamp(min=1e-30))


def all_finite(model: torch.nn.Module) -> bool:
    return all(
        bool(torch.isfinite(p.full_tensor() if hasattr(p, "full_tensor") else p).all()) for p in model.parameters()
    )


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [
        (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().cpu().clone() for p in model.parameters()
    ]


def arguments(output_dir: str, **overrides: Any) -> Any:
    from hf_losses import LossTrainingArguments

    values = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=6,
        learning_rate=1e-3,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        dataloader_num_workers=0,
        loss_type="cross_entropy",
    )
    if not torch.cuda.is_available():  # --cpu-smoke: bf16 on CPU needs use_cpu (DeepSpeed still runs with it)
        values["use_cpu"] = True
    values.update(overrides)
    return LossTrainingArguments(**values)


def overflow_trainer_class(overflow_steps: set[int]) -> type:
    """LossTrainer whose loss is multiplied by 1e38 on the given optimizer steps (0-based)."""
    from hf_losses import LossTrainer

    class OverflowingTrainer(LossTrainer):
        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training and self.state.global_step in overflow_steps:
                if return_outputs:
                    return result[0] * HUGE, result[1]
                return result * HUGE
            return result

    return OverflowingTrainer


def step_recorder(read_scale: Any) -> Any:
    """Callback recording, per optimizer step, the loss scale before/after and the weights before/after."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict[str, Any]] = []
            self.trainer: Any = None

        def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self._before = snapshot(model)
            self._scale = read_scale(self.trainer)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            after = snapshot(model)
            self.steps.append(
                {
                    "step": state.global_step - 1,
                    "scale_before": self._scale,
                    "scale_after": read_scale(self.trainer),
                    "weights_unchanged": all(torch.equal(a, b) for a, b in zip(self._before, after)),
                    "weights_finite": all(bool(torch.isfinite(a).all()) for a in after),
                }
            )

    return Recorder()


def losses_of(trainer: Any) -> list[float]:
    return [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def runtime_facts(trainer: Any) -> dict[str, Any]:
    parameter = next(trainer.model.parameters())
    local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
    return {
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "world_size": trainer.args.world_size,
        "wrapper": type(trainer.model_wrapped).__name__,
        "model_class": type(trainer.model).__name__,
        "parameter_dtype": str(local.dtype).replace("torch.", ""),
        "device": str(local.device),
    }


class Verdict:
    """Collects named expectations; a check passes when all hold."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.notes: list[str] = []

    def expect(self, condition: bool, what: str) -> None:
        (self.notes if condition else self.failed).append(what)

    def record(self, **facts: Any) -> dict[str, Any]:
        return {"passed": not self.failed, "failed": self.failed, "held": self.notes, **facts}


# ------------------------------------------------------------------ the checks (each in its own process)
def check_fp16_dynamic_loss_scaling(output_dir: str, smoke: bool) -> dict[str, Any]:
    verdict = Verdict()
    precision = {"bf16": True} if smoke else {"fp16": True}
    trainer_class = overflow_trainer_class(set() if smoke else {2})  # bf16 has no scaler to catch an overflow
    recorder = step_recorder(
        lambda t: (
            float(t.accelerator.scaler.get_scale()) if getattr(t.accelerator, "scaler", None) is not None else None
        )
    )
    model = build_model()
    logits_dtypes: set[str] = set()
    model.lm_head.register_forward_hook(lambda m, i, o: logits_dtypes.add(str(o.dtype).replace("torch.", "")))
    trainer = trainer_class(
        model=model, args=arguments(output_dir, **precision), train_dataset=build_examples(), callbacks=[recorder]
    )
    recorder.trainer = trainer
    trainer.train()
    steps = recorder.steps
    facts = runtime_facts(trainer)
    verdict.expect(facts["parameter_dtype"] == "float32", "float32 master weights")
    verdict.expect(logits_dtypes == ({"bfloat16"} if smoke else {"float16"}), f"forward in {logits_dtypes}")
    verdict.expect(all(step["weights_finite"] for step in steps), "no NaN/inf ever reaches the weights")
    if not smoke:
        overflow, clean = steps[2], [s for s in steps if s["step"] != 2]
        verdict.expect(steps[0]["scale_before"] == 2.0**16, f"initial scale {steps[0]['scale_before']} == 2**16")
        verdict.expect(overflow["weights_unchanged"], "overflow step skipped: weights unchanged")
        verdict.expect(
            overflow["scale_after"] == overflow["scale_before"] / 2,
            f"scale halves on overflow: {overflow['scale_before']} -> {overflow['scale_after']}",
        )
        verdict.expect(not any(s["weights_unchanged"] for s in clean), "every other step updates the weights")
        verdict.expect(all(s["scale_after"] == s["scale_before"] for s in clean), "scale constant otherwise")
    return verdict.record(**facts, steps=steps, losses=losses_of(trainer))


def check_bf16(output_dir: str, smoke: bool) -> dict[str, Any]:
    from hf_losses import LossTrainer

    verdict = Verdict()
    model = build_model()
    logits_dtypes: set[str] = set()
    model.lm_head.register_forward_hook(lambda m, i, o: logits_dtypes.add(str(o.dtype).replace("torch.", "")))
    trainer = LossTrainer(
        model=model, args=arguments(output_dir, bf16=True, learning_rate=3e-3), train_dataset=build_examples()
    )
    trainer.train()
    losses = losses_of(trainer)
    facts = runtime_facts(trainer)
    verdict.expect(getattr(trainer.accelerator, "scaler", None) is None, "no loss scaler with bf16")
    verdict.expect(logits_dtypes == {"bfloat16"}, f"forward in {logits_dtypes}")
    verdict.expect(facts["parameter_dtype"] == "float32", "float32 master weights")
    verdict.expect(all(math.isfinite(v) for v in losses) and len(losses) == 6, "6 finite losses")
    verdict.expect(losses[-1] < losses[0], f"loss falls {losses[0]:.3f} -> {losses[-1]:.3f}")
    verdict.expect(all_finite(trainer.model), "finite weights")
    return verdict.record(**facts, losses=losses)


def _deepspeed_scale(trainer: Any) -> float | None:
    engine = trainer.model_wrapped
    optimizer = getattr(engine, "optimizer", None)
    scale = getattr(optimizer, "loss_scale", None) if optimizer is not None else None
    return float(scale) if scale is not None else None


def check_deepspeed_zero2_fp16(output_dir: str, smoke: bool) -> dict[str, Any]:
    verdict = Verdict()
    precision = {"bf16": True} if smoke else {"fp16": True}
    trainer_class = overflow_trainer_class(set() if smoke else {2, 3})
    recorder = step_recorder(_deepspeed_scale)
    trainer = trainer_class(
        model=build_model(),
        args=arguments(output_dir, **precision),
        train_dataset=build_examples(),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    steps = recorder.steps
    facts = runtime_facts(trainer)
    engine = trainer.model_wrapped
    facts["skipped_steps"] = int(getattr(engine, "skipped_steps", -1))
    facts["zero_stage"] = int(engine.zero_optimization_stage())
    verdict.expect(
        facts["distributed_type"] == "DEEPSPEED" and facts["wrapper"] == "DeepSpeedEngine", "DeepSpeed engine"
    )
    verdict.expect(facts["zero_stage"] == 2, "ZeRO stage 2")
    verdict.expect(
        facts["parameter_dtype"] == ("bfloat16" if smoke else "float16"),
        f"{facts['parameter_dtype']} weights in the engine",
    )
    verdict.expect(all(step["weights_finite"] for step in steps), "no NaN/inf ever reaches the weights")
    if not smoke:
        verdict.expect(steps[0]["scale_before"] == 2.0**16, f"initial scale {steps[0]['scale_before']} == 2**16")
        verdict.expect(facts["skipped_steps"] == 2, f"DeepSpeed skipped {facts['skipped_steps']} steps (2 expected)")
        verdict.expect(
            steps[2]["weights_unchanged"] and steps[3]["weights_unchanged"], "overflow steps skipped: weights unchanged"
        )
        # hysteresis 2: the first overflow uses up the hysteresis, the second halves the scale
        verdict.expect(steps[2]["scale_after"] == steps[2]["scale_before"], "first overflow: scale kept (hysteresis 2)")
        verdict.expect(
            steps[3]["scale_after"] == steps[2]["scale_before"] / 2,
            f"second overflow: scale halves {steps[2]['scale_before']} -> {steps[3]['scale_after']}",
        )
        verdict.expect(
            not steps[1]["weights_unchanged"] and not steps[4]["weights_unchanged"], "clean steps update the weights"
        )
    return verdict.record(**facts, steps=steps, losses=losses_of(trainer))


def _one_step_gradient(output_dir: str, **overrides: Any) -> tuple[Any, torch.Tensor | None]:
    """One fp32 optimizer step over all 16 examples (4 per batch x 4 accumulation steps), lr 0, its gradient."""
    from transformers import TrainerCallback

    from hf_losses import LossTrainer

    captured: list[torch.Tensor] = []

    class Capture(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            engine = trainer.model_wrapped
            if type(engine).__name__ != "DeepSpeedEngine":
                return
            from deepspeed.utils import safe_get_full_grad

            original = engine.step

            def step(*a: Any, **k: Any) -> Any:
                if engine.is_gradient_accumulation_boundary():
                    captured.append(
                        torch.cat(
                            [
                                safe_get_full_grad(p).detach().reshape(-1).double().cpu()
                                for _, p in trainer.model.named_parameters()
                            ]
                        )
                    )
                return original(*a, **k)

            engine.step = step

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if not captured and type(trainer.model_wrapped).__name__ != "DeepSpeedEngine":
                captured.append(flat_grad(model))

    settings = dict(max_steps=1, gradient_accumulation_steps=4, learning_rate=0.0, max_grad_norm=0.0, loss_type="auto")
    settings.update(overrides)
    trainer = LossTrainer(
        model=build_model(),
        args=arguments(output_dir, **settings),
        train_dataset=build_examples(),
        callbacks=[Capture()],
    )
    trainer.train()
    return trainer, (captured[0] if captured else None)


def check_deepspeed_zero2_plain_python(output_dir: str, smoke: bool) -> dict[str, Any]:
    verdict = Verdict()
    absent = [name for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if name not in os.environ]
    trainer, gradient = _one_step_gradient(output_dir, deepspeed=str(REPO / "configs" / "deepspeed" / "zero2.json"))
    facts = runtime_facts(trainer)
    verdict.expect(absent == ["RANK", "LOCAL_RANK", "WORLD_SIZE"], "started without launcher variables")
    verdict.expect(facts["wrapper"] == "DeepSpeedEngine", "DeepSpeed engine")
    reference = reference_gradient(torch.device(facts["device"]))
    error = relative_error(gradient, reference) if gradient is not None else math.inf
    verdict.expect(error <= 1e-5, f"gradient relative error {error:.2e} <= 1e-5")
    return verdict.record(**facts, relative_error=error)


def check_fsdp_one_gpu(output_dir: str, smoke: bool) -> dict[str, Any]:
    from hf_losses import LossTrainer

    verdict = Verdict()
    trainer, gradient = _one_step_gradient(os.path.join(output_dir, "exact"))
    facts = runtime_facts(trainer)
    reference = reference_gradient(torch.device(facts["device"]))
    error = relative_error(gradient, reference) if gradient is not None else math.inf
    fsdp_module = False
    try:
        from torch.distributed.fsdp import FSDPModule

        fsdp_module = isinstance(trainer.model, FSDPModule)
    except ImportError:
        pass
    verdict.expect(facts["distributed_type"] == "FSDP", f"distributed type {facts['distributed_type']}")
    verdict.expect(fsdp_module, f"model is an FSDP2 module ({facts['model_class']})")
    verdict.expect(error <= 1e-5, f"fp32 gradient relative error {error:.2e} <= 1e-5")
    del trainer
    model = build_model()
    trainer = LossTrainer(
        model=model,
        args=arguments(os.path.join(output_dir, "bf16"), bf16=True, learning_rate=3e-3),
        train_dataset=build_examples(),
    )
    trainer.train()
    losses = losses_of(trainer)
    verdict.expect(all(math.isfinite(v) for v in losses) and len(losses) == 6, "bf16: 6 finite losses")
    verdict.expect(losses[-1] < losses[0], f"bf16: loss falls {losses[0]:.3f} -> {losses[-1]:.3f}")
    verdict.expect(all_finite(trainer.model), "bf16: finite weights")
    return verdict.record(**facts, relative_error=error, bf16_losses=losses)


CHECKS: dict[str, tuple[Any, str | None]] = {
    # name: (function, accelerate config under configs/accelerate or None for plain python)
    "fp16_dynamic_loss_scaling": (check_fp16_dynamic_loss_scaling, None),
    "bf16": (check_bf16, None),
    "deepspeed_zero2_fp16": (check_deepspeed_zero2_fp16, "deepspeed_zero2"),
    "deepspeed_zero2_plain_python": (check_deepspeed_zero2_plain_python, None),
    "fsdp_one_gpu": (check_fsdp_one_gpu, "fsdp"),
}


# ------------------------------------------------------------------ driver
def run_in_this_process(name: str, smoke: bool) -> None:
    function, _ = CHECKS[name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        try:
            record = function(output_dir, smoke)
        except Exception as error:  # a crash is a failed check with its reason, not a lost table
            import traceback

            traceback.print_exc()
            record = {"passed": False, "failed": [f"{type(error).__name__}: {error}"[:300]], "held": []}
    record["seconds"] = round(time.perf_counter() - started, 1)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(record, default=str), flush=True)


def launch(name: str, smoke: bool) -> dict[str, Any]:
    _, accelerate_config = CHECKS[name]
    command = [sys.executable]
    if accelerate_config is not None:
        command += [
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--main_process_port",
            "0",
            "--config_file",
            str(REPO / "configs" / "accelerate" / f"{accelerate_config}.yaml"),
        ]
    command += [str(Path(__file__).resolve()), "--check", name] + (["--cpu-smoke"] if smoke else [])
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)])),
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
    }
    if not smoke:
        environment.setdefault("DS_ACCELERATOR", "cuda")
    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(variable, None)
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=CHECK_TIMEOUT_S
        )
        output = completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as error:
        output = f"timed out after {CHECK_TIMEOUT_S} s\n{error.stdout or ''}{error.stderr or ''}"
    results = [json.loads(line[len("RESULT ") :]) for line in output.splitlines() if line.startswith("RESULT ")]
    if not results:
        tail = "\n".join(output.strip().splitlines()[-15:])
        return {
            "passed": False,
            "failed": [f"no result (exit); last lines:\n{tail}"],
            "held": [],
            "seconds": round(time.perf_counter() - started, 1),
        }
    record = results[-1]
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    return record


def print_table(records: dict[str, dict[str, Any]], smoke: bool) -> None:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU smoke run)"
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    try:
        import deepspeed

        versions += f", deepspeed {deepspeed.__version__}"
    except Exception:
        versions += ", deepspeed missing"
    print(f"\n# GPU check on {device} ({versions}){' -- CPU SMOKE RUN, not a GPU result' if smoke else ''}\n")
    print("| check | result | wall s | what held / what failed |")
    print("| --- | --- | --- | --- |")
    for name, record in records.items():
        status = "PASS" if record.get("passed") else "FAIL"
        held = "; ".join(record.get("held", []))
        failed = "; ".join(record.get("failed", []))
        detail = (f"FAILED: {failed}" + (f" (held: {held})" if held else "")) if failed else held
        detail = detail.replace("|", "/").replace("\n", " ")
        print(f"| {name} | {status} | {record.get('wall_seconds', record.get('seconds', ''))} | {detail} |")
    print()
    for name, record in records.items():
        facts = {k: v for k, v in record.items() if k not in ("passed", "failed", "held", "steps")}
        print(f"{name}: {json.dumps(facts, default=str)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", choices=sorted(CHECKS), help="run one check in this process (internal)")
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run only these checks")
    parser.add_argument("--cpu-smoke", action="store_true", help="plumbing test without a GPU (not a GPU result)")
    options = parser.parse_args()
    if options.check:
        run_in_this_process(options.check, options.cpu_smoke)
        return 0
    if not torch.cuda.is_available() and not options.cpu_smoke:
        print("No CUDA GPU: nothing checked. Use --cpu-smoke to test the plumbing on CPU.")
        return 2
    names = options.only or list(CHECKS)
    if options.cpu_smoke:
        names = [name for name in names if name != "fsdp_one_gpu"]  # FSDP needs a GPU (CPU would run DDP)
    started = time.perf_counter()
    records = {name: launch(name, options.cpu_smoke) for name in names}
    print_table(records, options.cpu_smoke)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0 if all(record.get("passed") for record in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
