"""Tiny encoder-decoder models (T5, BART) from configs, their data, and the plain-PyTorch reference gradient of a
token-level loss on the decoder's logits; shared by ``tests/trainers/test_seq2seq_trainer.py`` and the 2-process
``seq2seq_worker.py``."""

from __future__ import annotations

from typing import Any

import torch

VOCAB_SIZE = 24
SOURCE_LENGTH, TARGET_LENGTH = 6, 5
MODELS = ("t5", "bart")


def build_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A one-layer T5 or BART with random weights (deterministic for a seed), dropout off."""
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    if name == "t5":
        config = T5Config(
            vocab_size=VOCAB_SIZE,
            d_model=16,
            d_kv=4,
            d_ff=32,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
            dropout_rate=0.0,
        )
        return T5ForConditionalGeneration(config)
    config = BartConfig(
        vocab_size=VOCAB_SIZE,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    return BartForConditionalGeneration(config)


def columns(num_samples: int, seed: int = 0) -> dict[str, list]:
    """Source ids, attention mask and target labels with right padding (-100) of varying length."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB_SIZE, (num_samples, SOURCE_LENGTH), generator=generator)
    labels = torch.randint(3, VOCAB_SIZE, (num_samples, TARGET_LENGTH), generator=generator)
    lengths = torch.randint(2, TARGET_LENGTH + 1, (num_samples,), generator=generator)
    labels[torch.arange(TARGET_LENGTH)[None, :] >= lengths[:, None]] = -100
    return {
        "input_ids": input_ids.tolist(),
        "attention_mask": torch.ones_like(input_ids).tolist(),
        "labels": labels.tolist(),
    }


def build_dataset(num_samples: int, seed: int = 0) -> Any:
    import datasets

    return datasets.Dataset.from_dict(columns(num_samples, seed))


def as_batch(num_samples: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return {key: torch.tensor(value) for key, value in columns(num_samples, seed).items()}


def reference_gradient(name: str, loss: torch.nn.Module | None, num_samples: int) -> torch.Tensor:
    """Gradient of the loss over all samples as one batch: ``loss(decoder logits (N*T, V), labels (N*T,))``, or the
    model's own loss when ``loss`` is None."""
    model = build_model(name)
    model.train()
    batch = as_batch(num_samples)
    if loss is None:
        model(**batch).loss.backward()
    else:
        logits = model(**batch).logits
        loss(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1)).backward()
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])
