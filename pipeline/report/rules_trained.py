"""Verdict rules for what is trained or measured beyond the LLM papers' own models: paper A's
GPT-2 variants and ViTs, paper C's runs, and what goes beyond the papers. Registered in
:data:`pipeline.report.rules.RULES` like the others (each docstring is the rule's stated text)."""

from __future__ import annotations

import pandas as pd

from pipeline.report.rules import rule


def _first_step(g: pd.DataFrame, col: str, level: float) -> float:
    hit = g[g[col] >= level]
    return float(hit["step"].iloc[0]) if len(hit) else float("inf")


@rule("gpt2_variants")
def gpt2_variants(t):
    """holds if the default variant's largest top-1 / median ratio passes 1000 with |h| > 100 while
    the attention-bias variant's stays below 100 (paper A §4.3); does not hold otherwise (at the
    scale run: see the setting)."""
    d = t["train_curve"]
    ev = d[d["val_loss"].notna()]
    peak = ev.groupby("model")["ratio_max"].max()
    top = ev.groupby("model")["top1_max"].max()
    default = next((m for m in peak.index if str(m).endswith("default")), None)
    bias = next((m for m in peak.index if str(m).endswith("attn_bias")), None)
    why = ", ".join(f"{m}: ratio {peak[m]:.1f}, |h| {top[m]:.1f}" for m in peak.index)
    if default is None or bias is None:
        return "not run here", why or "variants missing"
    ok = peak[default] > 1000 and top[default] > 100 and peak[bias] < 100
    return ("holds" if ok else "does not hold"), why


@rule("vit_massive")
def vit_massive(t):
    """holds if a steady massive activation is found on a CLS or register token of one of the
    paper's ViTs; on another model (the embedded DINOv2-S) the row reports what was found and the
    paper's claim is 'not run here'."""
    d = t.get("vit_massive", pd.DataFrame({"steady": []}))  # no rows written: nothing passed the rule
    models = set(t["vit_layer_stats"]["model"])
    steady = d[d["steady"].astype(bool)] if len(d) else d
    found = f"{len(steady)} steady massive activations" if len(steady) else "none found"
    if not any(str(m).startswith(("dinov2_reg", "clip_vit")) for m in models):
        return "not run here", f"{', '.join(sorted(models))}: {found} (a negative control, not a paper model)"
    return ("holds" if len(steady) else "does not hold"), found


@rule("vit_interventions")
def vit_interventions(t):
    """holds if set_zero changes the pooled features by > 10% while set_mean and Fix-Reg-Mean
    change them by < 2% (proxy of paper A's accuracy table); 'not run here' when the conditions do
    not apply to the model run."""
    d = t["vit_intervene"]
    na = d[d["metric"] == "not_applicable"]
    ch = d[d["metric"] == "pooled_rel_l2_change"].set_index("condition")["value"]
    if {"set_zero", "fix_reg_mean"} <= set(na["condition"]):
        return "not run here", "; ".join(f"{r.condition}: {r.why}" for r in na.itertuples())
    ok = ch.get("set_zero", 0) > 0.1 and ch.get("set_mean", 1) < 0.02 and ch.get("fix_reg_mean", 1) < 0.02
    return ("holds" if ok else "partly"), ", ".join(f"{k} {v:.3f}" for k, v in ch.items())


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
    verdict = "holds" if all(v == "holds" for v in verdicts) else "partly" if "holds" in verdicts or "partly" in verdicts else "does not hold"
    return verdict, "; ".join(out)


@rule("measured_only")
def measured_only(t):
    """beyond the papers: no published claim to judge; the numbers are reported as measured."""
    return "not judged", "measured, see the table"


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
        wins += half["loss_bigram"] is not None and (half["loss_head"] is None or half["loss_bigram"] < half["loss_head"])
        out.append(f"{label}: bigram at {half['loss_bigram']}, in-context at {half['loss_head']}")
    n = d["label"].nunique()
    return ("holds" if wins > n / 2 else "partly" if wins else "does not hold"), "half-drop steps: " + "; ".join(out)


@rule("attention_heads_form")
def heads_form(t):
    """holds if, in every run, layer 1 ends as a previous-token head (score_acc >= 0.9) and layer 2
    as an induction head (score2_acc >= 0.5) (paper C Fig. 2); partly if in some."""
    d = t["birth_curve"].sort_values("step")
    last = d.groupby("label").tail(1)
    ok = (last["score_acc"] >= 0.9) & (last["score2_acc"] >= 0.5)
    why = "; ".join(f"{r.label}: score_acc {r.score_acc:.2f}, score2_acc {r.score2_acc:.2f}" for r in last.itertuples())
    return ("holds" if ok.all() else "partly" if ok.any() else "does not hold"), why
