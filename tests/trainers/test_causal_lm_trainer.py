"""LossTrainer with the chunked ``causal_lm`` loss: the gradient of one optimizer step equals the stock loss's
(transformers' ForCausalLMLoss on the full logits, ``model(**batch, labels=...)``) on tiny GPT-2 (tied
embeddings), Llama (untied) and PEFT LoRA models, whatever the accumulation (8 x 1, 2 x GA 4) -- while the LM head
never produces full logits. Two processes (DDP, DeepSpeed ZeRO-2/3):
``tests/distributed/test_causal_lm_multiprocess.py``.
"""

from __future__ import annotations

import pytest
import torch
from causal_lm_models import MODELS, NUM_SAMPLES, TOLERANCE, build_model, run_trainer, stock_gradient
from tiny_tasks import (
    VOCAB_SIZE,
    GradientCapture,
    as_batch,
    build_dataset,
    flat_grad,
    relative_error,
    training_arguments,
)


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
