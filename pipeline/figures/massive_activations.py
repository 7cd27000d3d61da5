"""Paper A figures drawn from the CSVs only (``make figures`` redraws every experiment's figures).

Fig. 1 style: 3-D |activation| landscape of one layer (x token, y feature dim, z magnitude).
Fig. 3 style: per-layer top-1/2/3 and median |hidden state| (lines against the layer index).
§4 attention figures: head-averaged attention heat maps per layer, and the share of attention on the
massive-activation tokens per layer (stage ``ma_attention``), and the attention-output decomposition.
§5: the ViT interventions. The GPT-2 variants trained from scratch (§4.3) are in ``training.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator  # layers are integers: no 2.5 / 7.5 ticks

from pipeline.config.shared import MassiveRule
from pipeline.figures.registry import figure, save, token_label


@figure("ma_profile", "fig3_layers", ("ma_layer_stats",), per_dataset=True)
def fig3_layers(df: pd.DataFrame, model: str, out: Path) -> Path:
    """Layer-wise top-1/2/3 and median magnitudes (paper A Fig. 3), layers numbered from 1. The
    y axis is logarithmic: on a linear one the median (1-10 against 10^4) is flattened to zero."""
    df, dataset = df.sort_values("layer"), str(df["dataset"].iloc[0])
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    x = df["layer_1based"]
    for col, color in [("top1", "#d62728"), ("top2", "#1f77b4"), ("top3", "#2ca02c"), ("median", "#7f7f7f")]:
        ax.plot(x, df[col], marker="o", ms=3, lw=1.6, color=color, label=col.replace("top", "top "))
    ax.set_yscale("log")
    ax.set_xlabel("layers (1-based, as in paper A)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("magnitudes (log scale)")
    n = int(df["n_sequences"].iloc[0])
    ax.set_title(f"{model}: |hidden state| per layer\n({n} sequences of {dataset})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False, fontsize=8)
    return save(fig, out)


def draw_landscape(ax, df: pd.DataFrame, title: str, n_top: int = 3,
                   threshold: float = MassiveRule.abs_threshold) -> pd.Series:
    """Paper A's 3-D |activation| landscape of one layer on one prompt into a 3-D axis: one bar
    per token for each of the ``n_top`` largest dims, a thin line per token over all dims, and a
    translucent plane at paper A's absolute threshold (|h| = 100), so that a landscape whose
    largest values are noise (a small trained GPT-2: 8-9) does not read as one with spikes.
    Returns the top dims' maxima."""
    tokens = [token_label(t) for t in df.drop_duplicates("position").sort_values("position")["token"]]
    top = df.groupby("dim")["abs_value"].max().nlargest(n_top)
    for pos, g in df.groupby("position"):
        g = g.sort_values("dim")
        ax.plot([pos] * len(g), g["dim"], g["abs_value"], lw=0.6, color="#9e9e9e")
    colors = ["#d62728", "#1f77b4", "#2ca02c"]
    for color, (dim, _) in zip(colors, top.items(), strict=False):
        g = df[df["dim"] == dim].sort_values("position")
        ax.bar3d(g["position"] - 0.3, [dim] * len(g), 0, 0.6, 12, g["abs_value"],
                 color=color, alpha=0.85, label=f"dim {dim} (max {g['abs_value'].max():,.0f})")
    peak = float(df["abs_value"].max())
    if peak >= threshold:  # the plane, inside the range the bars already span
        xs, ys = np.meshgrid([-0.5, len(tokens) - 0.5], [df["dim"].min(), df["dim"].max()])
        ax.plot_surface(xs, ys, np.full_like(xs, threshold, dtype=float), color="#ff9800", alpha=0.15)
        ax.plot([], [], color="#ff9800", lw=4, alpha=0.5, label=f"paper A's threshold |h| = {threshold:g}")
    else:  # drawing the plane would flatten every bar: say it instead
        ax.plot([], [], " ", label=f"every |h| <= {peak:,.1f}: below paper A's threshold {threshold:g} (none massive)")
    ax.set_xticks(range(len(tokens)), tokens, fontsize=7, rotation=-20)
    ax.set_xlabel("token")
    ax.set_ylabel("feature dim")
    ax.set_zlabel("|activation|")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)
    ax.view_init(elev=22, azim=-60)
    return top


@figure("ma_profile", "fig1_3d", ("ma_fig1",))
def fig1_landscape(df: pd.DataFrame, model: str, out: Path) -> Path:
    """|activation| of one layer on one prompt (paper A Fig. 1). Left: the 3-D landscape
    (:func:`draw_landscape`). Right: every token's |h| over the dims on a log axis, where the
    smaller massive dims (SmolLM2's 247 at 1,800 beside 507 at 24,000) stay visible; the top
    dims are labelled."""
    layer = int(df["layer"].iloc[0])
    tokens = [token_label(t) for t in df.drop_duplicates("position").sort_values("position")["token"]]
    fig = plt.figure(figsize=(11, 4.6))
    top = draw_landscape(fig.add_subplot(1, 2, 1, projection="3d"), df,
                         f"{model}, layer {layer + 1} (1-based; index {layer})")
    ax2 = fig.add_subplot(1, 2, 2)
    for pos, g in df.groupby("position"):
        g = g.sort_values("dim")
        ax2.plot(g["dim"], g["abs_value"], lw=0.8, color=plt.cm.viridis(pos / max(len(tokens) - 1, 1)),
                 label=f"{pos}: {tokens[pos]}")
    for dim, value in top.items():
        ax2.annotate(f"dim {dim}", (dim, value), xytext=(4, 2), textcoords="offset points", fontsize=7)
    ax2.set_yscale("log")
    ax2.set_xlabel("feature dim")
    ax2.set_ylabel("|activation| (log scale)")
    ax2.set_title("every token over every dim", fontsize=9)
    ax2.legend(fontsize=6, ncol=2, frameon=False, title="token", title_fontsize=7)
    ax2.grid(alpha=0.3)
    return save(fig, out)


def _attention_grid(g: pd.DataFrame, value: str, n: int) -> np.ndarray:
    """(n, n) query x key matrix of ``value``; NaN above the diagonal (masked keys)."""
    grid = np.full((n, n), np.nan)
    grid[g["query"].to_numpy(int), g["key"].to_numpy(int)] = g[value].to_numpy(float)
    return grid


@figure("ma_attention", "attention_maps", ("ma_attention_maps",), text_columns=("query_token", "key_token"))
def fig_attention_maps(df: pd.DataFrame, model: str, out: Path) -> Path:
    """Head-averaged attention of each chosen layer on one prompt (paper A §4 attention figures).

    Top row: the mean over heads of log p; paper A plots head-averaged attention *logits*, and
    log p = logit - logsumexp differs from them by a per-query constant only. Bottom row: the
    probabilities. Masked cells (key > query) are blank; keys in the massive set are bold and red.
    """
    layers = sorted(df["layer"].unique())
    n = int(df["query"].max()) + 1
    last = df[(df["layer"] == layers[0]) & (df["query"] == n - 1)].sort_values("key")
    tokens = [token_label(t) for t in last["key_token"]]
    massive = set(last.loc[last["key_in_massive_set"].astype(str) == "True", "key"].astype(int))
    fig, axes = plt.subplots(2, len(layers), figsize=(4.4 * len(layers), 8.4), squeeze=False)
    rows = [("logprob", "mean over heads of log p\n(= mean logit - per-query constant)"),
            ("prob", "mean over heads of p")]
    for col, lay in enumerate(layers):
        g = df[df["layer"] == lay]
        for row, (value, label) in enumerate(rows):
            ax = axes[row][col]
            im = ax.imshow(_attention_grid(g, value, n), cmap="YlGnBu", interpolation="nearest")
            ax.set_facecolor("whitesmoke")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).set_label(label, fontsize=7)
            if n <= 64:  # token labels only while they stay legible
                ax.set_xticks(range(n), tokens, fontsize=4.5, rotation=90)
                ax.set_yticks(range(n), tokens, fontsize=4.5)
                for k in massive:
                    for tick in (ax.get_xticklabels()[k], ax.get_yticklabels()[k]):
                        tick.set_fontweight("bold")
                        tick.set_color("#d62728")
            ax.set_xlabel("key", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
            ax.set_title(f"{model}, layer {lay + 1} (1-based; index {lay})", fontsize=9)
    return save(fig, out)


@figure("ma_attention", "attention_share", ("ma_attention_share",))
def fig_attention_share(df: pd.DataFrame, model: str, out: Path) -> Path:
    """Share of attention on the massive-activation tokens per layer, beside two controls."""
    df = df.sort_values("layer")
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    x = df["layer_1based"]
    ax.plot(x, df["share_massive"], marker="o", ms=3, color="#d62728", label="on massive tokens S")
    ax.plot(x, df["share_control"], marker="o", ms=3, color="#7f7f7f", label="|S| random other keys")
    ax.plot(x, df["share_uniform"], ls="--", lw=1, color="#1f77b4", label="uniform attention")
    pos = df["massive_positions_at_output"]  # "" (no massive activation) reads back as NaN
    hits = df[pos.notna() & (pos.astype(str).str.strip() != "")]
    if len(hits):
        ax.axvline(int(hits["layer_1based"].min()), color="k", lw=0.8, ls=":", label="massive layer")
    ax.set_xlabel("layers (1-based, as in paper A)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("attention share (mean over heads, queries)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{model}: attention on S = tokens {df['massive_positions'].iloc[0]}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    return save(fig, out)


@figure("ma_attention", "attention_decomposition", ("ma_attention_decomposition",))
def fig_attention_decomposition(df: pd.DataFrame, model: str, out: Path) -> Path:
    """Paper A §4's decomposition: how constant over queries the attention-output part from the
    massive tokens S is (mean pairwise cosine, relative variance), against the rest, per layer."""
    df = df.sort_values("layer")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    x = df["layer_1based"]
    for ax, (col_s, col_r, label) in zip(axes,
                                         [("cos_massive", "cos_rest", "mean pairwise cosine (1 = constant)"),
                                          ("relvar_massive", "relvar_rest", "relative variance (0 = constant)")],
                                         strict=True):
        ax.plot(x, df[col_s], marker="o", ms=3, color="#d62728", label="part from S (massive tokens)")
        ax.plot(x, df[col_r], marker="o", ms=3, color="#7f7f7f", label="part from the other keys")
        ax.set_xlabel("layers (1-based, as in paper A)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    axes[0].set_ylim(min(0, float(df[["cos_massive", "cos_rest"]].min().min())), 1.02)
    axes[1].set_ylim(bottom=0)
    fig.suptitle(f"{model}: attention output split into S and the rest, over queries after S", fontsize=9)
    return save(fig, out)


# Paper A §5: the same two figures for a vision encoder's profile (roles cls / reg_k / patch)
figure("vit_profile", "vit_layers", ("vit_layer_stats",), per_dataset=True)(fig3_layers)
figure("vit_profile", "vit_landscape", ("vit_landscape",), text_columns=("token",))(fig1_landscape)


@figure("vit_intervene", "vit_intervene", ("vit_intervene",), text_columns=("why",))
def fig_vit_intervene(df: pd.DataFrame, model: str, out: Path) -> Path:
    """Per condition: the PROXY metrics (pooled-feature change, digits probe accuracy); a
    condition that does not apply is shown as text with its reason, not as a zero bar."""
    conds = list(dict.fromkeys(df["condition"]))
    metrics = [m for m in ("pooled_rel_l2_change", "digits_probe_acc") if m in set(df["metric"])]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.6 * max(1, len(metrics)), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics or ["pooled_rel_l2_change"], strict=True):
        for i, cond in enumerate(conds):
            g = df[(df["condition"] == cond) & (df["metric"] == metric)]
            na = df[(df["condition"] == cond) & (df["metric"] == "not_applicable")]
            if len(g):
                ax.bar(i, g["value"].iloc[0], color="#1f77b4")
                ax.text(i, g["value"].iloc[0], f"{g['value'].iloc[0]:.3f}", ha="center", va="bottom", fontsize=7)
            elif len(na):
                ax.text(i, 0.04, "n/a: " + str(na["why"].iloc[0]).replace(" on ", "\non "), ha="center", va="bottom",
                        fontsize=6, rotation=90, color="#7f7f7f", transform=ax.get_xaxis_transform())
        ax.set_xticks(range(len(conds)), conds, fontsize=8)
        ax.set_xlim(-0.6, len(conds) - 0.2)
        ax.set_title(metric.replace("_", " ") + " (proxy)", fontsize=9)
        ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]) if metric.endswith("acc") else max(0.05, ax.get_ylim()[1]))
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{model}: interventions on a ViT (offline proxies, not ImageNet accuracy)", fontsize=9)
    return save(fig, out)
