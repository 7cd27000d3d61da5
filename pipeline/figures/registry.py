"""The figure registry: each figure names its stage, the tables it reads and how to draw them.

Figure modules (``figures/massive.py``, ``figures/super_weight.py``) register their functions
with :func:`figure`; :func:`pipeline.figures.draw_experiment` draws every registered figure whose
tables exist in an experiment folder, once per model. Figures read CSVs only, never a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def save(fig, out: Path) -> Path:
    """Lay out, write as a 150-dpi PNG, free the figure."""
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def read_attention_maps(path: Path) -> pd.DataFrame:
    """Token-text columns stay text ("NA", "null"); only the probability columns parse as NaN."""
    return pd.read_csv(path, keep_default_na=False, na_values={"prob": [""], "logprob": [""]})


def read_token_table(path: Path) -> pd.DataFrame:
    """A table with a ``token`` text column: a token such as "NA", "null" or "" stays text."""
    return pd.read_csv(path, dtype={"token": str}, keep_default_na=False)


@dataclass(frozen=True)
class FigureSpec:
    """``draw(rows, model, out, **others) -> Path | None``: ``rows`` are one model's rows of the
    first table of ``reads`` (required; one dataset: the model's first, or each with
    ``per_dataset``), ``others`` the same model's rows of the other tables, by name (None when
    that table is missing)."""

    stage: str
    stem: str
    reads: tuple[str, ...]
    draw: Callable[..., Path | None]
    per_dataset: bool = False
    reader: Callable[[Path], pd.DataFrame] = pd.read_csv


FIGURES: list[FigureSpec] = []


def figure(stage: str, stem: str, reads: tuple[str, ...], *, per_dataset: bool = False,
           reader: Callable[[Path], pd.DataFrame] = pd.read_csv):
    """Decorator: register ``fn(rows, model, out, **others)`` as a figure of ``stage``."""
    def register(fn: Callable[..., Path | None]):
        FIGURES.append(FigureSpec(stage, stem, reads, fn, per_dataset, reader))
        return fn
    return register
