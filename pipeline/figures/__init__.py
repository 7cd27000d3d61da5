"""Figures drawn from an experiment's CSVs (``make figures`` redraws them all)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before any pyplot import: figures are files, there is no display

from pipeline.figures import massive, super_weight  # noqa: E402, F401  (register their figures)
from pipeline.figures.registry import FIGURES, FigureSpec  # noqa: E402


def _draw_one(spec: FigureSpec, out_dir: Path, fig_dir: Path) -> list[Path]:
    primary = out_dir / f"{spec.reads[0]}.csv"
    if not primary.exists() or primary.stat().st_size == 0:
        return []
    tables = {t: spec.reader(out_dir / f"{t}.csv") for t in spec.reads
              if (out_dir / f"{t}.csv").exists() and (out_dir / f"{t}.csv").stat().st_size > 0}
    written = []
    for model, rows in tables[spec.reads[0]].groupby("model"):
        datasets = list(dict.fromkeys(rows["dataset"])) if spec.per_dataset else [rows["dataset"].iloc[0]]
        for dataset in datasets:
            frames = {t: df[(df["model"] == model) & (df["dataset"] == dataset)] if "model" in df else df
                      for t, df in tables.items()}
            name = f"{spec.stem}_{model}" + (f"_{dataset}" if spec.per_dataset else "")
            others = {t: frames.get(t) for t in spec.reads[1:]}
            path = spec.draw(frames[spec.reads[0]], str(model), fig_dir / f"{name}.png", **others)
            if path is not None:
                written.append(path)
    return written


def draw_experiment(out_dir: Path, stages: list[str] | None = None) -> list[Path]:
    """Every registered figure (of ``stages``, default all) whose first table exists in ``out_dir``."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    return [p for spec in FIGURES if stages is None or spec.stage in stages
            for p in _draw_one(spec, out_dir, fig_dir)]


def draw_all(results_dir: Path) -> list[Path]:
    """``make figures``: every experiment folder under ``results_dir``."""
    return [p for d in sorted(Path(results_dir).iterdir()) if d.is_dir() for p in draw_experiment(d)]
