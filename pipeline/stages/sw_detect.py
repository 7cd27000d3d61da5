"""Stage ``sw_detect``: find super weights with one prompt, no data (paper B §3.2, Fig. 3, Table 2).

The detector is :mod:`pipeline.analysis.super_weight` (the same one the other super-weight
stages call); this stage writes what it finds.

Tables: ``sw_down_proj_max`` (Fig. 3: per layer, the max-|.| input and output with positions, on
the original model) and ``sw_directory`` (Table 2: layer, row, col, weight, input and output
spike, token, share of the output explained, and whether ``row`` is a massive-activation dim).
"""

from __future__ import annotations

from typing import Any

from pipeline.analysis.super_weight import DEFAULT_PROMPT, detect, massive_dims
from pipeline.core.registry import StageSpec, register_stage

STAGE = "sw_detect"


def run(ctx, *, prompt: str = DEFAULT_PROMPT, threshold: float | str = "auto", rel_spike: float = 0.05,
        min_abs: float = 50.0, min_share: float = 0.5, max_iter: int = 10, abs_threshold: float = 100.0,
        rel_threshold: float = 1000.0) -> dict[str, Any]:
    """Detect the super weights of ``ctx.model`` and write the directory and the Fig. 3 table."""
    ids = ctx.encode(prompt).to(ctx.device)  # paper B: the tokenizer's default special tokens = auto
    found, maxima, hs, threshold = detect(ctx.model, ids, threshold=threshold, rel_spike=rel_spike,
                                          min_abs=min_abs, min_share=min_share, max_iter=max_iter)
    mdims = massive_dims(hs, abs_threshold, rel_threshold)
    toks = [ctx.tokenizer.decode([t]) for t in ids[0].tolist()]
    directory = [{**f, "token_text": toks[f["token"]], "row_is_massive_dim": f["row"] in mdims} for f in found]
    paths = {"sw_down_proj_max": ctx.results.write("sw_down_proj_max", maxima, stage=STAGE),
             "sw_directory": ctx.results.write("sw_directory", directory, stage=STAGE)}
    comparison = compare_with_paper(ctx.paper_numbers("super_weight"), directory)
    if comparison:
        paths["sw_paper"] = ctx.results.write("sw_paper", comparison, stage=STAGE)
    ctx.logger.log_metrics({"sw/n_super_weights": len(directory)})
    return {"directory": directory, "maxima": maxima, "massive_dims": sorted(mdims), "paths": paths,
            "comparison": comparison, "prompt": prompt, "threshold": threshold}


def compare_with_paper(paper: dict | None, directory: list[dict]) -> list[dict]:
    """Our (layer, row, col) beside paper B's Table 2 (0-based layers, W[row=out, col=in])."""
    if not paper or "super_weights" not in paper:
        return []
    theirs = {tuple(c) for c in paper["super_weights"]["value"]}
    ours = {(d["layer"], d["row"], d["col"]) for d in directory}
    return [{"layer": c[0], "row": c[1], "col": c[2], "in_ours": c in ours, "in_paper": c in theirs,
             "paper_verified": bool(paper["super_weights"].get("verified", False))}
            for c in sorted(ours | theirs)]


def format_summary(out: dict[str, Any]) -> str:
    lines = [f"super weights (prompt {out['prompt']!r}, spike threshold {out['threshold']:.1f}):"]
    if not out["directory"]:
        lines.append("  none found")
    for d in out["directory"]:
        expert = "" if d.get("expert") is None else f" expert {d['expert']}"
        lines.append(f"  layer {d['layer']:>3}{expert} W[{d['row']}, {d['col']}] = {d['weight']:+.4f}   input {d['in_value']:+.1f}"
                     f"  output {d['out_value']:+.1f} at token {d['token']} {d['token_text']!r}  ({d['share']:.0%} of it)"
                     f"  {d['role']}"
                     f"{'  row = a massive-activation dim' if d['row_is_massive_dim'] else ''}")
    lines.append("  (layers 0-based, as paper B; W[row = output channel, col = input channel])")
    for c in out["comparison"]:
        lines.append(f"  paper B: layer {c['layer']} [{c['row']}, {c['col']}]  ours {'yes' if c['in_ours'] else 'no'}"
                     f"  paper {'yes' if c['in_paper'] else 'no'}")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary, tables=('sw_down_proj_max', 'sw_directory', 'sw_paper'),
                                artefact='paper B §3.2: Table 2, Fig. 3'))
