"""The super-weight detector (paper B §3.2, Fig. 3, Table 2), used by every super-weight stage.

Per decoder layer, hooks record the MLP down projection's input X (T, in) and output Y (T, out)
for one prompt. A super activation is an output spike Y[t, row] that one product X[t, col] *
W[row, col] explains: the input spikes at ``col`` too. Such a W[row, col] is a super weight. It
is zeroed (reversibly) and the prompt re-run, until no output spike above ``threshold`` is
explained by a single weight, so that super weights hidden behind a larger one are found too
(paper B: "zero it and repeat"). Works on every architecture with an ArchSpec; mixture-of-experts
layers per expert (each expert's down-projection input and output recomputed from the routing,
:mod:`pipeline.hooks.moe`).

Each weight found gets a ``role``: ``creates`` (it writes a super activation into a residual
stream that did not hold it: paper B's super weights) or ``cancels`` (a late layer writing the
opposite of a massive value already in the residual stream, as LLaMA-7B's layer 30 does in paper
B's Fig. 3). Downstream stages act on the ``creates`` ones by default.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline.analysis.massive import massive_cells
from pipeline.config.shared import SuperWeightDetection
from pipeline.core.errors import PipelineError
from pipeline.hooks.forward import capture
from pipeline.hooks.moe import expert_down_io, routed_calls
from pipeline.interventions.weights import scale_weights
from pipeline.models.arch import (
    decoder_layers,
    get_arch,
    layer_module,
    num_layers,
    prefix_roles,
    resolve,
)
from pipeline.models.matrices import WeightSite, down_proj_matrix


@torch.inference_mode()
def down_proj_io(model: torch.nn.Module, ids: torch.Tensor) -> tuple[dict, dict, dict, dict]:
    """One forward: per down projection the input (T, in) and output (T, out) for row 0 of
    ``ids``, keyed by ``(layer, expert)`` (expert None on dense layers; on a mixture-of-experts
    layer one key per expert that any token is routed to, recomputed by :mod:`pipeline.hooks.moe`),
    each decoder layer's output (T, d) (for the massive-activation cross-check), and per dense
    layer what the MLP adds to the residual stream (T, d): the output of the arch spec's
    ``mlp_out_norm`` where the MLP output is normalised before it joins, else the output itself."""
    xs, ys, hs, rs, handles = {}, {}, {}, {}, []
    calls: dict[int, list] = {}
    spec = get_arch(model)
    n_tok = ids.shape[1] + len(prefix_roles(model))  # a sink token leads the hidden states

    def first(t):  # batch row 0 of a (B, T, .) or token-flattened (B * T, .) tensor
        return t.reshape(-1, n_tok, t.shape[-1])[0]

    down, norms = {}, {}
    for i in range(num_layers(model)):
        mod = layer_module(model, i, "down_proj")
        if spec.moe and hasattr(mod, spec.expert_down_param):
            calls[i] = []
            handles.append(routed_calls(mod, calls[i]))
            continue
        down[i] = mod
        if spec.mlp_out_norm:
            norms[i] = resolve(decoder_layers(model)[i], spec.mlp_out_norm, spec.model_type)

    def keep(store: dict, keyed: bool):
        return lambda i, t: store.__setitem__((i, None) if keyed else i, (first(t) if keyed else t[0]).float().cpu())

    try:
        with (capture(down, keep(xs, True), inputs=True), capture(down, keep(ys, True)),
              capture(norms, keep(rs, True)), capture(dict(enumerate(decoder_layers(model))), keep(hs, False))):
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    for i, seen in calls.items():
        experts = layer_module(model, i, "down_proj")
        n_experts = getattr(experts, spec.expert_down_param).shape[0]
        hidden, top_index = first(seen[0][0]), first(seen[0][1])
        for e in sorted(int(v) for v in top_index.unique() if 0 <= v < n_experts):
            _routed, x, y = expert_down_io(experts, spec.expert_down_param, hidden, top_index, e)
            xs[(i, e)], ys[(i, e)] = x.float().cpu(), y.float().cpu()
    for key, y in ys.items():
        rs.setdefault(key, y)  # no norm after the MLP: the output joins the residual as it is
    return xs, ys, hs, rs


def layer_maxima(xs: dict, ys: dict, rs: dict | None = None) -> list[dict]:
    """Fig. 3: the signed value at the max-|.| of each layer's down-projection input and output
    (on a mixture-of-experts layer: over its experts, with the expert of each maximum), and the
    largest value the MLP adds to the residual (``residual_max``: after a post-MLP norm, if any)."""
    rows: dict[int, dict] = {}
    for (i, e) in sorted(xs, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        x, y, r = xs[(i, e)], ys[(i, e)], (rs or ys)[(i, e)]
        xt, xc = divmod(int(x.abs().argmax()), x.shape[1])
        yt, yc = divmod(int(y.abs().argmax()), y.shape[1])
        rt, rc = divmod(int(r.abs().argmax()), r.shape[1])
        row = {"layer": i, "in_max": float(x[xt, xc]), "in_token": xt, "in_channel": xc,
               "out_max": float(y[yt, yc]), "out_token": yt, "out_channel": yc,
               "residual_max": float(r[rt, rc]), "residual_token": rt, "residual_channel": rc}
        if e is None:
            rows[i] = row
            continue
        prev = rows.setdefault(i, {**row, "in_expert": e, "out_expert": e})
        if abs(row["in_max"]) > abs(prev["in_max"]):
            prev.update({k: row[k] for k in ("in_max", "in_token", "in_channel")}, in_expert=e)
        if abs(row["out_max"]) > abs(prev["out_max"]):
            prev.update({k: row[k] for k in ("out_max", "out_token", "out_channel", "residual_max",
                                             "residual_token", "residual_channel")}, out_expert=e)
    return [rows[i] for i in sorted(rows)]


def explain_spike(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, r: torch.Tensor | None = None,
                  at: tuple[int, int] | None = None) -> dict:
    """For the largest value the MLP adds to the residual, |R[t, row]| (``r``; R = Y where no norm
    follows the MLP), or for ``at`` = (t, row): the input channel ``col`` whose product X[t, col]
    * W[row, col] contributes most, and the share of the down-projection output Y[t, row] it
    explains. A norm after the MLP scales a token's whole output vector, so that share is also
    its share of R[t, row]; ``out_value`` is R[t, row] (where the weight's effect joins the
    residual), ``down_out`` the raw Y[t, row]."""
    r = y if r is None else r
    t, row = at if at is not None else divmod(int(r.abs().argmax()), r.shape[1])
    products = x[t].double() * w[row].double().cpu()
    col = int(products.abs().argmax())
    return {"token": t, "row": row, "col": col, "out_value": float(r[t, row]), "down_out": float(y[t, row]),
            "in_value": float(x[t, col]), "weight": float(w[row, col]),
            "share": float(products[col] / y[t, row]) if y[t, row] != 0 else 0.0}


def massive_dims(hs: dict, abs_threshold: float, rel_threshold: float) -> set[int]:
    """Dims holding a massive activation (paper A's definition) in any layer's output."""
    return {d for h in hs.values() for _, d in massive_cells(h, abs_threshold, rel_threshold)}


def site(found: dict) -> WeightSite:
    """The WeightSite of a directory row."""
    return WeightSite(found["layer"], found["row"], found["col"], found.get("expert"))


class Detection(NamedTuple):
    found: list[dict]  # the directory: super weights, in the order found
    maxima: list[dict]  # Fig. 3: per layer, on the original model
    hs: dict  # the original pass's decoder-layer outputs
    threshold: float  # output spike threshold
    in_threshold: float  # input spike threshold
    rebuilt: list[dict]  # candidates whose massive activation survives their removal (not super weights)
    original: tuple[dict, dict, dict, dict]  # down_proj_io of the original model: (xs, ys, hs, rs)
    decoys: list[dict]  # candidates whose weight is ordinary in its matrix: a large input did it


def outlier_level(numel: int) -> float:
    """The |w| / std a Gaussian of the matrix's std exceeds about once among ``numel`` weights
    (two-sided): a weight above it is an outlier of its matrix, not a large input's accomplice."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - 0.5 / max(numel, 2))


def weight_z(model: torch.nn.Module, c: dict) -> tuple[float, float]:
    """(|W[row, col]| / std of its matrix, the outlier level of that matrix)."""
    w = down_proj_matrix(model, c["layer"], c.get("expert")).detach()
    std = float(w.double().std())
    return abs(c["weight"]) / max(std, 1e-30), outlier_level(w.numel())


def _cell_peak(hs: dict, token: int, row: int, start: int, sign: float) -> float:
    """The largest value of the written sign at (token, row) from layer ``start`` on (a later
    layer that overshoots to the opposite sign, as a cancelling weight does, is not a survival)."""
    return max(sign * float(hs[i][token, row]) for i in hs if i >= start)


def detect(model: torch.nn.Module, ids: torch.Tensor, *, threshold: float | str = "auto",
           in_threshold: float | str = "auto", min_weight_z: float | str = "auto",
           rel_spike: float = 0.05, min_abs: float = 50.0, min_share: float = 0.5,
           max_iter: int = 10, max_survive: float = 0.5) -> Detection:
    """Iterative detection (paper B: zero the super weight found and repeat, so that super
    weights hidden behind a larger one are found too).

    ``threshold`` "auto" = max(``min_abs``, ``rel_spike`` x the largest value an MLP adds to the
    residual in the original pass): paper B's fixed 50 suits LLaMA-7B (super activation about
    1,300) but not models whose activations run at another scale (SmolLM2: 24,000; with 50 the
    iteration keeps finding moderate spikes of a few hundred and never ends). The output is
    measured where it joins the residual stream (after the arch spec's ``mlp_out_norm``, if any).
    ``in_threshold`` "auto": the input must exceed ``rel_spike`` x the largest down-projection
    input of the pass, its own scale (a post-MLP norm's gain, hundreds on one real model,
    separates the two scales; and SmolLM2's second layer-11 super weight, W[507, 1487], has an
    input of 1,074 beside a 24,000 output: the output's threshold missed it); a number: fixed
    (paper B: one threshold, 50, for both). One product X[t, col] * W[row, col] must explain
    ``min_share`` of the output, and the weight must be an outlier of its matrix (``min_weight_z``
    standard deviations; "auto": :func:`outlier_level`; 0: no test, paper B's rule): a huge input
    times an ordinary weight (SmolLM2's layer 28: 4,024 x 0.42) is a ``decoy``, set aside.

    A candidate that writes a new value (not one cancelling the residual) must also be
    essential, as paper B's super weights are: with it zeroed, the residual stream's largest
    value of the written sign at (token, row) from its layer on must fall below ``max_survive``
    of what it was.
    One that later layers rebuild is set aside in ``rebuilt`` (never zeroed): without this test
    the iteration chased a massive dim written by one MLP after another through the network.
    """
    found: list[dict] = []
    rebuilt: list[dict] = []
    decoys: list[dict] = []
    maxima, original, in_level = None, None, None
    tries = 0
    while True:
        with scale_weights(model, [site(f) for f in found], 0.0):  # the weights found so far, zeroed
            xs, ys, hs, rs = down_proj_io(model, ids)
            cands = [{"layer": i, **({} if e is None else {"expert": e}),
                      **explain_spike(xs[(i, e)], ys[(i, e)], down_proj_matrix(model, i, e), rs[(i, e)]),
                      "iteration": len(found)} for (i, e) in xs]
        if maxima is None:
            maxima, original = layer_maxima(xs, ys, rs), (xs, ys, hs, rs)
            if threshold == "auto":
                threshold = max(min_abs, rel_spike * max(abs(m["residual_max"]) for m in maxima))
            in_level = (rel_spike * max(abs(m["in_max"]) for m in maxima) if in_threshold == "auto"
                        else float(in_threshold))
        set_aside = {(r["layer"], r.get("expert"), r["row"], r["col"]) for r in rebuilt + decoys}
        cands = [c for c in cands if abs(c["out_value"]) > threshold and abs(c["in_value"]) > in_level
                 and c["share"] >= min_share and (c["layer"], c.get("expert"), c["row"], c["col"]) not in set_aside]
        # the largest spike first: smaller ones downstream may be its consequences and vanish
        new = max(cands, key=lambda c: abs(c["out_value"]), default=None)
        if new is None:
            break
        tries += 1
        if len(found) == max_iter or tries > max_iter + 4 * len(hs):
            raise PipelineError(f"super-weight detection did not converge in {max_iter} iterations "
                                "(raise max_iter or the threshold)")
        new["weight_z"], level = weight_z(model, new)
        level = level if min_weight_z == "auto" else float(min_weight_z)
        if new["weight_z"] < level:
            new["reason"] = (f"W = {new['weight']:+.3g} is {new['weight_z']:.1f} std of its matrix (an outlier: "
                             f"> {level:.1f}); the input {new['in_value']:+.4g} made the spike")
            decoys.append(new)
            continue
        if not _cancels(new, hs):
            sign = 1.0 if new["out_value"] > 0 else -1.0
            before = _cell_peak(hs, new["token"], new["row"], new["layer"], sign)
            with scale_weights(model, [site(f) for f in found + [new]], 0.0):
                after = _cell_peak(down_proj_io(model, ids)[2], new["token"], new["row"], new["layer"], sign)
            new["survives"] = max(after, 0.0) / before if before > 0 else 0.0
            if new["survives"] >= max_survive:
                new["reason"] = (f"{new['survives']:.0%} of its massive activation is left with it zeroed "
                                 "(other MLPs keep it up or rebuild it)")
                rebuilt.append(new)
                continue
        found.append(new)
    for f in found + rebuilt + decoys:  # on the ORIGINAL model: does the residual stream already hold this value?
        f["role"] = "cancels" if _cancels(f, original[2]) else "creates"
    return Detection(found, maxima, original[2], float(threshold), float(in_level), rebuilt, original, decoys)


def _cancels(f: dict, hs: dict) -> bool:
    """The weight writes the opposite of a massive value the residual stream already holds (as
    LLaMA-7B's layer 30 in paper B's Fig. 3); sets ``residual_before``."""
    f["residual_before"] = float(hs[f["layer"] - 1][f["token"], f["row"]]) if f["layer"] else 0.0
    return f["residual_before"] * f["out_value"] < 0 and abs(f["residual_before"]) > 0.5 * abs(f["out_value"])


def detect_kwargs(args: SuperWeightDetection) -> dict:
    """:func:`detect`'s keyword arguments from a stage's detection group (every field but the
    prompt, which the caller encodes, and ``roles``, which filters what is found)."""
    return {"threshold": args.threshold, "in_threshold": args.in_threshold, "min_weight_z": args.min_weight_z,
            "rel_spike": args.rel_spike, "min_abs": args.min_abs, "min_share": args.min_share,
            "max_iter": args.max_iter}


def super_weights(ctx, args: SuperWeightDetection) -> list[WeightSite]:
    """The super weights other stages act on (detected on ``args.detect_prompt`` with all of
    ``args``' detection settings, never hard-coded): those whose role is in ``args.roles``, the
    first ``args.max_weights`` of them (in the order found: the largest spike first)."""
    ids = ctx.encode(args.detect_prompt).to(ctx.device)
    found = detect(ctx.model, ids, **detect_kwargs(args)).found
    sites = [site(f) for f in found if f["role"] in args.roles][:args.max_weights]
    if not sites:
        raise PipelineError(f"no super weight ({'/'.join(args.roles)}) detected with prompt {args.detect_prompt!r}; "
                            "lower the threshold (the stage's threshold argument)")
    return sites
