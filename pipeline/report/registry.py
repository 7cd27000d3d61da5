"""The verdict-rule registry of the report, like the figures' (:mod:`pipeline.figures.registry`).

A rule reads one results folder's CSVs (``tables``: {name: DataFrame}; a missing table means
"not run") and returns ``(verdict, why)``: verdict is one of :data:`VERDICTS`, ``why`` quotes the
numbers the rule used. The rule's docstring is its stated text, printed in the report beside the
verdict, so a verdict is never typed by hand.

Rule modules (``pipeline/report/rules/<paper>.py``, named as the figure modules) register their
functions with :func:`rule`; importing :mod:`pipeline.report.rules` imports every one of them, so
read :data:`RULES` through that package, never from here.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

VERDICTS = ("holds", "partly", "does not hold", "inconclusive", "not run here", "not judged")
Rule = Callable[[dict[str, pd.DataFrame]], tuple[str, str]]
RULES: dict[str, Rule] = {}
PER_MODEL: set[str] = set()   # rules that judge one model's rows: :func:`judge` applies them per model


def rule(name: str, per_model: bool = False):
    """Decorator: register ``fn(tables) -> (verdict, why)`` as the rule ``name`` (unique).
    ``per_model``: the rule compares conditions of one model (paired over its windows); with rows of
    several models :func:`judge` runs it on each model's rows and merges the verdicts (without
    this, a paired bootstrap pooled two models' windows). Rules that compare models (GPT-2 variants,
    the atlas) or group by model themselves leave it False."""
    def register(fn: Rule) -> Rule:
        if name in RULES:
            raise ValueError(f"report rule {name!r} is registered twice ({RULES[name].__module__}, {fn.__module__})")
        RULES[name] = fn
        if per_model:
            PER_MODEL.add(name)
        return fn
    return register


JUDGE_ERRORS = (KeyError, IndexError, ValueError, TypeError)  # a table without what the rule reads


def judge(name: str, tables: dict[str, pd.DataFrame], main: str) -> tuple[str, str]:
    """Rule ``name`` on the tables: on each model's rows for a per-model rule when ``main`` holds
    several models (verdicts merged as :func:`pipeline.report.intervals.combine` merges sides:
    holds / does not hold when every model says so, partly when some holds, inconclusive when no
    model is decided), else on all of them."""
    models = list(dict.fromkeys(tables[main]["model"])) if "model" in tables[main] else []
    if name not in PER_MODEL or len(models) < 2:
        return RULES[name](tables)
    per = []
    for m in models:
        try:
            own = {k: t[t["model"] == m] if "model" in t else t for k, t in tables.items()}
            v, why = RULES[name]({k: t for k, t in own.items() if not t.empty})  # none of its rows: missing
        except JUDGE_ERRORS as err:
            v, why = "not judged", f"the rule could not read its numbers ({type(err).__name__}: {err})"
        per.append((m, v, why))
    return merge([v for _, v, _ in per]), "; ".join(f"{m}: {v} ({why})" for m, v, why in per)


def merge(verdicts: list[str]) -> str:
    """One verdict over models: every judged model's, if they agree; partly if some holds."""
    judged = [v for v in verdicts if v != "not judged"]
    if not judged:
        return "not judged"
    if len(set(judged)) == 1:
        return judged[0]
    if any(v in ("holds", "partly") for v in judged):
        return "partly"
    return "inconclusive" if "inconclusive" in judged else "does not hold"


def condition_row(df: pd.DataFrame, condition: str) -> pd.Series:
    """The first row of ``df`` measured under ``condition``."""
    return df[df["condition"] == condition].iloc[0]
