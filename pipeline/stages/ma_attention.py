"""Stage ``ma_attention``: massive activations act as an implicit attention bias (paper A, §4).

Reproduces paper A's attention figures (head-averaged attention of LLaMA2-7B layer 3 and later
layers on the MMLU prompt, concentrated on the massive-activation tokens) and its attention-output
decomposition (the value update from those tokens is nearly constant across queries).

On one prompt: (1) find the massive-activation tokens S (positions with some |h| > max(abs,
rel x median |h|) at the first layer that has any: the "massive layer"); (2) one eager forward
records every layer's attention probabilities; (3) per layer, the share of attention on S versus
a random control; (4) for the chosen layers, split the attention output into the part from S and
the rest and measure how constant each is across queries; (5) the heat maps.

Tables written (``results/<experiment>/``):
  ma_attention_share          one row per decoder layer: share of attention on S and controls
  ma_attention_decomposition  one row per decomposition layer: constancy of part_S vs part_rest
  ma_attention_maps           (layer, query, key) for key <= query: head-mean prob and log-prob

Arguments: :class:`pipeline.config.massive_activations.MaAttentionArgs`. The default prompt is paper
A exp4's MMLU prompt; its official code tokenized it without special tokens (``prompt_bos=never``),
the default ``auto`` follows the model's tokenizer.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from pipeline.analysis.attention import (
    attention_share,
    attention_site,
    capture_attention_weights,
    constancy,
    control_share,
    decompose_output,
    eager_attention,
    expand_kv_heads,
    head_mean_logprobs,
    uniform_share,
)
from pipeline.analysis.massive import cell_layers, is_steady, massive_cells
from pipeline.config.massive_activations import MaAttentionArgs
from pipeline.core.registry import StageSpec, register_stage
from pipeline.hooks.forward import capture
from pipeline.hooks.positions import delimiter_test, position_tokens, token_types
from pipeline.models.arch import decoder_layers, layer, layer_module, num_layers, prefix_roles
from pipeline.models.load import forward_without_logits

STAGE = "ma_attention"
log = logging.getLogger(__name__)


@torch.inference_mode()
def detect_massive(ctx, ids: torch.Tensor, abs_threshold: float, rel_threshold: float) -> list[list[tuple[int, int]]]:
    """Per decoder layer, the (position, dim) cells of ``ids`` (1, T) holding a massive activation."""
    found: dict[int, list[tuple[int, int]]] = {}
    modules = {str(i): m for i, m in enumerate(decoder_layers(ctx.model))}
    with capture(modules, lambda n, h: found.__setitem__(
            int(n), massive_cells(h[0], abs_threshold, rel_threshold))):
        forward_without_logits(ctx.model, ids.to(ctx.device))
    return [found[i] for i in range(len(modules))]


def steady_positions(cells_by_layer: list[list[tuple[int, int]]]) -> tuple[list[int], int | None, dict[int, list[int]]]:
    """The token set S: positions holding a *steady* massive activation in some dim
    (:func:`is_steady` per (position, dim): in at least half the layers from where it first
    appears), the first layer where a steady one appears (a transient dim on the same token
    earlier does not count), and the positions left out (position -> the layers it was massive)."""
    layers_of = cell_layers(cells_by_layer)
    n = len(cells_by_layer)
    steady = {c: ls for c, ls in layers_of.items() if is_steady(ls, n)}
    keys = sorted({p for p, _ in steady})
    first = min((ls[0] for ls in steady.values()), default=None)
    left_out: dict[int, set[int]] = {}
    for (p, _), ls in layers_of.items():
        if p not in keys:
            left_out.setdefault(p, set()).update(ls)
    return keys, first, {p: sorted(ls) for p, ls in sorted(left_out.items())}


def choose_layers(model: torch.nn.Module, layers: list[int] | int | str, massive_layer: int | None) -> list[int]:
    """0-based layers. "auto": the layer after the massive layer, the middle one and the last;
    "after_massive": every layer after the massive layer (the first that attends to its output)."""
    n = num_layers(model)
    start = min((massive_layer if massive_layer is not None else 0) + 1, n - 1)
    if layers == "auto":
        chosen = sorted({start, max(start, n // 2), n - 1})
    elif layers == "after_massive":
        chosen = list(range(start, n))
    else:
        chosen = [int(i) for i in ([layers] if isinstance(layers, int) else layers)]
    for i in chosen:
        layer(model, i)  # PipelineError when out of range
    return chosen


@torch.inference_mode()
def record_attention(ctx, ids: torch.Tensor, chosen: list[int]) -> dict[str, dict[int, torch.Tensor]]:
    """One eager forward: head-mean probabilities (T, T) of every layer (reduced in the hook);
    for the ``chosen`` layers also the per-head probabilities (H, T, T), the values (T, KV*d) and
    the output projection's output (T, D). All on the CPU in float32 (the prompt is short)."""
    rec: dict[str, dict[int, torch.Tensor]] = {"mean": {}, "probs": {}, "v": {}, "o": {}, "extra": {}}

    def on_probs(name: str, w: torch.Tensor) -> None:
        i, p = int(name), w[0].detach().float()
        extra = p.shape[-1] - p.shape[-2]  # an explicit key/value slot (k') before the tokens
        if extra:
            rec["extra"][i] = float(p[..., :extra].sum(-1).mean())
            p = p[..., extra:]  # the maps, shares and decomposition are over the tokens
        rec["mean"][i] = p.mean(0).cpu()
        if i in chosen:
            rec["probs"][i] = p.cpu()

    def keep(kind: str):
        return lambda name, t: rec[kind].__setitem__(int(name), t[0].detach().float().cpu())

    attn = {str(i): layer_module(ctx.model, i, "attn") for i in range(num_layers(ctx.model))}
    sites: dict[str, dict[str, torch.nn.Module]] = {"v": {}, "o": {}}
    for kind, i in ((k, i) for k in sites for i in chosen):
        module = attention_site(ctx.model, i, f"{kind}_proj")
        if module is not None:  # None: fused qkv or Conv1D, no decomposition for this arch
            sites[kind][str(i)] = module
    with eager_attention(ctx.model), capture_attention_weights(attn, on_probs), \
            capture(sites["v"], keep("v")), capture(sites["o"], keep("o")):
        forward_without_logits(ctx.model, ids.to(ctx.device))
    return rec


def share_rows(rec: dict, keys: list[int], massive_by_layer: list[list[int]], token_set: str) -> list[dict]:
    """Per layer: attention share on S, on |S| random other keys, and under uniform attention."""
    rows = []
    for i, mean in sorted(rec["mean"].items()):
        p = mean.unsqueeze(0)
        rows.append({"layer": i, "layer_1based": i + 1, "share_massive": attention_share(p, keys),
                     "share_control": control_share(p, keys), "share_uniform": uniform_share(p.shape[-1], keys),
                     "n_massive_tokens": len(keys), "massive_positions": " ".join(map(str, keys)),
                     "token_set": token_set, "share_extra_slot": rec["extra"].get(i, math.nan),
                     "massive_positions_at_output": " ".join(map(str, massive_by_layer[i]))})
    return rows


def decomposition_row(ctx, i: int, rec: dict, keys: list[int]) -> dict | None:
    """Constancy of part_S and part_rest over queries i > max(S) at layer ``i``; None if the
    architecture has no separate v/o projections (fused qkv, GPT-2 Conv1D).

    With |S| = 1, part_S(i) = W concat_h(p^h_iS v^h_S): its cosine is 1 whenever the heads' weights
    on S stay proportional (even a random model's near-uniform attention gives ~1), so the
    relative variance, which also sees the magnitude, is the stricter test of "constant"."""
    o_proj = attention_site(ctx.model, i, "o_proj")
    if i not in rec["v"] or o_proj is None:
        return None
    probs = rec["probs"][i]
    n_heads = probs.shape[0]
    head_dim = o_proj.in_features // n_heads
    values = expand_kv_heads(rec["v"][i], n_heads, head_dim)
    part_s, part_rest = decompose_output(probs, values, o_proj.weight.detach().float().cpu(), keys)
    bias = o_proj.bias.detach().double().cpu() if o_proj.bias is not None else 0.0
    actual = rec["o"][i].double()
    err = ((part_s + part_rest + bias - actual).norm(dim=1) / actual.norm(dim=1).clamp_min(1e-30)).max()
    q = slice(max(keys) + 1, None)
    cos_s, var_s = constancy(part_s[q])
    cos_r, var_r = constancy(part_rest[q])
    norm_s, norm_r = float(part_s[q].norm(dim=1).mean()), float(part_rest[q].norm(dim=1).mean())
    return {"layer": i, "layer_1based": i + 1, "n_queries": int(part_s[q].shape[0]),
            "cos_massive": cos_s, "relvar_massive": var_s, "cos_rest": cos_r, "relvar_rest": var_r,
            "norm_massive": norm_s, "norm_rest": norm_r, "norm_ratio": norm_s / max(norm_r, 1e-30),
            "share_massive_queries": float(probs[:, q][:, :, keys].double().sum(-1).mean()),
            "max_recon_rel_err": float(err), "o_proj_bias_in_neither_part": o_proj.bias is not None,
            "extra_slot_in_neither_part": i in rec["extra"]}


def map_rows(rec: dict, chosen: list[int], tokens: list[str], keys: list[int]) -> list[dict]:
    """Heat-map cells with key <= query (the rest is masked) for the chosen layers."""
    rows = []
    for i in chosen:
        prob, logp = rec["mean"][i], head_mean_logprobs(rec["probs"][i])
        for q in range(len(tokens)):
            for k in range(q + 1):
                rows.append({"layer": i, "layer_1based": i + 1, "query": q, "key": k,
                             "prob": float(prob[q, k]), "logprob": float(logp[q, k]),
                             "query_token": tokens[q], "key_token": tokens[k], "key_in_massive_set": k in keys})
    return rows


def run(ctx, args: MaAttentionArgs) -> dict[str, Any]:
    """Attention concentration on massive-activation tokens and the implicit-bias decomposition.

    ``layers`` (heat maps): "auto", "after_massive" or 0-based indices; ``decomp_layers``: the
    same choices, or "layers" for the heat-map layers. Out-of-range layers raise PipelineError.
    """
    ids = ctx.encode(args.prompt, args.prompt_bos)
    prefix = prefix_roles(ctx.model)  # tokens the model puts before the text (a sink) lead its hidden states
    tokens = position_tokens(ctx.model, ctx.tokenizer, ids[0].tolist())
    cells_by_layer = detect_massive(ctx, ids, args.abs_threshold, args.rel_threshold)
    keys, massive_layer, transient = steady_positions(cells_by_layer)
    massive_by_layer = [sorted({p for p, _ in cells}) for cells in cells_by_layer]
    notes = []
    if massive_layer is None:  # keep going on the starting token, and say so everywhere
        keys, token_set = [0], "first_token (no steady massive activation found)"
        notes.append("no steady massive activation on this prompt: S = {first token} as a stand-in")
        log.warning(notes[-1])
    else:
        token_set = "massive"
    if transient:
        shown = list(transient.items())[:6]
        notes.append(f"not steady (massive in too few layers), left out of S: {len(transient)} position(s): "
                     + ", ".join(f"{p} {tokens[p]!r} (layers {ls[0]}-{ls[-1]})" for p, ls in shown)
                     + (", ..." if len(transient) > len(shown) else ""))
    chosen = choose_layers(ctx.model, args.layers, massive_layer)
    decomp_at = (chosen if args.decomp_layers == "layers"
                 else choose_layers(ctx.model, args.decomp_layers, massive_layer))
    rec = record_attention(ctx, ids, sorted(set(chosen) | set(decomp_at)))

    types = prefix + token_types(ids, delimiter_test(ctx.tokenizer, list(args.delimiters)))[0]
    massive_tokens = [{"position": p, "token": tokens[p], "token_type": types[p]} for p in keys]
    shares = share_rows(rec, keys, massive_by_layer, token_set)
    decomp = [r for i in decomp_at if (r := decomposition_row(ctx, i, rec, keys)) is not None]
    if len(decomp) < len(decomp_at):
        notes.append(f"no decomposition for {ctx.arch.model_type}: its ArchSpec has no separate v_proj/o_proj")
        log.warning(notes[-1])
    maps = map_rows(rec, chosen, tokens, keys)

    paths = {}
    for table, rows in [("ma_attention_share", shares), ("ma_attention_decomposition", decomp),
                        ("ma_attention_maps", maps)]:
        if rows:
            paths[table] = ctx.results.write(table, rows, stage=STAGE)
    by_layer = {r["layer"]: r for r in shares}
    metrics = {"ma_attn/massive_layer": -1 if massive_layer is None else massive_layer,
               "ma_attn/n_massive_tokens": len(keys) if massive_layer is not None else 0}
    for i in chosen:
        metrics[f"ma_attn/share_massive_L{i}"] = by_layer[i]["share_massive"]
        metrics[f"ma_attn/share_control_L{i}"] = by_layer[i]["share_control"]
    for r in decomp:
        metrics[f"ma_attn/cos_massive_L{r['layer']}"] = r["cos_massive"]
        metrics[f"ma_attn/cos_rest_L{r['layer']}"] = r["cos_rest"]
    ctx.logger.log_metrics(metrics)
    ctx.logger.log_table("ma_attention_share", _frame(shares))
    if decomp:
        ctx.logger.log_table("ma_attention_decomposition", _frame(decomp))
    return {"metrics": metrics, "paths": paths, "massive_layer": massive_layer, "massive_tokens": massive_tokens,
            "layers": chosen, "share_rows": shares, "decomp_rows": decomp, "n_tokens": len(tokens), "tokens": tokens,
            "token_set": token_set, "notes": notes}


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def format_summary(out: dict[str, Any]) -> str:
    """One screen: the massive tokens, attention on them per chosen layer, the decomposition."""
    ml = out["massive_layer"]
    where = "none found" if ml is None else f"first at layer {ml} (0-based; paper A counts from 1: {ml + 1})"
    lines = [f"attention and massive activations ({out['n_tokens']}-token prompt; massive activations {where}):"]
    toks = ", ".join(f"{t['position']} {t['token']!r} ({t['token_type']})" for t in out["massive_tokens"])
    lines.append(f"  token set S [{out['token_set']}]: {toks}")
    lines.append(f"  {'layer':>5} {'share on S':>11} {'control':>9} {'uniform':>9}"
                 f"   {'cos S':>7} {'relvar S':>9} {'cos rest':>9} {'relvar rest':>12}"
                 f" {'|S|/|rest|':>11} {'queries':>8}")
    shares = {r["layer"]: r for r in out["share_rows"]}
    decomp = {r["layer"]: r for r in out["decomp_rows"]}
    for i in out["layers"]:
        s, d = shares[i], decomp.get(i)
        line = f"  {i:>5} {s['share_massive']:>11.3f} {s['share_control']:>9.3f} {s['share_uniform']:>9.3f}"
        if d:
            line += (f"   {d['cos_massive']:>7.3f} {d['relvar_massive']:>9.3f} {d['cos_rest']:>9.3f}"
                     f" {d['relvar_rest']:>12.3f} {d['norm_ratio']:>11.2f} {d['n_queries']:>8}")
        lines.append(line)
    lines.append("  (share: mean over heads and queries after S of the attention mass on S; control: "
                 "|S| random other visible keys; the decomposition uses the queries after the last of S)")
    few = [r for r in out["decomp_rows"] if r["n_queries"] < 8]
    if few:
        lines.append(f"  warning: only {min(r['n_queries'] for r in few)} queries after S for the decomposition: "
                     "its constancy numbers rest on very few points (use a longer prompt)")
    rows = out["decomp_rows"]
    if rows and {r["layer"] for r in rows} != set(out["layers"]):
        med = {k: sorted(r[k] for r in rows)[len(rows) // 2]
               for k in ("cos_massive", "relvar_massive", "cos_rest", "relvar_rest")}
        wins = sum(r["cos_massive"] > r["cos_rest"] and r["relvar_massive"] < r["relvar_rest"] for r in rows)
        lines.append(f"  decomposition over {len(rows)} layers ({rows[0]['layer']}..{rows[-1]['layer']}), medians: "
                     f"cos S {med['cos_massive']:.3f}, relvar S {med['relvar_massive']:.3f}, cos rest "
                     f"{med['cos_rest']:.3f}, relvar rest {med['relvar_rest']:.3f}; "
                     f"part_S more constant in {wins}/{len(rows)}")
    lines += [f"  note: {n}" for n in out["notes"]]
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('ma_attention_share', 'ma_attention_decomposition', 'ma_attention_maps'),
                                artefact='paper A §4: attention concentration, implicit attention bias'))
