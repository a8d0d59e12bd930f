"""Students and teachers for the distillation tests (built from configs, dropout 0): a tiny BERT classifier taught by
a wider, deeper BERT, and a tiny causal LM (GPT-2, tied head) taught by a wider, deeper Llama with the same
vocabulary; the plain-PyTorch reference gradient of one step; shared by ``tests/trainers/test_teacher.py``,
``tests/trainers/test_distillation_exactness.py`` and the 2-process ``workers/distill_worker.py``."""

from __future__ import annotations

from typing import Any

import torch
from tiny_tasks import NUM_LABELS, VOCAB_SIZE, as_batch, flat_grad

TOLERANCE = 1e-5
NUM_SAMPLES = 8
#: loss name -> (task, student, teacher)
CASES = {
    "distillation": ("sequence_classification", "bert_student", "bert_teacher"),
    "causal_lm_distillation": ("causal_lm", "gpt2_student", "llama_teacher"),
}
#: parameters each loss is trained with: both parts (soft and hard) present, temperatures other than 1, and a
#: generalized JSD (beta strictly between 0 and 1) on the causal-LM side
LOSS_KWARGS: dict[str, dict[str, Any]] = {
    "distillation": {"temperature": 3.0, "alpha": 0.7},
    "causal_lm_distillation": {"temperature": 2.0, "alpha": 0.5, "beta": 0.5},
}


def build(name: str, seed: int = 0, num_labels: int = NUM_LABELS, vocab_size: int = VOCAB_SIZE) -> torch.nn.Module:
    """A student or teacher by name; the same seed gives the same weights (teachers use another seed)."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if name in ("bert_student", "bert_teacher"):
        wide = name == "bert_teacher"
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=vocab_size,
                hidden_size=16 if wide else 8,
                num_hidden_layers=2 if wide else 1,
                num_attention_heads=2,
                intermediate_size=32 if wide else 16,
                max_position_embeddings=16,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
                classifier_dropout=0.0,
                num_labels=num_labels,
                problem_type="single_label_classification",
            )
        )
    if name == "gpt2_student":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab_size,
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
    if name == "llama_teacher":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab_size,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=16,
                tie_word_embeddings=False,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        )
    raise ValueError(name)


def student_and_teacher(loss_type: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Fresh student (seed 0) and teacher (seed 1) of ``loss_type``'s case."""
    _, student, teacher = CASES[loss_type]
    return build(student, seed=0), build(teacher, seed=1)


def reference_gradient(loss_type: str, start: int = 0, stop: int = NUM_SAMPLES) -> torch.Tensor:
    """Plain PyTorch, no Trainer: the student's gradient of the loss over examples ``start:stop`` as one batch, the
    teacher's outputs computed the way the loss's documentation asks (no grad; its logits, or its final hidden states
    and LM head)."""
    from hf_losses import get_loss
    from hf_losses.tasks import build_task

    task_name, _, _ = CASES[loss_type]
    student, teacher = student_and_teacher(loss_type)
    student.train()
    teacher.eval()
    loss = get_loss(loss_type, **LOSS_KWARGS[loss_type])
    examples = {key: value[start:stop] for key, value in as_batch(task_name, stop).items()}
    inputs = {key: value for key, value in examples.items() if key != "labels"}
    if task_name == "causal_lm":
        student_hidden = student.transformer(**inputs).last_hidden_state
        with torch.no_grad():
            teacher_hidden = teacher.model(**inputs).last_hidden_state
        value = loss(
            student_hidden,
            examples["labels"],
            weight=student.lm_head.weight,
            teacher_hidden_states=teacher_hidden,
            teacher_weight=teacher.lm_head.weight.detach(),
        )
    else:
        task = build_task(task_name, student)
        logits, labels = task.read(student(**inputs), examples)
        with torch.no_grad():
            teacher_logits, _ = task.read(teacher(**inputs), examples)
        value = loss(logits, labels, teacher_logits=teacher_logits)
    value.backward()
    return flat_grad(student)
