"""Simulated quantization of a live model as reversible context managers (paper B §5).

- :func:`quantized_weights`: replace decoder-layer matrices by ``fn(name, weight)`` (fake-quantized
  copies); on exit every matrix gets back its exact original bits (backups on the CPU).
- :func:`quantized_inputs`: per-token INT8 fake-quantization of the inputs of chosen linear
  modules (forward pre-hooks), optionally super-outlier aware per module.
- :func:`quantized_attention`: the attention products ``Q K^T`` and ``P V`` with INT8 per-token
  inputs (Q, K, V rows and the rows of the probability matrix P), via an attention function
  registered in transformers' ``AttentionInterface`` and switched on for the block only.

The kernels (``kernels/``) run compiled on CUDA and as their torch references elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from kernels.token_quant import token_fake_quant
from pipeline.hooks.forward import capture, patch
from pipeline.hooks.moe import expert_down_io, routed_calls
from pipeline.hooks.weights import decoder_matrices
from pipeline.models.arch import get_arch
from pipeline.models.attention_impl import attention_implementation


def linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder matrices applied by a module of their own (``decoder_matrices`` less the
    expert slices): the linears whose inputs a forward pre-hook sees."""
    return [(m.name, m.module) for m in decoder_matrices(model) if m.expert is None]


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


@contextmanager
def quantized_weights(matrices: Sequence[tuple[str, torch.Tensor]],
                      fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Each ``(name, tensor)`` is overwritten in place by ``fn(name, tensor)``; exact restore on
    exit, also on exceptions. ``fn`` sees the original values."""
    backups = []
    try:
        with torch.no_grad():
            for name, w in matrices:
                new = fn(name, w)
                backups.append((w, w.detach().to("cpu", copy=True)))
                w.copy_(new)
        yield
    finally:
        with torch.no_grad():
            for w, b in reversed(backups):
                w.copy_(b)


@contextmanager
def quantized_inputs(modules: Mapping[str, nn.Module],
                     outliers: Mapping[str, Sequence[int]] | None = None) -> Iterator[None]:
    """INT8 per-token fake-quantization of the first input of each module; ``outliers[name]``
    lists channels handled super-outlier aware in that module's input."""
    def quantize(name: str, x: torch.Tensor) -> torch.Tensor:
        chans = list((outliers or {}).get(name, ()))
        return token_fake_quant(x, chans or None)

    with patch(modules, quantize, inputs=True):
        yield


ATTN_NAME = "pipeline_w8a8_eager"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def w8a8_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                   **_kwargs) -> tuple[torch.Tensor, None]:
    """Eager attention with both matrix products on INT8 per-token fake-quantized inputs (the
    rows of Q, K, V and of the probabilities P). Plain softmax attention: no logit soft-capping or
    attention sinks (models that need them keep those only in their own implementations)."""
    groups = query.shape[1] // key.shape[1]
    q = token_fake_quant(query)
    k = token_fake_quant(_repeat_kv(key, groups))
    v = token_fake_quant(_repeat_kv(value, groups))
    scores = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else 1 / math.sqrt(q.shape[-1]))
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(token_fake_quant(probs), v)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, w8a8_attention)
# the same additive float masks (causal, padding, sliding window) that eager attention gets
AttentionMaskInterface.register(ATTN_NAME, eager_mask)


@contextmanager
def quantized_attention(model: nn.Module) -> Iterator[None]:
    """Switch every config of the model to :func:`w8a8_attention` for the block; restore after."""
    with attention_implementation(model, ATTN_NAME):
        yield
