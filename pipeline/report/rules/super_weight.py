"""Verdict rules of paper B (The Super Weight): the directory, ablations, stopwords, scaling and
quantization."""

from __future__ import annotations

from pipeline.report.registry import condition_row, rule


@rule("super_weight_creates_massive")
def super_weight_creates(t):
    """holds if a detected super weight 'creates' a massive activation and its row is the massive
    dim (paper B Table 2: one weight in an early down-projection writes the super activation)."""
    d = t["sw_directory"]
    hit = d[(d["role"] == "creates") & d["row_is_massive_dim"].astype(bool)]
    if hit.empty:
        return "does not hold", f"{len(d)} candidates, none creates the massive dim"
    r = hit.iloc[0]
    return "holds", f"{r['model']}: layer {int(r['layer'])}, row {int(r['row'])}, col {int(r['col'])}, weight {r['weight']:.2f}"


@rule("prune_sw_destroys")
def prune_sw(t):
    """holds if pruning the super weight(s) multiplies perplexity by >= 5, restoring the super
    activation brings it back within 10%, and pruning as many other large weights costs < 2x
    (paper B Table 1)."""
    d = t["sw_ablate_table"]
    c = next(c for c in d.columns if c.startswith("ppl_"))
    o, p, r, n = (condition_row(d, k)[c] for k in ("original", "prune_sw", "prune_sw_restore_sa", "prune_non_sw"))
    ok = [p >= 5 * o, abs(r - o) <= 0.1 * o, n < 2 * o]
    why = f"{c[4:]}: original {o:.2f}, prune SW {p:.2f}, + restore SA {r:.2f}, prune non-SW {n:.2f}"
    return ("holds" if all(ok) else "partly" if any(ok) else "does not hold"), why


@rule("sw_removal_kills_super_activation")
def layer_max(t):
    """At the first layer where the original's largest output appears (the super activation's):
    holds if removing the super weight cuts it by >= 50% while removing as many other large weights
    keeps >= 80% of it (paper B Fig. 4: -75% on LLaMA-7B, non-SW removal harmless); partly if only
    the first."""
    d = t["sw_layer_max"]
    orig = d[d["condition"] == "original"].set_index("layer")["max_abs"]
    at = int(orig[orig >= 0.5 * orig.max()].index.min())
    conds = set(d["condition"])
    sw = next((c for c in conds if "prune_sw" in c and "restore" not in c), None)
    non = next((c for c in conds if "non_sw" in c), None)
    if sw is None or non is None:
        return "not judged", f"conditions found: {sorted(conds)}"
    val = {c: float(d[(d["condition"] == c) & (d["layer"] == at)]["max_abs"].iloc[0]) for c in ("original", sw, non)}
    drop_sw, keep_non = val[sw] <= 0.5 * val["original"], val[non] >= 0.8 * val["original"]
    why = f"layer {at}: original {val['original']:,.0f}, {sw} {val[sw]:,.0f}, {non} {val[non]:,.0f}"
    return ("holds" if drop_sw and keep_non else "partly" if drop_sw else "does not hold"), why


@rule("stopwords_rise")
def stopwords(t):
    """holds if, without the super weight, the stopwords among the original top tokens become more
    likely on average (paper B Fig. 5: 'the', '.', ',' rise 2-10x on Llama-7B); partly if some do."""
    d = t["sw_stopword_probs"]
    stop = d[d["kind"] == "stopword"]
    up = (stop["ratio"] > 1).mean() if len(stop) else 0.0
    why = ", ".join(f"'{r.token}' x{r.ratio:.2f}" for r in stop.head(6).itertuples())
    return ("holds" if up == 1 else "partly" if up > 0 else "does not hold"), f"{up:.0%} of stopwords rise: {why}"


@rule("scaling_curve")
def scaling(t):
    """holds if removing the super weight (scale 0) is worst and a scale >= 1 is at least as good
    as scale 1 (paper B Fig. 6: amplifying it slightly helps)."""
    d = t["sw_scale_table"].sort_values("scale")
    c = next(c for c in d.columns if c.startswith("ppl_"))
    at = dict(zip(d["scale"], d[c], strict=True))
    best = min(at, key=at.get)
    ok = at[0.0] == max(at.values()) and best >= 1.0
    return ("holds" if ok else "partly"), f"{c[4:]}: scale 0 {at[0.0]:.1f}, scale 1 {at[1.0]:.2f}, best {at[best]:.2f} at {best}"


@rule("clip_restore_helps")
def clip_restore(t):
    """holds if clipping + restoring the super weight gives a perplexity no worse than plain RTN at
    every block size (paper B Fig. 7: it makes larger blocks usable); partly if at some."""
    d = t["sw_weightquant_table"]
    c = next(c for c in d.columns if c.startswith("ppl_"))
    rtn = d[d["method"] == "rtn"].set_index("block_size")[c]
    ours = d[d["method"].str.startswith("rtn_clip")].set_index("block_size")[c]
    common = sorted(set(rtn.index) & set(ours.index))
    wins = [b for b in common if ours[b] <= rtn[b]]
    why = ", ".join(f"{b}: {rtn[b]:.1f} -> {ours[b]:.1f}" for b in common)
    return ("holds" if len(wins) == len(common) else "partly" if wins else "does not hold"), why


@rule("amplified_sw_helps_rtn")
def amplified(t):
    """holds if, at every block size, amplifying the super weights (x1.5 or x2) before 4-bit RTN
    gives a perplexity no worse than plain RTN (paper B Table 6: accuracy rises slightly); partly if
    at some block sizes."""
    d = t["sw_weightquant_table"]
    d = d[d["method"] == "rtn"]
    c = next(c for c in d.columns if c.startswith("ppl_"))
    out, wins = [], 0
    for block, g in d.groupby("block_size"):
        base = g[g["sw_scale"] == 1.0][c].iloc[0]
        best = g[g["sw_scale"] > 1.0][c].min()
        wins += best <= base
        out.append(f"{block}: {base:.2f} -> {best:.2f}")
    n = d["block_size"].nunique()
    return ("holds" if wins == n else "partly" if wins else "does not hold"), "RTN -> best amplified: " + ", ".join(out)


@rule("super_activation_aware_w8a8")
def w8a8(t):
    """holds if handling the super activation (restoring it after quantizing the rest) gives a
    W8A8-input perplexity no worse than naive quantization (paper B Tables 3/4: it recovers most of
    the loss, close to SmoothQuant); does not hold otherwise."""
    d = t["sw_actquant_table"].set_index("condition")
    c = next(c for c in d.columns if c.startswith("ppl_"))
    naive = d.loc["naive[inputs]", c]
    aware = next(d.loc[k, c] for k in d.index if k.startswith("super_activation") and "inputs" in k)
    smooth = next(d.loc[k, c] for k in d.index if k.startswith("smoothquant") and "inputs" in k)
    fp = d.loc["fp", c] if "fp" in d.index else float("nan")
    why = f"{c[4:]}: fp {fp:.2f}, naive {naive:.2f}, super-activation aware {aware:.2f}, SmoothQuant {smooth:.2f}"
    return ("holds" if aware <= naive else "does not hold"), why
