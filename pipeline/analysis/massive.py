"""Streaming statistics of |hidden state| per decoder layer, reduced inside forward hooks.

Paper A (Sun et al. 2024) §2, Table 1 and Fig. 3: per layer, the top-1/2/3 and the median of the
magnitudes of the residual-stream output; an activation is *massive* when its magnitude is above
``abs_threshold`` (100) and above ``rel_threshold`` (1000) times the median magnitude of its hidden
state (one sequence, one layer, all tokens and dims).

Memory does not grow with the number of sequences: a hook keeps, per sequence, only the ``max_hits``
largest magnitudes (with their flat indices and signed values) and the median, on the device; after
each forward these few numbers move to the CPU and fold into running sums keyed by
(layer, dim, token type). Massive activations are far fewer than ``max_hits`` per layer, so taking
candidates from a top-k is exact; when every one of the top ``max_hits`` passes the thresholds the
run says so (``truncated``) instead of silently dropping hits. NaN and inf values (an fp16
overflow) are counted per layer (``n_nonfinite``) and left out of the top-k, the median and the
hits: one NaN no longer turns a layer's median into NaN and hides every massive activation.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch


def massive_threshold(median: float, abs_threshold: float, rel_threshold: float) -> float:
    """Paper A's definition, the one place it is written: an activation is massive when its
    magnitude exceeds this, i.e. both ``abs_threshold`` (100) and ``rel_threshold`` (1000) times
    the median magnitude of its hidden state (one sequence, one layer, all tokens and dims)."""
    return max(abs_threshold, rel_threshold * median)


def massive_mask(h: torch.Tensor, abs_threshold: float, rel_threshold: float) -> torch.Tensor:
    """Boolean mask of the massive activations of one sequence's hidden state ``h`` (T, D)."""
    mag = h.detach().float().abs()
    return mag > massive_threshold(float(lower_median(mag.reshape(1, -1))[0]), abs_threshold, rel_threshold)


def massive_cells(h: torch.Tensor, abs_threshold: float, rel_threshold: float) -> list[tuple[int, int]]:
    """The (position, dim) cells of one sequence's hidden state ``h`` (T, D) that are massive."""
    return [(int(t), int(d)) for t, d in torch.nonzero(massive_mask(h, abs_threshold, rel_threshold)).tolist()]


def cell_layers(cells_by_layer) -> dict[tuple[int, int], list[int]]:
    """(position, dim) -> the layers where it is massive, from each layer's massive cells in
    layer order (a list, or a dict keyed by layer index)."""
    items = cells_by_layer.items() if isinstance(cells_by_layer, dict) else enumerate(cells_by_layer)
    out: dict[tuple[int, int], list[int]] = {}
    for i, cells in sorted(items):
        for cell in cells:
            out.setdefault(cell, []).append(i)
    return out


SEEN_TOP = 64  # per sequence and layer, the top entries a dim's peak is searched among
STEADY_LAYER_FRAC = 0.5  # of the layers from its first appearance to the last
STEADY_SEQ_FRAC = 0.5    # of the sequences, at the layer where it first appears


def is_steady(layers_present, n_layers: int, min_layer_frac: float = STEADY_LAYER_FRAC) -> bool:
    """The one definition of a *steady* massive activation, the fixed bias paper A studies: from
    the layer where it first appears to the last layer, it is massive in at least
    ``min_layer_frac`` of them, and in two layers or more.
    A transient spike in a few early layers (e.g. ~3e3 in layers 0-2 of one real model, before
    the ~1e5 steady one appears at layer 3) is not: interventions, the attention stage's token
    set and Fig. 1 must not pick it just because it comes first."""
    present = sorted(set(layers_present))
    if not present:
        return False
    span = n_layers - present[0]
    return len(present) >= 2 and len(present) >= min_layer_frac * span


def lower_median(mag: torch.Tensor) -> torch.Tensor:
    """Exact lower median of each row of a non-negative (B, N) tensor, equal to
    ``mag.median(dim=1).values``.

    On a CPU, torch's median is a selection over the whole row (about 9 ms for 1024 x 576
    values, 15% of a SmolLM2 forward pass when done for all 30 layers). Non-negative float32 values
    sort like their bit patterns, so a histogram of the top 16 bits finds the bucket that holds
    the median rank, and a selection runs on that bucket only (3-6x faster, same result). CUDA
    keeps torch's median (a fast sort there); rows with NaN fall back to torch too.
    """
    if mag.is_cuda or torch.isnan(mag).any():
        return mag.median(dim=1).values
    k = (mag.shape[1] - 1) // 2  # 0-based rank of the lower median
    out = []
    for row in mag.float():
        high = row.view(torch.int32) >> 16
        cum = torch.bincount(high, minlength=1 << 15).cumsum(0)
        bucket = int(torch.searchsorted(cum, k, right=True))
        below = int(cum[bucket - 1]) if bucket else 0
        out.append(row[high == bucket].kthvalue(k - below + 1).values)
    return torch.stack(out).to(mag.dtype)


@dataclass
class HitStats:
    """Running statistics of one (layer, dim, token type) group of massive activations."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    vmin: float = math.inf
    vmax: float = -math.inf
    ratio_total: float = 0.0
    sequences: set = field(default_factory=set)
    texts: Counter = field(default_factory=Counter)
    positions: Counter = field(default_factory=Counter)

    def add(self, value: float, ratio: float, seq: int, text: str, pos: int) -> None:
        self.n += 1
        self.total += value
        self.total_sq += value * value
        self.vmin, self.vmax = min(self.vmin, value), max(self.vmax, value)
        self.ratio_total += ratio
        self.sequences.add(seq)
        self.texts[text] += 1
        self.positions[pos] += 1

    def row(self) -> dict:
        mean = self.total / self.n
        var = max(self.total_sq / self.n - mean * mean, 0.0)
        return {
            "n_hits": self.n, "n_sequences_hit": len(self.sequences),
            "value_mean": mean, "value_std": math.sqrt(var), "value_min": self.vmin,
            "value_max": self.vmax, "ratio_to_median_mean": self.ratio_total / self.n,
            "token_text": self.texts.most_common(1)[0][0], "position_mode": self.positions.most_common(1)[0][0],
        }


class LayerProfile:
    """Accumulates Table-1 statistics and massive-activation hits over batches of sequences.

    Usage per batch: ``begin_batch(ids, types, texts)``; forward with ``observe`` hooked on every
    decoder layer; ``end_batch()``.
    """

    def __init__(self, n_layers: int, *, abs_threshold: float = 100.0, rel_threshold: float = 1000.0,
                 max_hits: int = 1024, topk: int = 3):
        self.n_layers, self.k = n_layers, topk
        self.abs_threshold, self.rel_threshold, self.max_hits = abs_threshold, rel_threshold, max_hits
        self.n_seq = 0
        self.top_sum = torch.zeros(n_layers, topk, dtype=torch.float64)
        self.top_max = torch.zeros(n_layers, topk, dtype=torch.float64)
        self.median_sum = torch.zeros(n_layers, dtype=torch.float64)
        self.top1_where: list[Counter] = [Counter() for _ in range(n_layers)]  # (dim, token type)
        self.hits: dict[tuple[int, int, str], HitStats] = defaultdict(HitStats)
        # every (layer, dim, token type) among a sequence's top SEEN_TOP values, massive or not:
        # [sum of signed values, count], so a dim's peak is found in layers where the ratio rule
        # fails too (a median that grows faster than the dim hides it there)
        self.seen: dict[tuple[int, int, str], list[float]] = defaultdict(lambda: [0.0, 0])
        self.truncated: set[int] = set()
        self.nonfinite = [0] * n_layers  # NaN/inf values seen per layer (excluded from the stats)
        self._pending: dict[int, tuple[torch.Tensor, ...]] = {}

    def begin_batch(self, types: list[list[str]], texts: list[list[str]]) -> None:
        self._types, self._texts, self._pending = types, texts, {}

    @torch.no_grad()
    def observe(self, layer: int, h: torch.Tensor) -> None:
        """Hook body: reduce one layer's output ``h`` (B, T, D) to a few device tensors, no sync."""
        self._dims = h.shape[-1]
        flat = h.detach().reshape(h.shape[0], -1)
        mag = flat.abs()
        finite = torch.isfinite(flat)
        bad = (~finite).sum(dim=1)
        if bool(bad.any()):  # NaN/inf (an fp16 overflow): counted, left out of every statistic
            median = torch.nanmedian(mag.masked_fill(~finite, float("nan")), dim=1).values
            mag = mag.masked_fill(~finite, -1.0)  # never among the top values
        else:
            median = lower_median(mag)
        k = min(max(self.max_hits, self.k), mag.shape[1])
        top_vals, top_idx = mag.topk(k, dim=1)  # sorted, descending
        self._pending[layer] = (top_vals, top_idx, flat.gather(1, top_idx), median, bad)

    def end_batch(self) -> None:
        """Move the batch's reductions to the CPU and fold them into the running totals."""
        for layer, tensors in sorted(self._pending.items()):
            top_vals, top_idx, signed, median, bad = (t.cpu() for t in tensors)
            self.nonfinite[layer] += int(bad.sum())
            top_vals, signed, median = top_vals.double(), signed.double(), median.double()
            for b in range(top_vals.shape[0]):
                self.top_sum[layer] += top_vals[b, : self.k]
                self.top_max[layer] = torch.maximum(self.top_max[layer], top_vals[b, : self.k])
                self.median_sum[layer] += median[b]
                self._fold_hits(layer, b, top_vals[b], top_idx[b], signed[b], float(median[b]))
        self.n_seq += len(self._types)
        self._pending = {}

    def _fold_hits(self, layer: int, b: int, vals, idx, signed, median: float) -> None:
        types, texts, seq = self._types[b], self._texts[b], self.n_seq + b
        threshold = massive_threshold(median, self.abs_threshold, self.rel_threshold)
        passed = 0
        for j, (v, i, s) in enumerate(zip(vals.tolist(), idx.tolist(), signed.tolist(), strict=True)):
            pos, dim = divmod(i, self._dims)
            if j == 0:  # where the layer's largest magnitude sits, for the Fig. 3 table
                self.top1_where[layer][(dim, types[pos])] += 1
            if j < SEEN_TOP:
                seen = self.seen[(layer, dim, types[pos])]
                seen[0] += s
                seen[1] += 1
            if not v > threshold:
                if j >= SEEN_TOP:
                    break  # sorted: nothing further passes, and the peak search has its top entries
                continue
            passed += 1
            self.hits[(layer, dim, types[pos])].add(s, v / max(median, 1e-30), seq, texts[pos], pos)
        if passed == len(vals):
            self.truncated.add(layer)

    # --- results -------------------------------------------------------------------------------
    def layer_rows(self) -> list[dict]:
        """Fig. 3 / Table 1: mean over sequences of the top-k and median magnitudes per layer."""
        n = max(self.n_seq, 1)
        rows = []
        for layer in range(self.n_layers):
            top, med = self.top_sum[layer] / n, float(self.median_sum[layer] / n)
            (dim, ttype), _ = self.top1_where[layer].most_common(1)[0] if self.top1_where[layer] else ((-1, ""), 0)
            rows.append({
                "layer": layer, "layer_1based": layer + 1, "n_sequences": self.n_seq,
                **{f"top{j + 1}": float(top[j]) for j in range(self.k)},
                "median": med, "top1_max": float(self.top_max[layer, 0]),
                "top1_over_median": float(top[0]) / med if med > 0 else math.inf,
                "top1_dim": dim, "top1_token_type": ttype,
                "n_massive": sum(s.n for (lay, _, _), s in self.hits.items() if lay == layer) / n,
                "truncated": layer in self.truncated, "n_nonfinite": self.nonfinite[layer],
            })
        return rows

    def seen_values(self) -> dict[tuple[int, str], dict[int, float]]:
        """(dim, token type) -> {layer: mean signed value when among the top values}."""
        out: dict[tuple[int, str], dict[int, float]] = defaultdict(dict)
        for (lay, dim, ttype), (total, n) in self.seen.items():
            out[(dim, ttype)][lay] = total / n
        return out

    def activation_rows(self) -> list[dict]:
        """One row per (layer, dim, token type) with hits: the raw material of the summary."""
        return [
            {"layer": lay, "layer_1based": lay + 1, "dim": dim, "token_type": ttype,
             "frac_sequences": len(s.sequences) / max(self.n_seq, 1), **s.row()}
            for (lay, dim, ttype), s in sorted(self.hits.items())
        ]


def summarize(activation_rows: list[dict], n_layers: int, seen: dict | None = None,
              min_frac: float = STEADY_SEQ_FRAC) -> list[dict]:
    """Group per-layer hits by (dim, token type): first/last layer, the value where it appears,
    whether it is steady (:func:`is_steady`, and massive in ``min_frac`` of the sequences), and
    its peak layer over every layer where it was among the top values (``seen``, from
    :meth:`LayerProfile.seen_values`), not only where it passed the ratio rule."""
    groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for r in activation_rows:
        groups[(r["dim"], r["token_type"])].append(r)
    rows = []
    for (dim, ttype), rs in groups.items():
        first = min(rs, key=lambda r: r["layer"])
        layers = [r["layer"] for r in rs]
        values = {r["layer"]: r["value_mean"] for r in rs} | dict((seen or {}).get((dim, ttype), {}))
        peak_layer = max(values, key=lambda lay: abs(values[lay]))
        rows.append({
            "dim": dim, "token_type": ttype, "token_text": first["token_text"],
            "first_layer": first["layer"], "first_layer_1based": first["layer"] + 1,
            "last_layer": max(layers), "n_layers": len(rs),
            "steady": is_steady(layers, n_layers) and first["frac_sequences"] >= min_frac,
            "value_mean": first["value_mean"], "value_std": first["value_std"],
            "ratio_to_median": first["ratio_to_median_mean"],
            "frac_sequences": first["frac_sequences"], "peak_layer": peak_layer,
            "peak_value_mean": values[peak_layer],
        })
    return sorted(rows, key=lambda r: (r["first_layer"], -abs(r["value_mean"])))


def _label(m: dict) -> str:
    return (f"dim {m['dim']} {m['token_type']} (layers {m['first_layer']}-{m['last_layer']}, massive in "
            f"{m['n_layers']}, {m['frac_sequences']:.0%} of sequences)")


def steady_choice(massive: list[dict], what: str) -> tuple[int | None, str]:
    """The first layer of the steady massive activations among ``massive`` (summary rows), and
    one line saying what was chosen for ``what`` and which non-steady ones were skipped."""
    steady = [m for m in massive if m["steady"]]
    skipped = [m for m in massive if not m["steady"]]
    if not steady:
        line = f"{what}: no steady massive activation"
        return None, line + (f" (not steady: {'; '.join(map(_label, skipped[:3]))})" if skipped else "")
    first = min(m["first_layer"] for m in steady)
    line = (f"{what}: layer {first}, where the steady massive activations first appear: "
            + "; ".join(_label(m) for m in steady if m["first_layer"] == first))
    if skipped:
        line += f"; not steady, skipped: {'; '.join(map(_label, skipped[:3]))}" + (
            f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    return first, line
