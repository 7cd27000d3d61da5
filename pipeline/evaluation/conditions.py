"""Evaluate a model under a list of reversible conditions (interventions, weight edits): the loop
shared by the stages that reproduce paper tables (paper A Table 3, paper B Table 1, Fig. 6).

Each condition is a name and a zero-argument factory returning a context manager that applies the
edit. Under it: perplexity and KL from the unmodified model on each dataset's windows, and the
zero-shot suite; per-window and per-document values are kept for paired intervals. After it: the
model must be bit-identical to before, every weight and buffer, with no hook left
(:mod:`pipeline.interventions.integrity`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from pipeline.core.results import PROVENANCE_COLUMNS
from pipeline.evaluation.perplexity import LogProbCache, baseline_folder, perplexity
from pipeline.evaluation.zero_shot import load_suite, mean_accuracy, zero_shot
from pipeline.interventions.integrity import check_unchanged, fingerprint


def _recorded(ctx, stage: str, cond: str, tables: tuple[str, str]) -> tuple[list[dict], dict] | None:
    """The rows of ``cond`` a killed run of this very setting already wrote, or None."""
    long_t, wide_t = tables
    if not ctx.results.done(wide_t, stage, cond):
        return None
    def mine(table: str) -> list[dict]:
        df = ctx.results.staged(table)
        df = df[(df["stage"] == stage) & (df["condition"] == cond)].drop(columns=list(PROVENANCE_COLUMNS))
        return [{"condition": cond, **{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}}
                for r in df.to_dict("records")]
    wide = mine(wide_t)
    return mine(long_t), wide[0]


def evaluate_conditions(ctx, stage: str, conditions: dict[str, Callable[[], AbstractContextManager]], *,
                        ppl_sets: dict[str, torch.Tensor], eval_suite: str | None, zero_shot_limit: int | None,
                        batch_size: int = 1, eval_batch_size: int = 8,
                        describe: dict[str, dict] | None = None,
                        tables: tuple[str, str] | None = None,
                        long_columns: tuple[str, ...] = (),
                        baseline: str | None = None,
                        ) -> tuple[list[dict], list[dict]]:
    """Returns (long rows: one per condition x dataset/task x metric, wide rows: one per condition
    with ``ppl_<dataset>``, ``kl_<dataset>``, ``acc_<task>`` and ``acc_mean``, the mean of the
    suite's ``primary_metric``). ``describe`` adds columns per condition to the wide rows.

    One pass of the unmodified model comes first: its log-probabilities are cached and every
    condition's KL(unmodified || condition) per token is computed against them; ``baseline`` names
    the condition that *is* the unmodified model, whose perplexity is that pass (not computed again).
    Per-window NLL / KL and per-document scores go to ``<long>_items`` (paired intervals between
    conditions: the same windows and documents).

    With ``tables=(long, wide)`` each condition is written as it finishes (``condition`` as
    provenance; the ``long_columns`` of ``describe`` copied into its long rows), and a condition that a killed run
    of the same setting already wrote is read back instead of computed again."""
    suite = load_suite(eval_suite, ctx.catalog) if eval_suite else None
    metric = (suite or {}).get("primary_metric", "acc")
    before = fingerprint(ctx.model)
    rows, table = [], []
    with baseline_folder() as scratch:
        caches = {name: LogProbCache(Path(scratch), name, len(w)) for name, w in ppl_sets.items()}
        unmodified = {}  # one pass of the unmodified model: its log-probabilities, and the baseline's numbers
        if any(not (tables and ctx.results.done(tables[1], stage, c)) for c in conditions):
            unmodified = {name: perplexity(ctx.model, windows, batch_size=batch_size, device=ctx.device,
                                           desc=f"ppl {name} [unmodified]", record=caches[name])
                          for name, windows in ppl_sets.items()}
        for cond in conditions:
            done = _recorded(ctx, stage, cond, tables) if tables else None
            if done is not None:
                print(f"[{stage}] condition {cond}: recorded by the interrupted run of this setting, kept", flush=True)
                rows += done[0]
                table.append(done[1])
                continue
            print(f"[{stage}] condition {cond}", flush=True)
            wide: dict[str, Any] = {"condition": cond, **(describe or {}).get(cond, {})}
            first, items = len(rows), []
            with conditions[cond]():
                for name, windows in ppl_sets.items():
                    is_base = cond == baseline  # the unmodified model: its pass is already done
                    res = unmodified[name] if is_base else perplexity(
                        ctx.model, windows, batch_size=batch_size, device=ctx.device, desc=f"ppl {name} [{cond}]",
                        baseline=caches[name])
                    kl = 0.0 if is_base else res["kl"]
                    window_kl = [0.0] * res["n_windows"] if is_base else res["window_kl"]
                    common = {"condition": cond, "eval": "perplexity", "eval_data": name, "stderr": math.nan,
                              "n": res["n_tokens"], "seq_len": windows.shape[1]}
                    rows += [{**common, "metric": "ppl", "value": res["ppl"]}, {**common, "metric": "kl", "value": kl}]
                    items += [{"condition": cond, "eval": "perplexity", "eval_data": name, "item": i, "metric": m,
                               "value": v, "n": windows.shape[1] - 1}
                              for m, values in (("nll", res["window_nll"]), ("kl", window_kl))
                              for i, v in enumerate(values)]
                    wide[f"ppl_{name}"], wide[f"kl_{name}"] = res["ppl"], kl
                if suite:
                    docs: list[dict] = []
                    zs = zero_shot(ctx.model, ctx.tokenizer, suite, limit=zero_shot_limit,
                                   batch_size=eval_batch_size, device=ctx.device,
                                   add_bos=ctx.adds_bos(), documents=docs)
                    rows += [{"condition": cond, "eval": "zero_shot", "eval_data": r["task"], "metric": r["metric"],
                              "value": r["value"], "stderr": r["stderr"], "n": r["n"], "seq_len": math.nan}
                             for r in zs]
                    items += [{"condition": cond, "eval": "zero_shot", "eval_data": d["task"], "item": d["doc"],
                               "metric": d["metric"], "value": d["value"], "n": 1} for d in docs]
                    wide.update({f"acc_{r['task']}": r["value"] for r in zs if r["metric"] == metric})
                    wide["acc_mean"] = mean_accuracy(zs, metric)
            check_unchanged(ctx.model, before, f"condition {cond}")
            table.append(wide)
            if tables:
                extra = {k: wide[k] for k in long_columns if k in wide}
                rows[first:] = [{**r, **extra} for r in rows[first:]]
                write_by_condition(ctx, stage, {tables[0]: rows[first:], tables[1]: [wide],
                                                f"{tables[0]}_items": items})
            ctx.logger.log_metrics({f"{stage}/{cond}/{k}": v for k, v in wide.items() if isinstance(v, float)})
    return rows, table


def write_by_condition(ctx, stage: str, tables: dict[str, list[dict]]) -> dict[str, Any]:
    """Write rows that carry a ``condition`` key: ``condition`` is a provenance column of the
    results writer, so each condition's rows are written (and replaced on re-runs) on their own."""
    paths = {}
    for table, rows in tables.items():
        for cond in dict.fromkeys(r["condition"] for r in rows):
            mine = [{k: v for k, v in r.items() if k != "condition"} for r in rows if r["condition"] == cond]
            paths[table] = ctx.results.write(table, mine, stage=stage, condition=cond)
    return paths
