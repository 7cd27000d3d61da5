"""How each steady massive activation of the residual stream is written: by one super weight, by
several MLPs each through one weight (none essential alone), or by no MLP at all (attention or
the embedding). The super-weight directory answers "which weights are super weights"; this
answers "where does each massive activation come from", and is never silently empty: on a model
that normalises the MLP output before the residual, one real massive dim (~1e5) is written by six
consecutive MLPs and rebuilt when any one is zeroed, which no single-weight directory can say.
"""

from __future__ import annotations

import torch

from pipeline.analysis.massive import cell_layers, is_steady, massive_cells
from pipeline.analysis.super_weight import Detection, down_proj_io, explain_spike, site
from pipeline.interventions.weights import scale_weights
from pipeline.models.matrices import WeightSite, down_proj_matrix


@torch.inference_mode()
def massive_structure(model: torch.nn.Module, ids: torch.Tensor, detection: Detection, *, rel_spike: float = 0.05,
                      abs_threshold: float = 100.0, rel_threshold: float = 1000.0) -> tuple[list[dict], list[dict]]:
    """How each steady massive activation of the residual stream is built, whether or not one
    super weight explains it. Per steady (token, dim): the MLPs that write at least ``rel_spike``
    of its peak value into the residual (each with its one largest weight and that weight's
    share), what remains of the peak after zeroing the detected ``creates`` super weights, and
    after zeroing only the largest writer's top weight (later layers may rebuild it). Returns
    (one row per massive activation with a computed ``structure`` verdict, one row per writer).
    The original pass is the detection's own; zeroing the detected weights is one more pass."""
    xs, ys, hs, rs = detection.original
    found = detection.found
    cells = cell_layers({i: massive_cells(h, abs_threshold, rel_threshold) for i, h in hs.items()})
    steady = {c: ls for c, ls in cells.items() if is_steady(ls, len(hs))}
    summary, writers = [], []
    creates = [site(f) for f in found if f["role"] == "creates"]
    without_detected = None
    if steady and creates:
        with scale_weights(model, creates, 0.0):
            without_detected = down_proj_io(model, ids)[2]
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
        if without_detected is not None:
            remaining["detected"] = float(without_detected[peak][t, d]) / value
        top = max(mine, key=lambda m: abs(m["written"]), default=None)
        if top:
            with scale_weights(model, [WeightSite(top["layer"], d, top["col"])], 0.0):
                remaining["top_writer"] = float(down_proj_io(model, ids)[2][peak][t, d]) / value
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
        detected = (f"zeroing the detected super weights leaves {remaining['detected']:.0%}, "
                    if "detected" in remaining else "no super weight detected; ")
        rebuilt = remaining.get("top_writer", 0.0) >= 0.5
        return (f"distributed: written by {len(writers)} MLPs (layers {' '.join(str(w['layer']) for w in writers)}), "
                f"the largest weight of each explaining {min(shares):.0%}-{max(shares):.0%} of its write "
                f"(>= 90% in {sum(x >= 0.9 for x in shares)}); {detected}zeroing the largest writer's weight leaves "
                f"{remaining.get('top_writer', 1.0):.0%}"
                + (" (kept up or rebuilt by the other writers)" if rebuilt else "")
                + ": not one super weight")
    if len(writers) == 1:
        return (f"one MLP writes it (layer {writers[0]['layer']}, its largest weight {writers[0]['share']:.0%}) but no "
                "input spike makes it a super weight by paper B's rule")
    return "not written by an MLP (attention or the embedding): no super weight to find"
