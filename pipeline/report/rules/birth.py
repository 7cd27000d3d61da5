"""Verdict rules of paper C (Birth of a Transformer): the runs of the bigram task with triggers."""

from __future__ import annotations

import pandas as pd

from pipeline.report.registry import rule


def _first_step(g: pd.DataFrame, col: str, level: float) -> float:
    hit = g[g[col] >= level]
    return float(hit["step"].iloc[0]) if len(hit) else float("inf")


@rule("induction_head_forms")
def induction(t):
    """holds if the in-context accuracy (acc_end) ends >= 0.9 and the output memory W_O2 (wo1)
    reaches 0.5 no later than the previous-token memory W_K1 (wk0) (paper C: the induction head
    forms top-down); partly if only the accuracy does."""
    d = t["birth_curve"].sort_values("step")
    out = []
    verdicts = []
    for label, g in d.groupby("label", sort=False):
        last = g.iloc[-1]

        def cross(col, g=g):
            hit = g[g[col] >= 0.5]
            return int(hit["step"].iloc[0]) if len(hit) else None

        wo, wk0 = cross("wo1"), cross("wk0")
        order = wo is not None and (wk0 is None or wo <= wk0)
        verdicts.append("holds" if last["acc_end"] >= 0.9 and order else "partly" if last["acc_end"] >= 0.9 else
                        "does not hold")
        out.append(f"{label}: acc_end {last['acc_end']:.3f} at step {int(last['step'])}, wo1 >= 0.5 at {wo}, "
                   f"wk0 >= 0.5 at {wk0}")
    some = "holds" in verdicts or "partly" in verdicts
    verdict = "holds" if all(v == "holds" for v in verdicts) else "partly" if some else "does not hold"
    return verdict, "; ".join(out)


@rule("attention_heads_form")
def heads_form(t):
    """holds if, in every run, layer 1 ends as a previous-token head (score_acc >= 0.9) and layer 2
    as an induction head (score2_acc >= 0.5) (paper C Fig. 2); partly if in some."""
    d = t["birth_curve"].sort_values("step")
    last = d.groupby("label").tail(1)
    ok = (last["score_acc"] >= 0.9) & (last["score2_acc"] >= 0.5)
    why = "; ".join(f"{r.label}: score_acc {r.score_acc:.2f}, score2_acc {r.score2_acc:.2f}" for r in last.itertuples())
    return ("holds" if ok.all() else "partly" if ok.any() else "does not hold"), why


@rule("freezing_order")
def freezing_order(t):
    """holds if freezing a matrix until step 300 delays the in-context accuracy (acc_end >= 0.5) the
    more, the higher the matrix sits: W_O2 frozen >= W_K2 frozen >= W_K1 frozen (paper C: the
    induction head is learned top-down); partly if only W_O2 >= W_K1."""
    d = t["birth_curve"].sort_values("step")
    at = {label: _first_step(g, "acc_end", 0.5) for label, g in d.groupby("label")}
    key = {k: next((v for lab, v in at.items() if lab.startswith(k)), None) for k in ("W_O2", "W_K2", "W_K1")}
    why = ", ".join(f"{lab}: {v:g}" for lab, v in at.items())
    if None in key.values():
        return "not run here", f"freezing runs missing ({why})"
    full = key["W_O2"] >= key["W_K2"] >= key["W_K1"]
    return ("holds" if full else "partly" if key["W_O2"] >= key["W_K1"] else "does not hold"), \
        "first step with acc_end >= 0.5: " + why


@rule("global_before_in_context")
def global_first(t):
    """holds if, in most runs, the loss on bigram tokens covers half of its total drop before the
    loss on counter >= 2 tokens does (paper C: global bigrams are learned fast, the induction
    mechanism slowly)."""
    d = t["birth_curve"].sort_values("step")
    out, wins = [], 0
    for label, g in d.groupby("label", sort=False):
        half = {}
        for col in ("loss_bigram", "loss_head"):
            first, last = g[col].iloc[0], g[col].min()
            hit = g[g[col] <= first - (first - last) / 2]
            half[col] = int(hit["step"].iloc[0]) if len(hit) else None
        bigram, head = half["loss_bigram"], half["loss_head"]
        wins += bigram is not None and (head is None or bigram < head)
        out.append(f"{label}: bigram at {half['loss_bigram']}, in-context at {half['loss_head']}")
    n = d["label"].nunique()
    return ("holds" if wins > n / 2 else "partly" if wins else "does not hold"), "half-drop steps: " + "; ".join(out)
