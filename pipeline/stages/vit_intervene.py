"""Stage ``vit_intervene``: registers and massive activations act as fixed biases in ViTs (paper A §5,
Table 5 and the Fix-Reg-Mean table).

Conditions (each a reversible hook context: the model is checked bit-identical after each):
  original      no edit
  set_zero      the steady massive activations (found on the calibration views, never named by
                hand) set to 0 at the first block where they appear (paper A: CLIP ViT-L breaks)
  set_mean      set to their calibration mean (paper A: accuracy kept)
  fix_reg_mean  every register token's whole feature vector overwritten with its calibration mean
                at the input of EVERY block (paper A's Fix-Reg-Mean: DINOv2-reg accuracy kept)
A condition that does not apply (no massive activation found, no registers) is reported as
"not applicable" with the reason, never silently dropped.

Calibration: the means come from ``calib_views`` augmented views (random resized crop + flip,
seeded; paper A: 10k ImageNet-train images with train-time augmentation) of the calibration
images, disjoint from the evaluation images.

Accuracy here is a PROXY (no ImageNet offline): (1) agreement of the pooled feature that DINOv2's
linear heads read (concat of CLS and the mean patch token, registers excluded) with the original
model's: cosine similarity and relative L2 change over the evaluation images; (2) a logistic-
regression probe fitted on the original model's pooled features of scikit-learn's digits
(upsampled to the model's input) and scored under each condition. On a cluster the same
conditions run on ImageNet val (``data=imagenet_val``); the official DINOv2 linear heads are not
wired in (the cluster command says so).

Arguments: :class:`pipeline.config.massive_activations.VitInterveneArgs`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from pipeline.analysis.massive import steady_choice, summarize
from pipeline.analysis.profile import profile_images
from pipeline.config.massive_activations import VitInterveneArgs
from pipeline.core.errors import PipelineError
from pipeline.core.paper import paper_numbers
from pipeline.core.registry import StageSpec, register_stage
from pipeline.evaluation.conditions import write_by_condition
from pipeline.hooks.forward import capture
from pipeline.interventions.sites import Site, set_sites
from pipeline.models.arch import decoder_layers, num_layers, prefix_roles

STAGE = "vit_intervene"
KNOWN_CONDITIONS = frozenset({"original", "set_zero", "set_mean", "fix_reg_mean"})  # what run() can build


def augmented_views(images: list[np.ndarray], views: int, seed: int) -> list[np.ndarray]:
    """``views`` random resized crops (40-100% of the area) with random horizontal flips per image."""
    rng = np.random.default_rng(seed)
    out = []
    for img in images:
        h, w = img.shape[:2]
        for _ in range(views):
            frac = rng.uniform(0.4, 1.0)
            ch, cw = max(8, int(h * np.sqrt(frac))), max(8, int(w * np.sqrt(frac)))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = img[y:y + ch, x:x + cw]
            out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


@torch.inference_mode()
def prefix_input_means(model, pixels: torch.Tensor, device, batch_size: int) -> dict[int, torch.Tensor]:
    """Per block: the mean feature vector of every prefix token at the block's INPUT (n_prefix, d)."""
    n = len(prefix_roles(model))
    sums: dict[int, torch.Tensor] = {}
    blocks = {str(i): b for i, b in enumerate(decoder_layers(model))}

    def add(name: str, h: torch.Tensor) -> None:
        s = h[:, :n].double().sum(0).cpu()
        sums[int(name)] = sums.get(int(name), 0) + s

    with capture(blocks, add, inputs=True):
        for i in range(0, len(pixels), batch_size):
            model(pixel_values=pixels[i:i + batch_size].to(device))
    return {i: (s / len(pixels)).float() for i, s in sums.items()}


@torch.inference_mode()
def pooled(model, pixels: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    """concat(CLS, mean of the patch tokens) of the final normed output, registers excluded."""
    n = len(prefix_roles(model))
    out = []
    for i in range(0, len(pixels), batch_size):
        h = model(pixel_values=pixels[i:i + batch_size].to(device)).last_hidden_state.float().cpu()
        out.append(torch.cat([h[:, 0], h[:, n:].mean(1)], dim=-1))
    return torch.cat(out)


def digits_pixels(processor, n: int) -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = np.random.default_rng(0).permutation(len(digits.images))[:n]
    imgs = [np.repeat((digits.images[i] * (255 / 16)).astype(np.uint8)[..., None], 3, axis=2) for i in idx]
    return processor(images=imgs, return_tensors="pt")["pixel_values"], digits.target[idx]


def run(ctx, args: VitInterveneArgs) -> dict[str, Any]:
    unknown = sorted(set(args.conditions) - KNOWN_CONDITIONS)
    if unknown:
        raise PipelineError(f"unknown conditions {unknown}; known: {', '.join(sorted(KNOWN_CONDITIONS))}")
    images = getattr(ctx.source, "images", None)
    if images is None:
        raise PipelineError(f"stage {STAGE} needs an image dataset (data=skimage_photos), not '{ctx.source.name}'")
    pairs = list(images())
    if len(pairs) < args.eval_images + args.calib_images:
        raise PipelineError(f"image data '{ctx.source.name}' has {len(pairs)} images; {args.eval_images} evaluation + "
                            f"{args.calib_images} calibration images are needed")
    proc, dev, model = ctx.tokenizer, ctx.device, ctx.model
    ev = proc(images=[im for _, im in pairs[:args.eval_images]], return_tensors="pt")["pixel_values"]
    calib_raw = [im for _, im in pairs[args.eval_images:args.eval_images + args.calib_images]]
    calib = proc(images=augmented_views(calib_raw, args.calib_views, args.seed), return_tensors="pt")["pixel_values"]
    roles = prefix_roles(model)
    registers = [r for r in roles if r.startswith("reg")]

    prof = profile_images(ctx, calib, batch_size=args.batch_size, abs_threshold=args.abs_threshold,
                          rel_threshold=args.rel_threshold, max_hits=args.max_hits)
    acts = prof.activation_rows()
    massive = summarize(acts, num_layers(model), prof.seen_values())
    first, why = steady_choice(massive, "intervention block")
    keys = {(m["dim"], m["token_type"]) for m in massive if m["steady"]}
    sites = [r for r in acts if first is not None and r["layer"] == first and (r["dim"], r["token_type"]) in keys
             and r["token_type"] != "patch"]  # a patch has no fixed position to edit
    means = prefix_input_means(model, calib, dev, args.batch_size)
    edits: dict[str, tuple[Any, str]] = {"original": (nullcontext(), "")}
    na_sites = "no steady massive activation on a CLS / register token" if not sites else ""
    for name, value in (("set_zero", lambda s: 0.0), ("set_mean", lambda s: s["value_mean"])):
        edits[name] = ((set_sites(model, {first: [Site(s["token_type"], s["dim"], value(s)) for s in sites]},
                                  lambda t: False) if sites else None), na_sites)
    fix = {i: [Site(r, None, means[i][roles.index(r)]) for r in registers] for i in means}
    edits["fix_reg_mean"] = ((set_sites(model, fix, lambda t: False, at="input") if registers else None),
                             "the model has no register tokens" if not registers else "")

    probe_px, labels = digits_pixels(proc, args.probe_images) if args.probe_images else (None, None)
    base = pooled(model, ev, dev, args.batch_size)
    clf, split = None, None
    if probe_px is not None:
        from sklearn.linear_model import LogisticRegression

        feats0 = pooled(model, probe_px, dev, args.batch_size).numpy()
        split = len(labels) // 2
        clf = LogisticRegression(max_iter=2000).fit(feats0[:split], labels[:split])
    weights_before = [p.detach().clone() for p in model.parameters()]
    rows = []
    for cond in args.conditions:
        ctx_mgr, reason = edits[cond]
        if ctx_mgr is None:
            rows.append({"condition": cond, "metric": "not_applicable", "value": float("nan"), "why": reason})
            print(f"[{STAGE}] {cond}: not applicable ({reason})", flush=True)
            continue
        with ctx_mgr:
            feats = pooled(model, ev, dev, args.batch_size)
            probe = pooled(model, probe_px[split:], dev, args.batch_size).numpy() if clf is not None else None
        cos = torch.nn.functional.cosine_similarity(feats, base, dim=-1).mean().item()
        rel = ((feats - base).norm(dim=-1) / base.norm(dim=-1)).mean().item()
        rows += [{"condition": cond, "metric": "pooled_cosine_to_original", "value": cos, "why": "proxy"},
                 {"condition": cond, "metric": "pooled_rel_l2_change", "value": rel, "why": "proxy"}]
        if clf is not None:
            acc = float((clf.predict(probe) == labels[split:]).mean())
            rows.append({"condition": cond, "metric": "digits_probe_acc", "value": acc, "why": "proxy"})
        if any(not torch.equal(a, b) for a, b in zip(weights_before, model.parameters(), strict=True)):
            raise PipelineError(f"condition {cond} changed the model's weights")  # hooks only: never expected
    site_rows = [dict(s, block=first) for s in sites] + [
        {"block": i, "token_type": r, "dim": -1, "value_mean": float(means[i][roles.index(r)].abs().max()),
         "what": "max |mean feature| at the block input"} for i in means for r in registers]
    paths = {**write_by_condition(ctx, STAGE, {"vit_intervene": rows}),
             "vit_intervene_sites": ctx.results.write("vit_intervene_sites", site_rows, stage=STAGE)}
    return {"rows": rows, "sites": sites, "why": why, "paths": paths, "registers": registers,
            "eval_images": args.eval_images, "calib": len(calib), "model": ctx.model_name,
            "paper": paper_numbers("massive_activations", ctx.paper_key, ctx.catalog) or {}}


def format_summary(out: dict[str, Any]) -> str:
    sites = ", ".join(f"{s['token_type']} dim {s['dim']}" for s in out["sites"]) or "none"
    lines = [f"{out['model']}: {out['eval_images']} evaluation images, means from {out['calib']} augmented "
             "calibration views",
             f"  sites: {sites} ({out['why']}); registers: {len(out['registers'])}",
             "  condition      cos(pooled, original)  rel L2 change  digits probe acc"
             "   (PROXIES, not ImageNet accuracy)"]
    by: dict[str, dict[str, Any]] = {}
    for r in out["rows"]:
        by.setdefault(r["condition"], {})[r["metric"]] = r["value"] if r["metric"] != "not_applicable" else r["why"]
    for cond, m in by.items():
        if "not_applicable" in m:
            lines.append(f"  {cond:<14} not applicable: {m['not_applicable']}")
        else:
            lines.append(f"  {cond:<14} {m['pooled_cosine_to_original']:>21.4f}  {m['pooled_rel_l2_change']:>13.4f}  "
                         f"{m.get('digits_probe_acc', float('nan')):>16.3f}")
    paper = out.get("paper", {}).get("fix_reg_mean_acc")
    if paper:
        v = paper["value"]
        lines.append(f"  paper A (ImageNet top-1, official linear heads): original {v['original']}, Fix-Reg-Mean "
                     f"{v['fix_reg_mean']} ({'verified' if paper.get('verified') else 'recalled'}; {paper['source']})")
    return "\n".join(lines)


SPEC = register_stage(StageSpec(name=STAGE, run=run, summary=format_summary,
                                tables=("vit_intervene", "vit_intervene_sites"),
                                artefact="paper A §5: set-to-zero / set-to-mean / Fix-Reg-Mean in ViTs"))
