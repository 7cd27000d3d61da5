"""Text corpora as train / val token files, prepared once and memory-mapped (nanoGPT's
``prepare.py``, as a function of the data config and the tokenizer).

Two paths:
  offline -- the embedded corpora (``conf/data/{wiki_summaries,shakespeare,austen}.yaml``): their
             train / eval splits, each joined with its joiner, tokenized in one process.
  hub     -- a pretraining corpus read with ``datasets`` (``conf/data/openwebtext.yaml``, paper A):
             one split, ``val_fraction`` of its documents held out (nanoGPT: 0.0005, seed 2357),
             tokenized in ``num_proc`` processes, each document followed by the end-of-text
             token, and written to the token file in shards (OpenWebText: ~9B tokens, more than
             fits in a Python list).
Every file is written under a temporary name and renamed: an interrupted preparation leaves
nothing that a later run would mistake for a finished one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.core.catalog import Catalog
from pipeline.core.disk import atomic_write
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CACHE_DIR
from pipeline.data.text import build_source, data_config, stream_tokens
from pipeline.train.data import read_tokens, write_tokens
from pipeline.train.loop import rank_zero_first

SPLIT_SEED = 2357  # nanoGPT's openwebtext/prepare.py


def corpus_tokens(tokenizer: Any, datasets: list[str], catalog: Catalog, num_proc: int | None = None,
                  cache: Path | None = None) -> dict[str, np.ndarray]:
    """{"train", "val"}: the token streams of ``datasets`` under ``tokenizer``, cached under ``cache``
    (default: the pipeline cache)."""
    cfgs = [data_config(d, catalog) for d in datasets]
    name = Path(str(getattr(tokenizer, "name_or_path", "tok"))).name or "tok"
    folder = (cache or CACHE_DIR) / "train_data" / f"{name}-{len(tokenizer)}-{'-'.join(datasets)}"
    hub = [c for c in cfgs if c.get("kind") == "hub"]
    if hub and len(cfgs) > 1:
        raise PipelineError(f"train data {datasets}: a Hub corpus ({hub[0]['name']}) is trained on alone")
    with rank_zero_first():
        if not all((folder / f"{s}.bin").exists() for s in ("train", "val")):
            folder.mkdir(parents=True, exist_ok=True)
            if hub:
                _prepare_hub(hub[0], tokenizer, folder, num_proc or max(1, (os.cpu_count() or 2) // 2))
            else:
                _prepare_offline(datasets, catalog, tokenizer, folder)
    return {s: read_tokens(folder / f"{s}.bin") for s in ("train", "val")}


def _prepare_offline(datasets: list[str], catalog: Catalog, tokenizer: Any, folder: Path) -> None:
    for split, data_split in (("train", "train"), ("val", "eval")):
        ids: list[int] = []
        for d in datasets:
            cfg = data_config(d, catalog, split=data_split)
            ids += stream_tokens(tokenizer, build_source(cfg), None, cfg.get("joiner", "\n\n"))
        write_tokens(folder / f"{split}.bin", ids, len(tokenizer))


def _prepare_hub(cfg: dict[str, Any], tokenizer: Any, folder: Path, num_proc: int) -> None:
    import datasets as hf

    what = f"dataset '{cfg['name']}' ({cfg['hub_id']})"
    print(f"[data] preparing {what} for training (once, {num_proc} processes) into {folder} ...", flush=True)
    try:
        ds = hf.load_dataset(cfg.get("builder") or cfg["hub_id"], cfg.get("hub_config"),
                             split=cfg.get("hub_split", "train"), data_files=cfg.get("data_files"), num_proc=num_proc)
    except Exception as err:  # noqa: BLE001 - offline, missing, or broken: one line
        from pipeline.core.hub import require_hub

        require_hub(what)
        raise PipelineError(f"{what} failed to load: {err}".splitlines()[0]) from err
    split = ds.train_test_split(test_size=float(cfg.get("val_fraction", 0.0005)), seed=SPLIT_SEED, shuffle=True)
    eot = tokenizer.eos_token_id
    if eot is None:
        raise PipelineError(f"tokenizer {tokenizer.name_or_path} has no end-of-text token to separate documents")
    field = cfg.get("text_field", "text")

    def encode(batch: dict) -> dict:
        ids = tokenizer(batch[field], add_special_tokens=False)["input_ids"]
        return {"ids": [x + [eot] for x in ids], "len": [len(x) + 1 for x in ids]}

    for name, part in (("train", split["train"]), ("val", split["test"])):
        part = part.map(encode, batched=True, remove_columns=part.column_names, num_proc=num_proc,
                        desc=f"tokenizing {name}")
        _write_sharded(folder / f"{name}.bin", part, len(tokenizer))


def _write_sharded(path: Path, part: Any, vocab_size: int, shards: int = 1024) -> None:
    """nanoGPT's memmap writer: the token file filled shard by shard, renamed when complete."""
    dtype = np.uint16 if vocab_size <= 65535 else np.uint32
    total = int(np.sum(part["len"], dtype=np.uint64))
    tmp = path.with_name(path.name + ".tmp")
    arr = np.memmap(tmp, dtype=dtype, mode="w+", shape=(total,))
    at, shards = 0, max(1, min(shards, len(part)))
    for i in tqdm(range(shards), desc=f"writing {path.name}"):
        chunk = part.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
        ids = np.concatenate(list(chunk["ids"])).astype(dtype) if len(chunk) else np.zeros(0, dtype)
        arr[at:at + len(ids)] = ids
        at += len(ids)
    arr.flush()
    del arr
    atomic_write(path.with_suffix(".json"), lambda fh: json.dump({"dtype": np.dtype(dtype).name, "n": total,
                                                                   "vocab_size": vocab_size}, fh))
    tmp.replace(path)
