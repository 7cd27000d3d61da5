"""The figure registry: each figure names its stage, the tables it reads and how to draw them.

Figure modules (one per paper: ``figures/massive_activations.py``, ``figures/super_weight.py``, ...)
register their functions with :func:`figure`; importing :mod:`pipeline.figures` imports every one
of them, and :func:`pipeline.figures.draw_experiment` draws every registered figure whose
tables exist in an experiment folder, once per model. Figures read CSVs only, never a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.core.errors import PipelineError  # noqa: E402


def token_label(token: object) -> str:
    """A token as a tick label that is never blank: escapes shown (\\n), a token of spaces
    drawn as open boxes (a red bold ' ' was invisible in the attention maps), '' as a symbol."""
    text = repr(str(token))[1:-1]
    if not text.strip():
        return "\u2423" * len(text) if text else "\u2205"
    return text


def save(fig, out: Path) -> Path:
    """Lay out, write as a 150-dpi PNG, free the figure (a full disk: one line, no traceback)."""
    try:
        fig.tight_layout()
        fig.savefig(out, dpi=150)
    except OSError as err:
        raise PipelineError(f"could not write figure {out}: {err.strerror or err} (the CSVs are intact; "
                            "make figures redraws it)") from err
    finally:
        plt.close(fig)
    return out


@dataclass(frozen=True)
class FigureSpec:
    """``draw(rows, model, out, **others) -> Path | None``: ``rows`` are one model's rows of the
    first table of ``reads`` (required; one dataset: the model's first, or each with
    ``per_dataset``), ``others`` the same model's rows of the other tables, by name (None when
    that table is missing). ``text_columns`` hold token text: an empty token stays "", not NaN."""

    stage: str
    stem: str
    reads: tuple[str, ...]
    draw: Callable[..., Path | None]
    per_dataset: bool = False
    text_columns: tuple[str, ...] = ()
    across_models: bool = False  # one figure of every model's rows (variants side by side)


FIGURES: list[FigureSpec] = []


def figure(stage: str, stem: str, reads: tuple[str, ...], *, per_dataset: bool = False,
           text_columns: tuple[str, ...] = (), across_models: bool = False):
    """Decorator: register ``fn(rows, model, out, **others)`` as a figure of ``stage``
    (``across_models``: ``fn(rows, "all", out, **others)`` once, with every model's rows)."""
    def register(fn: Callable[..., Path | None]):
        FIGURES.append(FigureSpec(stage, stem, reads, fn, per_dataset, text_columns, across_models))
        return fn
    return register
