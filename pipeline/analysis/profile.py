"""Running a model to measure massive activations: the streaming profile of every decoder layer
(``ma_profile``, the training callbacks, the interventions' calibration, the atlas), on token
windows or on images, and the |h| landscape of one layer on one prompt (paper A Fig. 1). What
counts as massive, and as steady, is defined once in :mod:`pipeline.analysis.massive`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pipeline.analysis.massive import LayerProfile
from pipeline.hooks.forward import capture
from pipeline.hooks.positions import delimiter_test, position_tokens, prefix_labels, token_types
from pipeline.models.arch import decoder_layers, num_layers, prefix_roles
from pipeline.models.arch import layer as block_at
from pipeline.models.load import forward_without_logits


@torch.inference_mode()
def profile_layers(ctx, windows: torch.Tensor, *, batch_size: int, abs_threshold: float,
                   rel_threshold: float, max_hits: int, delimiters: list[str], quiet: bool = False) -> LayerProfile:
    """Run ``windows`` (N, L) through ``ctx.model`` with the reducing hooks on every decoder layer
    (``ctx``: anything with ``model``, ``tokenizer`` and ``device``)."""
    is_delim = delimiter_test(ctx.tokenizer, delimiters)
    texts_of: dict[int, str] = {}
    prefix = prefix_roles(ctx.model)  # tokens the model puts before the text (a sink token)

    def batches():
        for start in range(0, len(windows), batch_size):
            ids = windows[start:start + batch_size]
            for tid in set(ids.flatten().tolist()) - texts_of.keys():
                texts_of[tid] = ctx.tokenizer.decode([tid])
            yield ([prefix + t for t in token_types(ids, is_delim)],
                   [prefix_labels(ctx.model) + [texts_of[t] for t in r] for r in ids.tolist()],
                   lambda ids=ids: forward_without_logits(ctx.model, ids.to(ctx.device)))

    return _profile(ctx.model, batches(), -(-len(windows) // batch_size), abs_threshold, rel_threshold, max_hits, quiet)


def image_positions(model, pixels: torch.Tensor) -> tuple[list[str], list[str]]:
    """(roles, labels) of an image encoder's hidden-state positions for ``pixels`` (N, 3, H, W):
    its prefix tokens (``cls``, ``reg_k``), then the patches (role ``patch``, labelled "patch r,c")."""
    prefix, size = prefix_roles(model), model.config.patch_size
    rows, cols = pixels.shape[-2] // size, pixels.shape[-1] // size
    return (prefix + ["patch"] * (rows * cols),
            [f"<{r}>" for r in prefix] + [f"patch {i // cols},{i % cols}" for i in range(rows * cols)])


@torch.inference_mode()
def profile_images(ctx, pixels: torch.Tensor, *, batch_size: int, abs_threshold: float, rel_threshold: float,
                   max_hits: int, quiet: bool = False) -> LayerProfile:
    """The same profile for a vision encoder on ``pixels`` (N, 3, H, W): positions are its prefix
    tokens (``cls``, ``reg_k``) and then patches (role ``patch``, labelled by grid cell)."""
    roles, labels = image_positions(ctx.model, pixels)

    def batches():
        for start in range(0, len(pixels), batch_size):
            px = pixels[start:start + batch_size]
            yield [roles] * len(px), [labels] * len(px), lambda px=px: ctx.model(pixel_values=px.to(ctx.device))

    return _profile(ctx.model, batches(), -(-len(pixels) // batch_size), abs_threshold, rel_threshold, max_hits, quiet)


def _profile(model, batches, total: int, abs_threshold: float, rel_threshold: float, max_hits: int,
             quiet: bool) -> LayerProfile:
    """The reducing hooks on every block, over ``batches`` of (roles, labels, forward)."""
    prof = LayerProfile(num_layers(model), abs_threshold=abs_threshold, rel_threshold=rel_threshold, max_hits=max_hits)
    modules = {str(i): m for i, m in enumerate(decoder_layers(model))}
    with capture(modules, lambda name, h: prof.observe(int(name), h)):
        for roles, labels, forward in tqdm(batches, total=total, desc="ma_profile", unit="batch", disable=quiet):
            prof.begin_batch(roles, labels)
            forward()
            prof.end_batch()
    return prof


@torch.inference_mode()
def layer_landscape(ctx, prompt: str, layer_idx: int, bos: str = "auto") -> list[dict]:
    """Paper A Fig. 1: |h| of one layer's output for every token and dim of ``prompt`` (BOS rule ``bos``)."""
    ids = ctx.encode(prompt, bos)
    grabbed: dict[str, torch.Tensor] = {}
    with capture({"h": block_at(ctx.model, layer_idx)}, lambda _n, h: grabbed.__setitem__("h", h[0].float().cpu())):
        forward_without_logits(ctx.model, ids.to(ctx.device))
    toks = position_tokens(ctx.model, ctx.tokenizer, ids[0].tolist())  # a sink token comes first
    h = grabbed["h"]
    return [
        {"layer": layer_idx, "layer_1based": layer_idx + 1, "position": p, "token": toks[p], "dim": d,
         "value": float(h[p, d]), "abs_value": float(abs(h[p, d]))}
        for p in range(h.shape[0]) for d in range(h.shape[1])
    ]
