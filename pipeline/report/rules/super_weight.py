"""Verdict rules of paper B (The Super Weight): the directory, ablations, stopwords, scaling and
quantization."""

from __future__ import annotations

from pipeline.report.intervals import combine, paired, side, want, within
from pipeline.report.registry import rule

NO_ITEMS = ("no per-window / per-document values in the record (rows recorded before they were kept): "
            "no interval, so no verdict; re-record the artefact")


def kl_beside(items, conditions, base: str) -> str:
    """'; KL x [a, b], ...' of each condition from the unmodified model, for the why-text."""
    return "; KL " + ", ".join(f"{c} {paired(items, None, c, 'kl').text(3, '')}" for c in conditions)


@rule("super_weight_creates_massive")
def super_weight_creates(t):
    """holds if a detected super weight 'creates' a massive activation and its row is the massive
    dim (paper B Table 2: one weight in an early down-projection writes the super activation)."""
    d = t["sw_directory"]
    if "verdict" in d:  # rows recorded before every flagged candidate was listed hold super weights only
        d = d[d["verdict"] == "super weight"]
    hit = d[(d["role"] == "creates") & d["row_is_massive_dim"].astype(bool)]
    if hit.empty:
        return "does not hold", f"{len(d)} super weights, none creates the massive dim"
    return "holds", "; ".join(
        f"{m}: " + ", ".join(f"layer {int(r['layer'])} W[{int(r['row'])}, {int(r['col'])}] = {r['weight']:.2f}"
                             for _, r in g.iterrows()) for m, g in hit.groupby("model"))


@rule("prune_sw_destroys", per_model=True)
def prune_sw(t):
    """Perplexity (paper B Table 1's metric), paired over the same windows: holds if pruning the super
    weight(s) multiplies perplexity by >= 5, restoring the super activation stays within 10% of the
    original and pruning as many other large weights costs < 2x, each with its 95% interval on the
    right side; partly if some; inconclusive where an interval straddles its threshold."""
    items = t.get("sw_ablate_items")
    if items is None:
        return "not judged", NO_ITEMS
    p = paired(items, "original", "prune_sw", "ppl", ratio=True)
    r = paired(items, "original", "prune_sw_restore_sa", "ppl", ratio=True)
    n = paired(items, "original", "prune_non_sw", "ppl", ratio=True)
    sides = [want(side(p, 5.0), "above"), want(within(r, 0.9, 1.1), "inside"), want(side(n, 2.0), "below")]
    why = (f"ppl ratio to the original: prune SW x{p.text(3, '')}, + restore SA x{r.text(3, '')}, "
           f"prune non-SW x{n.text(3, '')} ({p.what.split('; ')[1]})"
           f"{kl_beside(items, ('prune_sw', 'prune_sw_restore_sa', 'prune_non_sw'), 'original')}")
    return combine(sides, "yes"), why


@rule("sw_removal_kills_super_activation", per_model=True)
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


@rule("stopwords_rise", per_model=True)
def stopwords(t):
    """holds if, without the super weight, the stopwords among the original top tokens become more
    likely on average (paper B Fig. 5: 'the', '.', ',' rise 2-10x on Llama-7B); partly if some do."""
    d = t["sw_stopword_probs"]
    stop = d[d["kind"] == "stopword"]
    up = (stop["ratio"] > 1).mean() if len(stop) else 0.0
    why = ", ".join(f"'{r.token}' x{r.ratio:.2f}" for r in stop.head(6).itertuples())
    return ("holds" if up == 1 else "partly" if up > 0 else "does not hold"), f"{up:.0%} of stopwords rise: {why}"


@rule("scaling_curve", per_model=True)
def scaling(t):
    """Average zero-shot accuracy (paper B Fig. 6's metric), paired over the same documents: holds
    if removing the super weight (scale 0) lowers accuracy below scale 1 and some amplification
    (scale > 1) is not worse than scale 1, each interval on its side; partly if one; inconclusive
    if neither is decided. Without a zero-shot suite, perplexity instead (said so)."""
    d, items = t["sw_scale_table"], t.get("sw_scale_items")
    if items is None:
        return "not judged", NO_ITEMS
    metric = "acc" if (items["eval"] == "zero_shot").any() else "ppl"
    better = "above" if metric == "acc" else "below"
    scales = sorted(d["scale"])
    name = {float(s): c for s, c in zip(d["scale"], d["condition"], strict=True)}
    zero = paired(items, name[1.0], name[0.0], metric)
    amp = [paired(items, name[1.0], name[s], metric) for s in scales if s > 1.0]
    best = max(amp, key=lambda e: e.value if metric == "acc" else -e.value) if amp else None
    worse = {"above": "below", "below": "above"}[better]
    sides = [want(side(zero), worse)]
    if best is not None:  # "not worse than scale 1": its interval is not wholly on the worse side
        sides.append("no" if side(best) == worse else "yes")
    why = (f"{metric} vs scale 1: scale 0 {zero.text(3)}"
           + (f"; best amplified {best.what.split(' vs ')[0].split()[-1]} "
           f"{best.text(3)}" if best else "") + f" ({zero.what.split('; ')[1]})")
    return combine(sides, "yes"), why


@rule("clip_restore_helps", per_model=True)
def clip_restore(t):
    """Average zero-shot accuracy (paper B Fig. 7's metric), paired over the same documents at each
    block size: clip + restore minus plain RTN. holds if its 95% interval is above 0 at every block
    size (it makes large blocks usable); partly if at some; does not hold if below 0 at every one;
    inconclusive where an interval covers 0. Perplexity and KL are shown beside."""
    d, items = t["sw_weightquant_table"], t.get("sw_weightquant_items")
    if items is None:
        return "not judged", NO_ITEMS
    metric = "acc" if (items["eval"] == "zero_shot").any() else "ppl"
    rtn = d[d["method"] == "rtn"].set_index("block_size")["condition"]
    ours = d[d["method"].str.startswith("rtn_clip")].set_index("block_size")["condition"]
    sides, parts = [], []
    for block in sorted(set(rtn.index) & set(ours.index)):
        e = paired(items, rtn[block], ours[block], metric)
        sides.append(want(side(e), "above" if metric == "acc" else "below"))
        beside = "" if metric == "ppl" else f", ppl {paired(items, rtn[block], ours[block], 'ppl').text(3)}"
        parts.append(f"{block}: {metric} {e.text(3)}{beside}")
    return combine(sides, "yes"), f"clip + restore minus RTN ({e.what.split('; ')[1]}): " + "; ".join(parts)


@rule("amplified_sw_helps_rtn", per_model=True)
def amplified(t):
    """Average zero-shot accuracy (paper B Table 6's metric), paired over the same documents: at
    each block size the best amplification (x1.5 or x2, chosen by its point estimate) minus plain
    4-bit RTN. holds if the interval is above 0 at every block size; partly if at some; does not
    hold if below at every one; inconclusive where it covers 0."""
    d, items = t["sw_weightquant_table"], t.get("sw_weightquant_items")
    if items is None:
        return "not judged", NO_ITEMS
    metric = "acc" if (items["eval"] == "zero_shot").any() else "ppl"
    d = d[d["method"] == "rtn"]
    sides, parts = [], []
    for block, g in d.groupby("block_size"):
        base = g[g["sw_scale"] == 1.0]["condition"].iloc[0]
        ests = [paired(items, base, c, metric) for c in g[g["sw_scale"] > 1.0]["condition"]]
        e = max(ests, key=lambda x: x.value if metric == "acc" else -x.value)
        sides.append(want(side(e), "above" if metric == "acc" else "below"))
        parts.append(f"{block}: {e.what.split(' vs ')[0].split()[-1]} {e.text(3)}")
    return combine(sides, "yes"), f"{metric}, best amplified minus RTN ({e.what.split('; ')[1]}): " + "; ".join(parts)


def w8a8_part(suffix: str) -> str | None:
    """What a W8A8 row label's bracket says, in words ("" = full W8A8 under paper B's protocol);
    None where the inputs are not quantized (the aware method changes only the inputs)."""
    bits = [b for b in suffix.strip("[]").split("; ") if b]
    quantized = next((b for b in bits if b not in ("smoothquant", "per_tensor")), None)
    if quantized is not None and "inputs" not in quantized.split("+"):
        return None
    what = "full W8A8" if quantized is None else f"W8A8 {quantized.replace('+', ' + ')} only"
    how = ["SmoothQuant's protocol" if "smoothquant" in bits else "paper B's protocol"]
    how += ["per-tensor activations"] if "per_tensor" in bits else []
    return f"{what} ({', '.join(how)})"


@rule("super_activation_aware_w8a8", per_model=True)
def w8a8(t):
    """Perplexity (paper B Tables 3/4's metric), paired over the same windows: super-activation
    aware minus naive W8A8, for every recorded protocol / part / activation granularity. holds if
    the interval is below 0 (aware better) for each; partly if for some; does not hold if above for
    all; inconclusive where it covers 0. KL from the unmodified model is shown beside, and
    SmoothQuant minus naive where SmoothQuant ran (its baseline: it should not be worse)."""
    items = t.get("sw_actquant_items")
    if items is None:
        return "not judged", NO_ITEMS
    present = set(items["condition"])
    sides, parts = [], []
    suffixes = sorted({c[len("naive"):] for c in present if c.startswith("naive")}, key=lambda x: (len(x), x))
    for suffix in suffixes:
        naive, aware, smooth = f"naive{suffix}", f"super_activation_aware{suffix}", f"smoothquant{suffix}"
        if aware not in present or w8a8_part(suffix) is None:
            continue
        e = paired(items, naive, aware, "ppl")
        sides.append(want(side(e), "below"))
        kl = f", KL {paired(items, naive, aware, 'kl').text(3)}" if (items["metric"] == "kl").any() else ""
        sq = f"; SmoothQuant minus naive ppl {paired(items, naive, smooth, 'ppl').text(3)}" if smooth in present else ""
        parts.append(f"{w8a8_part(suffix)}: ppl {e.text(3)}{kl}{sq}")
    if not sides:
        return "not judged", f"no naive / aware pair among {sorted(present)}"
    return combine(sides, "yes"), f"aware minus naive ({e.what.split('; ')[1]}): " + "; ".join(parts)
