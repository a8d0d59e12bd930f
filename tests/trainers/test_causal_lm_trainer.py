"""LossTrainer with the chunked ``causal_lm`` loss: the gradient of one optimizer step equals the stock loss's
(transformers' ForCausalLMLoss on the full logits, ``model(**batch, labels=...)``) on tiny GPT-2 (tied
embeddings), Llama (untied) and PEFT LoRA models, whatever the accumulation (8 x 1, 2 x GA 4), across 2 DDP
processes and under DeepSpeed ZeRO-2/3 (2 CPU processes, gloo) -- while the LM head never produces full logits.

Run as a script, this file is the 2-process worker (``python -m torch.distributed.run ... <this file> ddp`` or
``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml <this file> deepspeed``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_tasks import (  # noqa: E402
    VOCAB_SIZE,
    GradientCapture,
    as_batch,
    build_dataset,
    flat_grad,
    relative_error,
    training_arguments,
)

TOLERANCE = 1e-5
NUM_SAMPLES = 8
MODELS = ("gpt2_tied", "llama", "llama_lora", "llama_lora_head_saved")


# ------------------------------------------------------------------------------------------ models and references
def build_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny causal LM (dropout 0, vocabulary of the tiny causal-LM data); same seed, same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if name == "gpt2_tied":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB_SIZE,
                n_embd=8,
                n_layer=1,
                n_head=2,
                n_positions=16,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=16,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    if name == "llama":
        return model
    from peft import LoraConfig, get_peft_model

    options = dict(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    if name == "llama_lora_head_saved":
        options["modules_to_save"] = ["lm_head"]
    elif name == "llama_lora_on_head":
        options["target_modules"] = ["q_proj", "lm_head"]
    elif name != "llama_lora":
        raise ValueError(name)
    model = get_peft_model(model, LoraConfig(**options))
    torch.manual_seed(seed + 1)  # LoRA's B starts at 0: make it non-zero so every adapter weight has a gradient
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.normal_(0.0, 0.1)
    return model


def stock_gradient(name: str, num_samples: int = NUM_SAMPLES) -> torch.Tensor:
    """Plain PyTorch: the model's own loss (ForCausalLMLoss on the full logits) over all samples as one batch."""
    model = build_model(name)
    model.train()
    model(**as_batch("causal_lm", num_samples)).loss.backward()
    return flat_grad(model)


class HeadOutputShapes:
    """Records the shape of every LM-head output, to show no full logits are computed."""

    def __init__(self, model: torch.nn.Module) -> None:
        from hf_losses.tasks import unwrap

        self.shapes: list[tuple[int, ...]] = []
        head = unwrap(model).get_output_embeddings()
        self.handle = head.register_forward_hook(lambda module, args, output: self.shapes.append(tuple(output.shape)))


def run_trainer(name: str, batch_size: int, accumulation: int, output_dir: str, **overrides: Any):
    from hf_losses import LossTrainer

    args = training_arguments(
        output_dir, batch_size, accumulation, loss_type="causal_lm", loss_task="causal_lm", **overrides
    )
    capture = GradientCapture()
    model = build_model(name)
    shapes = HeadOutputShapes(model)
    trainer = LossTrainer(
        model=model, args=args, train_dataset=build_dataset("causal_lm", NUM_SAMPLES), callbacks=[capture]
    )
    trainer.train()
    return capture.gradients, shapes.shapes, trainer


# ------------------------------------------------------------------------------------------ single process
def test_gradient_equals_stock_loss_and_across_accumulation(tmp_path):
    for name in MODELS:
        reference = stock_gradient(name)
        for batch_size, accumulation in ((8, 1), (2, 4)):
            gradients, shapes, _ = run_trainer(name, batch_size, accumulation, str(tmp_path / f"{name}"))
            assert len(gradients) == 1, (name, batch_size, accumulation)
            error = relative_error(gradients[0], reference)
            assert error <= TOLERANCE, f"{name} {batch_size}x{accumulation}: relative error {error:.2e}"
            # the head ran, but on an empty slice: (N, 0, V) -- the full logits were never computed
            assert shapes and all(shape[-2] == 0 and shape[-1] == VOCAB_SIZE for shape in shapes), shapes


def test_loss_options_reach_the_loss_and_match_their_formula(tmp_path):
    import torch.nn.functional as F

    from hf_losses import LossTrainer

    options = {"label_smoothing": 0.1, "z_loss": 1e-2}
    args = training_arguments(str(tmp_path), 8, 1, loss_type="causal_lm", loss_task="causal_lm", loss_kwargs=options)
    capture = GradientCapture()
    LossTrainer(
        model=build_model("llama"),
        args=args,
        train_dataset=build_dataset("causal_lm", NUM_SAMPLES),
        callbacks=[capture],
    ).train()
    model = build_model("llama")
    batch = as_batch("causal_lm", NUM_SAMPLES)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.reshape(-1, VOCAB_SIZE)
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=-100).reshape(-1)
    valid = targets != -100
    per_token = F.cross_entropy(logits, targets, label_smoothing=0.1, reduction="none")
    loss = (per_token.sum() + 1e-2 * torch.logsumexp(logits[valid], -1).square().sum()) / valid.sum()
    loss.backward()
    assert relative_error(capture.gradients[0], flat_grad(model)) <= TOLERANCE


def test_evaluation_loss_equals_stock_loss(tmp_path):
    from hf_losses import LossTrainer

    args = training_arguments(
        str(tmp_path), 8, 1, loss_type="causal_lm", loss_task="causal_lm", per_device_eval_batch_size=NUM_SAMPLES
    )
    trainer = LossTrainer(
        model=build_model("gpt2_tied"), args=args, eval_dataset=build_dataset("causal_lm", NUM_SAMPLES)
    )
    metrics = trainer.evaluate()
    with torch.no_grad():
        expected = build_model("gpt2_tied")(**as_batch("causal_lm", NUM_SAMPLES)).loss
    assert abs(metrics["eval_loss"] - expected.item()) <= 1e-5 * expected.item()


def test_lora_on_the_head_is_refused_with_a_clear_message(tmp_path):
    from hf_losses import LossTrainer

    args = training_arguments(str(tmp_path), 8, 1, loss_type="causal_lm", loss_task="causal_lm")
    trainer = LossTrainer(
        model=build_model("llama_lora_on_head"), args=args, train_dataset=build_dataset("causal_lm", NUM_SAMPLES)
    )
    with pytest.raises(NotImplementedError, match="lm_head"):
        trainer.train()


def test_hidden_states_and_head_of_plain_models():
    from hf_losses import get_loss
    from hf_losses.trainers.hidden_states import lm_hidden_states_and_head

    batch = as_batch("causal_lm", 4)
    for name in ("gpt2_tied", "llama"):
        model = build_model(name)
        hidden, weight, bias = lm_hidden_states_and_head(model, batch)
        assert hidden.shape == (4, batch["input_ids"].shape[1], 8)
        assert weight is model.get_output_embeddings().weight and bias is None
        if name == "gpt2_tied":
            assert weight is model.get_input_embeddings().weight
        with torch.no_grad():
            value = get_loss("causal_lm")(hidden, batch["labels"], weight=weight, bias=bias)
            assert torch.allclose(value, model(**batch).loss, rtol=1e-5)


def test_models_that_rescale_logits_after_the_head_are_refused_unless_matched():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from hf_losses import get_loss
    from hf_losses.trainers.hidden_states import check_logit_processing, lm_hidden_states_and_head

    config = Gemma2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        final_logit_softcapping=5.0,
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        check_logit_processing(model, softcap=None)
    loss = get_loss("causal_lm", softcap=5.0)
    batch = as_batch("causal_lm", 4)
    hidden, weight, bias = lm_hidden_states_and_head(model, batch, loss=loss)
    with torch.no_grad():
        assert torch.allclose(loss(hidden, batch["labels"], weight=weight, bias=bias), model(**batch).loss, rtol=1e-5)


# ------------------------------------------------------------------------------------------ 2 processes
DISTRIBUTED_CASES = [("gpt2_tied", 2, 2), ("llama_lora", 4, 1)]  # (model, per-device batch, accumulation)


def _launch(mode: str) -> list[dict]:
    from launching import launch, read_json_lines

    env = {"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "OMP_NUM_THREADS": "1"}
    if mode == "ddp":
        completed = launch(__file__, "ddp", nproc=2, env=env, timeout=600)
    else:
        completed = launch(
            __file__,
            "deepspeed",
            nproc=2,
            launcher="accelerate",
            env=env,
            accelerate_config=REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml",
            timeout=840,
        )
    return read_json_lines(completed.stdout)


def _check_records(records: list[dict], expected_cases: list[tuple[str, ...]]) -> None:
    assert sorted((r["config"], r["model"]) for r in records) == sorted(expected_cases)
    for record in records:
        assert record["world_size"] == 2, record
        reference = stock_gradient(record["model"])
        error = relative_error(torch.tensor(record["gradient"], dtype=torch.float64), reference)
        assert error <= TOLERANCE, f"{record['config']} {record['model']}: relative error {error:.2e}"
        assert record["head_shapes"] and all(shape[-2] == 0 for shape in record["head_shapes"])


@pytest.mark.multiprocess
@pytest.mark.timeout(700)
def test_two_process_ddp_gradient_equals_single_process():
    pytest.importorskip("peft")
    records = _launch("ddp")
    for record in records:
        assert record["wrapper"] == "DistributedDataParallel", record
    _check_records(records, [("ddp", model) for model, _, _ in DISTRIBUTED_CASES])


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_process_deepspeed_zero2_and_zero3_gradient_equals_single_process():
    pytest.importorskip("deepspeed")
    records = _launch("deepspeed")
    for record in records:
        assert record["distributed_type"] == "DEEPSPEED" and record["wrapper"] == "DeepSpeedEngine", record
        assert record["zero_stage"] == int(record["config"][-1])
    zero3 = [r for r in records if r["config"] == "zero3"]
    assert zero3 and all(r["head_partitioned"] for r in zero3)  # ZeRO-3 really shards the LM head
    _check_records(records, [(config, "gpt2_tied") for config in ("zero2", "zero3")] + [("zero3", "llama")])


# ------------------------------------------------------------------------------------------ worker
def _use_accelerate_config(name: str) -> None:
    """The DeepSpeed environment ``accelerate launch --config_file configs/accelerate/<name>.yaml`` sets."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = config.deepspeed_config["deepspeed_config_file"]
    os.environ["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = str(config.deepspeed_config["zero3_init_flag"]).lower()


def _deepspeed_gradient_probe(trainer: Any, gradients: list) -> None:
    """The full gradient at the accumulation boundary, read before DeepSpeed's step (collective under ZeRO-3)."""
    from transformers import TrainerCallback

    class _Attach(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            from deepspeed.utils import safe_get_full_grad

            engine, model = trainer.model_wrapped, trainer.model
            original_step = engine.step

            def step(*step_args: Any, **step_kwargs: Any) -> Any:
                if engine.is_gradient_accumulation_boundary():
                    gradients.append(
                        torch.cat(
                            [
                                safe_get_full_grad(p).detach().reshape(-1).double().cpu()
                                for _, p in model.named_parameters()
                                if p.requires_grad
                            ]
                        )
                    )
                return original_step(*step_args, **step_kwargs)

            engine.step = step

    trainer.add_callback(_Attach())


def _worker_case(config: str, name: str, batch_size: int, accumulation: int, output_dir: str) -> dict:
    from hf_losses import LossTrainer

    deepspeed = config != "ddp"
    overrides = dict(use_cpu=False, optim="adamw_torch", max_steps=1) if deepspeed else {}
    args = training_arguments(
        os.path.join(output_dir, f"{config}_{name}"),
        batch_size,
        accumulation,
        loss_type="causal_lm",
        loss_task="causal_lm",
        **overrides,
    )
    model = build_model(name)
    shapes = HeadOutputShapes(model)
    capture = GradientCapture()
    trainer = LossTrainer(
        model=model,
        args=args,
        train_dataset=build_dataset("causal_lm", NUM_SAMPLES),
        callbacks=[] if deepspeed else [capture],
    )
    gradients = capture.gradients
    if deepspeed:
        gradients = []
        _deepspeed_gradient_probe(trainer, gradients)
    trainer.train()
    head_weight = (
        trainer.model.get_output_embeddings().weight if hasattr(trainer.model, "get_output_embeddings") else None
    )
    return {
        "config": config,
        "model": name,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "wrapper": type(trainer.model_wrapped).__name__,
        "zero_stage": getattr(getattr(trainer.accelerator.state, "deepspeed_plugin", None), "zero_stage", None),
        "head_partitioned": bool(
            head_weight is not None
            and getattr(head_weight, "ds_tensor", None) is not None
            and head_weight.ds_tensor.numel() < head_weight.ds_numel
        ),
        "steps": len(gradients),
        "gradient": gradients[0].tolist() if gradients else [],
        "head_shapes": shapes.shapes,
    }


def worker(mode: str) -> None:
    torch.set_num_threads(1)
    cases = []
    if mode == "ddp":
        cases = [("ddp", name, batch, accumulation) for name, batch, accumulation in DISTRIBUTED_CASES]
    else:
        cases = [("zero2", "gpt2_tied", 2, 2), ("zero3", "gpt2_tied", 2, 2), ("zero3", "llama", 4, 1)]
    with tempfile.TemporaryDirectory() as output_dir:
        for config, name, batch, accumulation in cases:
            if mode != "ddp":
                _use_accelerate_config("deepspeed_zero2" if config == "zero2" else "deepspeed_zero3")
            record = _worker_case(config, name, batch, accumulation, output_dir)
            if int(os.environ.get("RANK", "0")) == 0:
                print("RESULT " + json.dumps(record), flush=True)
    from hf_losses.distributed import shut_down

    shut_down()


if __name__ == "__main__":
    worker(sys.argv[1])
