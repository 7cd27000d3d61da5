"""Figures drawn from the CSVs only (``make figures`` redraws every experiment's figures).

Fig. 1 style: 3-D |activation| landscape of one layer (x token, y feature dim, z magnitude).
Fig. 3 style: per-layer top-1/2/3 and median |hidden state| (lines against the layer index).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def fig3_layers(df: pd.DataFrame, model: str, dataset: str, out: Path) -> Path:
    """Layer-wise top-1/2/3 and median magnitudes (paper A Fig. 3), layers numbered from 1."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    x = df["layer_1based"]
    for col, color in [("top1", "#d62728"), ("top2", "#1f77b4"), ("top3", "#2ca02c"), ("median", "#7f7f7f")]:
        ax.plot(x, df[col], marker="o", ms=3, lw=1.6, color=color, label=col.replace("top", "top ").replace("median", "median"))
    ax.set_xlabel("layers (1-based, as in paper A)")
    ax.set_ylabel("magnitudes")
    n = int(df["n_sequences"].iloc[0])
    ax.set_title(f"{model}: |hidden state| per layer ({n} seqs of {dataset})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def fig1_landscape(df: pd.DataFrame, model: str, out: Path) -> Path:
    """3-D |activation| of one layer on one prompt (paper A Fig. 1): a line over dims per token."""
    layer = int(df["layer"].iloc[0])
    tokens = df.drop_duplicates("position").sort_values("position")["token"].tolist()
    fig = plt.figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot(projection="3d")
    for pos, g in df.groupby("position"):
        g = g.sort_values("dim")
        ax.plot([pos] * len(g), g["dim"], g["abs_value"], lw=0.9, color=plt.cm.viridis(pos / max(len(tokens) - 1, 1)))
    top_dims = df.groupby("dim")["abs_value"].max().nlargest(2).index.tolist()
    ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=7, rotation=-20)
    ax.set_yticks(sorted(top_dims), [str(d) for d in sorted(top_dims)], fontsize=7)
    ax.set_xlabel("token")
    ax.set_ylabel("feature dim")
    ax.set_zlabel("|activation|")
    ax.set_title(f"{model}, layer {layer + 1} (1-based; index {layer})", fontsize=9)
    ax.view_init(elev=22, azim=-60)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def draw_experiment(out_dir: Path) -> list[Path]:
    """Draw every figure whose CSV exists in ``out_dir``, one per (model, dataset, seed)."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    stats = _read(out_dir / "ma_layer_stats.csv")
    if stats is not None:
        for (model, dataset), g in stats.groupby(["model", "dataset"]):
            written.append(fig3_layers(g.sort_values("layer"), model, dataset, fig_dir / f"fig3_layers_{model}_{dataset}.png"))
    land = _read(out_dir / "ma_fig1.csv")
    if land is not None:
        for model, g in land.groupby("model"):
            g = g[g["dataset"] == g["dataset"].iloc[0]]
            written.append(fig1_landscape(g, model, fig_dir / f"fig1_3d_{model}.png"))
    return written


def draw_all(results_dir: Path) -> list[Path]:
    """``make figures``: every experiment folder under ``results_dir``."""
    return [p for d in sorted(Path(results_dir).iterdir()) if d.is_dir() for p in draw_experiment(d)]
