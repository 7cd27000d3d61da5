"""Stage ``sw_actquant``: simulated W8A8 with and without super-outlier handling (paper B §5.1,
Tables 3, 4 and 7).

Two protocols (``protocol``): ``paper_b``, below, as paper B's text says, and ``smoothquant``,
SmoothQuant's own ``quantize_llama_like`` (weights INT8 per output channel, the inputs of every
decoder linear including ``o_proj`` per token, the q/k/v projection outputs per token before RoPE,
attention products unquantized): its SmoothQuant baseline is SmoothQuant's, not smoothing followed
by per-tensor weights (which moves the activation range into weight columns: 27.2 perplexity on
SmolLM2). ``activations=per_tensor`` gives every input one scale, where the super activation
enters the quantized tensors (per token, after the norm, its row is almost one-hot).

paper_b: quantized (paper B: "q/k/v/gate/up/down projections plus the attention BMMs"; here every linear in
the decoder layers except the attention output projection, so fused qkv / gate_up and GPT-2's
``c_attn``/``c_fc``/``c_proj`` are covered too): weights INT8 per tensor
(``kernels.tensor_quant``), their inputs INT8 per token (``kernels.token_quant``), and the inputs
of both attention products, Q, K, V and the probabilities, INT8 per row (``quant.quantized_attention``):
:func:`pipeline.interventions.quant.w8a8`. Fake quantization in the model's dtype; the model is
restored bit-identically after each condition.

Conditions:
  fp                      no quantization
  naive                   W8A8 as above
  super_activation_aware  W8A8, but in each quantized input the super activation is replaced by
                          the row median for the scale and restored in full precision afterwards
                          (paper B's "Ours"): in the super weight's layer the down projection's
                          input channel ``col``, in later layers the residual-stream channel
                          ``row`` of every other quantized input, wherever (at that token) it
                          exceeds the rest of its row; super weights detected by ``sw_detect``
  smoothquant             SmoothQuant smoothing (alpha 0.85, per-channel input maxima from
                          calibration text; the norm -> q/k/v and norm -> gate/up groups as the
                          reference code, ``smooth_down_proj`` adds up_proj -> down_proj), then W8A8;
                          reported as not applicable, with the reason, where it cannot be folded
                          (e.g. OLMo's weightless LayerNorm)

Metric: perplexity (paper B: WikiText-2 and C4; offline stand-ins). Tables: ``sw_actquant`` (long),
``sw_actquant_table`` (one row per condition, with paper B's recovery shares computed from our
numbers: ``recovered_vs_smoothquant_<data>`` = (naive - ours) / (naive - smoothquant) and
``recovered_vs_fp_<data>`` = (naive - ours) / (naive - fp), in percent). Arguments:
:class:`pipeline.config.super_weight.SwActquantArgs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from pipeline.analysis.super_weight import super_weights
from pipeline.config.super_weight import SwActquantArgs
from pipeline.core.errors import PipelineError
from pipeline.core.paper import paper_table_lines
from pipeline.core.registry import StageSpec, register_stage
from pipeline.evaluation.conditions import evaluate_conditions, write_by_condition
from pipeline.evaluation.summary import format_number, format_table
from pipeline.interventions.quant import (
    ACTIVATIONS,
    PARTS,
    PROTOCOLS,
    outlier_channels,
    quantized_modules,
    w8a8,
)
from pipeline.interventions.smoothquant import (
    NotApplicable,
    input_absmax,
    smoothed,
    smoothing_factors,
)
from pipeline.models.matrices import WeightSite

STAGE = "sw_actquant"
CONDITIONS = ("fp", "naive", "super_activation_aware", "smoothquant")  # the known ones (checked)


def label(condition: str, parts: Sequence[str], protocol: str = "paper_b", activations: str = "per_token") -> str:
    """Row label: the condition, with what differs from the default W8A8 in brackets: the quantized
    parts when not all of them, the protocol when not paper B's, per-tensor activations."""
    extra = [] if tuple(parts) == PARTS else ["+".join(parts)]
    extra += [] if protocol == "paper_b" else [protocol]
    extra += [] if activations == "per_token" else [activations]
    return condition if condition == "fp" or not extra else f"{condition}[{'; '.join(extra)}]"


def recovery(table: list[dict], data: Sequence[str], named=label) -> None:
    """Paper B's percentages, computed from our perplexities, added to the super-activation-aware row
    (``named(condition)``: the row label of a condition in this run)."""
    by = {r["condition"]: r for r in table}
    ours = by.get(named("super_activation_aware"))
    naive_row = by.get(named("naive"))
    if not ours or not naive_row:
        return
    for d in data:
        key = f"ppl_{d}"
        naive = naive_row.get(key, math.nan)
        for ref, col in (("smoothquant", "recovered_vs_smoothquant"), ("fp", "recovered_vs_fp")):
            gap = naive - by.get(named(ref), {}).get(key, math.nan)
            ours[f"{col}_{d}"] = 100 * (naive - ours[key]) / gap if gap and math.isfinite(gap) else math.nan


def run(ctx, args: SwActquantArgs) -> dict[str, Any]:
    """Perplexity of the model under each W8A8 condition."""
    conditions, parts, alpha, ppl_data = args.conditions, args.parts, args.alpha, args.ppl_data
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise PipelineError(f"unknown condition(s) {bad}; choose from {', '.join(CONDITIONS)}")
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise PipelineError(f"parts must be a non-empty subset of {', '.join(PARTS)} (got {list(parts)})")
    if args.protocol not in PROTOCOLS or args.activations not in ACTIVATIONS:
        raise PipelineError(f"protocol must be one of {', '.join(PROTOCOLS)} and activations one of "
                            f"{', '.join(ACTIVATIONS)} (got {args.protocol!r}, {args.activations!r})")
    parts = tuple(parts)
    modules = quantized_modules(ctx.model, args.protocol)
    quant = {"parts": parts, "protocol": args.protocol, "activations": args.activations}

    def named(condition: str) -> str:
        return label(condition, parts, args.protocol, args.activations)
    sites: list[WeightSite] = []
    if "super_activation_aware" in conditions:
        sites = super_weights(ctx, args)
    outliers = outlier_channels(ctx.model, sites, modules)
    makers = {"fp": nullcontext, "naive": lambda: w8a8(ctx.model, modules, None, **quant),
              "super_activation_aware": lambda: w8a8(ctx.model, modules, outliers, **quant)}
    not_applicable = ""
    if "smoothquant" in conditions:
        calib = ctx.calibration_windows(args.calib_data, args.calib_split, args.calib_seq_len, args.calib_windows)
        try:
            factors = smoothing_factors(ctx.model, input_absmax(ctx.model, calib, ctx.device), alpha,
                                        args.smooth_down_proj)
        except NotApplicable as e:
            not_applicable = str(e)
            print(f"[{STAGE}] smoothquant not applicable: {e}", flush=True)
        else:
            @contextmanager
            def smooth_then_quantize():
                with smoothed(ctx.model, factors), w8a8(ctx.model, modules, None, **quant):
                    yield
            makers["smoothquant"] = smooth_then_quantize
    chosen = {named(c): makers[c] for c in conditions if c in makers}
    sw_text = ";".join(s.key for s in sites)
    describe = {named(c): {"super_weights": sw_text if c == "super_activation_aware" else "",
                                  "alpha": alpha if c == "smoothquant" else math.nan,
                                  "quantized": "" if c == "fp" else "+".join(parts), "note": ""}
                for c in conditions if c in makers}
    ppl_sets = ctx.eval_windows(ppl_data, args.ppl_seq_len, args.ppl_windows)
    rows, table = evaluate_conditions(ctx, STAGE, chosen, ppl_sets=ppl_sets, eval_suite=args.eval_suite,
                                      zero_shot_limit=args.zero_shot_limit, batch_size=args.batch_size,
                                      eval_batch_size=args.eval_batch_size, describe=describe,
                                      tables=("sw_actquant", "sw_actquant_table"), baseline="fp")
    if not_applicable:
        table.append({"condition": named("smoothquant"), **{f"ppl_{d}": math.nan for d in ppl_data},
                      "super_weights": "", "alpha": alpha, "quantized": "+".join(parts),
                      "note": f"not applicable: {not_applicable}"})
    recovery(table, ppl_data, named)
    paths = write_by_condition(ctx, STAGE, {"sw_actquant": rows, "sw_actquant_table": table})
    return {"table": table, "sites": sites, "outliers": outliers, "paths": paths, "not_applicable": not_applicable,
            "ppl_data": list(ppl_data), "paper": ctx.paper_numbers("super_weight")}


def format_summary(out: dict[str, Any]) -> str:
    lines = [f"W8A8 perplexity (super weights: {', '.join(map(str, out['sites'])) or 'not used'}):"]
    lines += format_table(out["table"])
    for r in out["table"]:
        for k, v in r.items():
            if k.startswith("recovered_"):
                lines.append(f"  {r['condition']}: {k} = {format_number(v)}%")
    if out["not_applicable"]:
        lines.append(f"  smoothquant not applicable: {out['not_applicable']}")
    lines += paper_table_lines(out.get("paper"), "w8a8", "perplexity")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('sw_actquant', 'sw_actquant_table', 'sw_actquant_items'),
                                artefact='paper B §5.1: Tables 3, 4, 7'))
