"""Stage ``sw_detect``: find super weights with one prompt, no data (paper B §3.2, Fig. 3, Table 2).

The detector is :mod:`pipeline.analysis.super_weight` (the same one the other super-weight
stages call); this stage writes what it finds.

Tables: ``sw_down_proj_max`` (Fig. 3: per layer, the max-|.| input and output with positions, on
the original model, and the largest value written into the residual), ``sw_directory`` (Table 2:
layer, row, col, weight, input and output spike, token, share of the output explained, and
whether ``row`` is a massive-activation dim), ``sw_structure`` (per steady massive activation: one
super weight, several MLPs writing it, or none; computed, never empty when there is one) and
``sw_writers`` (the MLPs that write each one, with their largest weight).

Arguments: :class:`pipeline.config.super_weight.SwDetectArgs` (``roles`` is not a filter here: the
directory lists every weight found with its role). Paper B's Table 2 is set beside ours by the
report (``make report``), from ``conf/paper/``.
"""

from __future__ import annotations

from typing import Any

from pipeline.analysis.massive_structure import massive_structure
from pipeline.analysis.super_weight import detect, detect_kwargs, massive_dims
from pipeline.config.super_weight import SwDetectArgs
from pipeline.core.registry import StageSpec, register_stage
from pipeline.hooks.positions import position_tokens

STAGE = "sw_detect"


def run(ctx, args: SwDetectArgs) -> dict[str, Any]:
    """Detect the super weights of ``ctx.model`` and write the directory and the Fig. 3 table."""
    ids = ctx.encode(args.detect_prompt).to(ctx.device)  # paper B: the tokenizer's default special tokens = auto
    detection = detect(ctx.model, ids, **detect_kwargs(args))
    found, maxima, hs, threshold, in_threshold, rebuilt = detection[:6]
    mdims = massive_dims(hs, args.abs_threshold, args.rel_threshold)
    toks = position_tokens(ctx.model, ctx.tokenizer, ids[0].tolist())  # a sink token leads the hidden states
    # every candidate the spike rule flags, with the verdict on it: the super weights first
    flagged = ([(f, "super weight") for f in found] + [(f, "rebuilt") for f in rebuilt]
               + [(f, "decoy") for f in detection.decoys])
    directory = [{**f, "verdict": v, "reason": f.get("reason", ""), "token_text": toks[f["token"]],
                  "row_is_massive_dim": f["row"] in mdims} for f, v in flagged]
    structure, writers = massive_structure(ctx.model, ids, detection, rel_spike=args.rel_spike,
                                           abs_threshold=args.abs_threshold, rel_threshold=args.rel_threshold)
    for r in structure + writers:
        r["token_text"] = toks[r["token"]]
    paths = {"sw_down_proj_max": ctx.results.write("sw_down_proj_max", maxima, stage=STAGE),
             "sw_directory": ctx.results.write("sw_directory", directory, stage=STAGE),
             "sw_structure": ctx.results.write("sw_structure", structure, stage=STAGE),
             "sw_writers": ctx.results.write("sw_writers", writers, stage=STAGE)}
    ctx.logger.log_metrics({"sw/n_super_weights": len(found)})
    return {"directory": [d for d in directory if d["verdict"] == "super weight"], "flagged": directory,
            "maxima": maxima, "massive_dims": sorted(mdims), "paths": paths, "prompt": args.detect_prompt,
            "threshold": threshold, "in_threshold": in_threshold, "structure": structure,
            "normed": ctx.arch.mlp_out_norm is not None, "rebuilt": rebuilt}


def format_summary(out: dict[str, Any]) -> str:
    where = " (outputs after the post-MLP norm, where they join the residual)" if out.get("normed") else ""
    lines = [f"super weights (prompt {out['prompt']!r}, spike thresholds: output {out['threshold']:.1f}{where}, "
             f"input {out['in_threshold']:.1f}):"]
    if not out["directory"]:
        lines.append("  none found")
    for d in out["directory"]:
        expert = "" if d.get("expert") is None else f" expert {d['expert']}"
        lines.append(f"  layer {d['layer']:>3}{expert} W[{d['row']}, {d['col']}] = {d['weight']:+.4f}"
                     f"   input {d['in_value']:+.1f}"
                     f"  output {d['out_value']:+.1f} at token {d['token']} {d['token_text']!r}"
                     f"  ({d['share']:.0%} of it)"
                     f"  {d['role']}"
                     f"{'  row = a massive-activation dim' if d['row_is_massive_dim'] else ''}")
    lines.append("  (layers 0-based, as paper B; W[row = output channel, col = input channel])")
    others = [d for d in out.get("flagged", []) if d["verdict"] != "super weight"]
    if others:
        lines.append(f"  flagged by the spike rule but set aside ({len(others)}):")
    for d in others[:8]:
        lines.append(f"    {d['verdict']}: layer {d['layer']} W[{d['row']}, {d['col']}]: {d['reason']}")
    if out["structure"]:
        lines.append("how each steady massive activation is built:")
    for r in out["structure"]:
        lines.append(f"  dim {r['dim']} at token {r['token']} {r['token_text']!r}"
                     f" (peak {r['peak_value']:+.4g} at layer {r['peak_layer']}): {r['structure']}")
    lines.append("  beside the papers' numbers: make report (results/REPORT.md)")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('sw_down_proj_max', 'sw_directory', 'sw_structure', 'sw_writers'),
                                artefact='paper B §3.2: Table 2, Fig. 3'))
