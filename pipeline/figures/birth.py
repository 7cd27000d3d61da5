"""Paper C's figures from the ``birth_train`` CSVs, one line (or map) per run label: in-context
accuracy and the memory-recall probes over training (Fig. 3), global vs in-context losses and
``ff1_loss`` (Fig. 4), attention maps (Fig. 2) and, beyond the paper, the start token's sink."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.figures.registry import figure, save, token_label


def _setting(df: pd.DataFrame) -> str:
    """The setting every figure states (a reduced sweep says so)."""
    parts = []
    for col, name in (("dim", "d"), ("batch_size", "batch")):
        if col in df and df[col].notna().any():
            vals = sorted({int(v) for v in df[col].dropna()})
            parts.append(f"{name} {'/'.join(map(str, vals))}")
    return ", ".join(parts)


def _curves(df: pd.DataFrame, cols: list[tuple[str, str]], out: Path, title: str,
            log_cols: tuple[str, ...] = ()) -> Path | None:
    cols = [(c, t) for c, t in cols if c in df and df[c].notna().any()]
    if not cols:
        return None
    n = len(cols)
    ncol = min(3, n)
    fig, axes = plt.subplots(math.ceil(n / ncol), ncol, figsize=(4.3 * ncol, 3.2 * math.ceil(n / ncol)), squeeze=False)
    for ax, (col, name) in zip(axes.flat, cols, strict=False):
        for i, (label, g) in enumerate(df.groupby("label", sort=False)):
            by_step = g.groupby("step")[col]
            mean, seeds = by_step.mean(), g["seed"].nunique() if "seed" in g else 1
            many = f" (mean of {seeds} seeds; band: their range)" if seeds > 1 else ""
            ax.plot(mean.index, mean.to_numpy(), lw=1.2, color=f"C{i % 10}", label=f"{label}{many}")
            if seeds > 1:  # one line per label: the seeds' curves interleaved by step drew a zigzag
                ax.fill_between(mean.index, by_step.min().to_numpy(), by_step.max().to_numpy(),
                                color=f"C{i % 10}", alpha=0.2, lw=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if col in log_cols:
            ax.set_yscale("log")
        for c in df.get("freeze_step", pd.Series(dtype=float)).dropna().unique():
            ax.axvline(c, color="k", ls=":", lw=0.8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"{title} ({_setting(df)})", fontsize=10)
    return save(fig, out)


@figure("birth_train", "birth_probes", ("birth_curve",), across_models=True)
def fig_probes(df: pd.DataFrame, _model: str, out: Path) -> Path | None:
    """Fig. 3: in-context accuracy and the four memory-recall probes vs iteration."""
    return _curves(df, [("acc_end", "acc_end: in-context accuracy (counter >= 2)"),
                        ("acc_end_test", "acc_end_test (held out)"),
                        ("wo1", "wo1: W_O2 output recall"), ("wk1", "wk1: W_K2 trigger recall"),
                        ("wk0", "wk0: W_K1 previous-position recall"),
                        ("wk0_64", "wk0_64: the same, first 64 positions")],
                   out, "paper C: induction head and memory probes")


@figure("birth_train", "birth_losses", ("birth_curve",), across_models=True)
def fig_losses(df: pd.DataFrame, _model: str, out: Path) -> Path | None:
    """Fig. 4: global (bigram) vs in-context (counter >= 2) learning, and ff1_loss."""
    return _curves(df, [("loss_bigram", "loss on bigram tokens (global)"),
                        ("loss_head", "loss on counter >= 2 (in-context)"),
                        ("ff1_loss", "ff1_loss: KL(pi_b || W_F recall)"), ("acc_tot", "acc_tot (counter >= 1)"),
                        ("score_acc", "layer 1 attends to the previous token"),
                        ("score2_acc", "layer 2 induction attention")],
                   out, "paper C: global vs in-context learning", log_cols=("ff1_loss",))


@figure("birth_train", "birth_start_token", ("birth_curve",), across_models=True)
def fig_start_token(df: pd.DataFrame, _model: str, out: Path) -> Path | None:
    """Beyond paper C: attention on the start token, its norm ratio, the k' slot's share."""
    cols = sorted(c for c in df.columns if c.endswith(("_start_share", "_start_norm_ratio", "_kprime_share")))
    if not cols:
        return None
    names = [(c, c.replace("_", " ").replace("L0", "layer 1:").replace("L1", "layer 2:")) for c in cols]
    return _curves(df, [*names, ("ratio_max", "largest top-1 / median |h|")], out, "start token as a sink")


@figure("birth_train", "birth_attention", ("birth_attention",), across_models=True,
        text_columns=("query_token", "key_token"))
def fig_attention(df: pd.DataFrame, _model: str, out: Path) -> Path:
    """Fig. 2: the trained models' attention maps on one held-out sequence, a row per run and
    layer (the first seed where there are several), a column per head (layer 1: previous-token
    head; layer 2: induction head)."""
    if "seed" in df and df["seed"].nunique() > 1:  # one map per run: the first seed's
        df = df[df["seed"] == df["seed"].min()]
    runs = list(dict.fromkeys(df["label"]))
    heads = int(df["head"].max()) + 1
    rows = [(r, layer) for r in runs for layer in sorted(df["layer"].unique())]
    fig, axes = plt.subplots(len(rows), heads, figsize=(3.4 * heads + 0.6, 3.3 * len(rows)), squeeze=False)
    for (run, layer), ax_row in zip(rows, axes, strict=True):
        g = df[(df["label"] == run) & (df["layer"] == layer)]
        n = int(g["query"].max()) + 1
        labels = [token_label(t) for t in g.drop_duplicates("query").sort_values("query")["query_token"]]
        for head, ax in enumerate(ax_row):
            h = g[g["head"] == head]
            grid = np.full((n, n), np.nan)
            grid[h["query"].to_numpy(), h["key"].to_numpy()] = h["weight"].to_numpy()
            ax.imshow(grid, cmap="Blues", vmin=0, vmax=1)
            ticks = range(0, n, max(1, n // 16))
            ax.set_xticks(list(ticks), [labels[i] for i in ticks], fontsize=5, rotation=90)
            ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=5)
            ax.set_title(f"{run}\nlayer {layer + 1}, head {head + 1}", fontsize=7)
    return save(fig, out)
