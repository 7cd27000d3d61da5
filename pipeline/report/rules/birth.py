"""Verdict rules of paper C (Birth of a Transformer): the runs of the bigram task with triggers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.report.intervals import Estimate, combine, side, t95
from pipeline.report.registry import rule

CONVERGED_ACC = 0.9   # the in-context accuracy (acc_end) of a formed induction head


def runs(d: pd.DataFrame):
    """(name, rows) per training run: per label, and per seed where the record holds several
    seeds of a label (each seed its own curve; the name then says which)."""
    by = ["label", "seed"] if "seed" in d and d.groupby("label")["seed"].nunique().max() > 1 else ["label"]
    for key, g in d.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        yield (f"{key[0]} (seed {key[1]})" if len(key) > 1 else key[0]), g.sort_values("step")


def _first_step(g: pd.DataFrame, col: str, level: float) -> float:
    hit = g[g[col] >= level]
    return float(hit["step"].iloc[0]) if len(hit) else float("inf")


@rule("induction_head_forms")
def induction(t):
    """holds if the in-context accuracy (acc_end) ends >= 0.9 and the output memory W_O2 (wo1)
    reaches 0.5 no later than the previous-token memory W_K1 on the first 64 positions (wk0_64;
    wk0 over all 256 positions never reaches 0.5 in these budgets) (paper C: the induction head
    forms top-down); partly if only the accuracy does; inconclusive where the accuracy holds but a
    memory never reaches 0.5, so that no order was observed."""
    out, verdicts = [], []
    for label, g in runs(t["birth_curve"]):
        last = g.iloc[-1]
        wo, wk = _first_step(g, "wo1", 0.5), _first_step(g, "wk0_64", 0.5)
        accurate = last["acc_end"] >= CONVERGED_ACC
        if not accurate:
            verdicts.append("does not hold")
        elif wo == float("inf") or wk == float("inf"):
            verdicts.append("inconclusive")
        else:
            verdicts.append("holds" if wo <= wk else "partly")
        out.append(f"{label}: acc_end {last['acc_end']:.3f} at step {int(last['step'])}, wo1 >= 0.5 at "
                   f"{_step(wo)}, wk0_64 >= 0.5 at {_step(wk)}")
    return _combined(verdicts), "; ".join(out)


def _step(step: float) -> str:
    return "never (within the run)" if step == float("inf") else f"{step:g}"


def _combined(verdicts: list[str]) -> str:
    """One verdict over runs: holds if every run holds, does not hold if none holds or is partly,
    inconclusive if a run could not be judged and none failed, else partly."""
    if all(v == "holds" for v in verdicts):
        return "holds"
    if "inconclusive" in verdicts and "does not hold" not in verdicts:
        return "inconclusive"
    return "partly" if any(v in ("holds", "partly") for v in verdicts) else "does not hold"


@rule("attention_heads_form")
def heads_form(t):
    """Judged where a previous-token head is needed: the triggers are the most frequent characters,
    so the first output after a trigger sits early (median position 12; 78% before 40) and W_K1
    recalls the first 64 positions first (paper C). holds if, in every run, layer 1's
    previous-token memory on the first 64 positions (wk0_64) ends >= 0.5 and layer 2 ends as an
    induction head (score2_acc >= 0.5) (paper C Fig. 2); partly if in some. The previous-token
    attention score over all 256 positions (score_acc) is shown beside: it stays low for the
    released official code too (0.16-0.33)."""
    last = {name: g.iloc[-1] for name, g in runs(t["birth_curve"])}
    ok = pd.Series({n: r["wk0_64"] >= 0.5 and r["score2_acc"] >= 0.5 for n, r in last.items()}, dtype=bool)
    why = "; ".join(f"{n}: wk0_64 {r['wk0_64']:.2f}, score2_acc {r['score2_acc']:.2f} (score_acc over all "
                    f"positions {r['score_acc']:.2f})" for n, r in last.items())
    return ("holds" if ok.all() else "partly" if ok.any() else "does not hold"), why


@rule("freezing_order")
def freezing_order(t):
    """holds if freezing a matrix until step 300 delays the in-context accuracy (acc_end >= 0.5) the
    more, the higher the matrix sits: W_O2 frozen >= W_K2 frozen >= W_K1 frozen (paper C: the
    induction head is learned top-down); partly if only W_O2 >= W_K1. Two runs that never reach
    0.5 within the budget are not ordered: a comparison between them is inconclusive, not passed."""
    d = t["birth_curve"]
    seeds = sorted(d["seed"].unique()) if "seed" in d else [None]
    verdicts, whys = [], []
    for seed in seeds:
        one = d if seed is None else d[d["seed"] == seed]
        at = {label: _first_step(g, "acc_end", 0.5) for label, g in one.sort_values("step").groupby("label")}
        v, why = _freezing_verdict(at)
        verdicts.append(v)
        whys.append(why if len(seeds) == 1 else f"seed {seed}: {why}")
    return _combined(verdicts) if len(seeds) > 1 else verdicts[0], "; ".join(whys)


def _freezing_verdict(at: dict[str, float]) -> tuple[str, str]:
    key = {k: next((v for lab, v in at.items() if lab.startswith(k)), None) for k in ("W_O2", "W_K2", "W_K1")}
    why = "first step with acc_end >= 0.5: " + ", ".join(f"{lab}: {_step(v)}" for lab, v in at.items())
    if None in key.values():
        return "not run here", f"freezing runs missing ({why})"
    pairs = [("W_O2", "W_K2"), ("W_K2", "W_K1")]
    unknown = [f"{a} vs {b}" for a, b in pairs if key[a] == key[b] == float("inf")]
    if unknown:
        top = key["W_O2"] >= key["W_K1"] and key["W_K1"] != float("inf")
        return "inconclusive", (f"{why}; not ordered ({', '.join(unknown)}: neither reaches 0.5 within the run)"
                                + ("; W_O2 frozen >= W_K1 frozen holds" if top else ""))
    full = key["W_O2"] >= key["W_K2"] >= key["W_K1"]
    return ("holds" if full else "partly" if key["W_O2"] >= key["W_K1"] else "does not hold"), why


@rule("global_before_in_context")
def global_first(t):
    """holds if, for every data variant, the loss on bigram tokens (counter 0) covers half of its drop
    before the loss on counter >= 2 tokens does, beyond the noise (paper C: global bigrams are
    learned fast, the induction mechanism slowly); partly if for some; does not hold if every variant
    shows the reverse. A half-drop step is interpolated between evaluations, the drop measured from
    the first evaluation to the mean of the last five (a single noisy minimum is not the end level).
    Noise: over seeds, a 95% t-interval of the per-seed difference, never narrower than one
    evaluation interval; with one seed, +- one evaluation interval. An interval covering 0 is
    inconclusive for that variant. A half-drop is only defined once the curve has finished its drop:
    a variant whose in-context accuracy (acc_end, mean of the last five evaluations, lowest seed)
    ends below 0.9 is inconclusive (the induction head has not formed within the budget, so the
    counter >= 2 loss has only made its global-statistics part of the drop). With bigram-distributed
    outputs the counter >= 2 loss also falls through the global statistics, so there it is not a
    clean probe of in-context learning."""
    d = t["birth_curve"]
    sides, out = [], []
    for label, g in d.groupby("label", sort=False):
        per_seed = [g[g["seed"] == s] for s in sorted(g["seed"].unique())] if "seed" in g else [g]
        halves = [(half_drop_step(r, "loss_bigram"), half_drop_step(r, "loss_head")) for r in per_seed]
        spacing = float(np.median(np.diff(np.sort(g["step"].unique()))))
        est = _lead(halves, spacing)
        end = min(float(r.sort_values("step")["acc_end"].tail(5).mean()) for r in per_seed)
        if end < CONVERGED_ACC:
            sides.append("inconclusive")
        else:
            sides.append(side(est) if np.isfinite(est.value) else ("above" if est.value > 0 else "inconclusive"))
        bigram = ", ".join(f"{b:.0f}" for b, _ in halves)
        head = ", ".join(f"{h:.0f}" for _, h in halves)
        out.append(f"{label}: bigram at {bigram}, in-context at {head}; lead {est.text(3)} ({est.what})"
                   + ("" if end >= CONVERGED_ACC else f"; not converged: acc_end ends at {end:.2f} < {CONVERGED_ACC}"))
    return combine(sides, "above"), "half-drop steps: " + "; ".join(out)


def half_drop_step(g: pd.DataFrame, col: str, tail: int = 5) -> float:
    """The step, interpolated between evaluations, at which ``col`` first covers half of its drop
    from the first evaluation to the mean of the last ``tail`` (inf if it never does)."""
    g = g.sort_values("step")
    steps, v = g["step"].to_numpy(float), g[col].to_numpy(float)
    target = v[0] - (v[0] - v[-tail:].mean()) / 2
    below = np.nonzero(v <= target)[0]
    if v[0] <= target or not len(below):
        return float(steps[0]) if v[0] <= target else float("inf")
    i = below[0]
    return float(steps[i - 1] + (v[i - 1] - target) / (v[i - 1] - v[i]) * (steps[i] - steps[i - 1]))


def _lead(halves: list[tuple[float, float]], spacing: float) -> Estimate:
    """In-context half-drop step minus the bigram one (> 0: global first), with its interval."""
    diffs = np.array([h - b for b, h in halves])
    if not np.isfinite(diffs).all():
        inf = float(np.inf) if all(np.isfinite(b) and not np.isfinite(h) for b, h in halves) else float("nan")
        return Estimate(inf, inf, inf, f"{len(diffs)} seed(s); a loss never covers half its drop")
    n, mean = len(diffs), float(diffs.mean())
    half = spacing if n == 1 else max(spacing, float(t95(n - 1) * diffs.std(ddof=1) / np.sqrt(n)))
    what = (f"1 seed, +- one evaluation interval ({spacing:g} steps)" if n == 1
            else f"{n} seeds, t-interval, at least one evaluation interval")
    return Estimate(mean, mean - half, mean + half, what)
