"""A tiny word-level tokenizer (built offline with ``tokenizers``, with a chat template that marks the assistant's
turns for ``assistant_only_loss``), tiny causal LMs sized to it, and small SFT datasets in TRL's formats
(language modelling, prompt-completion, conversational, conversational prompt-completion) of uneven lengths."""

from __future__ import annotations

from typing import Any

import torch

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>"]
SENTENCES = [
    "the cat sat on the mat",
    "a dog ran to the park",
    "birds sing in the morning",
    "the sun is warm today",
    "we read a good book",
    "rain fell on the roof all night",
    "she plays the piano",
    "trees grow tall near the river",
    "he drinks tea",
    "the train leaves at noon",
    "children laugh in the garden",
    "my friend writes short poems about the sea",
]
QUESTIONS = [
    "what did the cat do",
    "where did the dog run",
    "when do birds sing",
    "how is the sun",
    "what do we read",
    "what fell on the roof",
    "what does she play",
    "where do trees grow",
]
ANSWERS = [
    "the cat sat on the mat",
    "to the park",
    "in the morning",
    "warm today",
    "a good book",
    "rain fell all night",
    "the piano",
    "near the river",
]
#: ``{% generation %}`` marks what ``assistant_only_loss`` trains on (the assistant's words and its ``<eos>``)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<assistant> ' }}"
    "{% generation %}{{ message['content'] + ' <eos>' }}{% endgeneration %}{{ ' ' }}"
    "{% else %}{{ '<user> ' + message['content'] + ' <eos> ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}"
)


def build_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast``: whitespace words of the texts above, the special tokens, the chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for text in SENTENCES + QUESTIONS + ANSWERS for word in text.split()})
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<user>", "<assistant>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(name: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """``llama`` (untied head), ``gpt2`` (tied embeddings, head without bias), dropout 0; same seed, same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if name == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=16,
            n_layer=1,
            n_head=2,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
        return GPT2LMHeadModel(config)
    if name != "llama":
        raise ValueError(name)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config)


def build_dataset(kind: str, num_samples: int = 8) -> Any:
    """``datasets.Dataset`` of ``num_samples`` rows in TRL's format ``kind``: ``text``, ``prompt_completion``,
    ``messages`` or ``conversational_prompt_completion``."""
    from datasets import Dataset

    rows = range(num_samples)
    if kind == "text":
        return Dataset.from_dict({"text": [SENTENCES[i % len(SENTENCES)] for i in rows]})
    pairs = [(QUESTIONS[i % len(QUESTIONS)], ANSWERS[i % len(ANSWERS)]) for i in rows]
    if kind == "prompt_completion":
        return Dataset.from_dict({"prompt": [q for q, _ in pairs], "completion": [" " + a for _, a in pairs]})
    if kind == "messages":
        return Dataset.from_list(
            [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
        )
    if kind == "conversational_prompt_completion":
        return Dataset.from_list(
            [
                {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
                for q, a in pairs
            ]
        )
    raise ValueError(kind)
