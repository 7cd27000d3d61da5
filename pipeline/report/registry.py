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


def rule(name: str):
    """Decorator: register ``fn(tables) -> (verdict, why)`` as the rule ``name`` (unique)."""
    def register(fn: Rule) -> Rule:
        if name in RULES:
            raise ValueError(f"report rule {name!r} is registered twice ({RULES[name].__module__}, {fn.__module__})")
        RULES[name] = fn
        return fn
    return register


def condition_row(df: pd.DataFrame, condition: str) -> pd.Series:
    """The first row of ``df`` measured under ``condition``."""
    return df[df["condition"] == condition].iloc[0]
