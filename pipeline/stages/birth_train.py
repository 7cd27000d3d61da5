"""Stage ``birth_train``: paper C (Bietti et al. 2023), a 2-layer transformer learning an induction
head on fresh bigram-with-triggers sequences (:mod:`pipeline.data.bigram`), with the official
metrics and memory-recall probes every ``eval_every`` steps (:mod:`pipeline.analysis.induction`).

Tables: ``birth_curve`` (one row per evaluation, with ``step``: the training loss, the batch
metrics measured as the official code does, on the batch of that iteration before its update,
the memory probes, ``acc_end_test`` on a fixed held-out batch, and with a start token its
attention share and residual norm), ``birth_attention`` (the trained model's attention maps on
the first positions of one fixed sequence: Fig. 2). The trained model is saved with
``save_pretrained`` and loads like any model (``model.source=local``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.analysis.attention import slot_shares
from pipeline.analysis.induction import batch_metrics, first_crossing, memory_probes
from pipeline.analysis.profile import profile_layers
from pipeline.config.training import BirthTrainArgs
from pipeline.core.errors import PipelineError
from pipeline.core.paths import REPO_ROOT
from pipeline.core.registry import StageSpec, register_stage
from pipeline.data.bigram import BigramTask, generate, shakespeare_stats
from pipeline.data.bigram import fixed_triggers as trigger_ids
from pipeline.hooks.forward import capture
from pipeline.train.checkpoint import point_latest
from pipeline.train.data import BigramBatches
from pipeline.train.loop import freeze_rules, train

STAGE = "birth_train"
PROBES = ("acc_end", "wo1", "wk1", "wk0", "wk0_64")


def start_token_stats(model, x: torch.Tensor) -> dict[str, float]:
    """With a start token at position 0: per layer, the attention it receives (mean over heads
    and queries after it) and its residual norm over the mean norm of the other positions."""
    norms: list[torch.Tensor] = []
    layers = {str(i): layer for i, layer in enumerate(model.layers)}
    with capture(layers, lambda _name, h: norms.append(h.norm(dim=-1))):
        atts = model(input_ids=x, output_attentions=True).attentions
    out = {}
    for i, (a, n) in enumerate(zip(atts, norms, strict=True)):
        shares = slot_shares(a)  # the start token is the first token of the text here
        out[f"L{i}_start_share"] = shares["first"]
        if a.shape[-1] > a.shape[-2]:  # a k'/v' slot
            out[f"L{i}_kprime_share"] = shares["kprime"]
        out[f"L{i}_start_norm_ratio"] = float(n[:, 0].mean() / n[:, 1:].mean())
    return out


def run(ctx, args: BirthTrainArgs) -> dict[str, Any]:
    """Train ``ctx.model`` (model_type birth) on the task; write the curves and attention maps."""
    model = ctx.model
    if getattr(model.config, "model_type", None) != "birth":
        raise PipelineError(f"stage {STAGE} trains paper C's models (model=birth_simplified or birth_full), "
                            f"not {ctx.model_name}")
    stats = shakespeare_stats()
    bos, seq_len = args.bos, args.block_size
    bos_id = ctx.tokenizer.bos_token_id if bos else None
    if bos and bos_id is None:
        raise PipelineError("bos=true needs a tokenizer with a start token (model.tokenizer.bos=true)")
    if model.config.vocab_size != stats.vocab_size + bool(bos) or model.config.n_positions < seq_len + bool(bos):
        raise PipelineError(f"the model's vocabulary ({model.config.vocab_size}) / positions "
                            f"({model.config.n_positions}) do not fit {stats.vocab_size} characters"
                            f"{' + a start token' if bos else ''} and T = {seq_len}")
    task = BigramTask(k=args.k, fixed_triggers=args.fixed_triggers, outputs=args.outputs,
                      ood="train" if args.ood else None, no_repeat=args.no_repeat, seq_len=seq_len)
    test_task = BigramTask(k=args.k, fixed_triggers=args.fixed_triggers, outputs=args.test_outputs or args.outputs,
                           ood="test" if args.ood else None, no_repeat=args.no_repeat, seq_len=seq_len)
    source = BigramBatches(stats, task, args.micro_batch, seed=ctx.seed, loss_head_only=args.loss_head_only,
                           bos_id=bos_id)
    held_out = generate(stats, test_task, np.random.default_rng(0), args.test_sequences)
    test = source.with_bos(*(torch.from_numpy(a) for a in _split(held_out)))
    triggers = trigger_ids(stats, task) if args.fixed_triggers else None
    n_train = int(0.75 * stats.vocab_size) if args.ood else stats.vocab_size
    dev, off = ctx.device, int(bos)

    def on_eval(step: int) -> dict[str, Any]:
        x, y, c = source.with_bos(*source.sample("train", step, 0))  # the batch of iteration `step`
        out = model(input_ids=x.to(dev), output_attentions=True)
        row = batch_metrics(out.logits, out.attentions, x[:, off:].to(dev), y[:, off:].to(dev), c[:, off:].to(dev), off)
        row.update(memory_probes(model, triggers=triggers, n_train_tokens=n_train, bigram=stats.bigram))
        xt, yt, ct = (t.to(dev) for t in test)
        pred = model(input_ids=xt).logits[:, off:].argmax(-1)
        sel = ct[:, off:] >= 2
        row["acc_end_test"] = float((pred[sel] == yt[:, off:][sel]).float().mean())
        if bos:
            row.update(start_token_stats(model, x[:8].to(dev)))
            layers = profile_layers(ctx, x[:4], batch_size=4, abs_threshold=args.abs_threshold,
                                    rel_threshold=args.rel_threshold, max_hits=64, delimiters=["."],
                                    quiet=True).layer_rows()
            row["ratio_max"] = max(r["top1_over_median"] for r in layers)
            row["top1_max"] = max(r["top1"] for r in layers)
        ctx.logger.log_metrics({f"birth/{k}": v for k, v in row.items()}, step=step)  # live curves in W&B
        return row

    where = (Path(args.checkpoint_dir) if args.checkpoint_dir
             else REPO_ROOT / "outputs" / "checkpoints" / ctx.experiment / ctx.results.key)
    history = train(model, source.batch, args, where / "last", device=dev, seed=ctx.seed, on_eval=on_eval, desc=STAGE)
    model.save_pretrained(where / "final")
    ctx.tokenizer.save_pretrained(where / "final")
    label = args.label
    point_latest(where.parent / f"{ctx.model_name}-{re.sub(r'[^A-Za-z0-9_.=-]+', '_', label)}-latest", where)
    curve = [r for r in history if "acc_end" in r]
    loss_at = {h["step"]: h["loss"] for h in history if "loss" in h}
    for r in curve:  # the training loss of the step that followed the evaluation (official: the same batch)
        r["train_loss"] = loss_at.get(r["step"] + 1, float("nan"))
    maps = attention_rows(model, test[0][:1].to(dev), args.attention_positions, ctx.tokenizer)
    freeze_step = min((until for until, _ in freeze_rules(args.freeze_until)), default=None)
    setting = {"label": label, "dim": model.config.dim, "batch_size": args.micro_batch, "freeze_step": freeze_step}
    curve = [{**setting, **{k: v for k, v in r.items() if k != "loss"}} for r in curve]
    paths = {"birth_curve": ctx.results.write("birth_curve", curve, stage=STAGE, step="rows"),
             "birth_attention": ctx.results.write("birth_attention", [{"label": label, **r} for r in maps],
                                                  stage=STAGE, step=args.steps)}
    last = curve[-1]
    crossings = {p: (first_crossing(curve, p, 0.5), first_crossing(curve, p, 0.9)) for p in PROBES}
    return {"paths": paths, "last": last, "label": label, "crossings": crossings, "steps": args.steps,
            "checkpoint": str(where / "final"), "task": task, "batch_size": args.micro_batch}


def _split(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokens, counter = pair
    return tokens[:, :-1], tokens[:, 1:], counter[:, :-1]


@torch.no_grad()
def attention_rows(model, x: torch.Tensor, n: int, tokenizer) -> list[dict]:
    """Every layer's and head's attention among the first ``n`` positions of one sequence (Fig. 2)."""
    atts = model(input_ids=x[:, :n], output_attentions=True).attentions
    labels = [tokenizer.decode([t]) for t in x[0, :n].tolist()]
    rows = []
    for layer, a in enumerate(atts):
        extra = a.shape[-1] - a.shape[-2]
        for head in range(a.shape[1]):
            for q in range(a.shape[2]):
                rows += [{"layer": layer, "head": head, "query": q, "key": kk, "query_token": labels[q],
                          "key_token": labels[kk], "weight": float(a[0, head, q, kk + extra])} for kk in range(q + 1)]
    return rows


def format_summary(out: dict[str, Any]) -> str:
    r = out["last"]
    lines = [f"paper C ({out['label']}): {out['steps']} steps of {out['batch_size']} fresh sequences ({out['task']})",
             f"  loss: bigram positions {r['loss_bigram']:.3f}, counter >= 2 {r['loss_head']:.3f}; "
             f"acc_end {r['acc_end']:.3f} (held out {r['acc_end_test']:.3f})",
             "  memory probes: " + ", ".join(f"{p} {r[p]:.3f}" for p in PROBES[1:]) + f", ff1_loss {r['ff1_loss']:.3f}",
             "  first step >= 0.5 / >= 0.9: " + ", ".join(f"{p} {a} / {b}" for p, (a, b) in out["crossings"].items()),
             f"  model saved: model.source=local model.path={out['checkpoint']}"]
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary, tables=("birth_curve", "birth_attention"),
                                artefact="paper C Figs. 2-4: induction-head formation and memory probes"))
