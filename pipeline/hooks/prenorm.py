"""A post-LN block's residual sum, read before the block's output norm (BERT: the block output is
``LayerNorm(x + MLP(x))``).

The massive-activation profile (:func:`pipeline.analysis.profile.profile_layers`) reads each
block's OUTPUT. In a post-LN model that output is normalised, so a value that is massive in the
residual sum is scaled down to the norm's range there. Where the arch spec names a
``block_out_norm``, :func:`profile_before_block_norms` reads that norm's INPUT (the residual sum)
with the same statistics, rule and token roles, on the same windows: a second forward pass, an
observer only (the model is never edited).
"""

from __future__ import annotations

import torch

from pipeline.analysis.massive import LayerProfile
from pipeline.hooks.forward import capture
from pipeline.hooks.positions import delimiter_test, prefix_labels, token_types
from pipeline.models.arch import decoder_layers, get_arch, prefix_roles, resolve
from pipeline.models.load import forward_without_logits


@torch.inference_mode()
def profile_before_block_norms(ctx, windows: torch.Tensor, *, batch_size: int, abs_threshold: float,
                               rel_threshold: float, max_hits: int, delimiters: list[str]) -> LayerProfile | None:
    """The profile of every block's residual sum (the input of its ``block_out_norm``) over
    ``windows`` (N, L); None where the arch spec names no such norm (pre-LN models)."""
    spec = get_arch(ctx.model)
    if not spec.block_out_norm:
        return None
    blocks = decoder_layers(ctx.model)
    norms = {str(i): resolve(block, spec.block_out_norm, spec.model_type) for i, block in enumerate(blocks)}
    prof = LayerProfile(len(blocks), abs_threshold=abs_threshold, rel_threshold=rel_threshold, max_hits=max_hits)
    is_delim = delimiter_test(ctx.tokenizer, delimiters)
    prefix, prefix_text = prefix_roles(ctx.model), prefix_labels(ctx.model)
    texts: dict[int, str] = {}
    with capture(norms, lambda name, h: prof.observe(int(name), h), inputs=True):
        for start in range(0, len(windows), batch_size):
            ids = windows[start:start + batch_size]
            for tid in set(ids.flatten().tolist()) - texts.keys():
                texts[tid] = ctx.tokenizer.decode([tid])
            prof.begin_batch([prefix + t for t in token_types(ids, is_delim)],
                             [prefix_text + [texts[t] for t in row] for row in ids.tolist()])
            forward_without_logits(ctx.model, ids.to(ctx.device))
            prof.end_batch()
    return prof
