"""Verdict rule of the GPT-2 variants trained from scratch (paper A §4.3)."""

from __future__ import annotations

from pipeline.report.registry import rule


@rule("gpt2_variants")
def gpt2_variants(t):
    """holds if the default variant's largest top-1 / median ratio passes 1000 with |h| > 100 while
    the attention-bias variant's stays below 100 (paper A §4.3), for every seed recorded (the
    spread over seeds is shown); does not hold otherwise (at the scale run: see the setting)."""
    d = t["train_curve"]
    ev = d[d["val_loss"].notna()]
    per_seed = ev.groupby(["model", "seed"] if "seed" in ev else ["model"]).agg(
        ratio=("ratio_max", "max"), top=("top1_max", "max")).reset_index()
    models = list(dict.fromkeys(per_seed["model"]))
    default = next((m for m in models if str(m).endswith("default")), None)
    bias = next((m for m in models if str(m).endswith("attn_bias")), None)

    def spread(m: str, col: str) -> str:
        v = per_seed.loc[per_seed["model"] == m, col]
        if len(v) == 1:
            return f"{v.iloc[0]:.1f}"
        return f"{v.mean():.1f} (range {v.min():.1f}-{v.max():.1f}, {len(v)} seeds)"

    why = ", ".join(f"{m}: ratio {spread(m, 'ratio')}, |h| {spread(m, 'top')}" for m in models)
    if default is None or bias is None:
        return "not run here", why or "variants missing"
    ok = ((per_seed.loc[per_seed["model"] == default, "ratio"] > 1000).all()
          and (per_seed.loc[per_seed["model"] == default, "top"] > 100).all()
          and (per_seed.loc[per_seed["model"] == bias, "ratio"] < 100).all())
    return ("holds" if ok else "does not hold"), why
