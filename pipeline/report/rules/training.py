"""Verdict rule of the GPT-2 variants trained from scratch (paper A §4.3)."""

from __future__ import annotations

from pipeline.report.registry import rule


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
