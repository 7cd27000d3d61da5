"""Verdict rules of paper A (Massive Activations): the LLM profile, interventions and attention,
and the ViTs of §5 (the GPT-2 variants trained from scratch, §4.3, are in :mod:`.training`)."""

from __future__ import annotations

import pandas as pd

from pipeline.report.intervals import combine, paired, side, want, within
from pipeline.report.registry import rule


@rule("massive_found")
def massive_found(t):
    """holds if the detector finds at least one steady massive activation in every model run (paper
    A's rule: |h| > 100 and > 1000 x the layer median, in at least half the layers from its first and
    half the sequences); partly if in some. Each model's count is its own."""
    m = t["ma_massive"]
    per_model = []
    for model, g in (m.groupby("model", sort=True) if "model" in m else [("the model", m)]):
        steady = g[g["steady"].astype(bool)]
        if steady.empty:
            per_model.append((model, False, f"{model}: no steady massive activation"))
            continue
        top = steady.iloc[steady["value_mean"].abs().argmax()]
        per_model.append((model, True, f"{model}: {len(steady)} steady, the largest dim {int(top['dim'])} on "
                                       f"{top['token_type']} from layer {int(top['first_layer_1based'])} (1-based; "
                                       f"|h| {abs(top['value_mean']):,.0f})"))
    found = [ok for _, ok, _ in per_model]
    verdict = "holds" if all(found) else "partly" if any(found) else "does not hold"
    return verdict, "; ".join(why for _, _, why in per_model)


@rule("set_zero_breaks_set_mean_keeps", per_model=True)
def set_zero_breaks(t):
    """Perplexity (paper A Table 3's metric), paired over the same windows of each dataset: holds if
    zeroing the massive activations multiplies perplexity by >= 10 (interval above 10) while setting
    them to their means keeps it within 5% (interval inside 0.95-1.05), on every dataset; partly if
    some of these; inconclusive where an interval straddles its threshold. KL beside."""
    d, items = t["ma_intervene_table"], t.get("ma_intervene_items")
    if items is None:
        return "not judged", ("no per-window values in the record (rows recorded before they were kept): "
                              "no interval, so no verdict; re-record the artefact")
    sides, parts = [], []
    for data in sorted(c[4:] for c in d.columns if c.startswith("ppl_")):
        z = paired(items, "original", "set_zero", "ppl", eval_data=data, ratio=True)
        m = paired(items, "original", "set_mean", "ppl", eval_data=data, ratio=True)
        kl = paired(items, None, "set_mean", "kl", eval_data=data)
        sides += [want(side(z, 10.0), "above"), want(within(m, 0.95, 1.05), "inside")]
        parts.append(f"{data} ({z.what.split(', ')[-1]}): zero x{z.text(3, '')}, mean x{m.text(3, '')}, "
                     f"set-mean KL {kl.text(3, '')}")
    return combine(sides, "yes"), "ppl ratio to the original: " + "; ".join(parts)


@rule("attention_on_massive")
def attention_on_massive(t):
    """holds if, in most layers, the attention share on the massive-activation tokens exceeds
    both the share on control tokens and the uniform share (paper A §4.1)."""
    d = t["ma_attention_share"]
    d = d[d["token_set"] == "massive"] if "token_set" in d else d
    wins = ((d["share_massive"] > d["share_control"]) & (d["share_massive"] > d["share_uniform"])).mean()
    return ("holds" if wins > 0.5 else "does not hold"), f"{wins:.0%} of {len(d)} (model, layer) rows"


@rule("massive_tokens_carry_a_fixed_bias")
def decomposition(t):
    """holds if, in most layers measured, the attention-output part from the massive-activation
    tokens is nearly the same for every query (cosine to its mean >= 0.8) and more constant than
    the rest (paper A §4.2: they add an implicit, fixed bias)."""
    d = t["ma_attention_decomposition"]
    ok = (d["cos_massive"] >= 0.8) & (d["cos_massive"] > d["cos_rest"])
    return ("holds" if ok.mean() > 0.5 else "partly" if ok.any() else "does not hold"), (
        f"{ok.mean():.0%} of {len(d)} (model, layer) rows; cos massive {d['cos_massive'].median():.2f} "
        f"vs rest {d['cos_rest'].median():.2f} (medians)")


@rule("vit_massive")
def vit_massive(t):
    """holds if a steady massive activation is found on a CLS or register token of one of the
    paper's ViTs; on another model (the embedded DINOv2-S, without registers) the run is a negative
    control: it ran, but it cannot judge the paper's claim ('not judged', with what was found)."""
    d = t.get("vit_massive", pd.DataFrame({"steady": []}))  # no rows written: nothing passed the rule
    models = set(t["vit_layer_stats"]["model"])
    steady = d[d["steady"].astype(bool)] if len(d) else d
    found = f"{len(steady)} steady massive activations" if len(steady) else "none found"
    if not any(str(m).startswith(("dinov2_reg", "clip_vit")) for m in models):
        return "not judged", (f"ran on {', '.join(sorted(models))}: {found}; a negative control without registers, "
                              "not one of the paper's ViTs (dinov2_reg_*, clip_vit_l need the Hub)")
    return ("holds" if len(steady) else "does not hold"), found


@rule("vit_interventions")
def vit_interventions(t):
    """holds if set_zero changes the pooled features by > 10% while set_mean and Fix-Reg-Mean
    change them by < 2% (proxy of paper A's accuracy table); 'not judged' when the run's model has
    no massive activation on a CLS / register token, so that the conditions do not apply."""
    d = t["vit_intervene"]
    na = d[d["metric"] == "not_applicable"]
    ch = d[d["metric"] == "pooled_rel_l2_change"].set_index("condition")["value"]
    if {"set_zero", "fix_reg_mean"} <= set(na["condition"]):
        return "not judged", "ran, but the conditions do not apply to this model: " + "; ".join(
            f"{r.condition}: {r.why}" for r in na.itertuples())
    ok = ch.get("set_zero", 0) > 0.1 and ch.get("set_mean", 1) < 0.02 and ch.get("fix_reg_mean", 1) < 0.02
    return ("holds" if ok else "partly"), ", ".join(f"{k} {v:.3f}" for k, v in ch.items())
