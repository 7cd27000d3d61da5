"""Reversible weight edits as context managers (paper B: prune / scale the super weight, prune
the largest other weights). On exit, also on exceptions, every touched element gets back its
exact original bits (tests compare ``torch.equal`` on the whole state dict).

Weights are addressed with :mod:`pipeline.models.matrices` (``WeightSite`` = paper B's
``W[row, col]`` of a down projection, ``decoder_matrices`` = every attention/MLP matrix).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.models.matrices import WeightSite, decoder_matrices, down_proj_matrix, stored_index


@contextmanager
def set_entries(entries: Sequence[tuple[torch.Tensor, tuple[int, ...], float]]) -> Iterator[None]:
    """Set ``matrix[index] = value`` for each entry; restore the exact originals on exit."""
    saved = [(m, idx, m[idx].clone()) for m, idx, _ in entries]
    try:
        for m, idx, value in entries:
            m[idx] = value
        yield
    finally:
        for m, idx, old in reversed(saved):
            m[idx] = old


@contextmanager
def scale_weights(model: nn.Module, sites: Sequence[WeightSite], factor: float) -> Iterator[None]:
    """Multiply each site's weight by ``factor`` (0 = prune). ``factor == 1`` touches nothing, so
    the model stays bitwise identical (paper B Fig. 6's scale 1 is the original model)."""
    if factor == 1:
        yield
        return
    entries = []
    for s in sites:
        m = down_proj_matrix(model, s.layer, s.expert)
        entries.append((m, (s.row, s.col), float(m[s.row, s.col]) * factor))
    with set_entries(entries):
        yield


def largest_weights(model: nn.Module, fraction: float, min_per_matrix: int = 1,
                    exclude: Sequence[WeightSite] = ()) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Paper B's "prune non-super-weights" selection: in every attention/MLP matrix of the decoder
    layers, the ``max(min_per_matrix, int(fraction * numel))`` largest-magnitude entries, except
    the super weights (the official code zeroes them all, then restores the super weights).

    Paper B: fraction 1e-6 of LLaMA-7B's matrices is about 6,400 weights. On small models
    ``int(1e-6 * numel)`` is 0, hence ``min_per_matrix``.
    """
    excluded = {stored_index(model, s) for s in exclude}
    picks = []
    for w in (m.stored for m in decoder_matrices(model)):
        k = min(w.numel(), max(min_per_matrix, int(fraction * w.numel())))
        for f in w.abs().flatten().topk(k).indices.tolist():
            idx = divmod(f, w.shape[1])
            if (w.data_ptr(), idx) not in excluded:
                picks.append((w, idx))
    return picks


@contextmanager
def zero_weights(picks: Sequence[tuple[torch.Tensor, tuple[int, int]]]) -> Iterator[None]:
    """Zero the picked entries; exact restore on exit."""
    with set_entries([(w, idx, 0.0) for w, idx in picks]):
        yield
