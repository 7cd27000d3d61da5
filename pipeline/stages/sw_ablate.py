"""Stage ``sw_ablate``: how much the model needs its super weights (paper B Table 1 and Fig. 4).

Conditions (all reversible; the model is checked bit-identical after each):
  original             no edit
  prune_sw             the detected super weights set to 0
  prune_sw_restore_sa  pruned, but the super activation written back: in the down-projection
                       output of each super weight's layer, at the token where |original output| of
                       channel ``row`` peaks, the original value (pruned output + X[t, col] * W[row, col])
                       is restored (:mod:`pipeline.interventions.restore`; the official code does this
                       for LLaMA-7B only; here any model, mixture-of-experts included)
  prune_non_sw         the largest-magnitude weights of every attention/MLP matrix except the super
                       weights (paper B: top 1e-6 of each matrix, about 7,000 weights on LLaMA-7B)
Each with perplexity and the paper-B zero-shot suite (Table 1), and per layer the max |decoder
layer output| on the detection prompt (Fig. 4).

Tables: ``sw_ablate`` (long), ``sw_ablate_table`` (one row per condition), ``sw_layer_max`` (Fig. 4).
Arguments: :class:`pipeline.config.super_weight.SwAblateArgs`. Paper B's numbers are set beside
ours by the report (``make report``), from ``conf/paper/``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from pipeline.analysis.super_weight import super_weights
from pipeline.config.super_weight import SwAblateArgs
from pipeline.core.errors import PipelineError
from pipeline.core.registry import StageSpec, register_stage
from pipeline.evaluation.conditions import evaluate_conditions, write_by_condition
from pipeline.evaluation.summary import format_number, format_table
from pipeline.hooks.forward import capture
from pipeline.interventions.restore import prune_restore
from pipeline.interventions.weights import largest_weights, scale_weights, zero_weights
from pipeline.models.arch import decoder_layers

STAGE = "sw_ablate"
CONDITIONS = ("original", "prune_sw", "prune_sw_restore_sa", "prune_non_sw")  # the known ones (checked)


@torch.inference_mode()
def layer_max(ctx, ids: torch.Tensor) -> list[float]:
    """Fig. 4: max |output| of every decoder layer on ``ids``."""
    maxima: dict[int, float] = {}
    mods = {str(i): m for i, m in enumerate(decoder_layers(ctx.model))}
    with capture(mods, lambda n, h: maxima.__setitem__(int(n), float(h.abs().max()))):
        ctx.model(input_ids=ids, use_cache=False)
    return [maxima[i] for i in range(len(mods))]


def run(ctx, args: SwAblateArgs) -> dict[str, Any]:
    """Table 1 and Fig. 4 for the super weights detected on ``args.detect_prompt``."""
    unknown = sorted(set(args.conditions) - set(CONDITIONS))
    if unknown:
        raise PipelineError(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")
    sites = super_weights(ctx, args)
    non_sw = largest_weights(ctx.model, args.non_sw_fraction, args.non_sw_min_per_matrix, exclude=sites)
    makers = {"original": lambda: nullcontext(),
              "prune_sw": lambda: scale_weights(ctx.model, sites, 0.0),
              "prune_sw_restore_sa": lambda: prune_restore(ctx.model, sites),
              "prune_non_sw": lambda: zero_weights(non_sw)}
    chosen = {c: makers[c] for c in args.conditions}
    sw_text = ";".join(s.key for s in sites)
    describe = {c: {"super_weights": sw_text,
                    "n_weights_edited": {"original": 0, "prune_non_sw": len(non_sw)}.get(c, len(sites))}
                for c in args.conditions}

    ids = ctx.tokenizer(args.detect_prompt, return_tensors="pt").input_ids.to(ctx.device)
    fig4 = []
    for cond, make in chosen.items():
        with make():
            fig4 += [{"condition": cond, "layer": i, "max_abs": v} for i, v in enumerate(layer_max(ctx, ids))]
    rows, table = evaluate_conditions(
        ctx, STAGE, chosen, ppl_sets=ctx.eval_windows(args.ppl_data, args.ppl_seq_len, args.ppl_windows),
        eval_suite=args.eval_suite, zero_shot_limit=args.zero_shot_limit, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, describe=describe, tables=("sw_ablate", "sw_ablate_table"),
        baseline="original")
    paths = write_by_condition(ctx, STAGE, {"sw_ablate": rows, "sw_ablate_table": table, "sw_layer_max": fig4})
    return {"sites": sites, "n_non_sw": len(non_sw), "rows": rows, "table": table, "fig4": fig4,
            "paths": paths, "zero_shot_limit": args.zero_shot_limit,
            "ppl_setting": f"{args.ppl_windows} x {args.ppl_seq_len} tokens", "eval_suite": args.eval_suite}


def format_summary(out: dict[str, Any]) -> str:
    sw = ", ".join(map(str, out["sites"]))
    lines = [f"super-weight ablations ({sw}; prune_non_sw zeroes {out['n_non_sw']} other weights)",
             f"  perplexity on {out['ppl_setting']}; zero-shot {out['eval_suite']}"
             f" limit {out['zero_shot_limit']} per task",
             *format_table(out["table"])]
    peaks = {}
    for r in out["fig4"]:
        peaks[r["condition"]] = max(peaks.get(r["condition"], 0.0), r["max_abs"])
    lines.append("  max |layer output| on the prompt: "
                 + ", ".join(f"{c} {format_number(v)}" for c, v in peaks.items()))
    lines.append("  beside the papers' numbers: make report (results/REPORT.md)")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('sw_ablate', 'sw_ablate_table', 'sw_ablate_items', 'sw_layer_max'),
                                artefact='paper B Table 1, Fig. 4'))
