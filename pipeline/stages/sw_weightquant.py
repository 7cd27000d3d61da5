"""Stage ``sw_weightquant``: INT4 round-to-nearest weight quantization over block sizes, with and
without super-weight handling (paper B §5.2, Fig. 7, Table 6).

Every matrix inside the decoder layers (attention and MLP linears, MoE experts; not embeddings,
norms or the LM head, as paper B's code) is fake-quantized with asymmetric min-max RTN to
``bits`` bits per block (``kernels.block_quant``: blocks are contiguous chunks of the flattened
stored weight, paper B's "128x128" = 16,384 elements; ``tile=[rows, cols]`` = one 2-D tile shape
instead of the list of block sizes). Methods:

  rtn               plain blockwise RTN
  rtn_clip_restore  paper B's "Ours": W_hat = RESTORE(Q^-1(Q(CLIP_z(W)))): each matrix clamped
                    before its block ranges are taken (``clip``: ``official`` = per block to
                    +-(mean|w| + z std|w|), as the official quantize_blockwise; ``text`` = to the
                    tensor's mean +- z std, as paper B's text reads), quantized, and the super
                    weights (detected by ``sw_detect``, never hard-coded) written back in full
                    precision. z is chosen per block size from ``z_grid`` by the minimum
                    reconstruction error on calibration data: sum over the linear layers of
                    ||X (W - W_hat)^T||^2 / ||X W^T||^2, X = each layer's inputs on held-in text
                    (paper B: 500 WikiText-2 train examples; offline: the train split of the wiki
                    corpus). ``inf`` in the grid means no clipping.

A block size that does not divide a matrix (``ragged``): a shorter last block by default; the
official code quantizes such a matrix per tensor instead (``ragged=per_tensor``), which on
SmolLM2's 884,736-element matrices turns every block size above 16,384 into per-tensor: we keep
the blocks so that the sweep measures block sizes, and offer the official rule by name.

``sw_scales`` (Table 6): the super weights multiplied by each factor before quantization (rtn)
or when restored (rtn_clip_restore); 1 = the plain methods.

Each condition gets perplexity and the paper-B zero-shot average (``conditions.evaluate_conditions``,
which checks the model bit-identical after each). Tables: ``sw_weightquant`` (long),
``sw_weightquant_table`` (one row per condition), ``sw_weightquant_z`` (the z search:
block size x z -> reconstruction error, the chosen one flagged). Arguments:
:class:`pipeline.config.super_weight.SwWeightquantArgs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from tqdm import tqdm

from pipeline.analysis.super_weight import super_weights
from pipeline.config.super_weight import SwWeightquantArgs
from pipeline.core.errors import PipelineError
from pipeline.core.paper import paper_table_lines
from pipeline.core.registry import StageSpec, register_stage
from pipeline.evaluation.conditions import evaluate_conditions, write_by_condition
from pipeline.evaluation.summary import format_number, format_table
from pipeline.hooks.inputs import observe_inputs
from pipeline.interventions.quant import RTN_METHODS, int_fake_quant, quantized_model
from pipeline.models.matrices import WeightSite, decoder_matrices, stored_index

STAGE = "sw_weightquant"


def condition_name(method: str, block: int, sw_scale: float = 1.0, tile: tuple[int, int] | None = None) -> str:
    size = f"t{tile[0]}x{tile[1]}" if tile else f"b{block}"
    return f"{method}_{size}" + ("" if sw_scale == 1 else f"_sw{sw_scale:g}")


def calibration_inputs(model, windows: torch.Tensor, device, max_tokens: int | None = None,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """Each decoder matrix's input rows (``observe_inputs``: experts get their routed tokens),
    float32 on the CPU. With ``max_tokens``, each window keeps its first token (where massive and
    super activations sit) and a seeded random share of the others, so that paper-size
    calibration sets (500 x 2048 tokens) fit in memory; an expert keeps its routed rows among them."""
    n_tok = windows.shape[1]
    keep = None
    if max_tokens is not None and windows.numel() > max_tokens:
        per = max(1, max_tokens // len(windows))
        gen = torch.Generator().manual_seed(seed)
        keep = [torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(n_tok - 1, generator=gen)[: per - 1]])
                for _ in range(len(windows))]
    got: dict[str, list] = {}

    def take(name: str, rows: torch.Tensor, window: int) -> None:
        if keep is not None and rows.shape[0] == n_tok:
            rows = rows[keep[window].to(rows.device)]
        got.setdefault(name, []).append(rows.float().cpu())

    observe_inputs(model, windows, device, take)
    return {n: torch.cat(v) for n, v in got.items()}


@torch.inference_mode()
def reconstruction_error(model, inputs: dict[str, torch.Tensor], *, method: str, bits: int, block_size: int,
                         z: float | None, sites: Sequence[WeightSite], tile=None, clip: str = "official",
                         ragged: str = "short_last_block") -> float:
    """sum ||X (W - W_hat)^T||^2 / sum ||X W^T||^2 over every decoder matrix with inputs (the
    same matrices :func:`pipeline.interventions.quant.quantized_model` quantizes, experts included)."""
    kept: dict[int, list] = {}
    for s in sites:
        ptr, idx = stored_index(model, s)
        kept.setdefault(ptr, []).append(idx)
    num = den = 0.0
    for m in decoder_matrices(model):
        if m.name not in inputs:
            continue
        w = m.stored
        w_hat = int_fake_quant(w, bits=bits, block_size=block_size, z=z if method == "rtn_clip_restore" else None,
                               tile=tile, clip=clip, ragged=ragged)
        if method == "rtn_clip_restore":
            for idx in kept.get(w.data_ptr(), []):
                w_hat[idx] = w[idx]
        x = inputs[m.name].to(w.device)
        diff, full = (w - w_hat).float(), w.float()
        if not m.in_out:  # (out, in) -> (in, out)
            diff, full = diff.T, full.T
        num += float((x @ diff).pow(2).sum())
        den += float((x @ full).pow(2).sum())
    return num / den


def choose_z(model, inputs, *, bits, block_size, z_grid, sites, tile=None, **rules) -> tuple[float, list[dict]]:
    """z with the least reconstruction error over ``z_grid`` (``rules``: clip and ragged)."""
    rows = [{"block_size": block_size, "method": "rtn_clip_restore", "z": float(z),
             "rel_error": reconstruction_error(model, inputs, method="rtn_clip_restore", bits=bits,
                                               block_size=block_size, z=z, sites=sites, tile=tile, **rules)}
            for z in tqdm(z_grid, desc=f"z search, block {block_size}", leave=False)]
    rows.append({"block_size": block_size, "method": "rtn", "z": math.nan,
                 "rel_error": reconstruction_error(model, inputs, method="rtn", bits=bits, block_size=block_size,
                                                   z=None, sites=sites, tile=tile, **rules)})
    best = min((r for r in rows if r["method"] == "rtn_clip_restore"), key=lambda r: r["rel_error"])
    for r in rows:
        r["chosen"] = r is best
    return best["z"], rows


def run(ctx, args: SwWeightquantArgs) -> dict[str, Any]:
    """Evaluate the model quantized at each block size by each method."""
    methods, bits = args.methods, args.bits
    bad = [m for m in methods if m not in RTN_METHODS]
    if bad:
        raise PipelineError(f"unknown method(s) {bad}; choose from {', '.join(RTN_METHODS)}")
    block_sizes = args.block_sizes
    if not block_sizes or any(int(b) < 1 for b in block_sizes):
        raise PipelineError(f"block_sizes must be positive integers (got {list(block_sizes)})")
    tile = tuple(int(t) for t in args.tile) if args.tile else None
    if tile:  # one tile shape replaces the list of block sizes
        if len(tile) != 2 or min(tile) < 1:
            raise PipelineError(f"tile must be [rows, cols] of positive integers (got {list(tile)})")
        block_sizes = [tile[0] * tile[1]]
    rules = {"clip": args.clip, "ragged": args.ragged}
    int_fake_quant(torch.zeros(1), bits=bits, block_size=1, **rules)  # unknown rules: one line, before any work
    sites = super_weights(ctx, args)
    zs: dict[int, float | None] = {}
    z_rows: list[dict] = []
    if "rtn_clip_restore" in methods:
        if args.z is not None:
            zs = {int(b): float(args.z) for b in block_sizes}
        else:
            calib = ctx.calibration_windows(args.calib_data, args.calib_split, args.calib_seq_len, args.calib_windows)
            inputs = calibration_inputs(ctx.model, calib, ctx.device, args.calib_max_tokens, ctx.seed)
            for b in block_sizes:
                zs[int(b)], rows = choose_z(ctx.model, inputs, bits=bits, block_size=int(b), z_grid=args.z_grid,
                                            sites=sites, tile=tile, **rules)
                z_rows += rows
            del inputs
    conditions, describe = {}, {}
    if args.include_original:
        conditions["original"] = nullcontext
        describe["original"] = {"method": "none", "block_size": 0, "z": math.nan, "sw_scale": 1.0}
    for b in (int(b) for b in block_sizes):
        for m in methods:
            for s in (float(s) for s in args.sw_scales):
                name = condition_name(m, b, s, tile)
                zb = zs.get(b) if m == "rtn_clip_restore" else None
                conditions[name] = (lambda m=m, b=b, zb=zb, s=s: quantized_model(
                    ctx.model, method=m, bits=bits, block_size=b, z=zb, sites=sites, sw_scale=s, tile=tile, **rules))
                describe[name] = {"method": m, "block_size": b, "z": math.nan if zb is None else zb, "sw_scale": s}
    sw_text = ";".join(s.key for s in sites)
    for d in describe.values():
        d.update(bits=bits, tile="x".join(map(str, tile)) if tile else "", super_weights=sw_text, **rules)
    rows, table = evaluate_conditions(
        ctx, STAGE, conditions, ppl_sets=ctx.eval_windows(args.ppl_data, args.ppl_seq_len, args.ppl_windows),
        eval_suite=args.eval_suite, zero_shot_limit=args.zero_shot_limit, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, describe=describe, tables=("sw_weightquant", "sw_weightquant_table"),
        baseline="original")
    paths = write_by_condition(ctx, STAGE, {"sw_weightquant": rows, "sw_weightquant_table": table})
    if z_rows:
        paths["sw_weightquant_z"] = ctx.results.write("sw_weightquant_z", z_rows, stage=STAGE)
    return {"table": table, "z_rows": z_rows, "z": zs, "sites": sites, "paths": paths,
            "paper": ctx.paper_numbers("super_weight")}


def format_summary(out: dict[str, Any]) -> str:
    lines = [f"INT-N blockwise RTN (super weights: {', '.join(map(str, out['sites']))}):"]
    for b, zb in out["z"].items():
        errs = {r["method"] if r["method"] == "rtn" else f"z={r['z']:g}": r["rel_error"]
                for r in out["z_rows"] if r["block_size"] == b}
        lines.append(f"  block {b}: z chosen {zb:g}"
                     f" (output error {format_number(min(v for k, v in errs.items() if k != 'rtn'))}"
                     f" vs rtn {format_number(errs.get('rtn', math.nan))})")
    lines += format_table(out["table"])
    lines += paper_table_lines(out.get("paper"), "fig7", "avg accuracy % by block size", sep=": ")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('sw_weightquant', 'sw_weightquant_table', 'sw_weightquant_items',
                                        'sw_weightquant_z'),
                                artefact='paper B §5.2: Fig. 7, Table 6'))
