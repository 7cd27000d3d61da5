"""Stage ``sw_scale``: scaling the super weights (paper B §5, Fig. 6 / Fig. 8, Table 5).

The super weights are detected (``sw_detect.super_weights``) and multiplied by each factor in
``scales`` (0 = pruned, 1 = the original model, > 1 = amplified; ``weights.scale_weights``,
reversible). Each factor is evaluated on perplexity (offline: held-out Wikipedia summaries) and
the zero-shot suite (paper B: Arc-c, Arc-e, HellaSwag, LAMBADA, PIQA, SciQ, WinoGrande, ``acc``).

Scale 1 touches no weight (``scale_weights`` returns at once), so it is the original model; after
every factor the shared condition loop checks the model bit-identical to before. Rows are written
with ``condition="scale_<s>"``, so a Hydra multirun with one factor per job
(``stage.sw_scale.scales=[0],[0.5],...``) fills the same tables as one run with a list.

Tables: ``sw_scale`` (long: scale x perplexity set / task x metric) and ``sw_scale_table`` (one
row per scale: perplexities, per-task acc, ``acc_mean``). Arguments:
:class:`pipeline.config.super_weight.SwScaleArgs`.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.analysis.super_weight import super_weights
from pipeline.config.super_weight import SwScaleArgs
from pipeline.core.errors import PipelineError
from pipeline.core.registry import StageSpec, register_stage
from pipeline.evaluation.conditions import evaluate_conditions
from pipeline.evaluation.summary import format_table
from pipeline.interventions.weights import scale_weights

STAGE = "sw_scale"


def condition_name(scale: float) -> str:
    return f"scale_{scale:g}"


def run(ctx, args: SwScaleArgs) -> dict[str, Any]:
    """Evaluate the model with its super weights scaled by each factor in ``args.scales``."""
    scales = [float(s) for s in args.scales]
    if not scales or len(set(scales)) != len(scales) or any(not math.isfinite(s) for s in scales):
        raise PipelineError(f"scales must be distinct finite numbers (got {scales})")
    sites = super_weights(ctx, args)
    sw_text = ";".join(s.key for s in sites)
    conditions = {condition_name(s): (lambda s=s: scale_weights(ctx.model, sites, s)) for s in scales}
    limit = args.zero_shot_limit if args.zero_shot_limit is not None else math.nan
    describe = {condition_name(s): {"scale": s, "super_weights": sw_text, "zero_shot_limit": limit}
                for s in scales}
    # each factor is written as it finishes (`condition` is provenance): an interrupted sweep keeps
    # its rows, and a re-run of the same setting resumes after them
    rows, table = evaluate_conditions(
        ctx, STAGE, conditions, ppl_sets=ctx.eval_windows(args.ppl_data, args.ppl_seq_len, args.ppl_windows),
        eval_suite=args.eval_suite, zero_shot_limit=args.zero_shot_limit, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, describe=describe, tables=("sw_scale", "sw_scale_table"),
        baseline=condition_name(1.0), long_columns=("scale", "super_weights"))
    paths = {t: ctx.results.path(t) for t in ("sw_scale", "sw_scale_table")}
    return {"sites": sites, "table": table, "rows": rows, "paths": paths, "zero_shot_limit": args.zero_shot_limit,
            "ppl_setting": f"{args.ppl_windows} x {args.ppl_seq_len} tokens"}


def format_summary(out: dict[str, Any]) -> str:
    sw = ", ".join(map(str, out["sites"]))
    lines = [f"super-weight scaling of {sw}",
             f"  perplexity on {out['ppl_setting']}; zero-shot limit {out['zero_shot_limit']} per task",
             *format_table(sorted(out["table"], key=lambda r: r["scale"]))]
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('sw_scale', 'sw_scale_table', 'sw_scale_items'),
                                artefact='paper B §5: Fig. 6'))
