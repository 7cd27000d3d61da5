"""Figures drawn from an experiment's CSVs (``make figures`` redraws them all).

One module per paper registers its figures with :func:`pipeline.figures.registry.figure`
(``massive_activations``, ``super_weight``, ``training``, ``birth``, named as the report's rule
modules); importing this package imports every module in it, so none can be forgotten.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before any pyplot import: figures are files, there is no display

from pipeline.core.results import read_table, rebuild_views  # noqa: E402
from pipeline.core.store import tables_of  # noqa: E402
from pipeline.figures.registry import FIGURES, FigureSpec  # noqa: E402

for _module in pkgutil.iter_modules(__path__):  # register every figure module's figures
    importlib.import_module(f"{__name__}.{_module.name}")


def _latest_setting(frames: dict, first: str) -> dict:
    """One model's rows of one setting: where the record holds several settings of a model (a
    re-run whose setting changed beside the old shard, a sweep over seq_len), the most recently
    written one, so that a figure never merges two runs (Gemma's attention maps: 84 token labels
    for 42 positions, a crash after the run had committed)."""
    rows = frames[first]
    if "setting" not in rows or rows["setting"].nunique() < 2:
        return frames
    latest = rows.sort_values("timestamp")["setting"].iloc[-1] if "timestamp" in rows else rows["setting"].iloc[-1]
    return {t: df[df["setting"] == latest] if df is not None and "setting" in df else df for t, df in frames.items()}


def _draw_one(spec: FigureSpec, out_dir: Path, fig_dir: Path) -> list[Path]:
    tables = {t: read_table(out_dir, t) for t in spec.reads}
    tables = {t: df for t, df in tables.items() if len(df)}
    if spec.reads[0] not in tables:
        return []
    for df in tables.values():
        for col in spec.text_columns:
            if col in df:
                df[col] = df[col].fillna("").astype(str)
    written = []
    if spec.across_models:
        path = spec.draw(tables[spec.reads[0]], "all", fig_dir / f"{spec.stem}.png",
                         **{t: tables.get(t) for t in spec.reads[1:]})
        return [path] if path is not None else []
    for model, rows in tables[spec.reads[0]].groupby("model"):
        datasets = list(dict.fromkeys(rows["dataset"])) if spec.per_dataset else [rows["dataset"].iloc[0]]
        for dataset in datasets:
            frames = {t: df[(df["model"] == model) & (df["dataset"] == dataset)] if "model" in df else df
                      for t, df in tables.items()}
            frames = _latest_setting(frames, spec.reads[0])
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
    """``make figures``: every experiment folder under ``results_dir`` (merged views rebuilt too)."""
    written = []
    for d in sorted(Path(results_dir).iterdir()):
        if d.is_dir():
            rebuild_views(d, tables_of(d))
            written += draw_experiment(d)
    return written
