"""Restore the super activation under pruned super weights (paper B Table 1, "Prune SW, +SA").

The official code does this for LLaMA-7B only; here any model, mixture-of-experts included. In
the down-projection output of each super weight's layer, at the token where |original output| of
channel ``row`` peaks, the original value (pruned output + X[t, col] * W[row, col]) is written
back. Everything is done with hooks (:mod:`pipeline.hooks.forward`) and the reversible weight
edits of :mod:`pipeline.interventions.weights`: on exit the model is bit-identical to before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from pipeline.hooks.forward import capture, patch_seeing_inputs
from pipeline.hooks.moe import expert_down_io, routing_weight
from pipeline.interventions.weights import scale_weights
from pipeline.models.arch import get_arch, layer, layer_module
from pipeline.models.matrices import WeightSite, down_proj_matrix


@contextmanager
def restore_super_activation(model: torch.nn.Module, sites: Sequence[WeightSite]) -> Iterator[None]:
    """Under pruned super weights: put the super activation back in each layer's down-projection
    output (per sequence, at the token where the original |output| of channel ``row`` peaks).
    Enter it BEFORE pruning: it records the original weights. On a mixture-of-experts layer the
    output is the routed sum, and the pruned weight's share is ``routing weight x X_e[t, col] x W``
    with the expert's input recomputed (:mod:`pipeline.hooks.moe`)."""
    spec = get_arch(model)
    by_layer: dict[int, list[tuple[int, int, float, int | None]]] = defaultdict(list)
    for s in sites:
        by_layer[s.layer].append((s.row, s.col, float(down_proj_matrix(model, s.layer, s.expert)[s.row, s.col]),
                                  s.expert))
    shapes: dict[int, tuple[int, int]] = {}

    def record_shape(name: str, h: torch.Tensor) -> None:  # the decoder layer's input: (B, T, d)
        shapes[int(name)] = tuple(h.shape[:2])

    def restore(name: str, m: torch.nn.Module, args: tuple, kwargs: dict, y: torch.Tensor) -> torch.Tensor:
        lay = int(name)
        entries = by_layer[lay]
        flat = y.reshape(-1, y.shape[-1]).clone()  # (B * T, d) whatever the layout
        if any(e is not None for *_, e in entries):
            hidden, top_index, top_weights = (list(args) + [kwargs.get(k) for k in
                                              ("hidden_states", "top_k_index", "top_k_weights")[len(args):]])[:3]
            hidden, top_index = hidden.reshape(-1, hidden.shape[-1]), top_index.reshape(-1, top_index.shape[-1])
            top_weights = top_weights.reshape(-1, top_weights.shape[-1])
        else:
            x = args[0].reshape(-1, args[0].shape[-1])
        b_size, n_tok = shapes[lay]
        for row in dict.fromkeys(r for r, *_ in entries):
            original = flat[:, row].clone()
            for r, c, w, e in entries:
                if r != row:
                    continue
                if e is None:
                    original += x[:, c] * w
                else:
                    _, xe, _ = expert_down_io(m, spec.expert_down_param, hidden, top_index, e)
                    original += routing_weight(top_index, top_weights, e).to(xe.dtype) * xe[:, c] * w
            per_seq = original.view(b_size, n_tok)
            t = per_seq.abs().argmax(dim=1)
            b = torch.arange(b_size, device=y.device)
            flat.view(b_size, n_tok, -1)[b, t, row] = per_seq[b, t]
        return flat.view(y.shape)

    with capture({str(lay): layer(model, lay) for lay in by_layer}, record_shape, inputs=True), \
            patch_seeing_inputs({str(lay): layer_module(model, lay, "down_proj") for lay in by_layer}, restore):
        yield


@contextmanager
def prune_restore(model: torch.nn.Module, sites: Sequence[WeightSite]) -> Iterator[None]:
    """Paper B's prune_sw_restore_sa: the super weights pruned, the super activation restored
    (the restore hook reads the weights before they are pruned)."""
    with restore_super_activation(model, sites), scale_weights(model, sites, 0.0):
        yield
