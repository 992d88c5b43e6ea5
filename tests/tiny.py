"""Tiny random-config models of the six supported families, for fast tests (import: ``from tiny import ...``)."""

from __future__ import annotations

import torch
import transformers as tf

FAMILIES = ["llama", "mistral", "qwen2", "gpt_neox", "gpt2", "bert"]
GATED = {"llama", "mistral", "qwen2"}


def tiny_config(family: str, *, layers: int = 3, d: int = 16, n: int = 24, vocab: int = 97):
    common = dict(vocab_size=vocab, num_hidden_layers=layers, num_attention_heads=2)
    if family in GATED:
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
        cfg = cls(hidden_size=d, intermediate_size=n, num_key_value_heads=1, **common)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=d, intermediate_size=n, **common)
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=d, n_inner=n, n_layer=layers, n_head=2)
    elif family == "bert":
        cfg = tf.BertConfig(hidden_size=d, intermediate_size=n, **common)
    else:
        raise ValueError(family)
    cfg.num_labels = 1
    cfg.pad_token_id = 0
    return cfg


def tiny_model(family: str, *, head: str = "seqcls", seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny random model in eval mode (``head``: "seqcls" or "causal")."""
    torch.manual_seed(seed)
    cfg = tiny_config(family, **kw)
    auto = tf.AutoModelForSequenceClassification if head == "seqcls" else tf.AutoModelForCausalLM
    return auto.from_config(cfg).eval()
