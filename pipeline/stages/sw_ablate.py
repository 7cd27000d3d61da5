"""Stage ``sw_ablate``: how much the model needs its super weights (paper B Table 1 and Fig. 4).

Conditions (all reversible; the model is checked bit-identical after each):
  original             no edit
  prune_sw             the detected super weights set to 0
  prune_sw_restore_sa  pruned, but the super activation written back: in the down-projection
                       output of each super weight's layer, at the token where |original output| of
                       channel ``row`` peaks, the original value (pruned output + X[t, col] * W[row, col])
                       is restored (the official code does this for LLaMA-7B only; here any model,
                       mixture-of-experts included)
  prune_non_sw         the largest-magnitude weights of every attention/MLP matrix except the super
                       weights (paper B: top 1e-6 of each matrix, about 7,000 weights on LLaMA-7B)
Each with perplexity and the paper-B zero-shot suite (Table 1), and per layer the max |decoder
layer output| on the detection prompt (Fig. 4).

Tables: ``sw_ablate`` (long), ``sw_ablate_table`` (one row per condition), ``sw_layer_max`` (Fig. 4).
Arguments: :class:`pipeline.config.super_weight.SwAblateArgs`. Paper B's numbers are set beside
ours by the report (``make report``), from ``conf/paper/``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from pipeline.analysis.super_weight import super_weights
from pipeline.config.super_weight import SwAblateArgs
from pipeline.core.errors import PipelineError
from pipeline.core.registry import StageSpec, register_stage
from pipeline.evaluation.conditions import evaluate_conditions, write_by_condition
from pipeline.evaluation.summary import fmt, format_table
from pipeline.hooks.forward import capture, patch_seeing_inputs
from pipeline.hooks.moe import expert_down_io, routing_weight
from pipeline.hooks.weights import (
    WeightSite,
    down_proj_matrix,
    largest_weights,
    scale_weights,
    zero_weights,
)
from pipeline.models.arch import decoder_layers, get_arch, layer, layer_module

STAGE = "sw_ablate"
CONDITIONS = ("original", "prune_sw", "prune_sw_restore_sa", "prune_non_sw")  # the known ones (checked)


@contextmanager
def restore_super_activation(model: torch.nn.Module, sites: Sequence[WeightSite]) -> Iterator[None]:
    """Under pruned super weights: put the super activation back in each layer's down-projection
    output (per sequence, at the token where the original |output| of channel ``row`` peaks).
    Enter it BEFORE pruning: it records the original weights. On a mixture-of-experts layer the
    output is the routed sum, and the pruned weight's share is ``routing weight x X_e[t, col] x W``
    with the expert's input recomputed (:mod:`pipeline.moe`)."""
    spec = get_arch(model)
    by_layer: dict[int, list[tuple[int, int, float, int | None]]] = defaultdict(list)
    for s in sites:
        by_layer[s.layer].append((s.row, s.col, float(down_proj_matrix(model, s.layer, s.expert)[s.row, s.col]), s.expert))
    shapes: dict[int, tuple[int, int]] = {}

    def record_shape(name: str, h: torch.Tensor) -> None:  # the decoder layer's input: (B, T, d)
        shapes[int(name)] = tuple(h.shape[:2])

    def restore(name: str, m: torch.nn.Module, args: tuple, kwargs: dict, y: torch.Tensor) -> torch.Tensor:
        lay = int(name)
        entries = by_layer[lay]
        flat = y.reshape(-1, y.shape[-1]).clone()  # (B * T, d) whatever the layout
        if any(e is not None for *_, e in entries):
            hidden, top_index, top_weights = (list(args) + [kwargs.get(k) for k in
                                              ("hidden_states", "top_k_index", "top_k_weights")[len(args):]])[:3]
            hidden, top_index = hidden.reshape(-1, hidden.shape[-1]), top_index.reshape(-1, top_index.shape[-1])
            top_weights = top_weights.reshape(-1, top_weights.shape[-1])
        else:
            x = args[0].reshape(-1, args[0].shape[-1])
        b_size, n_tok = shapes[lay]
        for row in dict.fromkeys(r for r, *_ in entries):
            original = flat[:, row].clone()
            for r, c, w, e in entries:
                if r != row:
                    continue
                if e is None:
                    original += x[:, c] * w
                else:
                    _, xe, _ = expert_down_io(m, spec.expert_down_param, hidden, top_index, e)
                    original += routing_weight(top_index, top_weights, e).to(xe.dtype) * xe[:, c] * w
            per_seq = original.view(b_size, n_tok)
            t = per_seq.abs().argmax(dim=1)
            b = torch.arange(b_size, device=y.device)
            flat.view(b_size, n_tok, -1)[b, t, row] = per_seq[b, t]
        return flat.view(y.shape)

    with capture({str(lay): layer(model, lay) for lay in by_layer}, record_shape, inputs=True), \
            patch_seeing_inputs({str(lay): layer_module(model, lay, "down_proj") for lay in by_layer}, restore):
        yield


@contextmanager
def prune_restore(model, sites):
    """prune_sw_restore_sa; the restore hook reads the weights before they are pruned."""
    with restore_super_activation(model, sites), scale_weights(model, sites, 0.0):
        yield


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
    describe = {c: {"super_weights": sw_text, "n_weights_edited": {"original": 0, "prune_non_sw": len(non_sw)}.get(c, len(sites))}
                for c in args.conditions}

    ids = ctx.tokenizer(args.detect_prompt, return_tensors="pt").input_ids.to(ctx.device)
    fig4 = []
    for cond, make in chosen.items():
        with make():
            fig4 += [{"condition": cond, "layer": i, "max_abs": v} for i, v in enumerate(layer_max(ctx, ids))]
    rows, table = evaluate_conditions(
        ctx, STAGE, chosen, ppl_sets=ctx.eval_windows(args.ppl_data, args.ppl_seq_len, args.ppl_windows),
        eval_suite=args.eval_suite, zero_shot_limit=args.zero_shot_limit, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, describe=describe, tables=("sw_ablate", "sw_ablate_table"))
    paths = write_by_condition(ctx, STAGE, {"sw_ablate": rows, "sw_ablate_table": table, "sw_layer_max": fig4})
    return {"sites": sites, "n_non_sw": len(non_sw), "rows": rows, "table": table, "fig4": fig4,
            "paths": paths, "zero_shot_limit": args.zero_shot_limit,
            "ppl_setting": f"{args.ppl_windows} x {args.ppl_seq_len} tokens", "eval_suite": args.eval_suite}


def format_summary(out: dict[str, Any]) -> str:
    sw = ", ".join(map(str, out["sites"]))
    lines = [f"super-weight ablations ({sw}; prune_non_sw zeroes {out['n_non_sw']} other weights)",
             f"  perplexity on {out['ppl_setting']}; zero-shot {out['eval_suite']} limit {out['zero_shot_limit']} per task",
             *format_table(out["table"])]
    peaks = {}
    for r in out["fig4"]:
        peaks[r["condition"]] = max(peaks.get(r["condition"], 0.0), r["max_abs"])
    lines.append("  max |layer output| on the prompt: " + ", ".join(f"{c} {fmt(v)}" for c, v in peaks.items()))
    lines.append("  beside the papers' numbers: make report (results/REPORT.md)")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary, tables=('sw_ablate', 'sw_ablate_table', 'sw_layer_max'),
                                artefact='paper B Table 1, Fig. 4'))
