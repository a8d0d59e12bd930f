"""Tiny causal LMs for the chunked ``causal_lm`` loss under LossTrainer (GPT-2 with tied embeddings, Llama, PEFT
LoRA), the stock-loss reference gradient, and a recorder showing that the LM head never computes full logits;
shared by ``tests/trainers/test_causal_lm_trainer.py`` and the 2-process ``causal_lm_worker.py``."""

from __future__ import annotations

from typing import Any

import torch
from tiny_tasks import VOCAB_SIZE, GradientCapture, as_batch, build_dataset, flat_grad, training_arguments

TOLERANCE = 1e-5
NUM_SAMPLES = 8
MODELS = ("gpt2_tied", "llama", "llama_lora", "llama_lora_head_saved")
#: (model, per-device batch, accumulation) of the 2-process DDP runs
DISTRIBUTED_CASES = [("gpt2_tied", 2, 2), ("llama_lora", 4, 1)]


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
