"""Published numbers live in ``conf/paper/<paper>.yaml``; this module only reads them."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from pipeline.core.paths import CONF_DIR


def paper_numbers(paper: str, model_key: str | None) -> dict[str, Any] | None:
    """The entries of ``conf/paper/<paper>.yaml`` for one of the paper's models, or None.

    Each entry is ``{value, source, verified}``; ``model_key`` is the model config's ``paper_key``.
    """
    if not model_key:
        return None
    path = CONF_DIR / "paper" / f"{paper}.yaml"
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return data.get("models", {}).get(model_key)


def paper_table_lines(paper: dict | None, key: str, what: str, sep: str = " ") -> list[str]:
    """Summary lines for a two-level published table ``paper[key]["value"][row][col]``, or none."""
    entry = (paper or {}).get(key)
    if not entry:
        return []
    lines = [f"  paper B ({entry['source']}), {what}:"]
    for row, cols in entry["value"].items():
        lines.append(f"    {row:<24}" + "  ".join(f"{c}{sep}{v}" for c, v in cols.items()))
    return lines
