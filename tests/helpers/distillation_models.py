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
#: parameters each loss is trained with (a temperature other than 1 exercises the teacher's scaling too)
LOSS_KWARGS: dict[str, dict[str, Any]] = {"distillation": {}, "causal_lm_distillation": {}}


def build(name: str, seed: int = 0, num_labels: int = NUM_LABELS, vocab_size: int = VOCAB_SIZE) -> torch.nn.Module:
    """A student or teacher by name; the same seed gives the same weights (teachers use another seed)."""
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
    from transformers import LlamaConfig, LlamaForCausalLM

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


def reference_gradient(loss_type: str, num_samples: int = NUM_SAMPLES) -> torch.Tensor:
    """Plain PyTorch, no Trainer: the student's gradient of the loss over ``num_samples`` examples as one batch, the
    teacher's outputs computed the way the loss's documentation asks (no grad, full logits or hidden states + head)."""
    from hf_losses import get_loss
    from hf_losses.tasks import build_task

    task_name, _, _ = CASES[loss_type]
    student, teacher = student_and_teacher(loss_type)
    student.train()
    teacher.eval()
    loss = get_loss(loss_type, **LOSS_KWARGS[loss_type])
    examples = as_batch(task_name, num_samples)
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


# ------------------------------------------------------------------------------------------ TEMPORARY stand-ins
# until hf_losses/losses/distillation.py lands: the same interface (needs_teacher, teacher_input, forward keywords)
def _register_stand_ins() -> None:
    import torch.nn.functional as F

    from hf_losses.losses.base import HiddenStatesLoss, LogitsLoss, reduce_by_items
    from hf_losses.losses.language import shift_causal_labels
    from hf_losses.registry import list_losses, register_loss

    if "distillation" in list_losses():
        return

    def kl_plus_ce(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> tuple:
        valid = targets != -100
        kl = F.kl_div(F.log_softmax(student.float(), -1), F.log_softmax(teacher.float(), -1), log_target=True,
                      reduction="none").sum(-1)
        ce = F.cross_entropy(student.float(), targets.clamp(min=0), reduction="none")
        return ((0.5 * kl + 0.5 * ce) * valid).sum(), valid.sum()

    @register_loss("distillation")
    class StandInDistillation(LogitsLoss):
        needs_teacher = True
        teacher_input = "logits"

        def forward(self, logits, labels, num_items_in_batch=None, sample_weight=None, teacher_logits=None):
            total, count = kl_plus_ce(logits, teacher_logits, labels)
            return reduce_by_items(total, count, num_items_in_batch, "label")

    @register_loss("causal_lm_distillation")
    class StandInCausalDistillation(HiddenStatesLoss):
        needs_teacher = True
        teacher_input = "hidden_states"

        def targets(self, labels, shift_labels=None):
            return shift_labels if shift_labels is not None else shift_causal_labels(labels)

        def forward(self, hidden_states, labels, weight=None, bias=None, num_items_in_batch=None, shift_labels=None,
                    sample_weight=None, teacher_hidden_states=None, teacher_weight=None, teacher_bias=None):
            student = F.linear(hidden_states.float(), weight.float())
            teacher = F.linear(teacher_hidden_states.float(), teacher_weight.float())
            targets = self.targets(labels, shift_labels)
            total, count = kl_plus_ce(student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1]),
                                      targets.reshape(-1))
            return reduce_by_items(total, count, num_items_in_batch, "label")


_register_stand_ins()
