"""Paper B figures drawn from CSVs: Fig. 3 (down-projection maxima) and Fig. 4 (max |layer output|
under ablations)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .figures import save  # noqa: E402


def fig3_down_proj(df: pd.DataFrame, directory: pd.DataFrame | None, model: str, out: Path) -> Path:
    """Max-|.| down-projection input and output per layer (signed), super weights' layers marked."""
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


def draw_super_weight(out_dir: Path, fig_dir: Path) -> list[Path]:
    written = []
    maxima = out_dir / "sw_down_proj_max.csv"
    if maxima.exists():
        df = pd.read_csv(maxima)
        dpath = out_dir / "sw_directory.csv"
        directory = pd.read_csv(dpath) if dpath.exists() and dpath.stat().st_size > 0 else None
        for model, g in df.groupby("model"):
            d = directory[directory["model"] == model] if directory is not None and "model" in directory else None
            written.append(fig3_down_proj(g.sort_values("layer"), d, model, fig_dir / f"sw_fig3_down_proj_{model}.png"))
    layer_max = out_dir / "sw_layer_max.csv"
    if layer_max.exists():
        df = pd.read_csv(layer_max)
        for model, g in df.groupby("model"):
            written.append(fig4_layer_max(g, model, fig_dir / f"sw_fig4_layer_max_{model}.png"))
    return written
