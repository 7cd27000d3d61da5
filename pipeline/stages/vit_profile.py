"""Stage ``vit_profile``: massive activations in a vision encoder (paper A §5, Fig. 10-11).

The ``ma_profile`` measurement on images: per block, top-1/2/3 and median of |h| over N images
(the same streaming reducer), the massive activations found by paper A's rule with their token
role (``cls``, ``reg_k``, ``patch``), and the |activation| landscape of one block on one image
(the prefix tokens and the patches with the largest |h|: the paper's 3-D plot). A model without
massive activations (the embedded DINOv2-S) is reported as such: nothing is tuned until one appears.

Tables: ``vit_layer_stats``, ``vit_massive``, ``vit_landscape``.
Arguments: :class:`pipeline.config.massive_activations.VitProfileArgs`.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.analysis.massive import steady_choice, summarize
from pipeline.analysis.profile import image_positions, profile_images
from pipeline.config.massive_activations import VitProfileArgs
from pipeline.core.errors import PipelineError
from pipeline.core.paper import paper_numbers
from pipeline.core.registry import StageSpec, register_stage
from pipeline.hooks.forward import capture
from pipeline.models.arch import decoder_layers, is_image_encoder, layer, num_layers

STAGE = "vit_profile"


def pixel_batch(ctx, n_images: int) -> tuple[list[str], torch.Tensor]:
    """The first ``n_images`` of the run's image set through the model's own image processor."""
    images = getattr(ctx.source, "images", None)
    if images is None:
        raise PipelineError(f"stage {STAGE} needs an image dataset (data=skimage_photos), not '{ctx.source.name}'")
    pairs = list(images())[:n_images]
    if not pairs:
        raise PipelineError(f"image data '{ctx.source.name}' holds no images")
    pixels = ctx.tokenizer(images=[img for _, img in pairs], return_tensors="pt")["pixel_values"]
    return [name for name, _ in pairs], pixels


@torch.inference_mode()
def landscape(ctx, pixels: torch.Tensor, layer_idx: int, n_patches: int) -> list[dict]:
    """|h| of block ``layer_idx`` on one image: every prefix token and the ``n_patches`` patches
    with the largest |h| (positions kept, so a patch is labelled by its grid cell)."""
    grabbed: dict[str, torch.Tensor] = {}
    with capture({"h": layer(ctx.model, layer_idx)}, lambda _n, h: grabbed.__setitem__("h", h[0].float().cpu())):
        ctx.model(pixel_values=pixels[:1].to(ctx.device))
    h = grabbed["h"].abs()
    roles, labels = image_positions(ctx.model, pixels)
    n_prefix = roles.index("patch") if "patch" in roles else len(roles)
    patch_max = h[n_prefix:].amax(-1)
    keep = list(range(n_prefix)) + sorted((patch_max.topk(min(n_patches, len(patch_max))).indices + n_prefix).tolist())
    rows = []
    for order, p in enumerate(keep):
        rows += [{"layer": layer_idx, "layer_1based": layer_idx + 1, "position": order, "token_position": p,
                  "token": labels[p], "token_type": roles[p], "dim": d, "value": float(grabbed["h"][p, d]),
                  "abs_value": float(h[p, d])} for d in range(h.shape[1])]
    return rows


def run(ctx, args: VitProfileArgs) -> dict[str, Any]:
    """Profile every block over the image set; detect massive activations; one block's landscape."""
    if not is_image_encoder(ctx.model):
        raise PipelineError(f"stage {STAGE} profiles vision encoders; {ctx.model_name} is not one")
    names, pixels = pixel_batch(ctx, args.n_images)
    prof = profile_images(ctx, pixels, batch_size=args.batch_size, abs_threshold=args.abs_threshold,
                          rel_threshold=args.rel_threshold, max_hits=args.max_hits)
    layers = prof.layer_rows()
    massive = summarize(prof.activation_rows(), num_layers(ctx.model), prof.seen_values())
    first, why = steady_choice(massive, "landscape layer")
    peak = max(layers, key=lambda r: r["top1_over_median"])
    at = ((first if first is not None else peak["layer"]) if args.landscape_layer == "auto"
          else int(args.landscape_layer))
    if not 0 <= at < len(decoder_layers(ctx.model)):
        raise PipelineError(f"landscape_layer {at} is out of range (the model has {num_layers(ctx.model)} blocks)")
    paths = {t: ctx.results.write(t, rows, stage=STAGE) for t, rows in
             (("vit_layer_stats", layers), ("vit_massive", massive),
              ("vit_landscape", landscape(ctx, pixels, at, args.landscape_patches)))}
    return {"paths": paths, "layers": layers, "massive": massive, "why": why, "peak": peak, "images": names,
            "landscape_layer": at, "model": ctx.model_name,
            "paper": paper_numbers("massive_activations", ctx.paper_key, ctx.catalog) or {}}


def format_summary(out: dict[str, Any]) -> str:
    p = out["peak"]
    steady = [m for m in out["massive"] if m["steady"]]
    lines = [f"{out['model']}: {len(out['images'])} images "
             f"({', '.join(out['images'][:4])}{', ...' if len(out['images']) > 4 else ''})",
             f"  largest top-1 / median: {p['top1_over_median']:.0f} at block {p['layer_1based']}"
             f" (|h| {p['top1']:.1f}, dim {p['top1_dim']}, {p['top1_token_type']});"
             " paper A's rule: > 100 and > 1000 x median"]
    if steady:
        lines += [f"  massive: dim {m['dim']} on {m['token_type']} from block {m['first_layer_1based']} "
                  f"(|h| {abs(m['value_mean']):,.0f})" for m in steady[:6]]
    else:
        lines.append("  massive activations: none found"
                     + (f" ({len(out['massive'])} transient hits)" if out["massive"] else ""))
    lines.append(f"  landscape: block {out['landscape_layer'] + 1} ({out['why']})")
    for key in ("massive_dims", "register_mean_max"):
        entry = out.get("paper", {}).get(key)
        if entry:
            lines.append(f"  paper A {key}: {entry['value']} ({'verified' if entry.get('verified') else 'recalled'}; "
                         f"{entry['source']})")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=("vit_layer_stats", "vit_massive", "vit_landscape"),
                                artefact="paper A §5: massive activations in ViTs (Figs. 10-11)"))
