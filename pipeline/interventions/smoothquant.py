"""SmoothQuant (Xiao et al. 2023) as a reversible edit: the baseline of paper B's Tables 3/4/7.

Per group of linears that read the same input, per input channel j,
``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` (alpha 0.85 in paper B); the input is divided
by s (folded into the preceding norm's weight and bias, or, for a gated MLP's down projection,
into the rows of ``up_proj``) and the consumers' input columns multiplied by s. The fp function is
unchanged (tested); only the ranges that per-token activation and per-tensor weight quantization
see are. Groups, named by the arch spec of each model type:

  input_norm      -> attn_inputs (q/k/v, a fused qkv, GPT-2's c_attn)
  post_attn_norm  -> mlp_inputs  (gate/up, a fused gate_up, c_fc)
  mlp_up rows     -> down_proj   (only with ``smooth_down_proj``; gated, unfused MLPs)

The reference implementation (mit-han-lab/smoothquant, ``smooth_lm``) smooths only the two
norm groups of LLaMA-like models; the down projection's input (where the super activation's
input spike sits) is left alone, so that is the default here too. Smoothing it as well moves
that spike into ``down_proj``'s weight column and wrecks per-tensor INT8 weights (SmolLM2:
perplexity 16.8 -> 933, measured).

Not applicable (a clear reason, no failure) when a norm has no weight (OLMo's LayerNorm), when a
norm is not a plain elementwise scale of its weight (checked numerically: e.g. Gemma's 1 + w), or
when the layer layout is none of the above.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.hooks.inputs import observe_inputs
from pipeline.models.arch import decoder_layers, get_arch, resolve_or_none


class NotApplicable(Exception):
    """SmoothQuant cannot be folded into this model (the message says why)."""


def groups(model: nn.Module, smooth_down_proj: bool = False) -> list[dict]:
    """Per layer, the smoothing groups: {"kind": "norm"|"up", "source", "consumers", "layer"},
    read from the arch spec (``input_norm`` -> ``attn_inputs``, ``post_attn_norm`` -> ``mlp_inputs``,
    ``mlp_up`` -> ``down_proj``)."""
    spec = get_arch(model)
    out = []
    for i, lay in enumerate(decoder_layers(model)):
        for norm_path, inputs in ((spec.input_norm, spec.attn_inputs), (spec.post_attn_norm, spec.mlp_inputs)):
            norm = resolve_or_none(lay, norm_path) if norm_path else None
            cons = [(f"layers.{i}.{c}", resolve_or_none(lay, c)) for c in inputs]
            if norm is None or not cons or any(m is None for _, m in cons):
                raise NotApplicable(f"layer {i}: no norm feeding known projections in the {spec.model_type} "
                                    f"arch spec ({norm_path} -> {', '.join(inputs) or 'nothing'})")
            if not isinstance(getattr(norm, "weight", None), nn.Parameter):
                raise NotApplicable(f"layer {i}: {norm_path} has no weight to fold the smoothing into "
                                    "(as OLMo's non-parametric LayerNorm)")
            out.append({"kind": "norm", "source": norm, "consumers": cons, "layer": i})
        up = resolve_or_none(lay, spec.mlp_up) if spec.mlp_up else None
        down = resolve_or_none(lay, spec.down_proj)
        if smooth_down_proj and isinstance(up, nn.Linear) and isinstance(down, nn.Linear):
            out.append({"kind": "up", "source": up, "consumers": [(f"layers.{i}.{spec.down_proj}", down)], "layer": i})
    return out


def check_norm_is_a_scale(norm: nn.Module) -> None:
    """Numerically: dividing the weight (and bias) by s divides the output by s."""
    x = torch.randn(3, norm.weight.shape[0], dtype=norm.weight.dtype, device=norm.weight.device)
    s = torch.rand(norm.weight.shape[0], dtype=norm.weight.dtype, device=norm.weight.device) + 0.5
    with torch.no_grad():
        ref = norm(x) / s
        saved = [(p, p.detach().clone()) for p in (norm.weight, getattr(norm, "bias", None)) if p is not None]
        try:
            for p, _ in saved:
                p.div_(s)
            ok = torch.allclose(norm(x), ref, rtol=1e-3, atol=1e-5)
        finally:
            for p, old in saved:
                p.copy_(old)
    if not ok:
        raise NotApplicable(f"{type(norm).__name__} is not a plain scale of its weight (e.g. Gemma's 1 + w)")


def input_absmax(model: nn.Module, windows: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """Per decoder linear, the max |input| per channel over the calibration windows."""
    got: dict[str, torch.Tensor] = {}

    def fold(name: str, rows: torch.Tensor, _window: int) -> None:
        a = rows.abs().amax(0).float()
        got[name] = a if name not in got else torch.maximum(got[name], a)

    observe_inputs(model, windows, device, fold)
    return got


@torch.no_grad()
def smoothing_factors(model: nn.Module, act_max: dict[str, torch.Tensor], alpha: float,
                      smooth_down_proj: bool = False) -> list[tuple[dict, torch.Tensor]]:
    """(group, s) for every group; raises NotApplicable with the reason."""
    in_out = get_arch(model).weights_in_out
    out = []
    for g in groups(model, smooth_down_proj):
        if g["kind"] == "norm":
            check_norm_is_a_scale(g["source"])
        first = g["consumers"][0][0]
        if first not in act_max:
            raise NotApplicable(f"no calibration input reached {first}")
        w_max = torch.stack([(m.weight.abs().amax(1) if in_out else m.weight.abs().amax(0)).float()
                             for _, m in g["consumers"]]).amax(0)
        x_max = act_max[first].to(w_max.device)
        s = (x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
        out.append((g, s))
    return out


@contextmanager
def smoothed(model: nn.Module, factors: list[tuple[dict, torch.Tensor]]) -> Iterator[None]:
    """Apply the smoothing (norm weight/bias or up rows divided by s, consumers' input columns
    multiplied by s); every touched parameter gets back its exact bits on exit."""
    backups: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    in_out = get_arch(model).weights_in_out

    def touch(p: torch.Tensor) -> torch.Tensor:
        backups.setdefault(id(p), (p, p.detach().clone()))
        return p.data

    try:
        with torch.no_grad():
            for g, s in factors:
                src = g["source"]
                if g["kind"] == "norm":
                    touch(src.weight).div_(s.to(src.weight.dtype))
                    if getattr(src, "bias", None) is not None:
                        touch(src.bias).div_(s.to(src.bias.dtype))
                else:  # up_proj rows feed down_proj's input channels one to one
                    touch(src.weight).div_(s.to(src.weight.dtype)[:, None])
                for _, m in g["consumers"]:
                    w = touch(m.weight)
                    w.mul_(s.to(w.dtype)[:, None] if in_out else s.to(w.dtype)[None, :])
        yield
    finally:
        with torch.no_grad():
            for p, old in backups.values():
                p.data.copy_(old)
