"""Stage ``atlas``: one row per model, for a table of many (``make atlas MODELS=a,b,c``).

For the run's model: its type and size; where massive activations first appear (paper A's rule,
the steady ones: layer, dim, token role, value, ratio to that layer's median), measured on text
windows of the run's data or, for a vision encoder, on the image set ``image_data``; and its super
weights (paper B's detector on one prompt: layer, row, col, weight, input and output spike, and
whether the row is a massive dim). A post-LN model (arch spec ``block_out_norm``, BERT) gets the
same first-massive columns measured before each block's output norm too (``*_before_norm``: the
residual sum, where its block outputs are normalised). Where a measurement cannot apply, the row says "not
applicable" and why (no MLP down-projection; a vision encoder takes no token prompt; an error's
first line), never an empty or misleading number.

Table: ``atlas`` (one row per model; re-runs replace their own row).
Arguments: :class:`pipeline.config.massive_activations.AtlasArgs`.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.analysis.massive import summarize
from pipeline.analysis.profile import profile_images, profile_layers
from pipeline.analysis.super_weight import detect, massive_dims
from pipeline.config.massive_activations import AtlasArgs
from pipeline.core.errors import PipelineError
from pipeline.core.registry import StageSpec, register_stage
from pipeline.data.text import build_source, data_config
from pipeline.hooks.prenorm import profile_before_block_norms
from pipeline.models.arch import is_image_encoder, layer_module, num_layers, prefix_roles

STAGE = "atlas"


def first_massive(ctx, args: AtlasArgs) -> tuple[dict[str, Any], str]:
    """The earliest steady massive activation (or why there is none) and what it was measured on."""
    if is_image_encoder(ctx.model):
        src = build_source(data_config(args.image_data, ctx.catalog))
        imgs = [im for _, im in list(src.images())[:args.n_inputs]]
        px = ctx.tokenizer(images=imgs, return_tensors="pt")["pixel_values"]
        prof = profile_images(ctx, px, batch_size=2, abs_threshold=args.abs_threshold, rel_threshold=args.rel_threshold,
                              max_hits=args.max_hits, quiet=True)
        on = f"{len(imgs)} images of {args.image_data}"
    else:
        context = getattr(ctx.model.config, "max_position_embeddings", args.seq_len) or args.seq_len
        seq_len = min(args.seq_len, int(context))
        ids = ctx.windows(seq_len, args.n_inputs)
        prof = profile_layers(ctx, ids, batch_size=1, abs_threshold=args.abs_threshold,
                              rel_threshold=args.rel_threshold, max_hits=args.max_hits,
                              delimiters=list(args.delimiters), quiet=True)
        on = f"{len(ids)} x {seq_len} tokens of {ctx.data_cfg['name']}"
    row = {"measured_on": on, **earliest(prof, num_layers(ctx.model))}
    pre = None if is_image_encoder(ctx.model) else profile_before_block_norms(
        ctx, ids, batch_size=1, abs_threshold=args.abs_threshold, rel_threshold=args.rel_threshold,
        max_hits=args.max_hits, delimiters=list(args.delimiters))
    if pre is not None:  # post-LN (BERT): the block outputs above are normalised; the residual sum too
        found = earliest(pre, num_layers(ctx.model))
        row.update({f"{k}_before_norm": found[k] for k in BEFORE_NORM if k in found})
    return row, on


BEFORE_NORM = ("massive", "massive_layer", "massive_dim", "massive_token", "massive_value", "peak_ratio",
               "peak_ratio_layer")


def earliest(prof, n_layers: int) -> dict[str, Any]:
    """The earliest steady massive activation of a profile (or "none found") and its peak ratio."""
    layers = prof.layer_rows()
    peak = max(layers, key=lambda r: r["top1_over_median"])
    steady = [m for m in summarize(prof.activation_rows(), n_layers, prof.seen_values()) if m["steady"]]
    row = {"peak_ratio": peak["top1_over_median"], "peak_ratio_layer": peak["layer"]}
    if not steady:
        return {**row, "massive": "none found"}
    m = min(steady, key=lambda r: (r["first_layer"], -abs(r["value_mean"])))
    median = layers[m["first_layer"]]["median"]
    return {**row, "massive": "yes", "massive_layer": m["first_layer"], "massive_dim": m["dim"],
            "massive_token": m["token_type"], "massive_value": m["value_mean"],
            "massive_ratio": abs(m["value_mean"]) / max(median, 1e-12), "n_steady": len(steady)}


def super_weight_row(ctx, args: AtlasArgs) -> dict[str, Any]:
    if is_image_encoder(ctx.model):
        return {"super_weight": "not applicable: the detector reads a token prompt; a vision encoder takes images"}
    try:
        layer_module(ctx.model, 0, "down_proj")
    except (PipelineError, AttributeError):
        return {"super_weight": "not applicable: the model has no MLP down-projection "
                                f"('{ctx.arch.down_proj}' is absent)"}
    ids = ctx.encode(args.detect_prompt).to(ctx.device)
    try:
        det = detect(ctx.model, ids)
    except (PipelineError, RuntimeError, ValueError, IndexError) as err:
        return {"super_weight": f"not applicable: {type(err).__name__}: {str(err).splitlines()[0][:100]}"}
    creates = [f for f in det.found if f.get("role") == "creates"]
    if not creates:
        return {"super_weight": "none found", "sw_rebuilt": len(det.rebuilt)}
    mdims = massive_dims(det.hs, args.abs_threshold, args.rel_threshold)
    f = max(creates, key=lambda r: abs(r["out_value"]))
    return {"super_weight": "yes", "n_super_weights": len(creates), "sw_layer": f["layer"], "sw_row": f["row"],
            "sw_col": f["col"], "sw_weight": f["weight"], "sw_in_spike": f["in_value"], "sw_out_spike": f["out_value"],
            "sw_row_is_massive_dim": f["row"] in mdims}


@torch.inference_mode()
def run(ctx, args: AtlasArgs) -> dict[str, Any]:
    cfg = ctx.model.config
    row: dict[str, Any] = {"model_type": cfg.model_type, "layers": num_layers(ctx.model),
                           "hidden": int(getattr(cfg, "hidden_size", 0) or 0),
                           "params_m": round(sum(p.numel() for p in ctx.model.parameters()) / 1e6, 1),
                           "prefix_tokens": " ".join(prefix_roles(ctx.model))}
    massive, _ = first_massive(ctx, args)
    row.update(massive)
    row.update(super_weight_row(ctx, args))
    path = ctx.results.write("atlas", [row], stage=STAGE)
    return {"row": row, "paths": {"atlas": path}, "model": ctx.model_name}


def format_summary(out: dict[str, Any]) -> str:
    r = out["row"]
    m = (f"first at layer {r['massive_layer']}, dim {r['massive_dim']} on {r['massive_token']} "
         f"(|h| {abs(r['massive_value']):,.0f}, {r['massive_ratio']:,.0f} x median)"
         if r["massive"] == "yes" else r["massive"])
    s = (f"layer {r['sw_layer']} row {r['sw_row']} col {r['sw_col']} (weight {r['sw_weight']:.2f}, "
         f"row is a massive dim: {r['sw_row_is_massive_dim']})" if r["super_weight"] == "yes" else r["super_weight"])
    if "massive_before_norm" in r:  # post-LN: the residual sum before each block's output norm
        m += (f"; before the block norms: first at layer {r['massive_layer_before_norm']}, dim "
              f"{r['massive_dim_before_norm']} (|h| {abs(r['massive_value_before_norm']):,.0f})"
              if r["massive_before_norm"] == "yes" else "; before the block norms: none found")
        m += f" (peak top-1 / median {r['peak_ratio_before_norm']:,.0f} at layer {r['peak_ratio_layer_before_norm']})"
    return (f"{out['model']} ({r['model_type']}, {r['layers']} layers, {r['params_m']}M): massive activations: {m}; "
            f"super weight: {s}")


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary, tables=("atlas",),
                                artefact="any-model atlas: massive activations and super weights"))
