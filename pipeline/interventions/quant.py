"""Simulated quantization of a live model as reversible context managers (paper B §5).

Building blocks:

- :func:`quantized_weights`: replace chosen matrices by ``fn(name, weight)`` (fake-quantized
  copies); on exit every matrix gets back its exact original bits (backups on the CPU).
- :func:`quantized_inputs`: per-token INT8 fake-quantization of the inputs of chosen linear
  modules (forward pre-hooks), optionally super-outlier aware per module.
- :func:`quantized_attention`: the attention products ``Q K^T`` and ``P V`` with INT8 per-token
  inputs (Q, K, V rows and the rows of the probability matrix P), via an attention function
  registered in transformers' ``AttentionInterface`` and switched on for the block only.

Whole-model conditions built from them:

- :func:`w8a8` (paper B §5.1, Tables 3/4/7) under two protocols (:data:`PROTOCOLS`): paper B's
  text (weights INT8 per tensor, inputs per token, the attention products on INT8 inputs) and
  SmoothQuant's own (weights per output channel, every linear's input per token, the q/k/v
  outputs per token); inputs per token or per tensor; super-outlier aware on the channels
  :func:`outlier_channels` names.
- :func:`quantized_model` (paper B §5.2, Fig. 7, Table 6): every decoder matrix INT-N blockwise
  round-to-nearest (``rtn``), or clipped to mean +- z std with the super weights restored
  (``rtn_clip_restore``, paper B's "Ours").

The kernels (``kernels/``) run compiled on CUDA and as their torch references elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from kernels.block_quant import block_fake_quant
from kernels.tensor_quant import tensor_fake_quant
from kernels.token_quant import token_fake_quant
from pipeline.core.errors import PipelineError
from pipeline.hooks.forward import patch
from pipeline.interventions.weights import scale_weights
from pipeline.models.arch import decoder_layers, get_arch, layer_module, num_layers, resolve_or_none
from pipeline.models.attention_impl import attention_implementation
from pipeline.models.matrices import WeightSite, decoder_matrices, down_proj_matrix, linear_modules


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


# --- W8A8 (paper B §5.1) ---------------------------------------------------------------------

PARTS = ("weights", "inputs", "attention")  # what W8A8 can quantize (checked); all = the unlabelled rows
# paper_b: as paper B's text says (weights per tensor; q/k/v/gate/up/down inputs per token; both
# attention products on per-row inputs). smoothquant: SmoothQuant's own quantize_llama_like
# (mit-han-lab/smoothquant fake_quant.py): weights per output channel; the inputs of every decoder
# linear, o_proj too, per token; "attention" = the q/k/v projection outputs per token (all heads,
# before RoPE), the attention products themselves unquantized.
PROTOCOLS = ("paper_b", "smoothquant")
ACTIVATIONS = ("per_token", "per_tensor")  # one scale per token row, or one per input tensor


def quantized_modules(model: nn.Module, protocol: str = "paper_b") -> dict[str, nn.Module]:
    """Every decoder linear (paper_b: except the attention output projection)."""
    spec = get_arch(model)
    out_proj = {id(resolve_or_none(lay, spec.o_proj)) for lay in decoder_layers(model)} if spec.o_proj else set()
    return {n: m for n, m in linear_modules(model) if protocol == "smoothquant" or id(m) not in out_proj}


def outlier_channels(model: nn.Module, sites: Sequence[WeightSite],
                     modules: dict[str, nn.Module]) -> dict[str, list[int]]:
    """Which input channels carry the super activation, per quantized module: the down
    projection's input channel ``col`` in the super weight's layer, the residual-stream channel
    ``row`` in every module of the later layers that reads the residual stream (not the down
    projections, not the attention output projection: their inputs are other spaces)."""
    out: dict[str, set[int]] = {}
    spec = get_arch(model)
    other_space = {id(layer_module(model, i, "down_proj")) for i in range(num_layers(model))}  # from the arch spec
    other_space |= {id(resolve_or_none(lay, spec.o_proj)) for lay in decoder_layers(model)} if spec.o_proj else set()
    by_id = {id(m): n for n, m in modules.items()}
    for s in sites:
        down = by_id.get(id(layer_module(model, s.layer, "down_proj")))
        if down:
            out.setdefault(down, set()).add(s.col)
        for name, mod in modules.items():  # inputs read from the residual stream after the super weight
            if int(name.split(".")[1]) > s.layer and id(mod) not in other_space:
                out.setdefault(name, set()).add(s.row)
    return {k: sorted(v) for k, v in out.items()}


def channel_fake_quant(w: torch.Tensor, in_out: bool) -> torch.Tensor:
    """INT8 symmetric per output channel (SmoothQuant's per_channel weights): one scale per row
    of an (out, in) weight, per column of GPT-2's (in, out) Conv1D weight."""
    return token_fake_quant(w.T).T if in_out else token_fake_quant(w)


def tensor_act_fake_quant(x: torch.Tensor, outliers: Sequence[int] | None = None) -> torch.Tensor:
    """INT8 with ONE scale for the whole input tensor (torch only). With ``outliers``: as
    :func:`kernels.token_quant.token_fake_quant_ref`'s rule, a listed entry larger than every
    unlisted entry of its row is left out of the scale and restored in full precision."""
    rows = x.reshape(-1, x.shape[-1]).float()
    keep = torch.zeros_like(rows, dtype=torch.bool)
    if outliers:
        listed = torch.zeros(rows.shape[1], dtype=torch.bool, device=x.device)
        listed[list(outliers)] = True
        keep = listed & (rows.abs() > torch.where(listed, 0.0, rows.abs()).amax(dim=1, keepdim=True))
    scale = torch.where(keep, 0.0, rows.abs()).amax() / 127.0
    if scale == 0:
        return x
    y = torch.where(keep, rows, torch.clamp(torch.round(rows / scale), -127, 127) * scale)
    return y.to(x.dtype).view(x.shape)


@contextmanager
def quantized_qkv_outputs(model: nn.Module) -> Iterator[None]:
    """SmoothQuant's quantize_bmm_input: the outputs of the q/k/v projections INT8 per token."""
    spec = get_arch(model)
    mods = {f"layers.{i}.{c}": m for i, lay in enumerate(decoder_layers(model)) for c in spec.attn_inputs
            if (m := resolve_or_none(lay, c)) is not None}
    with patch(mods, lambda _n, y: token_fake_quant(y)):
        yield


@contextmanager
def w8a8(model: nn.Module, modules: dict[str, nn.Module], outliers: dict[str, list[int]] | None = None,
         parts: Sequence[str] = PARTS, protocol: str = "paper_b", activations: str = "per_token") -> Iterator[None]:
    """W8A8 under ``protocol`` (:data:`PROTOCOLS`): weights INT8 (paper_b per tensor, smoothquant
    per output channel), inputs INT8 (``activations``: per token or per tensor; super-outlier
    aware where listed), and the attention part of the protocol; ``parts`` picks which. Exact
    restore on exit."""
    in_out = get_arch(model).weights_in_out
    weight_fn = (lambda _n, w: channel_fake_quant(w, in_out)) if protocol == "smoothquant" else \
        (lambda _n, w: tensor_fake_quant(w))
    mats = [(n, m.weight.data) for n, m in modules.items()] if "weights" in parts else []
    inputs = nullcontext()
    if "inputs" in parts and activations == "per_tensor":
        inputs = patch(modules, lambda n, x: tensor_act_fake_quant(x, (outliers or {}).get(n)), inputs=True)
    elif "inputs" in parts:
        inputs = quantized_inputs(modules, outliers)
    attention = nullcontext() if "attention" not in parts else (
        quantized_qkv_outputs(model) if protocol == "smoothquant" else quantized_attention(model))
    with quantized_weights(mats, weight_fn), inputs, attention:
        yield


# --- INT-N blockwise round-to-nearest (paper B §5.2) -----------------------------------------

RTN_METHODS = ("rtn", "rtn_clip_restore")  # the known ones (checked)
# z-score clipping: official = per block on |w| (mengxiayu/LLMSuperWeight quantize_blockwise: clamp to
# +-(mean|w| + z std|w|) of each block); text = the tensor's signed mean +- z std (paper B's CLIP_z)
CLIP_RULES = ("official", "text")
# a block size that does not divide the matrix: a shorter last block, or (the official code) the
# whole matrix as one block, which turns every large block size into per-tensor on small models
RAGGED = ("short_last_block", "per_tensor")


def z_clip(w: torch.Tensor, z: float | None) -> tuple[float, float] | None:
    """(mean - z std, mean + z std) of the tensor; None for no clipping (z None or inf)."""
    if z is None or math.isinf(z):
        return None
    x = w.float()
    mean, std = float(x.mean()), float(x.std())
    return mean - z * std, mean + z * std


def clip_weights(w: torch.Tensor, z: float | None, block_size: int, rule: str = "official") -> torch.Tensor:
    """``w`` z-score clipped under ``rule`` (:data:`CLIP_RULES`); unchanged for z None or inf.
    ``official`` takes the tensor as one block where ``block_size`` does not divide it, as the
    official code does."""
    if z is None or math.isinf(z):
        return w
    if rule == "text":
        lo, hi = z_clip(w, z)
        return w.clamp(lo, hi)
    flat = w.reshape(-1).float()
    blocks = flat.view(-1, block_size) if flat.numel() % block_size == 0 else flat.view(1, -1)
    a = blocks.abs()
    limit = a.mean(1, keepdim=True) + z * a.std(1, keepdim=True)
    return torch.clamp(blocks, -limit, limit).view(w.shape).to(w.dtype)


def int_fake_quant(w: torch.Tensor, *, bits: int, block_size: int, z: float | None = None,
                   tile: tuple[int, int] | None = None, clip: str = "official",
                   ragged: str = "short_last_block") -> torch.Tensor:
    """One matrix as paper B's INT-N recipe quantizes it: z-clipped (``z`` None: not), then
    asymmetric min-max round-to-nearest per block of ``block_size`` (or per ``tile``)."""
    if clip not in CLIP_RULES or ragged not in RAGGED:
        raise PipelineError(f"clip must be one of {', '.join(CLIP_RULES)} and ragged one of {', '.join(RAGGED)}")
    if ragged == "per_tensor" and tile is None and w.numel() % block_size:
        block_size = w.numel()
    return block_fake_quant(clip_weights(w, z, block_size, clip), bits, block_size, None, tile)


def _kept(model: nn.Module, sites: Sequence[WeightSite],
          sw_scale: float) -> list[tuple[torch.Tensor, tuple[int, int], float]]:
    return [(m, (s.row, s.col), float(m[s.row, s.col]) * sw_scale)
            for s in sites for m in [down_proj_matrix(model, s.layer, s.expert)]]


@contextmanager
def quantized_model(model: nn.Module, *, method: str, bits: int, block_size: int, z: float | None = None,
                    sites: Sequence[WeightSite] = (), sw_scale: float = 1.0,
                    tile: tuple[int, int] | None = None, clip: str = "official",
                    ragged: str = "short_last_block") -> Iterator[None]:
    """The model with every decoder-layer matrix fake-quantized by ``method`` (``bits`` bits per
    block of ``block_size`` elements, or per ``tile``; :func:`int_fake_quant`); exact restore on
    exit. ``sw_scale``: rtn
    quantizes the super weights scaled by it; rtn_clip_restore restores them scaled by it."""
    if method not in RTN_METHODS:
        raise PipelineError(f"unknown method '{method}'; choose one of {', '.join(RTN_METHODS)}")
    restore = method == "rtn_clip_restore"
    kept = _kept(model, sites, sw_scale) if restore else []  # read before any edit

    def fn(_name, w):
        return int_fake_quant(w, bits=bits, block_size=block_size, z=z if restore else None, tile=tile,
                              clip=clip, ragged=ragged)

    with (nullcontext() if restore else scale_weights(model, sites, sw_scale)), \
            quantized_weights([(m.name, m.stored) for m in decoder_matrices(model)], fn):
        with torch.no_grad():
            for m, idx, v in kept:
                m[idx] = v
        yield
