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

import torch

from pipeline.analysis.massive import massive_mask
from pipeline.core.errors import PipelineError
from pipeline.hooks.forward import as_tensor
from pipeline.hooks.moe import expert_down_io, routed_calls
from pipeline.hooks.weights import WeightSite, down_proj_matrix, scale_weights
from pipeline.models.arch import decoder_layers, get_arch, layer_module, num_layers

DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."  # paper B's analyze.py


@torch.inference_mode()
def down_proj_io(model: torch.nn.Module, ids: torch.Tensor) -> tuple[dict, dict, dict]:
    """One forward: per down projection the input (T, in) and output (T, out) for row 0 of
    ``ids``, keyed by ``(layer, expert)`` (expert None on dense layers; on a mixture-of-experts
    layer one key per expert that any token is routed to, recomputed by :mod:`pipeline.moe`), and
    each decoder layer's output (T, d) (for the massive-activation cross-check)."""
    xs, ys, hs, handles = {}, {}, {}, []
    calls: dict[int, list] = {}
    spec = get_arch(model)
    n_tok = ids.shape[1]

    def first(t):  # batch row 0 of a (B, T, .) or token-flattened (B * T, .) tensor
        return t.reshape(-1, n_tok, t.shape[-1])[0]

    try:
        for i in range(num_layers(model)):
            mod = layer_module(model, i, "down_proj")
            if spec.moe and hasattr(mod, spec.expert_down_param):
                calls[i] = []
                handles.append(routed_calls(mod, calls[i]))
                continue

            def pre(_m, args, _i=i):
                xs[(_i, None)] = first(args[0]).float().cpu()

            def post(_m, _a, out, _i=i):
                ys[(_i, None)] = first(as_tensor(out)).float().cpu()

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        for i, lay in enumerate(decoder_layers(model)):
            handles.append(lay.register_forward_hook(
                lambda _m, _a, out, _i=i: hs.__setitem__(_i, as_tensor(out)[0].float().cpu())))
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
    return xs, ys, hs


def layer_maxima(xs: dict, ys: dict) -> list[dict]:
    """Fig. 3: the signed value at the max-|.| of each layer's down-projection input and output
    (on a mixture-of-experts layer: over its experts, with the expert of each maximum)."""
    rows: dict[int, dict] = {}
    for (i, e) in sorted(xs, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        x, y = xs[(i, e)], ys[(i, e)]
        xt, xc = divmod(int(x.abs().argmax()), x.shape[1])
        yt, yc = divmod(int(y.abs().argmax()), y.shape[1])
        row = {"layer": i, "in_max": float(x[xt, xc]), "in_token": xt, "in_channel": xc,
               "out_max": float(y[yt, yc]), "out_token": yt, "out_channel": yc}
        if e is None:
            rows[i] = row
            continue
        prev = rows.setdefault(i, {**row, "in_expert": e, "out_expert": e})
        if abs(row["in_max"]) > abs(prev["in_max"]):
            prev.update({k: row[k] for k in ("in_max", "in_token", "in_channel")}, in_expert=e)
        if abs(row["out_max"]) > abs(prev["out_max"]):
            prev.update({k: row[k] for k in ("out_max", "out_token", "out_channel")}, out_expert=e)
    return [rows[i] for i in sorted(rows)]


def explain_spike(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> dict:
    """For the largest output |Y[t, row]|: the input channel ``col`` whose product X[t, col] *
    W[row, col] contributes most, and the share of Y[t, row] that this one product explains."""
    t, row = divmod(int(y.abs().argmax()), y.shape[1])
    products = x[t].double() * w[row].double().cpu()
    col = int(products.abs().argmax())
    return {"token": t, "row": row, "col": col, "out_value": float(y[t, row]), "in_value": float(x[t, col]),
            "weight": float(w[row, col]), "share": float(products[col] / y[t, row]) if y[t, row] != 0 else 0.0}


def massive_dims(hs: dict, abs_threshold: float, rel_threshold: float) -> set[int]:
    """Dims holding a massive activation (paper A's definition) in any layer's output."""
    return {int(d) for h in hs.values() for d in torch.nonzero(massive_mask(h, abs_threshold, rel_threshold))[:, 1]}


def site(found: dict) -> WeightSite:
    """The WeightSite of a directory row."""
    return WeightSite(found["layer"], found["row"], found["col"], found.get("expert"))


def detect(model: torch.nn.Module, ids: torch.Tensor, *, threshold: float | str = "auto",
           rel_spike: float = 0.05, min_abs: float = 50.0, min_share: float = 0.5,
           max_iter: int = 10) -> tuple[list[dict], list[dict], dict, float]:
    """Iterative detection. Returns (directory rows, Fig. 3 maxima of the original model, the
    original pass's decoder-layer outputs, the spike threshold used).

    ``threshold`` "auto" = max(``min_abs``, ``rel_spike`` x the largest |down-projection output|
    of the original pass): paper B's fixed 50 suits LLaMA-7B (super activation about 1,300) but
    not models whose activations run at another scale (SmolLM2: 24,000; with 50 the iteration
    keeps finding moderate spikes of a few hundred and never ends). Input and output must both
    exceed it, and one product X[t, col] * W[row, col] must explain ``min_share`` of the output.
    """
    found: list[dict] = []
    maxima, hs0 = None, None
    for it in range(max_iter + 1):
        with scale_weights(model, [site(f) for f in found], 0.0):  # the weights found so far, zeroed
            xs, ys, hs = down_proj_io(model, ids)
            cands = [{"layer": i, **({} if e is None else {"expert": e}),
                      **explain_spike(xs[(i, e)], ys[(i, e)], down_proj_matrix(model, i, e)), "iteration": it}
                     for (i, e) in xs]
        if maxima is None:
            maxima, hs0 = layer_maxima(xs, ys), hs
            if threshold == "auto":
                threshold = max(min_abs, rel_spike * max(abs(m["out_max"]) for m in maxima))
        cands = [c for c in cands if abs(c["out_value"]) > threshold and abs(c["in_value"]) > threshold
                 and c["share"] >= min_share]
        # the largest spike first: smaller ones downstream may be its consequences and vanish
        new = max(cands, key=lambda c: abs(c["out_value"]), default=None)
        if new is None:
            break
        if it == max_iter:
            raise PipelineError(f"super-weight detection did not converge in {max_iter} iterations "
                                "(raise max_iter or the threshold)")
        found.append(new)
    for f in found:  # on the ORIGINAL model: does the residual stream already hold this value?
        f["residual_before"] = float(hs0[f["layer"] - 1][f["token"], f["row"]]) if f["layer"] else 0.0
        cancels = f["residual_before"] * f["out_value"] < 0 and abs(f["residual_before"]) > 0.5 * abs(f["out_value"])
        f["role"] = "cancels" if cancels else "creates"
    return found, maxima, hs0, float(threshold)


def super_weights(ctx, *, prompt: str = DEFAULT_PROMPT, roles: tuple[str, ...] = ("creates",), **detect_kw) -> list[WeightSite]:
    """The super weights other stages act on (detected here, never hard-coded)."""
    ids = ctx.encode(prompt).to(ctx.device)
    found = detect(ctx.model, ids, **detect_kw)[0]
    sites = [site(f) for f in found if f["role"] in roles]
    if not sites:
        raise PipelineError(f"no super weight ({'/'.join(roles)}) detected with prompt {prompt!r}; "
                            "lower the threshold (the stage's threshold argument)")
    return sites
