"""Mixture-of-experts: each expert's down-projection input and output, recomputed.

In transformers 5 an experts container holds fused 3-D parameters and applies them with
``F.linear`` on slices (or a grouped-GEMM implementation), so no module hook sees one expert's
down-projection input. A forward pre-hook on the container sees what it is called with,
``(hidden_states (N, d), top_k_index (N, k), top_k_weights (N, k))``; from that and the
container's own parameters this module recomputes, for one expert, exactly what the reference
``forward`` computes: ``X = act(gate) * up`` on the tokens routed to it and ``Y = X @ W_down^T``
(before the routing weight). Paper B reports Mixtral's super weights per expert (Table 2).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.core.errors import PipelineError


def routed_calls(experts: nn.Module, sink: list) -> torch.utils.hooks.RemovableHandle:
    """Record ``(hidden_states, top_k_index, top_k_weights)`` of each call of an experts
    container into ``sink``."""

    def pre(_m, args, kwargs):
        names = ("hidden_states", "top_k_index", "top_k_weights")
        vals = list(args) + [kwargs[n] for n in names[len(args):] if n in kwargs]
        if len(vals) < 3:
            raise PipelineError(f"{type(experts).__name__} was called without routing arguments; "
                                "per-expert analysis expects (hidden_states, top_k_index, top_k_weights)")
        sink.append(tuple(v.detach() for v in vals[:3]))

    return experts.register_forward_pre_hook(pre, with_kwargs=True)


def expert_down_io(experts: nn.Module, down_param: str, hidden: torch.Tensor, top_index: torch.Tensor,
                   expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one expert: (routed mask (N,), X (N, inter), Y (N, d)), zero on tokens not routed to it.

    Raises a one-line error for containers this recomputation does not know (no fused
    ``gate_up_proj`` + ``act_fn``, or biases)."""
    for attr in ("gate_up_proj", "act_fn", down_param):
        if not hasattr(experts, attr):
            raise PipelineError(f"{type(experts).__name__} has no '{attr}': per-expert super-weight "
                                "analysis supports fused gate_up_proj experts (Mixtral, OLMoE, Qwen-MoE)")
    if getattr(experts, "has_bias", False):
        raise PipelineError(f"{type(experts).__name__} has biased experts: not supported by per-expert analysis")
    w_down = getattr(experts, down_param)[expert]
    routed = (top_index == expert).any(dim=-1)
    x = hidden.new_zeros(hidden.shape[0], w_down.shape[1])
    y = hidden.new_zeros(hidden.shape[0], w_down.shape[0])
    if routed.any():
        gate, up = F.linear(hidden[routed], experts.gate_up_proj[expert]).chunk(2, dim=-1)
        x[routed] = experts.act_fn(gate) * up
        y[routed] = F.linear(x[routed], w_down)
    return routed, x, y


def routing_weight(top_index: torch.Tensor, top_weights: torch.Tensor, expert: int) -> torch.Tensor:
    """(N,) the weight with which each token receives ``expert``'s output (0 where not routed)."""
    return (top_weights * (top_index == expert)).sum(dim=-1)
