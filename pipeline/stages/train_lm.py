"""Stage ``train_lm``: train the run's model from scratch (paper A §4.3's GPT-2 variants) and
record, every ``eval_every`` steps, the validation loss and the massive-activation profile of a
fixed validation batch (the same streaming reducer ``ma_profile`` uses): the **emergence curve**.

Tables: ``train_curve`` (per step: loss, lr; on evaluation steps the validation loss, the largest
top-1 / median ratio over layers and where it sits, attention shares on the first token / the
sink / the k' slot), ``train_profile`` (per evaluation step and layer: top-1/2/3, median, ratio,
where the top-1 sits) and ``train_landscape`` (the trained model's |h| at every token and dim of
one layer on paper A's prompt "Summer is warm. Winter is cold.": its 3-D plot). The trained model
and its tokenizer are saved with ``save_pretrained`` under ``checkpoint_dir`` (default
``outputs/checkpoints/<experiment>/<run key with setting>``) and load like any model:
``model.source=local model.path=<that dir>`` runs every other stage on it. Extending ``steps``
resumes the shorter run (:func:`checkpoint_folder`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.analysis.attention import capture_attention_weights, slot_shares
from pipeline.analysis.profile import layer_landscape, profile_layers
from pipeline.config.training import TrainLmArgs
from pipeline.core.paths import REPO_ROOT
from pipeline.core.provenance import setting_hash
from pipeline.core.registry import StageSpec, register_stage
from pipeline.models.arch import layer_module, num_layers, prefix_roles
from pipeline.models.attention_impl import attention_implementation
from pipeline.train.checkpoint import RESUMABLE_CHANGES, point_latest
from pipeline.train.corpus import corpus_tokens
from pipeline.train.data import TokenBatches
from pipeline.train.loop import distributed, train

STAGE = "train_lm"
PROFILE_COLUMNS = ("top1", "top2", "top3", "median", "top1_over_median", "top1_dim", "top1_token_type")


def attention_shares(ctx, ids: torch.Tensor) -> dict[str, float]:
    """Mean attention (over layers, heads and queries) on the first text token, on the sink
    token(s) and on the k' slot, wherever the model has them."""
    n_prefix = len(prefix_roles(ctx.model))
    per_layer: list[dict[str, float]] = []

    def on_probs(_name: str, p: torch.Tensor) -> None:
        per_layer.append(slot_shares(p, n_prefix))

    attn = {str(i): layer_module(ctx.model, i, "attn") for i in range(num_layers(ctx.model))}
    with attention_implementation(ctx.model, "eager"), capture_attention_weights(attn, on_probs):
        ctx.model(input_ids=ids.to(ctx.device))
    return {f"attn_share_{k}": sum(r[k] for r in per_layer) / len(per_layer) for k in ("first", "sink", "kprime")}


def checkpoint_folder(ctx, args: TrainLmArgs) -> Path:
    """``checkpoint_dir``, or one folder per training setting under ``outputs/checkpoints``: keyed
    by everything that decides the weights and the logged history *except how far to train*, so
    a run with more ``steps`` resumes the shorter one's checkpoint instead of starting over (a
    run of another setting never finds this folder; the loop refuses a foreign checkpoint too)."""
    if args.checkpoint_dir:
        return Path(args.checkpoint_dir)
    kept = {k: v for k, v in asdict(args).items() if k not in RESUMABLE_CHANGES}
    model = {k: v for k, v in ctx.model.config.to_dict().items() if k != "transformers_version"}
    key = setting_hash({"experiment": ctx.experiment, "seed": ctx.seed, "train": kept, "model": model,
                        "tokenizer": len(ctx.tokenizer)})
    return REPO_ROOT / "outputs" / "checkpoints" / ctx.experiment / f"{ctx.model_name}__seed{ctx.seed}__{key}"


def run(ctx, args: TrainLmArgs) -> dict[str, Any]:
    """Train ``ctx.model``; write the curves; save the model where other stages can load it."""
    source = TokenBatches(corpus_tokens(ctx.tokenizer, list(args.data), ctx.catalog), micro_batch=args.micro_batch,
                          block_size=args.block_size, seed=ctx.seed)
    val = [source.batch("val", 0, i) for i in range(args.eval_batches)]  # fixed: the same every evaluation
    probe = source.batch("val", 1, 0)[:args.profile_sequences]
    model = ctx.model

    def on_eval(step: int) -> dict[str, Any]:
        row: dict[str, Any] = {"val_loss": sum(float(model(input_ids=v.to(ctx.device), labels=v.to(ctx.device)).loss)
                                               for v in val) / len(val)}
        prof = profile_layers(ctx, probe, batch_size=len(probe), abs_threshold=args.abs_threshold,
                              rel_threshold=args.rel_threshold, max_hits=64, delimiters=[".", "\n"], quiet=True)
        layers = prof.layer_rows()
        peak = max(layers, key=lambda r: r["top1_over_median"])
        row.update(ratio_max=peak["top1_over_median"], ratio_max_layer=peak["layer"], top1_max=peak["top1"],
                   top1_dim=peak["top1_dim"], top1_token_type=peak["top1_token_type"],
                   massive=any(r["n_massive"] > 0 for r in layers), **attention_shares(ctx, probe))
        ctx.logger.log_metrics({f"train/{k}": float(v) for k, v in row.items() if isinstance(v, (int, float))},
                               step=step)
        for r in layers:  # kept in the history (and so in the checkpoint) for the per-layer table
            row.update({f"L{r['layer']}_{k}": r[k] for k in PROFILE_COLUMNS})
        return row

    where = checkpoint_folder(ctx, args)
    history = train(model, source.batch, args, where / "last", device=ctx.device, seed=ctx.seed, on_eval=on_eval,
                    desc=STAGE)
    if distributed()[0]:  # DDP ranks > 0: their analysis would be thrown away; rank 0 writes everything
        return {"paths": {}, "last": {}, "checkpoint": str(where / "final"), "steps": args.steps}
    model.save_pretrained(where / "final")
    ctx.tokenizer.save_pretrained(where / "final")
    point_latest(where.parent / f"{ctx.model_name}-latest", where)
    curve = [{k: v for k, v in r.items() if not k.startswith("L")} for r in history]
    profile = [{"step": r["step"], "layer": i, "layer_1based": i + 1, **{k: r[f"L{i}_{k}"] for k in PROFILE_COLUMNS}}
               for r in history if "val_loss" in r for i in range(num_layers(model))]
    # paper A's 3-D plot of layer 6 of 12 (index 5) on its prompt: the same relative depth here
    at = max(0, round(num_layers(model) / 2) - 1) if args.landscape_layer == "auto" else int(args.landscape_layer)
    paths = {"train_curve": ctx.results.write("train_curve", curve, stage=STAGE, step="rows"),
             "train_profile": ctx.results.write("train_profile", profile, stage=STAGE, step="rows"),
             "train_landscape": ctx.results.write("train_landscape", layer_landscape(ctx, args.landscape_prompt, at),
                                                  stage=STAGE, step=args.steps)}
    last = next((r for r in reversed(history) if "val_loss" in r), {})
    return {"paths": paths, "last": last, "checkpoint": str(where / "final"), "steps": args.steps,
            "tokens": args.steps * args.grad_accum * args.micro_batch * args.block_size,
            "n_params": sum(p.numel() for p in model.parameters()), "rule": (args.abs_threshold, args.rel_threshold),
            "n_layers": num_layers(model)}


def format_summary(out: dict[str, Any]) -> str:
    r = out["last"]
    above, times = out.get("rule", (100.0, 1000.0))
    lines = [f"trained {out['n_params'] / 1e6:.1f}M parameters for {out['steps']} steps ({out['tokens']:,} tokens): "
             f"val loss {r['val_loss']:.3f}",
             f"  largest top-1 / median: {r['ratio_max']:.0f} at layer {r['ratio_max_layer'] + 1} of {out['n_layers']} "
             f"(1-based, as the figures; dim {r['top1_dim']}, "
             f"{r['top1_token_type']}); massive by paper A's rule (> {above:g} and > {times:g} x median): "
             f"{'yes' if r['massive'] else 'no'}",
             "  attention share on the first token {:.3f}, the sink {:.3f}, the k' slot {:.3f}".format(
                 r["attn_share_first"], r["attn_share_sink"], r["attn_share_kprime"]),
             f"  model saved for the other stages: model.source=local model.path={out['checkpoint']}"]
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=("train_curve", "train_profile", "train_landscape"),
                                artefact="paper A §4.3: GPT-2 with default / sink / explicit attention bias"))
