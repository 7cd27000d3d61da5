"""A byte-level BPE tokenizer trained in-process on the offline corpora's TRAIN splits (for
models trained from scratch: paper A's GPT-2 variants offline). Deterministic and cached under
``.cache/tokenizers/``; the evaluation splits never reach it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from filelock import FileLock
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline.core.catalog import Catalog, default_catalog
from pipeline.core.paths import CACHE_DIR
from pipeline.data.text import build_source, data_config

SPECIAL = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
           "pad_token": "<|endoftext|>"}


def byte_level_bpe(texts, vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE (GPT-2 style, every byte in the alphabet) trained on ``texts``:
    deterministic for the same texts and size. Returns a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def offline_bpe(vocab_size: int, datasets: list[str] | tuple[str, ...],
                catalog: Catalog | None = None) -> PreTrainedTokenizerFast:
    """The BPE tokenizer of ``vocab_size`` trained on the train split of ``datasets``."""
    key = hashlib.sha256(f"{vocab_size}:{sorted(datasets)}".encode()).hexdigest()[:12]
    target = CACHE_DIR / "tokenizers" / f"bpe{vocab_size}-{key}"
    if (target / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "tokenizer.json").exists():
            print(f"[data] training a {vocab_size}-token BPE on the train split of {', '.join(datasets)} (once) ...",
                  flush=True)
            texts = [doc for name in datasets
                     for doc in build_source(data_config(name, catalog or default_catalog(),
                                                         split="train")).documents()]
            tok = byte_level_bpe(texts, vocab_size, [SPECIAL["bos_token"]])
            tmp = Path(str(target) + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL).save_pretrained(tmp)
            os.replace(tmp, target)
    return AutoTokenizer.from_pretrained(target)
