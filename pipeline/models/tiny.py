"""Tiny random models and an in-process tokenizer, for tests and debugging (no downloads).

The tokenizer is a byte-level BPE trained on a fixed built-in text, so every machine gets the
same vocabulary; the models are built from configs with a fixed seed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from pipeline.core.errors import PipelineError

_CORPUS = (
    "Summer is warm. Winter is cold. The cat sat on the mat.\n"
    "A transformer has layers; each layer has attention and an MLP.\n"
    "Massive activations are few, but they are very large, and they act as biases.\n"
    "The following are multiple choice questions (with answers) about machine learning.\n"
    "Apple Inc. is a worldwide tech company. It sells phones, computers and watches.\n"
    "Once upon a time there was a small model that learned to copy tokens it had seen before.\n"
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.\n"
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n"
    "0 1 2 3 4 5 6 7 8 9 10 100 1000, and so on; the end.\n"
)

SPECIAL = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}


@functools.cache
def tiny_tokenizer(vocab_size: int = 384, add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``_CORPUS`` (deterministic). ``add_bos``: encoding
    with special tokens prepends ``<bos>``, as Llama-2-style tokenizers do."""
    from tokenizers import processors

    from pipeline.data.bpe import byte_level_bpe

    tok = byte_level_bpe([_CORPUS] * 4, vocab_size, list(SPECIAL.values()))
    if add_bos:
        bos = ("<bos>", tok.token_to_id("<bos>"))
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                           special_tokens=[bos])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def _config(arch: str, vocab: int, cfg: Mapping[str, Any]):
    d, n_layers, heads = cfg.get("hidden_size", 64), cfg.get("num_layers", 4), 4
    for key, value, low in (("hidden_size", d, heads), ("num_layers", n_layers, 1)):
        if (not isinstance(value, int) or isinstance(value, bool) or value < low
                or (key == "hidden_size" and value % heads)):
            raise PipelineError(f"tiny model: {key}={value!r} must be an integer >= {low}"
                                + (f" and a multiple of {heads}" if key == "hidden_size" else ""))
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
            num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    if arch == "gemma3":  # a norm on the attention and MLP outputs before they join the residual
        return Gemma3TextConfig(
            vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
            num_attention_heads=heads, num_key_value_heads=1, head_dim=d // heads,
            max_position_embeddings=512, sliding_window=64, query_pre_attn_scalar=d // heads,
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=d, n_layer=n_layers, n_head=heads, n_positions=512)
    raise PipelineError(f"tiny models exist for arch 'llama', 'gemma3' and 'gpt2', not {arch!r}")


def tiny_model(cfg: Mapping[str, Any]) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Build a seeded random model of ``cfg['arch']`` with the tiny tokenizer's vocabulary."""
    tok = tiny_tokenizer(add_bos=bool(cfg.get("add_bos", False)))
    config = _config(str(cfg.get("arch", "llama")), len(tok), cfg)
    config.bos_token_id, config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    config.pad_token_id = tok.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("init_seed", 0)))
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval(), tok
