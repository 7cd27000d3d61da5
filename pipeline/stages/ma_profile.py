"""Stage ``ma_profile``: where massive activations live (paper A, Sun et al. 2024, §2).

Reproduces Table 1 / Fig. 3 (per-layer top-1/2/3 and median of |hidden state| over N sequences
of L tokens) and Fig. 1 (the |activation| landscape of one layer on one prompt), and detects the
massive activations automatically: layer of first appearance, feature dim, token position and
type, and how constant their value is across sequences.

Tables written (``results/<experiment>/``):
  ma_layer_stats.csv   one row per decoder layer (Fig. 3, Table 1)
  ma_activations.csv   one row per (layer, dim, token type) holding massive activations
  ma_massive.csv       one row per (dim, token type): first layer, value mean/std, ratio (summary)
  ma_fig1.csv          |h| of every token x dim of one layer on the Fig. 1 prompt
  ma_layer_stats_before_norm.csv, ma_massive_before_norm.csv   post-LN models only (arch spec
                       ``block_out_norm``, BERT): the same, read BEFORE each block's output norm
                       (the residual sum, :mod:`pipeline.hooks.prenorm`); the tables above read
                       the block outputs, after it

Arguments: :class:`pipeline.config.massive_activations.MaProfileArgs`. The papers' numbers are
set beside ours by the report (``make report``), from ``conf/paper/``.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.analysis.massive import massive_threshold, steady_choice, summarize
from pipeline.analysis.profile import layer_landscape, profile_layers
from pipeline.config.massive_activations import MaProfileArgs
from pipeline.core.registry import StageSpec, register_stage
from pipeline.hooks.prenorm import profile_before_block_norms

STAGE = "ma_profile"


def run(ctx, args: MaProfileArgs) -> dict[str, Any]:
    """Profile |hidden state| per layer, detect massive activations, and record the Fig. 1 layer."""
    windows = ctx.windows(args.seq_len, args.n_sequences, args.sampling)
    prof = profile_layers(ctx, windows, batch_size=args.batch_size, abs_threshold=args.abs_threshold,
                          rel_threshold=args.rel_threshold, max_hits=args.max_hits, delimiters=list(args.delimiters))
    layer_rows, act_rows = prof.layer_rows(), prof.activation_rows()
    massive = summarize(act_rows, len(layer_rows), prof.seen_values())
    first, why = steady_choice(massive, "Fig. 1 layer")
    fig1_layer = args.fig1_layer
    if fig1_layer != "auto":
        why = f"Fig. 1 layer: {fig1_layer} (set by hand)"
    elif first is not None:
        fig1_layer = first
    else:  # nothing steady: the layer with the largest top-1 / median ratio
        fig1_layer = max(layer_rows, key=lambda r: r["top1_over_median"])["layer"]
        why += f"; drawn at layer {fig1_layer}, the largest top-1 / median ratio"
    fig1 = layer_landscape(ctx, args.fig1_prompt, int(fig1_layer), args.fig1_bos)
    mags = torch.tensor([r["abs_value"] for r in fig1])
    fig1_massive = bool(mags.max() > massive_threshold(float(mags.median()), args.abs_threshold, args.rel_threshold))
    if not fig1_massive:
        why += (f"; on the Fig. 1 prompt the layer-{fig1_layer} maximum ({float(mags.max()):.1f}) "
                "is NOT massive by the rule")

    tables = [("ma_layer_stats", layer_rows), ("ma_activations", act_rows), ("ma_massive", massive), ("ma_fig1", fig1)]
    pre = profile_before_block_norms(ctx, windows, batch_size=args.batch_size, abs_threshold=args.abs_threshold,
                                     rel_threshold=args.rel_threshold, max_hits=args.max_hits,
                                     delimiters=list(args.delimiters))
    before = None if pre is None else summarize(pre.activation_rows(), len(layer_rows), pre.seen_values())
    if pre is not None:
        tables += [("ma_layer_stats_before_norm", pre.layer_rows()), ("ma_massive_before_norm", before)]
    paths = {table: ctx.results.write(table, rows, stage=STAGE) for table, rows in tables}
    metrics = {"ma/n_massive_groups": len(massive), "ma/max_top1": max(r["top1"] for r in layer_rows),
               "ma/first_layer": min((m["first_layer"] for m in massive), default=-1)}
    ctx.logger.log_metrics(metrics)
    ctx.logger.log_table("ma_massive", _frame(massive))
    ctx.logger.log_table("ma_layer_stats", _frame(layer_rows))
    return {"metrics": metrics, "paths": paths, "massive": massive, "layer_rows": layer_rows,
            "fig1_layer": int(fig1_layer), "fig1_why": why, "truncated": sorted(prof.truncated),
            "nonfinite": {i: n for i, n in enumerate(prof.nonfinite) if n},
            "before_norm": before, "norm": ctx.arch.block_out_norm,
            "setting": f"{args.n_sequences} x {args.seq_len} tokens of {ctx.data_cfg['name']}"}


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def _token(m: dict) -> str:
    """The token column: a first-token row names its position, the text only as an example (each
    window's first token differs when windows start mid-text)."""
    if m["token_type"] == "first_token":
        return f"pos 0 (e.g. {m['token_text']!r})"
    return repr(m["token_text"])


def _rows(massive: list[dict], max_rows: int, table: str) -> list[str]:
    if not massive:
        return ["  none found"]
    lines = [f"  {'layer':>8} {'dim':>6}  {'token type':<16}{'token':<20}{'value':>12}{'std':>9}"
             f"{'ratio':>10}{'seqs':>6}  layers      steady  peak"]
    for m in massive[:max_rows]:
        first, last, peak = m["first_layer"], m["last_layer"], m["peak_layer"]
        lines.append(
            f"  {f'{first} ({first + 1})':>8} {m['dim']:>6}  {m['token_type']:<16}{_token(m):<20}"
            f"{m['value_mean']:>12.1f}{m['value_std']:>9.1f}{m['ratio_to_median']:>10.0f}"
            f"{m['frac_sequences']:>6.0%}  {f'{first}-{last} ({first + 1}-{last + 1})':<11}"
            f" {'yes' if m['steady'] else 'no':<7}"
            f" {m['peak_value_mean']:.4g} (layer {peak} ({peak + 1}))")
    if len(massive) > max_rows:
        lines.append(f"  ... {len(massive) - max_rows} more in {table}")
    return lines


def format_summary(out: dict[str, Any], max_rows: int = 12) -> str:
    """One screen: the massive activations found, and the paper comparison when there is one."""
    where = " at the block outputs, after each block's norm" if out.get("before_norm") is not None else ""
    lines = [f"massive activations ({out['setting']}; |h| > abs and > rel x layer median){where}:"]
    lines += _rows(out["massive"], max_rows, "ma_massive.csv")
    if out.get("before_norm") is not None:
        lines.append(f"  before each block's output norm ({out['norm']}'s input, the residual sum):")
        lines += _rows(out["before_norm"], max_rows, "ma_massive_before_norm.csv")
    lines.append("  (layer: 0-based index of first appearance, paper A's 1-based count in brackets; steady: massive"
                 " in >= half the layers from there on and in >= half the sequences; pos 0: each window's first"
                 " token, cut mid-text unless a start token leads the window)")
    if out.get("fig1_why"):
        lines.append(f"  {out['fig1_why']}")
    if out.get("nonfinite"):
        lines.append(f"  warning: NaN/inf values left out of the statistics (layer: count) {out['nonfinite']}")
    if out["truncated"]:
        lines.append(f"  warning: more hits than max_hits in layers {out['truncated']}: raise max_hits")
    lines.append("  beside the papers' numbers: make report (results/REPORT.md)")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('ma_layer_stats', 'ma_activations', 'ma_massive', 'ma_fig1',
                                        'ma_layer_stats_before_norm', 'ma_massive_before_norm'),
                                artefact='paper A §2: Table 1, Fig. 1, Fig. 3'))
