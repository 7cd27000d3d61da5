"""Paper B figures drawn from CSVs: Fig. 3 (down-projection maxima), Fig. 4 (max |layer output|
under ablations) and Fig. 7 (INT4 accuracy vs block size)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from pipeline.figures.registry import figure, save


@figure("sw_detect", "sw_fig3_down_proj", ("sw_down_proj_max", "sw_directory"))
def fig3_down_proj(df: pd.DataFrame, model: str, out: Path, sw_directory: pd.DataFrame | None = None) -> Path:
    """Max-|.| down-projection input and output per layer (signed), super weights' layers marked."""
    df, directory = df.sort_values("layer"), sw_directory
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, col, title in [(axes[0], "in_max", "down_proj input"), (axes[1], "out_max", "down_proj output")]:
        ax.plot(df["layer"], df[col], marker="o", ms=3, lw=1.4, color="#1f77b4")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("layer (0-based, as paper B)")
        ax.set_ylabel("value at max |.|")
        ax.set_title(f"{model}: {title}", fontsize=9)
        ax.grid(alpha=0.3)
        if directory is not None:
            for r in directory.itertuples():
                y = df.loc[df["layer"] == r.layer, col]
                if len(y) and r.role == "creates":
                    ax.annotate(f"[{r.row}, {r.col}]", (r.layer, float(y.iloc[0])), fontsize=7, color="#d62728",
                                xytext=(4, 4), textcoords="offset points")
    return save(fig, out)


@figure("sw_ablate", "sw_fig4_layer_max", ("sw_layer_max",))
def fig4_layer_max(df: pd.DataFrame, model: str, out: Path) -> Path:
    """Max |decoder-layer output| per layer for each ablation condition (paper B Fig. 4)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    colors = {"original": "#1f77b4", "prune_sw": "#d62728", "prune_non_sw": "#2ca02c", "prune_sw_restore_sa": "#9467bd"}
    for cond, g in df.groupby("condition", sort=False):
        g = g.sort_values("layer")
        ax.plot(g["layer"], g["max_abs"], marker="o", ms=3, lw=1.4, label=cond, color=colors.get(cond))
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("max |layer output|")
    ax.set_title(f"{model}: max activation per layer", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return save(fig, out)


@figure("sw_weightquant", "sw_fig7_block_sizes", ("sw_weightquant_table",))
def fig7_block_sizes(df: pd.DataFrame, model: str, out: Path) -> Path | None:
    """Paper B Fig. 7: average zero-shot accuracy (and perplexity) vs block size, one line per
    method, the unquantized model as a dashed line (nothing to draw without a quantized row)."""
    if not (df["method"] != "none").any():
        return None
    cols = [c for c in ("acc_mean",) if c in df and df[c].notna().any()]
    cols += [c for c in df.columns if c.startswith("ppl_")][:1]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.6 * len(cols), 3.5), squeeze=False)
    styles = {"rtn": ("#d62728", "RTN"), "rtn_clip_restore": ("#1f77b4", "clip + restore SW (Ours)")}
    base = df[df["method"] == "none"]
    for ax, col in zip(axes[0], cols, strict=True):
        for method, g in df[(df["method"] != "none") & (df["sw_scale"] == 1)].groupby("method"):
            g = g.sort_values("block_size")
            color, label = styles.get(method, (None, method))
            ax.plot(g["block_size"], g[col], marker="o", ms=4, lw=1.6, color=color, label=label)
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
