"""Paper B figures drawn from CSVs: Fig. 3 (down-projection maxima), Fig. 4 (max |layer output|
under ablations), Fig. 5 (stopword shift), Fig. 6 (super-weight scaling) and Fig. 7 (INT4 accuracy
vs block size)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator  # layers are integers: no 2.5 / 7.5 ticks

from pipeline.figures.registry import figure, save, token_label


@figure("sw_detect", "sw_fig3_down_proj", ("sw_down_proj_max", "sw_directory"))
def fig3_down_proj(df: pd.DataFrame, model: str, out: Path, sw_directory: pd.DataFrame | None = None) -> Path:
    """Max-|.| down-projection input and output per layer (signed), super weights' layers marked."""
    df, directory = df.sort_values("layer"), sw_directory
    if directory is not None and "verdict" in directory:  # the super weights, not the candidates set aside
        directory = directory[directory["verdict"] == "super weight"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, col, title in [(axes[0], "in_max", "down_proj input"), (axes[1], "out_max", "down_proj output")]:
        ax.plot(df["layer"], df[col], marker="o", ms=3, lw=1.4, color="#1f77b4")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("layer (0-based, as paper B)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("value at max |.|")
        ax.set_title(f"{model}: {title}", fontsize=9)
        ax.grid(alpha=0.3)
        if col == "out_max" and "residual_max" in df and not (df["residual_max"] - df["out_max"]).abs().lt(
                1e-3 * df["out_max"].abs().max()).all():  # a norm after the MLP: what joins the residual
            twin = ax.twinx()
            twin.plot(df["layer"], df["residual_max"], marker="s", ms=3, lw=1.2, ls="--", color="#ff7f0e")
            twin.set_ylabel("after the post-MLP norm (joins the residual)", color="#ff7f0e", fontsize=8)
            ax.set_title(f"{model}: {title} (blue) and what the MLP adds to the residual (orange)", fontsize=8)
        if directory is not None:
            _mark_super_weights(ax, df, col, directory)
    if directory is not None and (directory.get("iteration", pd.Series([0])) > 0).any():
        fig.text(0.01, 0.005, "curves: the original model. A weight found at iteration k was found after zeroing "
                 "the weights of the earlier iterations; its input/output in the directory are from that pass.",
                 fontsize=6.5, color="#555555")
    return save(fig, out)


def _mark_super_weights(ax, df: pd.DataFrame, col: str, directory: pd.DataFrame, per_layer: int = 3) -> None:
    """Label each super weight at its layer's point, stacked per layer (not by iteration, which
    pushed labels off the axes); a layer with more than ``per_layer`` gets one summary label
    (Qwen2.5's layer 21: nine rows fed by one input channel)."""
    for layer, group in directory.groupby("layer", sort=True):
        y = df.loc[df["layer"] == layer, col]
        if not len(y):
            continue
        right = layer > df["layer"].max() / 2  # keep the label inside the axes
        top = float(y.iloc[0]) > 0.8 * float(df[col].max())  # near the top: stack the labels downwards
        if len(group) > per_layer:
            cols = sorted(set(int(c) for c in group["col"]))
            labels = [(f"{len(group)} weights: rows {', '.join(str(int(r)) for r in group['row'][:4])}"
                       f"{', ...' if len(group) > 4 else ''}; col {', '.join(map(str, cols[:3]))} (sw_directory.csv)",
                       "creates" if (group["role"] == "creates").any() else "cancels")]
        else:
            labels = []
            for r in group.itertuples():
                it = int(getattr(r, "iteration", 0) or 0)
                labels.append((f"[{r.row}, {r.col}] {r.role}" + (f", found at iteration {it}" if it else ""), r.role))
        for k, (text, role) in enumerate(labels):
            dy = -12 - 9 * k if top else 4 + 9 * k
            ax.annotate(text, (layer, float(y.iloc[0])), fontsize=6.5, xytext=(-4 if right else 4, dy),
                        textcoords="offset points", ha="right" if right else "left",
                        color="#d62728" if role == "creates" else "#7f7f7f")


@figure("sw_ablate", "sw_fig4_layer_max", ("sw_layer_max",))
def fig4_layer_max(df: pd.DataFrame, model: str, out: Path) -> Path:
    """Max |decoder-layer output| per layer for each ablation condition (paper B Fig. 4)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    # the restored model follows the original exactly where the restore works: draw the original
    # thick and underneath, the restore dashed with hollow markers on top, so both stay visible
    styles = {"original": dict(color="#1f77b4", lw=3.2, alpha=0.55, zorder=1),
              "prune_sw": dict(color="#d62728", lw=1.4, zorder=2),
              "prune_non_sw": dict(color="#2ca02c", lw=1.4, zorder=2),
              "prune_sw_restore_sa": dict(color="#9467bd", lw=1.2, ls="--", mfc="none", zorder=3)}
    for cond, g in df.groupby("condition", sort=False):
        g = g.sort_values("layer")
        ax.plot(g["layer"], g["max_abs"], marker="o", ms=3, label=cond, **styles.get(cond, {}))
    ax.set_xlabel("layer (0-based)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("max |layer output|")
    ax.set_title(f"{model}: max activation per layer", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return save(fig, out)


@figure("sw_weightquant", "sw_fig7_block_sizes", ("sw_weightquant_table",))
def fig7_block_sizes(df: pd.DataFrame, model: str, out: Path) -> Path | None:
    """Paper B Fig. 7 / Table 6: average zero-shot accuracy (and perplexity) vs block size, one
    line per method and super-weight scale (x1 solid, x1.5 dashed, x2 dotted), the unquantized
    model as a black dashed line (nothing to draw without a quantized row)."""
    if not (df["method"] != "none").any():
        return None
    cols = [c for c in ("acc_mean",) if c in df and df[c].notna().any()]
    cols += [c for c in df.columns if c.startswith("ppl_")][:1]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.6 * len(cols), 3.5), squeeze=False)
    styles = {"rtn": ("#d62728", "RTN"), "rtn_clip_restore": ("#1f77b4", "clip + restore SW (Ours)")}
    dashes = {1.0: "-", 1.5: "--", 2.0: ":"}  # Table 6: the super weights amplified before quantizing
    base = df[df["method"] == "none"]
    for ax, col in zip(axes[0], cols, strict=True):
        for (method, scale), g in df[df["method"] != "none"].groupby(["method", "sw_scale"]):
            g = g.sort_values("block_size")
            color, label = styles.get(method, (None, method))
            label += "" if scale == 1 else f", SW x{scale:g}"
            ax.plot(g["block_size"], g[col], marker="o", ms=4, lw=1.6, color=color, ls=dashes.get(scale, "-."),
                    label=label)
        if len(base):
            ax.axhline(float(base[col].iloc[0]), color="k", ls="--", lw=1, label="unquantized")
        ax.set_xscale("log", base=2)
        ticks = sorted(df.loc[df["method"] != "none", "block_size"].unique())
        ax.set_xticks(ticks, [f"{int(t ** 0.5)}²" if int(t ** 0.5) ** 2 == t else str(t) for t in ticks], fontsize=7)
        ax.set_xlabel("block size (elements)")
        ax.set_ylabel("avg zero-shot accuracy" if col == "acc_mean" else col.replace("ppl_", "perplexity, "))
        if col.startswith("ppl_"):
            ax.set_yscale("log")
        ax.set_title(f"{model}: INT4 round-to-nearest", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    return save(fig, out)


@figure("sw_stopwords", "fig5_stopwords", ("sw_stopword_probs",), text_columns=("token",))
def fig5_stopwords(df: pd.DataFrame, model: str, out: Path, n_top: int = 10) -> Path:
    """Paper B Fig. 5: average next-token probability of the original model's top tokens on
    LAMBADA, original vs super weights pruned (grouped bars)."""
    top = df[df["in_top_original"].astype(str) == "True"].sort_values("prob_original", ascending=False).head(n_top)
    x = np.arange(len(top))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.bar(x - 0.2, top["prob_original"], 0.4, color="#1f77b4", label="original")
    ax.bar(x + 0.2, top["prob_no_sw"], 0.4, color="#d62728", label="no super weight")
    ax.set_xticks(x, [token_label(t) for t in top["token"]], fontsize=8)
    ax.set_ylabel("average next-token probability")
    n, sw = int(top["n_prompts"].iloc[0]), str(top["super_weights"].iloc[0])
    ax.set_title(f"{model}: {n} LAMBADA prompts; pruned (layer:row:col) {sw}", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return save(fig, out)


@figure("sw_scale", "fig6_scaling", ("sw_scale_table",))
def fig6_scaling(df: pd.DataFrame, model: str, out: Path) -> Path:
    """Paper B Fig. 6: average zero-shot accuracy vs the super weights' scaling factor (left) and
    perplexity vs the factor (right, log scale); the dotted line marks the original model."""
    df = df.sort_values("scale")
    ppl_cols = [c for c in df.columns if c.startswith("ppl_") and df[c].notna().any()]
    panels = (["acc_mean"] if "acc_mean" in df and df["acc_mean"].notna().any() else []) + (["ppl"] if ppl_cols else [])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.4 * max(len(panels), 1), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=False):
        if panel == "acc_mean":
            ax.plot(df["scale"], 100 * df["acc_mean"], marker="o", ms=4, color="#1f77b4")
            ax.set_ylabel("average zero-shot accuracy (%)")
            limit = df["zero_shot_limit"].iloc[0] if "zero_shot_limit" in df else np.nan
            ax.set_title(f"{model}: {'all' if pd.isna(limit) else int(limit)} docs per task", fontsize=9)
        else:
            for c, color in zip(ppl_cols, ["#d62728", "#2ca02c", "#9467bd"], strict=False):
                ax.plot(df["scale"], df[c], marker="o", ms=4, color=color, label=c[4:])
            ax.set_yscale("log")
            ax.set_ylabel("perplexity")
            ax.legend(frameon=False, fontsize=8)
            ax.set_title(f"{model}: perplexity", fontsize=9)
        ax.axvline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xlabel("super weight scaling factor")
        ax.grid(alpha=0.3)
    return save(fig, out)
