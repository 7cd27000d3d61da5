"""Figures of models trained from scratch (paper A §4.3's GPT-2 variants), from CSVs only: the
emergence curve, validation loss, and the layer-wise top-3 / median of each variant side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from pipeline.figures.massive_activations import draw_landscape
from pipeline.figures.registry import figure, save

COLORS = {"default": "#1f77b4", "sink": "#2ca02c", "attn_bias": "#d62728"}


def _ordered(models) -> list[str]:
    """Variants in paper A's order (default, sink, attn_bias), other names after them."""
    return sorted(models, key=lambda m: (next((i for i, k in enumerate(COLORS) if str(m).endswith(k)), len(COLORS)),
                                         str(m)))


def _color(model: str) -> str | None:
    return next((c for k, c in sorted(COLORS.items(), key=lambda kv: -len(kv[0])) if model.endswith(k)), None)


@figure("train_lm", "train_emergence", ("train_curve",), across_models=True)
def fig_emergence(df: pd.DataFrame, _model: str, out: Path) -> Path:
    """Per variant over training steps: the largest top-1 / median ratio over layers (paper A's
    rule needs > 1000) and the largest |h| (> 100); dotted lines mark the thresholds."""
    ev = df[df["val_loss"].notna()].sort_values("step")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for model, g in ev.groupby("model"):
        axes[0].plot(g["step"], g["ratio_max"], marker="o", ms=3, label=model, color=_color(str(model)))
        axes[1].plot(g["step"], g["top1_max"], marker="o", ms=3, label=model, color=_color(str(model)))
        axes[2].plot(g["step"], g["val_loss"], marker="o", ms=3, label=model, color=_color(str(model)))
    axes[0].axhline(1000, color="k", ls=":", lw=0.8, label="x1000 median (paper A)")
    axes[1].axhline(100, color="k", ls=":", lw=0.8, label="100 (paper A)")
    for ax, label in zip(axes, ("largest top-1 / median over layers", "largest |h| (top-1 of that layer)",
                                "validation loss"), strict=True):
        ax.set_xlabel("training step")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle("massive activations over training, per variant", fontsize=9)
    return save(fig, out)


@figure("train_lm", "train_layers", ("train_profile",), across_models=True)
def fig_layers(df: pd.DataFrame, _model: str, out: Path) -> Path:
    """Paper A's GPT-2 panels: layer-wise top-1/2/3 and median of |h| at the last evaluated step,
    one panel per variant, the same log axis."""
    models = _ordered(df["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.5), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        g = df[df["model"] == model]
        g = g[g["step"] == g["step"].max()].sort_values("layer")
        for col, color in [("top1", "#d62728"), ("top2", "#1f77b4"), ("top3", "#2ca02c"), ("median", "#7f7f7f")]:
            ax.plot(g["layer_1based"], g[col], marker="o", ms=3, color=color, label=col)
        ax.set_yscale("log")
        ax.set_title(f"{model}, step {int(g['step'].max())}", fontsize=9)
        ax.set_xlabel("layers (1-based)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("magnitudes (log scale)")
    axes[0][0].legend(fontsize=7, frameon=False)
    return save(fig, out)


@figure("train_lm", "train_landscape", ("train_landscape",), across_models=True)
def fig_landscape(df: pd.DataFrame, _model: str, out: Path) -> Path:
    """Paper A's GPT-2 3-D plots: |h| of one layer on "Summer is warm. Winter is cold." for each
    trained variant, side by side on one z scale (the official plot fixes it too), so a variant
    without massive activations looks flat next to one with them."""
    models = _ordered(df["model"].unique())
    fig = plt.figure(figsize=(5.2 * len(models), 4.6))
    zmax = float(df["abs_value"].max())
    for i, model in enumerate(models):
        g = df[df["model"] == model]
        g = g[g["step"] == g["step"].max()]
        layer = int(g["layer"].iloc[0])
        ax = fig.add_subplot(1, len(models), i + 1, projection="3d")
        draw_landscape(ax, g, f"{model}, layer {layer + 1} (1-based), step {int(g['step'].max())}")
        ax.set_zlim(0, zmax)
    return save(fig, out)
