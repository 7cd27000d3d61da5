"""95% intervals for the numbers a verdict compares, from the per-window / per-document values the
condition stages keep (``<table>_items``): a seeded **paired bootstrap** over the same windows (or
the same documents, resampled within each task) for both conditions, so noise shared by the two
cancels. A verdict is only as strong as this interval: when it covers the boundary a rule tests,
the outcome is "inconclusive" (:func:`decide`).

Statistics: perplexity = exp(mean NLL over windows of equal length); KL = mean over windows of the
mean per-token KL(unmodified || condition); accuracy = mean over tasks of each task's mean (the
papers' "average zero-shot accuracy").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BOOT = 2000
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A statistic of condition ``b`` minus ``a`` (or one condition's value when ``a`` is None)."""

    value: float
    low: float
    high: float
    what: str       # e.g. "ppl wiki_summaries, 8 windows"

    def covers(self, boundary: float = 0.0) -> bool:
        return self.low <= boundary <= self.high

    def text(self, digits: int = 3, sign: str = "+") -> str:
        return f"{self.value:{sign}.{digits}g} [95% {self.low:{sign}.{digits}g}, {self.high:{sign}.{digits}g}]"


STATS: dict[str, Callable[[np.ndarray], float]] = {
    "ppl": lambda nll: float(np.exp(np.mean(nll))),
    "kl": lambda kl: float(np.mean(kl)),
    "acc": lambda x: float(np.mean(x)),
}


def _groups(items: pd.DataFrame, condition: str, metric: str, eval_data: str | None) -> dict[str, np.ndarray]:
    """{dataset or task: values ordered by item} of one condition."""
    d = items[(items["condition"] == condition) & (items["metric"] == metric)]
    if eval_data is not None:
        d = d[d["eval_data"] == eval_data]
    return {k: g.sort_values("item")["value"].to_numpy(float) for k, g in d.groupby("eval_data")}


def paired(items: pd.DataFrame, a: str | None, b: str, stat: str, eval_data: str | None = None,
           ratio: bool = False, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """stat(b) - stat(a) (``ratio``: stat(b) / stat(a); or stat(b) when ``a`` is None) with a 95%
    paired-bootstrap interval, averaged over the datasets / tasks found.
    ``stat``: ppl (from the items' nll), kl, acc (or another per-document metric, e.g. acc_norm:
    the mean over tasks). Items are resampled within each dataset / task, the same for a and b."""
    metric = {"ppl": "nll"}.get(stat, stat)
    fn = STATS.get(stat, STATS["acc"])
    gb = _groups(items, b, metric, eval_data)
    ga = _groups(items, a, metric, eval_data) if a is not None else {k: np.zeros_like(v) for k, v in gb.items()}
    keys = sorted(set(ga) & set(gb))
    if not keys or any(len(ga[k]) != len(gb[k]) for k in keys):
        raise ValueError(f"no paired items for {stat} of {a!r} vs {b!r} ({eval_data or 'all'})")

    def value(index: dict[str, np.ndarray]) -> float:
        if ratio:
            per = [fn(gb[k][index[k]]) / fn(ga[k][index[k]]) for k in keys]
        else:
            per = [fn(gb[k][index[k]]) - (fn(ga[k][index[k]]) if a is not None else 0.0) for k in keys]
        return float(np.mean(per))

    rng = np.random.default_rng(seed)
    point = value({k: np.arange(len(gb[k])) for k in keys})
    boots = [value({k: rng.integers(0, len(gb[k]), len(gb[k])) for k in keys}) for _ in range(n_boot)]
    low, high = np.percentile(boots, [2.5, 97.5])
    n = sum(len(gb[k]) for k in keys)
    unit = "windows" if stat in ("ppl", "kl") else "documents"
    what = f"{stat} {'ratio' if ratio else 'difference'} {b} vs {a}" if a is not None else f"{stat} {b}"
    return Estimate(point, float(low), float(high), f"{what}; {'+'.join(keys)}, {n} {unit}")


# Student's t 97.5% quantiles (two-sided 95%) by degrees of freedom, for intervals over a few seeds;
# beyond 10 degrees of freedom the value at 10 (slightly wide, so never too narrow).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile for ``df`` >= 1 degrees of freedom (conservative > 10)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 values (df {df})")
    return _T975[min(df, len(_T975)) - 1]


def side(estimate: Estimate, boundary: float = 0.0) -> str:
    """Where the interval lies: "below" / "above" ``boundary``, or "inconclusive" when it covers it."""
    if estimate.covers(boundary):
        return "inconclusive"
    return "below" if estimate.high < boundary else "above"


def within(estimate: Estimate, low: float, high: float) -> str:
    """"inside" (the whole interval within (low, high)), "outside" (all of it outside), else inconclusive."""
    if low < estimate.low and estimate.high < high:
        return "inside"
    if estimate.high <= low or estimate.low >= high:
        return "outside"
    return "inconclusive"


def want(state: str, wanted: str) -> str:
    """"yes" if a comparison's ``state`` (from :func:`side` / :func:`within`) is ``wanted``, "no" if
    it is decided otherwise, "inconclusive" if its interval covers the boundary."""
    return "inconclusive" if state == "inconclusive" else ("yes" if state == wanted else "no")


def combine(sides: list[str], wanted: str) -> str:
    """A verdict over several paired comparisons that should all be ``wanted``: holds (all are),
    does not hold (every decided one is the other side), partly (some are), inconclusive (none is
    decided: every interval covers the boundary)."""
    decided = [s for s in sides if s != "inconclusive"]
    if not decided:
        return "inconclusive"
    hits = sum(s == wanted for s in decided)
    if hits == len(sides):
        return "holds"
    return "partly" if hits else ("does not hold" if len(decided) == len(sides) else "inconclusive")
