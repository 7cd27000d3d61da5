"""Published numbers live in ``conf/paper/<paper>.yaml``; this module only reads them."""

from __future__ import annotations

from typing import Any

from pipeline.core.catalog import Catalog, default_catalog


def paper_numbers(paper: str, model_key: str | None, catalog: Catalog | None = None) -> dict[str, Any] | None:
    """The published numbers of ``paper`` (``catalog.paper.<paper>``, from ``conf/paper/``) for one
    of the paper's models, or None.

    Each entry is ``{value, source, verified, paper}``, ``paper`` being the file's citation (so a
    summary can name the paper an entry comes from); ``model_key`` is the model config's ``paper_key``.
    """
    if not model_key:
        return None
    published = (catalog or default_catalog()).get("paper", paper)
    entries = published.get("models", {}).get(model_key)
    if entries is None:
        return None
    return {quantity: {**entry, "paper": published.get("paper", paper)} for quantity, entry in entries.items()}


def paper_table_lines(paper: dict | None, key: str, what: str, sep: str = " ") -> list[str]:
    """Summary lines for a two-level published table ``paper[key]["value"][row][col]``, or none."""
    entry = (paper or {}).get(key)
    if not entry:
        return []
    lines = [f"  {entry.get('paper', 'published')} ({entry['source']}), {what}:"]
    for row, cols in entry["value"].items():
        lines.append(f"    {row:<24}" + "  ".join(f"{c}{sep}{v}" for c, v in cols.items()))
    return lines
