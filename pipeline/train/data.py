"""Training data: token files cut into batches that are a pure function of (seed, step, micro
step, rank), so a resumed run sees exactly the batches an uninterrupted one would, with no RNG
state to save. Sources are pluggable: anything with ``batch(split, step, micro) -> (B, T)`` ids
works with the loop (the paper-C generator of synthetic sequences is one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.disk import atomic_write
from pipeline.core.errors import PipelineError

SPLITS = ("train", "val")


def batch_seed(seed: int, split: str, step: int, micro: int, rank: int = 0) -> int:
    """One generator seed per (seed, split, step, micro step, rank): distinct, stable, < 2**63."""
    return (((seed * 1_000_003 + SPLITS.index(split)) * 1_000_033 + step) * 1_009 + micro) * 257 + rank


@dataclass
class TokenBatches:
    """Random windows of ``block_size`` tokens from a 1-D token array per split."""

    tokens: dict[str, np.ndarray]
    micro_batch: int
    block_size: int
    seed: int = 0
    rank: int = 0

    def __post_init__(self) -> None:
        for split in SPLITS:
            n = len(self.tokens.get(split, ()))
            if n <= self.block_size:
                raise PipelineError(f"the {split} split has {n} tokens: not one window of {self.block_size}")

    def batch(self, split: str, step: int, micro: int = 0) -> torch.Tensor:
        data = self.tokens[split]
        g = torch.Generator().manual_seed(batch_seed(self.seed, split, step, micro, self.rank))
        starts = torch.randint(0, len(data) - self.block_size, (self.micro_batch,), generator=g).tolist()
        return torch.from_numpy(np.stack([data[s:s + self.block_size].astype(np.int64) for s in starts]))


def write_tokens(path: Path, ids: list[int], vocab_size: int) -> None:
    """A flat token file (uint16 when the vocabulary fits, else uint32) and its .json sidecar,
    each written atomically: a killed preparation leaves no truncated file behind."""
    dtype = np.uint16 if vocab_size <= 65535 else np.uint32
    arr = np.asarray(ids, dtype=dtype)
    atomic_write(path.with_suffix(".json"), lambda fh: json.dump({"dtype": np.dtype(dtype).name, "n": len(arr),
                                                                   "vocab_size": vocab_size}, fh))
    tmp = path.with_name(path.name + ".tmp")
    arr.tofile(tmp)
    tmp.replace(path)


def read_tokens(path: Path) -> np.ndarray:
    """The token file as a read-only memory map (nothing is loaded up front)."""
    meta = json.loads(path.with_suffix(".json").read_text())
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(int(meta["n"]),))


@dataclass
class BigramBatches:
    """Paper C's fresh synthetic batches (:mod:`pipeline.data.bigram`), each a pure function of
    (seed, split, step, micro step, rank) like :class:`TokenBatches`. ``batch`` gives the model's
    inputs: ``input_ids`` (B, T) and aligned ``targets`` (-100 where no loss is taken:
    everywhere but counter >= 2 under ``loss_head_only``); ``sample`` adds the counter.
    ``bos_id``: a start token is put before every sequence (its target is the first token, never
    in the loss), so the model sees T + 1 positions."""

    stats: object               # CharStats
    task: object                # BigramTask
    micro_batch: int
    seed: int = 0
    rank: int = 0
    loss_head_only: bool = False
    bos_id: int | None = None

    def sample(self, split: str, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from pipeline.data.bigram import generate

        rng = np.random.default_rng(batch_seed(self.seed, split, step, micro, self.rank))
        tokens, counter = generate(self.stats, self.task, rng, self.micro_batch)
        x, y, c = (torch.from_numpy(a) for a in (tokens[:, :-1], tokens[:, 1:], counter[:, :-1]))
        return x, y, c

    def with_bos(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor):
        """Inputs, targets and counter with the start token first (its target: the first token)."""
        if self.bos_id is None:
            return x, y, c
        start = torch.full((len(x), 1), self.bos_id, dtype=x.dtype)
        return torch.cat([start, x], 1), torch.cat([x[:, :1], y], 1), torch.cat([torch.zeros_like(c[:, :1]), c], 1)

    def batch(self, split: str, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        x, y, c = self.with_bos(*self.sample(split, step, micro))
        targets = y.masked_fill(c < 2, -100) if self.loss_head_only else y
        if self.bos_id is not None and not self.loss_head_only:
            targets = targets.clone()
            targets[:, 0] = -100  # the first token after the start token is unpredictable: as without it
        return {"input_ids": x, "targets": targets}
