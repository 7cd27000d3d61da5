"""Reversible interventions on activations, as context managers (paper A §3, Table 3).

``set_sites`` overwrites chosen feature dims of chosen tokens in one decoder layer's output:
set-to-zero, set-to-mean, or a control on random dims. Tokens are named by type, as paper A does
("starting token", "first delimiter"), and located in every input the model sees, whatever feeds
it (perplexity windows, lm-eval batches). Everything is done with hooks: on exit the model is
bit-identical to before (tests check logits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pipeline.core.errors import PipelineError
from pipeline.hooks.forward import patch
from pipeline.models.arch import layer

EDITABLE_TYPES = ("first_token", "first_delimiter")


@dataclass(frozen=True)
class Site:
    """One activation to overwrite: ``dim`` of the token of ``token_type``, set to ``value``."""

    token_type: str
    dim: int
    value: float


def first_positions(ids: torch.Tensor, is_delimiter: Callable[[int], bool]) -> dict[str, list[int | None]]:
    """Per row of ``ids`` (B, T): position of the first token (0) and of the first delimiter token
    after it (None when the row has none)."""
    delims = []
    for row in ids.tolist():
        delims.append(next((t for t in range(1, len(row)) if is_delimiter(row[t])), None))
    return {"first_token": [0] * ids.shape[0], "first_delimiter": delims}


@contextmanager
def set_sites(model: torch.nn.Module, layer_idx: int, sites: Sequence[Site],
              is_delimiter: Callable[[int], bool]) -> Iterator[None]:
    """Overwrite ``sites`` in the output of decoder layer ``layer_idx`` on every forward pass.

    The input ids are read by a pre-hook on the model itself (positional or ``input_ids=``), so
    the first-delimiter position is found per row of whatever batch is running.
    """
    bad = sorted({s.token_type for s in sites} - set(EDITABLE_TYPES))
    if bad:
        raise PipelineError(f"cannot intervene on token types {bad}; supported: {EDITABLE_TYPES}")
    target = layer(model, layer_idx)  # out-of-range layers fail here, before any hook exists
    seen: dict[str, torch.Tensor] = {}
    need_delims = any(s.token_type == "first_delimiter" for s in sites)

    def grab_ids(_m, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor):
            raise PipelineError("set_sites needs input_ids (the model was called with embeddings)")
        seen["ids"] = ids

    def edit(_name: str, h: torch.Tensor) -> torch.Tensor:
        ids = seen["ids"].cpu()
        if need_delims:
            pos = first_positions(ids, is_delimiter)
        else:
            pos = {"first_token": [0] * ids.shape[0]}
        h = h.clone()
        for s in sites:
            for b, p in enumerate(pos[s.token_type]):
                if p is not None:
                    h[b, p, s.dim] = s.value
        return h

    handle = model.register_forward_pre_hook(grab_ids, with_kwargs=True)
    try:
        with patch({f"layer{layer_idx}": target}, edit):
            yield
    finally:
        handle.remove()


def random_control(sites: Sequence[Site], hidden_size: int, seed: int) -> list[Site]:
    """As many zeroed activations as ``sites``, on the same tokens, at random dims that are not
    massive (paper A's control: zeroing random activations is harmless)."""
    massive = {s.dim for s in sites}
    pool = torch.tensor([d for d in range(hidden_size) if d not in massive])
    gen = torch.Generator().manual_seed(seed)
    out: list[Site] = []
    for ttype in dict.fromkeys(s.token_type for s in sites):
        k = sum(s.token_type == ttype for s in sites)
        picks = pool[torch.randperm(len(pool), generator=gen)[:k]]
        out += [Site(ttype, int(d), 0.0) for d in picks]
    return out
