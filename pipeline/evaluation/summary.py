"""Numbers and condition tables as the one-screen stage summaries print them."""

from __future__ import annotations

import math
from typing import Any


def format_number(v: Any) -> str:
    """A number as the summaries print it: 4 significant digits, ``inf`` and ``nan`` by name."""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else ("nan" if math.isnan(v) else f"{v:.4g}")
    return str(v)


def format_table(table: list[dict], first: str = "condition") -> list[str]:
    """The paper layout: conditions as rows, perplexities and the mean accuracy as columns."""
    cols = [k for k in table[0] if k.startswith("ppl_")] + (["acc_mean"] if "acc_mean" in table[0] else [])
    lines = ["  " + f"{first:<22}" + "".join(f"{c:>22}" for c in cols)]
    for row in table:
        lines.append("  " + f"{row['condition']:<22}" + "".join(f"{format_number(row.get(c)):>22}" for c in cols))
    return lines
