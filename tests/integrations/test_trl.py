"""``LossSFTTrainer`` / ``LossSFTConfig`` (hf_losses.integrations.trl) against TRL's own ``SFTTrainer``.

On a tiny Llama / GPT-2 built from a config and a word-level tokenizer built offline (``tests/helpers/tiny_lm.py``),
one optimizer step over 8 samples: the chunked ``causal_lm`` loss and its gradient equal TRL's ``nll`` (fp32,
<= 1e-5 relative) at 8 x 1 and 2 x 4 accumulation, for language-modelling, prompt-completion (completion-only
masks) and conversational data (assistant-only masks), padding-free rows, packing and PEFT LoRA; the LM head never
computes full logits. Skipped when TRL is not installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl")

from tiny_lm import build_dataset, build_model, build_tokenizer  # noqa: E402
from tiny_tasks import GradientCapture, relative_error  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from hf_losses.integrations.trl import LossSFTConfig, LossSFTTrainer  # noqa: E402

TOLERANCE = 1e-5
NUM_SAMPLES = 8


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def _config(config_class: type, output_dir: str, batch_size: int, accumulation: int, **overrides: Any) -> Any:
    options = dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=NUM_SAMPLES,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1e-3,
        max_grad_norm=0.0,  # no clipping: the captured gradients keep their scale
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return config_class(**options)


class HeadShapes:
    """Shapes of every LM-head output (the chunked loss hands the head an empty slice: no full logits)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        model.get_output_embeddings().register_forward_hook(
            lambda module, args, output: self.shapes.append(tuple(output.shape))
        )


def _lora() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def train(
    tokenizer: Any,
    tmp_path: Any,
    kind: str,
    batch_size: int,
    accumulation: int,
    ours: bool = True,
    model: str = "llama",
    lora: bool = False,
    trainer_kwargs: dict | None = None,
    **config: Any,
) -> tuple[torch.Tensor, Any, list[tuple[int, ...]]]:
    """One optimizer step over the 8 samples: (the gradient before the step, the trainer, LM-head output shapes)."""
    network = build_model(model, len(tokenizer))
    shapes = HeadShapes(network)
    capture = GradientCapture()
    trainer_class, config_class = (LossSFTTrainer, LossSFTConfig) if ours else (SFTTrainer, SFTConfig)
    if lora:
        torch.manual_seed(1)  # the same LoRA initialisation for every run
    output_dir = str(tmp_path / f"{kind}-{batch_size}x{accumulation}-{ours}")
    args = _config(config_class, output_dir, batch_size, accumulation, **config)
    trainer = trainer_class(
        model=network,
        args=args,
        train_dataset=build_dataset(kind, NUM_SAMPLES),
        eval_dataset=build_dataset(kind, NUM_SAMPLES),
        processing_class=tokenizer,
        callbacks=[capture],
        peft_config=_lora() if lora else None,
        **(trainer_kwargs or {}),
    )
    if lora:
        with torch.no_grad():  # LoRA's B starts at 0: make it non-zero so every adapter weight has a gradient
            for name, parameter in trainer.model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.1)
    trainer.train()
    assert len(capture.gradients) == 1
    return capture.gradients[0], trainer, shapes.shapes


def step_log(trainer: Any) -> dict:
    return next(entry for entry in trainer.state.log_history if "loss" in entry)


def _trl_count_ratio(trl_trainer: Any) -> float:
    """TRL divides its summed token loss by the Trainer's ``num_items_in_batch``, which transformers 5.24 counts on
    the *unshifted* labels for models without ``loss_type = "ForCausalLM"`` (GPT-2: ``_loss_shifts_labels`` is
    False), i.e. one token per sequence too many. hf-losses divides by the shifted count; this is the factor between
    the two (1 for Llama)."""
    batch = next(iter(trl_trainer.get_train_dataloader()))  # the whole 8 samples (batch size 8)
    if trl_trainer._loss_shifts_labels or "shift_labels" in batch:
        return 1.0
    return float((batch["labels"] != -100).sum()) / float((batch["labels"][..., 1:] != -100).sum())


# (dataset format, model, SFT options) -- the options are set on both TRL's SFTConfig and LossSFTConfig
CASES = {
    "text-llama": ("text", "llama", {}),
    "text-gpt2-tied": ("text", "gpt2", {}),
    "prompt_completion-completion_only": ("prompt_completion", "llama", {}),
    "conversational_prompt_completion-gpt2": ("conversational_prompt_completion", "gpt2", {}),
    "messages-assistant_only": ("messages", "llama", {"assistant_only_loss": True}),
    "text-padding_free": ("text", "llama", {"padding_free": True, "max_length": None}),
    "prompt_completion-padding_free": ("prompt_completion", "llama", {"padding_free": True, "max_length": None}),
    "text-packing_bfd": ("text", "llama", {"packing": True, "max_length": 16}),
    "prompt_completion-lora": ("prompt_completion", "llama", {"lora": True}),
    "prompt_completion-lora-gradient_checkpointing": (
        "prompt_completion",
        "llama",
        {"lora": True, "gradient_checkpointing": True},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_causal_lm_equals_trl_nll_and_is_exact_under_accumulation(case: str, tokenizer: Any, tmp_path: Any) -> None:
    kind, model, options = CASES[case]
    options = dict(options)
    lora = options.pop("lora", False)
    reference, trl_trainer, _ = train(tokenizer, tmp_path, kind, 8, 1, ours=False, model=model, lora=lora, **options)
    trl_log = dict(step_log(trl_trainer))
    miscount = _trl_count_ratio(trl_trainer)
    reference, trl_log["loss"] = reference * miscount, trl_log["loss"] * miscount
    for batch_size, accumulation in ((8, 1), (2, 4)):
        gradient, trainer, shapes = train(
            tokenizer,
            tmp_path,
            kind,
            batch_size,
            accumulation,
            model=model,
            lora=lora,
            loss_type="causal_lm",
            **options,
        )
        assert trainer.args.loss_type == "causal_lm" and trainer.loss is not None
        error = relative_error(gradient, reference)
        assert error <= TOLERANCE, f"{case} {batch_size}x{accumulation}: gradient relative error {error:.2e}"
        log = step_log(trainer)
        loss_error = abs(log["loss"] - trl_log["loss"]) / abs(trl_log["loss"])
        assert loss_error <= TOLERANCE, f"{case} {batch_size}x{accumulation}: loss {log['loss']} vs {trl_log['loss']}"
        assert shapes and all(shape[-2] == 0 for shape in shapes), shapes  # the head never computed logits
        assert log["num_tokens"] == trl_log["num_tokens"]
        if accumulation == 1:  # one micro-batch: TRL's per-micro-batch metrics are the same numbers
            for metric in ("entropy", "mean_token_accuracy"):
                assert log[metric] == pytest.approx(trl_log[metric], rel=TOLERANCE, abs=1e-7), metric


def test_masks_reach_the_loss(tokenizer: Any, tmp_path: Any) -> None:
    """Completion-only and assistant-only data train on fewer tokens than the full sequences (the masks are in the
    labels the loss counts), and the loss differs from the unmasked one."""
    for kind, options in (("prompt_completion", {}), ("messages", {"assistant_only_loss": True})):
        _, masked, _ = train(tokenizer, tmp_path, kind, 8, 1, loss_type="causal_lm", **options)
        unmasked = {"completion_only_loss": False, "assistant_only_loss": False}
        _, full, _ = train(tokenizer, tmp_path, kind, 8, 1, loss_type="causal_lm", **unmasked)
        batch = next(iter(masked.get_train_dataloader()))
        counted = int(masked._get_num_items_in_batch([batch], torch.device("cpu"))["label"])
        full_batch = next(iter(full.get_train_dataloader()))
        full_count = int(full._get_num_items_in_batch([full_batch], torch.device("cpu"))["label"])
        assert 0 < counted < full_count, (kind, counted, full_count)


def test_label_smoothing_equals_trl_label_smoothing_factor(tokenizer: Any, tmp_path: Any) -> None:
    """causal_lm's label_smoothing (chunked) against TRL's LabelSmoother on the full logits."""
    reference, _, _ = train(tokenizer, tmp_path, "prompt_completion", 8, 1, ours=False, label_smoothing_factor=0.1)
    for batch_size, accumulation in ((8, 1), (2, 4)):
        gradient, _, shapes = train(
            tokenizer,
            tmp_path,
            "prompt_completion",
            batch_size,
            accumulation,
            loss_type="causal_lm",
            loss_kwargs={"label_smoothing": 0.1},
        )
        error = relative_error(gradient, reference)
        assert error <= TOLERANCE, f"{batch_size}x{accumulation}: relative error {error:.2e}"
        assert all(shape[-2] == 0 for shape in shapes)


def test_z_loss_softcap_class_weights_exact_under_accumulation(tokenizer: Any, tmp_path: Any) -> None:
    """The other causal_lm options: 8 x 1 equals 2 x 4, and the step's loss equals the loss module called directly on
    the model's hidden states; the z-loss part is logged as loss/z_loss."""
    weights = [1.0 + (index % 3) for index in range(len(tokenizer))]
    kwargs = {"z_loss": 1e-2, "softcap": 5.0, "class_weights": weights}
    runs = [
        train(tokenizer, tmp_path, "prompt_completion", b, a, loss_type="causal_lm", loss_kwargs=kwargs)
        for b, a in ((8, 1), (2, 4))
    ]
    (single, trainer, _), (accumulated, trainer_accumulated, _) = runs
    assert relative_error(accumulated, single) <= TOLERANCE
    log = step_log(trainer_accumulated)
    assert "loss/z_loss" in log and "loss/cross_entropy" in log
    assert log["loss"] == pytest.approx(step_log(trainer)["loss"], rel=TOLERANCE)

    from hf_losses import get_loss

    model = build_model("llama", len(tokenizer))
    batch = next(iter(trainer.get_train_dataloader()))
    outputs = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    direct = get_loss("causal_lm", **kwargs)(
        outputs.hidden_states[-1], batch["labels"], weight=model.get_output_embeddings().weight
    )
    assert float(direct) == pytest.approx(step_log(trainer)["loss"], rel=TOLERANCE)


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_trl_loss_types_are_trls_own(loss_type: str, tokenizer: Any, tmp_path: Any) -> None:
    """With TRL's own loss_type the mixin steps aside: same gradient, loss and metrics as SFTTrainer."""
    reference, trl_trainer, _ = train(tokenizer, tmp_path, "text", 2, 4, ours=False, loss_type=loss_type)
    gradient, trainer, _ = train(tokenizer, tmp_path, "text", 2, 4, loss_type=loss_type)
    assert trainer.loss is None and trainer._stock
    assert relative_error(gradient, reference) <= 1e-7
    ours, theirs = step_log(trainer), step_log(trl_trainer)
    for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-7), key


def test_evaluate_matches_trl(tokenizer: Any, tmp_path: Any) -> None:
    """eval_loss (one batch of 8) and TRL's eval metrics, as TRL's SFTTrainer computes them."""
    _, trl_trainer, _ = train(tokenizer, tmp_path, "prompt_completion", 8, 1, ours=False)
    _, trainer, _ = train(tokenizer, tmp_path, "prompt_completion", 8, 1, loss_type="causal_lm")
    theirs, ours = trl_trainer.evaluate(), trainer.evaluate()
    for key in ("eval_loss", "eval_entropy", "eval_mean_token_accuracy"):
        assert ours[key] == pytest.approx(theirs[key], rel=TOLERANCE, abs=1e-7), key


def test_compute_metrics_gets_logits(tokenizer: Any, tmp_path: Any) -> None:
    """compute_metrics needs logits: they are recomputed for evaluation only, as TRL does."""
    seen = {}

    def compute_metrics(prediction: Any) -> dict:
        seen["shape"] = prediction.predictions.shape
        return {"ok": 1.0}

    _, trainer, _ = train(
        tokenizer, tmp_path, "text", 8, 1, loss_type="causal_lm", trainer_kwargs={"compute_metrics": compute_metrics}
    )
    metrics = trainer.evaluate()
    assert metrics["eval_ok"] == 1.0 and seen["shape"][-1] == len(tokenizer)


def test_config_loss_type_values() -> None:
    common = dict(output_dir="unused", report_to=[], bf16=False, use_cpu=True)
    assert LossSFTConfig(**common).loss_type == "nll"
    assert LossSFTConfig(**common, loss_type="auto").loss_type == "nll"
    assert LossSFTConfig(**common, loss_type="dft").loss_type == "dft"
    config = LossSFTConfig(**common, loss_type="causal_lm", loss_kwargs='{"z_loss": 0.0001}')
    assert config.loss_type == "causal_lm" and config.loss_kwargs == {"z_loss": 0.0001}
    assert config.to_dict()["loss_type"] == "causal_lm"
    with pytest.raises(ValueError, match="causal_lm"):
        LossSFTConfig(**common, loss_type="causal_lmm")
    with pytest.raises(ValueError, match="TRL's own loss"):
        LossSFTConfig(**common, loss_type="nll", loss_kwargs={"z_loss": 0.1})
    with pytest.raises(ValueError, match="z_los"):
        LossSFTConfig(**common, loss_type="causal_lm", loss_kwargs={"z_los": 0.1})


def test_command_line_flags() -> None:
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(LossSFTConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            "unused",
            "--loss_type",
            "causal_lm",
            "--loss_kwargs",
            '{"label_smoothing": 0.1}',
            "--bf16",
            "False",
            "--use_cpu",
            "True",
            "--report_to",
            "none",
        ]
    )
    assert config.loss_type == "causal_lm" and config.loss_kwargs == {"label_smoothing": 0.1}


#: the 2-process cases (torchrun, gloo): 2 processes x batch 2 x 2 accumulation steps vs TRL's nll at 8 x 1
CASES_2PROC = {
    "prompt_completion-completion_only": CASES["prompt_completion-completion_only"],
    "text-padding_free": CASES["text-padding_free"],
}


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_two_processes_equal_single_process_trl_nll(tokenizer: Any, tmp_path: Any) -> None:
    from launching import launch, read_json_lines

    worker = Path(__file__).resolve().parent / "workers" / "trl_worker.py"
    completed = launch(worker, nproc=2, env={"OMP_NUM_THREADS": "1"}, timeout=540)
    records = {record["case"]: record for record in read_json_lines(completed.stdout)}
    assert sorted(records) == sorted(CASES_2PROC)
    for case, (kind, model, options) in CASES_2PROC.items():
        record = records[case]
        assert record["world_size"] == 2 and record["wrapper"] == "DistributedDataParallel", record
        reference, trl_trainer, _ = train(tokenizer, tmp_path, kind, 8, 1, ours=False, model=model, **options)
        miscount = _trl_count_ratio(trl_trainer)
        error = relative_error(torch.tensor(record["gradient"], dtype=torch.float64), reference * miscount)
        assert error <= TOLERANCE, f"{case}: 2 x 2 x 2 gradient relative error {error:.2e}"
        trl_loss = step_log(trl_trainer)["loss"] * miscount
        assert abs(record["loss"] - trl_loss) <= TOLERANCE * abs(trl_loss), (record["loss"], trl_loss)
        assert record["head_shapes"] and all(shape[-2] == 0 for shape in record["head_shapes"])


def test_importing_hf_losses_does_not_import_trl() -> None:
    code = "import sys, hf_losses, hf_losses.integrations; assert 'trl' not in sys.modules, 'trl imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
