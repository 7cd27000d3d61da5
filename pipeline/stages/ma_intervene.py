"""Stage ``ma_intervene``: massive activations act as fixed, crucial biases (paper A §3, Table 3).

At the layer where massive activations first appear (found here by ``ma_profile``'s detector on
calibration sequences, never hard-coded), overwrite them in every input and measure perplexity and
zero-shot accuracy under four conditions:
  original      no edit
  set_zero      the massive activations set to 0 (paper A: perplexity explodes, accuracy to chance)
  set_mean      set to their mean over the calibration sequences (paper A: no change)
  random_zero   control: as many *random* activations of the same tokens set to 0 (harmless)

Tables written: ``ma_intervene_sites`` (the edited sites and their calibration means),
``ma_intervene`` (one row per condition x dataset/task x metric) and ``ma_intervene_table`` (the
paper's layout: conditions as rows). The model is checked bit-identical after every condition.

Arguments: :class:`pipeline.config.massive_activations.MaInterveneArgs`. Paper A's numbers are set
beside ours by the report (``make report``), from ``conf/paper/``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from pipeline.analysis.massive import steady_choice, summarize
from pipeline.analysis.profile import profile_layers
from pipeline.config.massive_activations import MaInterveneArgs
from pipeline.core.errors import PipelineError
from pipeline.core.registry import StageSpec, register_stage
from pipeline.evaluation.conditions import evaluate_conditions, write_by_condition
from pipeline.evaluation.summary import format_table
from pipeline.hooks.positions import delimiter_test
from pipeline.interventions.sites import Site, editable_roles, random_control, set_sites
from pipeline.models.arch import num_layers, residual_width

STAGE = "ma_intervene"
KNOWN_CONDITIONS = frozenset({"original", "set_zero", "set_mean", "random_zero"})  # what run() can build


def detect_sites(ctx, *, calib_data: str, calib_split: str, calib_sequences: int, calib_seq_len: int,
                 layer: int | str, min_frac: float, batch_size: int, **detector) -> tuple[int, list[dict], str]:
    """The intervention layer, its steady massive (dim, token type) sites with calibration
    means, and one line saying what was chosen and why."""
    windows = ctx.calibration_windows(calib_data, calib_split, calib_seq_len, calib_sequences)
    prof = profile_layers(ctx, windows, batch_size=batch_size, **detector)
    acts = prof.activation_rows()
    roles = editable_roles(ctx.model)  # a trained sink token is one of them
    massive = [m for m in summarize(acts, num_layers(ctx.model), prof.seen_values(), min_frac)
               if m["token_type"] in roles]
    first, why = steady_choice(massive, "intervention layer")
    if layer == "auto":
        if first is None:
            raise PipelineError(f"no steady massive activations on {list(roles)} in {calib_sequences} "
                                f"calibration sequences: nothing to intervene on ({why}; set layer to force one)")
        layer = first
    else:
        why = f"intervention layer: {layer} (set by hand); {why}"
    keys = {(m["dim"], m["token_type"]) for m in massive if m["steady"]}
    sites = [dict(r, calib_data=calib_data, calib_sequences=calib_sequences, calib_seq_len=calib_seq_len)
             for r in acts if r["layer"] == int(layer) and (r["dim"], r["token_type"]) in keys]
    if not sites:
        raise PipelineError(f"no steady massive activations at layer {layer} to intervene on ({why})")
    print(f"[ma_intervene] {why}", flush=True)
    return int(layer), sites, why


def run(ctx, args: MaInterveneArgs) -> dict[str, Any]:
    """Run every condition; returns the paper-style table and where it was written."""
    conditions = list(args.conditions)
    unknown = sorted(set(conditions) - KNOWN_CONDITIONS)
    if unknown:
        raise PipelineError(f"unknown conditions {unknown}; known: {', '.join(sorted(KNOWN_CONDITIONS))}")
    layer_idx, sites, why = detect_sites(
        ctx, calib_data=args.calib_data, calib_split=args.calib_split, calib_sequences=args.calib_sequences,
        calib_seq_len=args.calib_seq_len, layer=args.layer, min_frac=args.min_frac, batch_size=args.batch_size,
        abs_threshold=args.abs_threshold, rel_threshold=args.rel_threshold, max_hits=args.max_hits,
        delimiters=list(args.delimiters))
    hidden = residual_width(ctx.model)  # not the embedding width (OPT-350m projects 512 -> 1024)
    edits = {
        "original": None,
        "set_zero": [Site(s["token_type"], s["dim"], 0.0) for s in sites],
        "set_mean": [Site(s["token_type"], s["dim"], s["value_mean"]) for s in sites],
    }
    edits["random_zero"] = random_control(edits["set_zero"], hidden, args.seed)
    is_delim = delimiter_test(ctx.tokenizer, list(args.delimiters))

    def condition(sites_c):
        return ((lambda: nullcontext()) if sites_c is None
                else (lambda: set_sites(ctx.model, {layer_idx: sites_c}, is_delim)))

    describe = {c: {"layer": layer_idx, "edited": "" if edits[c] is None else
                    ";".join(f"{s.token_type}:{s.dim}={s.value:.4g}" for s in edits[c])} for c in conditions}
    rows, table = evaluate_conditions(
        ctx, STAGE, {c: condition(edits[c]) for c in conditions},
        ppl_sets=ctx.eval_windows(list(args.ppl_data), args.ppl_seq_len, args.ppl_windows),
        eval_suite=args.eval_suite, zero_shot_limit=args.zero_shot_limit, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, describe=describe, tables=("ma_intervene", "ma_intervene_table"),
        baseline="original")
    paths = {"ma_intervene_sites": ctx.results.write("ma_intervene_sites", sites, stage=STAGE),
             **write_by_condition(ctx, STAGE, {"ma_intervene": rows, "ma_intervene_table": table})}
    return {"layer": layer_idx, "sites": sites, "why": why, "rows": rows, "table": table, "paths": paths,
            "zero_shot": args.eval_suite is not None, "zero_shot_limit": args.zero_shot_limit,
            "ppl_setting": f"{args.ppl_windows} x {args.ppl_seq_len} tokens"}


def format_summary(out: dict[str, Any]) -> str:
    """The paper-style table: conditions as rows, perplexities and mean zero-shot accuracy."""
    sites = ", ".join(f"{s['token_type']} dim {s['dim']} (mean {s['value_mean']:.1f})" for s in out["sites"])
    limit = out["zero_shot_limit"]
    zero_shot = (f"zero-shot on {'all documents' if limit is None else f'{limit} documents'} per task"
                 if out.get("zero_shot", True) else "no zero-shot (eval_suite null)")
    lines = [f"interventions at layer {out['layer']} (0-based) on: {sites}",
             f"  {out['why']}" if out.get("why") else "",
             f"  perplexity on {out['ppl_setting']}; {zero_shot}",
             *format_table(out["table"])]
    lines = [line for line in lines if line]
    lines.append("  beside the papers' numbers: make report (results/REPORT.md)")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('ma_intervene_sites', 'ma_intervene', 'ma_intervene_table',
                                        'ma_intervene_items'),
                                artefact='paper A §3, Table 3: set to zero / set to mean'))
