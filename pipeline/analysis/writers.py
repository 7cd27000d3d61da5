"""How each steady massive activation of the residual stream is written: by one super weight, by
several MLPs each through one weight (none essential alone), or by no MLP at all (attention or
the embedding). The super-weight directory answers "which weights are super weights"; this
answers "where does each massive activation come from", and is never silently empty: on a model
that normalises the MLP output before the residual, one real massive dim (~1e5) is written by six
consecutive MLPs and rebuilt when any one is zeroed, which no single-weight directory can say.
"""

from __future__ import annotations

import torch

from pipeline.analysis.massive import is_steady, massive_mask
from pipeline.analysis.super_weight import down_proj_io, explain_spike, site
from pipeline.hooks.weights import WeightSite, down_proj_matrix, scale_weights


def _massive_cells(hs: dict, abs_threshold: float, rel_threshold: float) -> dict[tuple[int, int], list[int]]:
    """(token, dim) -> layers where the residual stream holds a massive activation there."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i in sorted(hs):
        for t, d in torch.nonzero(massive_mask(hs[i], abs_threshold, rel_threshold)).tolist():
            cells.setdefault((t, d), []).append(i)
    return cells


@torch.inference_mode()
def massive_structure(model: torch.nn.Module, ids: torch.Tensor, found: list[dict], *, rel_spike: float = 0.05,
                      abs_threshold: float = 100.0, rel_threshold: float = 1000.0) -> tuple[list[dict], list[dict]]:
    """How each steady massive activation of the residual stream is built, whether or not one
    super weight explains it. Per steady (token, dim): the MLPs that write at least ``rel_spike``
    of its peak value into the residual (each with its one largest weight and that weight's
    share), what remains of the peak after zeroing the detected ``creates`` super weights, and
    after zeroing only the largest writer's top weight (later layers may rebuild it). Returns
    (one row per massive activation with a computed ``structure`` verdict, one row per writer)."""
    xs, ys, hs, rs = down_proj_io(model, ids)
    cells = _massive_cells(hs, abs_threshold, rel_threshold)
    steady = {c: ls for c, ls in cells.items() if is_steady(ls, len(hs))}
    summary, writers = [], []
    creates = [site(f) for f in found if f["role"] == "creates"]
    for (t, d), layers in sorted(steady.items(), key=lambda kv: -max(abs(float(hs[i][kv[0]])) for i in kv[1])):
        peak = max(range(len(hs)), key=lambda i: abs(float(hs[i][t, d])))
        value = float(hs[peak][t, d])
        mine = []
        for i in range(peak + 1):
            if (i, None) not in rs:  # mixture-of-experts layer: no single dense writer
                continue
            w = explain_spike(xs[(i, None)], ys[(i, None)], down_proj_matrix(model, i), rs[(i, None)], at=(t, d))
            if w["out_value"] * value > 0 and abs(w["out_value"]) >= rel_spike * abs(value):
                mine.append({"token": t, "dim": d, "layer": i, **{k: w[k] for k in ("col", "weight", "in_value",
                                                                                    "down_out", "share")},
                             "written": w["out_value"], "written_frac_of_peak": w["out_value"] / value})
        remaining = {}
        top = max(mine, key=lambda m: abs(m["written"]), default=None)
        tries = {"detected": creates, "top_writer": [WeightSite(top["layer"], d, top["col"])] if top else []}
        for what, sites in tries.items():
            if sites:
                with scale_weights(model, sites, 0.0):
                    remaining[what] = float(down_proj_io(model, ids)[2][peak][t, d]) / value
        summary.append({"token": t, "dim": d, "first_layer": layers[0], "peak_layer": peak, "peak_value": value,
                        "n_layers_massive": len(layers), "n_writers": len(mine),
                        "writer_layers": " ".join(str(m["layer"]) for m in mine),
                        "min_writer_share": min((m["share"] for m in mine), default=float("nan")),
                        "remaining_after_detected": remaining.get("detected", float("nan")),
                        "remaining_after_top_writer": remaining.get("top_writer", float("nan")),
                        "structure": _verdict(d, mine, remaining, found)})
        writers += mine
    return summary, writers


def _verdict(dim: int, writers: list[dict], remaining: dict, found: list[dict]) -> str:
    """One computed line: single super weight, distributed over several MLPs, or neither."""
    mine = [f for f in found if f["role"] == "creates" and f["row"] == dim]
    if mine:  # detection already checked that zeroing it removes most of what it writes
        f = mine[0]
        return (f"one super weight: layer {f['layer']} W[{dim}, {f['col']}] (with the detected super weights "
                f"zeroed, {remaining['detected']:.0%} of the peak is left)")
    if len(writers) >= 2:
        shares = [w["share"] for w in writers]
        detected = (f"zeroing the detected super weights leaves {remaining['detected']:.0%}, " if "detected" in remaining
                    else "no super weight detected; ")
        rebuilt = remaining.get("top_writer", 0.0) >= 0.5
        return (f"distributed: written by {len(writers)} MLPs (layers {' '.join(str(w['layer']) for w in writers)}), "
                f"the largest weight of each explaining {min(shares):.0%}-{max(shares):.0%} of its write "
                f"(>= 90% in {sum(x >= 0.9 for x in shares)}); {detected}zeroing the largest writer's weight leaves "
                f"{remaining.get('top_writer', 1.0):.0%}" + (" (kept up or rebuilt by the other writers)" if rebuilt else "")
                + ": not one super weight")
    if len(writers) == 1:
        return (f"one MLP writes it (layer {writers[0]['layer']}, its largest weight {writers[0]['share']:.0%}) but no "
                "input spike makes it a super weight by paper B's rule")
    return "not written by an MLP (attention or the embedding): no super weight to find"
