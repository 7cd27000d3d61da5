"""Stage ``sw_scale``: scaling the super weights (paper B §5, Fig. 6 / Fig. 8, Table 5).

The super weights are detected (``sw_detect.super_weights``) and multiplied by each factor in
``scales`` (0 = pruned, 1 = the original model, > 1 = amplified; ``weights.scale_weights``,
reversible). Each factor is evaluated on perplexity (offline: held-out Wikipedia summaries) and
the zero-shot suite (paper B: Arc-c, Arc-e, HellaSwag, LAMBADA, PIQA, SciQ, WinoGrande, ``acc``).

Scale 1 is checked to be the original model bitwise (``torch.equal`` on a probe prompt's
logits), and after every factor the model is checked bit-identical to before. Rows are written
with ``condition="scale_<s>"``, so a Hydra multirun with one factor per job
(``stage.sw_scale.scales=[0],[0.5],...``) fills the same tables as one run with a list.

Tables: ``sw_scale`` (long: scale x perplexity set / task x metric) and ``sw_scale_table`` (one
row per scale: perplexities, per-task acc, ``acc_mean``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.analysis.super_weight import DEFAULT_PROMPT, super_weights
from pipeline.core.errors import PipelineError
from pipeline.data.text import build_source, data_config, token_windows
from pipeline.evaluation.perplexity import perplexity
from pipeline.evaluation.zero_shot import load_suite, mean_accuracy, zero_shot
from pipeline.hooks.weights import scale_weights

STAGE = "sw_scale"
SCALES = (0.0, 0.1, 0.2, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0)  # paper B Fig. 6 spans 0 to 3
PROBE = "Summer is hot. Winter is cold."


def condition_name(scale: float) -> str:
    return f"scale_{scale:g}"


def probe_logits(ctx) -> torch.Tensor:
    ids = ctx.tokenizer(PROBE, return_tensors="pt").input_ids.to(ctx.device)
    with torch.inference_mode():
        return ctx.model(input_ids=ids, use_cache=False).logits.float().cpu()


def ppl_windows_for(ctx, names: Sequence[str], seq_len: int, n_windows: int) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        cfg = data_config(name)
        out[name] = token_windows(ctx.tokenizer, build_source(cfg), seq_len=seq_len, n_windows=n_windows,
                                  bos=cfg.get("bos", "never"), joiner=cfg.get("joiner", "\n\n"))
    return out


def run(ctx, *, scales: Sequence[float] = SCALES, eval_suite: str | None = "paper_b",
        zero_shot_limit: int | None = 20, ppl_data: Sequence[str] = ("wiki_summaries",),
        ppl_seq_len: int = 512, ppl_windows: int = 8, batch_size: int = 1, eval_batch_size: int = 8,
        detect_prompt: str = DEFAULT_PROMPT, roles: Sequence[str] = ("creates",),
        threshold: float | str = "auto", rel_spike: float = 0.05, min_abs: float = 50.0,
        min_share: float = 0.5, max_iter: int = 10) -> dict[str, Any]:
    """Evaluate the model with its super weights scaled by each factor in ``scales``."""
    scales = [float(s) for s in scales]
    if not scales or len(set(scales)) != len(scales) or any(not math.isfinite(s) for s in scales):
        raise PipelineError(f"scales must be distinct finite numbers (got {scales})")
    sites = super_weights(ctx, prompt=detect_prompt, roles=tuple(roles), threshold=threshold,
                          rel_spike=rel_spike, min_abs=min_abs, min_share=min_share, max_iter=max_iter)
    sw_text = ";".join(s.key for s in sites)
    ppl_sets = ppl_windows_for(ctx, ppl_data, ppl_seq_len, ppl_windows)
    suite = load_suite(eval_suite) if eval_suite else None
    reference = probe_logits(ctx)

    rows: dict[float, list[dict]] = {}
    table: list[dict] = []
    paths: dict[str, Any] = {}
    for s in scales:
        print(f"[{STAGE}] scale {s:g} on {sw_text}", flush=True)
        long: list[dict] = []
        wide: dict[str, Any] = {"scale": s, "super_weights": sw_text}
        with scale_weights(ctx.model, sites, s):
            if s == 1.0 and not torch.equal(probe_logits(ctx), reference):
                raise RuntimeError("scale 1 is not the original model bitwise")
            for name, windows in ppl_sets.items():
                res = perplexity(ctx.model, windows, batch_size=batch_size, device=ctx.device,
                                 desc=f"ppl {name} [scale {s:g}]")
                long.append({"scale": s, "eval": "perplexity", "eval_data": name, "metric": "ppl",
                             "value": res["ppl"], "stderr": math.nan, "n": res["n_tokens"], "seq_len": ppl_seq_len})
                wide[f"ppl_{name}"] = res["ppl"]
            if suite:
                zs = zero_shot(ctx.model, ctx.tokenizer, suite, limit=zero_shot_limit,
                               batch_size=eval_batch_size, device=ctx.device)
                long += [{"scale": s, "eval": "zero_shot", "eval_data": r["task"], "metric": r["metric"],
                          "value": r["value"], "stderr": r["stderr"], "n": r["n"], "seq_len": math.nan} for r in zs]
                wide.update({f"acc_{r['task']}": r["value"] for r in zs if r["metric"] == "acc"})
                wide["acc_mean"] = mean_accuracy(zs, suite.get("primary_metric", "acc"))
                wide["zero_shot_limit"] = zero_shot_limit if zero_shot_limit is not None else math.nan
        if not torch.equal(probe_logits(ctx), reference):
            raise RuntimeError(f"scale {s:g} left the model changed: the weight edit leaked")
        rows[s] = [{**r, "super_weights": sw_text} for r in long]
        table.append(wide)
        # written per factor (`condition` is provenance): an interrupted sweep keeps what it did
        paths["sw_scale"] = ctx.results.write("sw_scale", rows[s], stage=STAGE, condition=condition_name(s))
        paths["sw_scale_table"] = ctx.results.write("sw_scale_table", [wide], stage=STAGE,
                                                    condition=condition_name(s))
        ctx.logger.log_metrics({f"sw_scale/{condition_name(s)}/{k}": v for k, v in wide.items()
                                if isinstance(v, float)})

    return {"sites": sites, "table": table, "rows": [r for s in scales for r in rows[s]], "paths": paths,
            "zero_shot_limit": zero_shot_limit, "ppl_setting": f"{ppl_windows} x {ppl_seq_len} tokens"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else ("nan" if math.isnan(v) else f"{v:.4g}")
    return "" if v is None else str(v)


def format_summary(out: dict[str, Any]) -> str:
    sw = ", ".join(map(str, out["sites"]))
    first = out["table"][0]
    cols = [k for k in first if k.startswith("ppl_")] + (["acc_mean"] if "acc_mean" in first else [])
    lines = [f"super-weight scaling of {sw}",
             f"  perplexity on {out['ppl_setting']}; zero-shot limit {out['zero_shot_limit']} per task",
             "  " + f"{'scale':>6}" + "".join(f"{c:>20}" for c in cols)]
    for row in sorted(out["table"], key=lambda r: r["scale"]):
        lines.append("  " + f"{row['scale']:>6g}" + "".join(f"{_fmt(row.get(c)):>20}" for c in cols))
    return "\n".join(lines)
