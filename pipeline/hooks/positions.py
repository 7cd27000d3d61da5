"""Token roles and where they sit: the one definition of paper A's "starting token" and "first
delimiter" (§2: massive activations appear at the starting token and at the first "." or "\\n").

A row's *first token* is its first real token: position 0, or after the pads under left padding
(``attention_mask``). Its *first delimiter* is the first real token after it whose text, spaces
stripped, is made of delimiter characters.

:class:`RoleTracker` answers "which positions of the input now reaching the model hold each role"
for every forward of a run, also under KV-cache generation: a decode step's input is one new
token at absolute position ``past``, so the first token (in the cache) is not in it, and a first
delimiter may appear only at a later step. Positions are resolved once per forward, from the
model's own call, and edits at any layer read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.models.arch import prefix_roles

EDITABLE_ROLES = ("first_token", "first_delimiter")
TOKEN_TYPES = (*EDITABLE_ROLES, "other")
IsDelimiter = Callable[[int], bool]


def delimiter_test(tokenizer: Any, delimiters: list[str]) -> IsDelimiter:
    """A cached ``token_id -> bool``: the token's text, spaces stripped, is made of delimiter chars."""
    chars = set("".join(delimiters))
    cache: dict[int, bool] = {}

    def is_delimiter(tid: int) -> bool:
        if tid not in cache:
            text = tokenizer.decode([tid]).strip(" \t")
            cache[tid] = bool(text) and set(text) <= chars
        return cache[tid]

    return is_delimiter


def _first_real(mask_row: list[int] | None) -> int:
    if mask_row is None:
        return 0
    return next((t for t, m in enumerate(mask_row) if m), len(mask_row))


def first_positions(ids: torch.Tensor, is_delimiter: IsDelimiter,
                    attention_mask: torch.Tensor | None = None) -> dict[str, list[int | None]]:
    """Per row of ``ids`` (B, T): the position of the first real token and of the first delimiter
    token after it (None when the row has none)."""
    masks = attention_mask.tolist() if attention_mask is not None else [None] * ids.shape[0]
    firsts, delims = [], []
    for row, mask in zip(ids.tolist(), masks, strict=True):
        start = _first_real(mask)
        firsts.append(start if start < len(row) else None)
        delims.append(next((t for t in range(start + 1, len(row))
                            if (mask is None or mask[t]) and is_delimiter(row[t])), None))
    return {"first_token": firsts, "first_delimiter": delims}


def prefix_labels(model: Any) -> list[str]:
    """Labels of the positions a model puts before the text in its hidden states (a learnable
    sink token: ``"<sink_1>"``), from its arch spec; [] for most models."""
    return [f"<{r}>" for r in prefix_roles(model)]


def position_tokens(model: Any, tokenizer: Any, ids_row: list[int]) -> list[str]:
    """The text of every position of ``model``'s hidden states for one row of token ids: its
    prefix tokens first, then each decoded token."""
    return prefix_labels(model) + [tokenizer.decode([t]) for t in ids_row]


def token_types(ids: torch.Tensor, is_delimiter: IsDelimiter) -> list[list[str]]:
    """Every position of each row of ``ids`` (B, T) labelled first_token / first_delimiter / other."""
    out = []
    for b, row in enumerate(ids.tolist()):
        types = ["other"] * len(row)
        for role, positions in first_positions(ids[b:b + 1], is_delimiter).items():
            if positions[0] is not None:
                types[positions[0]] = role
        out.append(types)
    return out


def _past_length(kwargs: Mapping[str, Any]) -> int:
    """Tokens already in the KV cache when a forward starts (0 without a cache)."""
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    for key in ("cache", "past_key_values"):  # transformers 5.24 renamed past_key_values to cache
        past = kwargs.get(key)
        if past is not None and hasattr(past, "get_seq_length"):
            return int(past.get_seq_length())
    return 0


class RoleTracker:
    """Absolute positions of each row's first token and first delimiter across the forwards of one
    sequence (a prompt, then its decode steps); ``current`` maps them into the latest input."""

    def __init__(self, is_delimiter: IsDelimiter):
        self.is_delimiter = is_delimiter
        self.absolute: dict[str, list[int | None]] = {}
        self.current: dict[str, list[int | None]] = {}

    def update(self, ids: torch.Tensor, attention_mask: torch.Tensor | None, past: int) -> None:
        """Fold in one forward's ``ids`` (B, T) whose first token sits at absolute ``past``."""
        ids = ids.cpu()
        width = ids.shape[1]
        mask = attention_mask[:, -width:].cpu() if attention_mask is not None else None
        if past == 0 or len(self.absolute.get("first_token", [])) != ids.shape[0]:
            if past:
                raise PipelineError("token roles need the prompt's forward before its decode steps")
            self.absolute = first_positions(ids, self.is_delimiter, mask)
        else:  # a decode step: a first delimiter may arrive now
            for b, row in enumerate(ids.tolist()):
                if self.absolute["first_delimiter"][b] is None:
                    hit = next((past + t for t, tok in enumerate(row)
                                if (mask is None or mask[b, t]) and self.is_delimiter(tok)), None)
                    self.absolute["first_delimiter"][b] = hit
        self.current = {role: [p - past if p is not None and past <= p < past + width else None
                               for p in positions] for role, positions in self.absolute.items()}

    @contextmanager
    def tracking(self, model: nn.Module) -> Iterator[None]:
        """Keep the roles current on every forward of ``model`` inside the block (a forward
        pre-hook with kwargs on the model root, removed on exit)."""
        def pre(_m, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if not isinstance(ids, torch.Tensor):
                raise PipelineError("token-role edits need input_ids (the model was called with embeddings)")
            self.update(ids, kwargs.get("attention_mask"), _past_length(kwargs))

        handle = model.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
