"""The input rows of every decoder matrix, observed on a forward pass (calibration of paper B §5:
SmoothQuant's per-channel input maxima, the INT4 clipping search's reconstruction error).

A plain linear's input comes from a forward pre-hook (:func:`pipeline.hooks.forward.capture`); an
expert's slice of a fused expert parameter sees only the tokens routed to it, recomputed by
:mod:`pipeline.hooks.moe`. Observation only: the model is never edited.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pipeline.hooks.forward import capture
from pipeline.hooks.moe import expert_down_io, routed_calls
from pipeline.models.arch import get_arch
from pipeline.models.matrices import decoder_matrices


@torch.inference_mode()
def observe_inputs(model: nn.Module, windows: torch.Tensor, device,
                   observe: Callable[[str, torch.Tensor, int], None]) -> None:
    """Run each window through the model and call ``observe(name, rows, window)`` with the input
    rows (tokens, in_features) of every matrix of ``decoder_matrices``: a linear's input, or for an
    expert's slice the rows of the tokens routed to that expert (its gate/up input, or the
    down projection's input ``act(gate) * up``, recomputed by :mod:`pipeline.hooks.moe`)."""
    spec = get_arch(model)
    plain, experts = {}, {}
    for m in decoder_matrices(model):
        if m.expert is None:
            plain[m.name] = m.module
        else:
            experts.setdefault(id(m.module), (m.module, [], []))[1].append(m)
    handles = [routed_calls(module, calls) for module, _mats, calls in experts.values()]
    window = [0]

    def on_input(name: str, x: torch.Tensor) -> None:
        observe(name, x.reshape(-1, x.shape[-1]), window[0])

    try:
        with capture(plain, on_input, inputs=True):
            for window[0], w in enumerate(windows):
                model(input_ids=w[None].to(device), use_cache=False)
                for module, mats, calls in experts.values():
                    for hidden, top_index, _weights in calls:
                        for m in mats:
                            routed, x, _y = expert_down_io(module, spec.expert_down_param, hidden, top_index, m.expert)
                            if routed.any():
                                observe(m.name, (x if m.param == spec.expert_down_param else hidden)[routed], window[0])
                    calls.clear()
    finally:
        for h in handles:
            h.remove()
