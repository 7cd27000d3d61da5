"""Perplexity on token windows (paper A Table 3, paper B Table 1).

Follows the official massive-activations code (``lib/eval_utils.eval_ppl``): non-overlapping
windows, each scored on its own, cross-entropy of every next token. It differs in one detail: the
official code computes ``exp(sum(mean_CE * seqlen) / (n * seqlen))``, i.e. weights each window's
mean over its ``seqlen - 1`` predictions by ``seqlen``; with equal window lengths that is the
same number. Here the total NLL over exactly the predicted tokens is summed in float64 (from
float32 log-softmax) and divided by their count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.core.errors import PipelineError


@torch.inference_mode()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 1,
               device: torch.device | str | None = None, desc: str = "perplexity") -> dict:
    """Perplexity of ``model`` over ``(N, L)`` token windows (from ``data.token_windows``, which
    already applied the dataset's BOS rule). Each window predicts its ``L - 1`` next tokens.

    Returns ``{"ppl", "nll" (mean per predicted token), "n_tokens", "n_windows"}``; inf and NaN
    are valid results (e.g. after zeroing massive activations) and are returned, never raised.
    """
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.is_floating_point():
        raise PipelineError(f"perplexity needs (N, L>=2) integer token windows, got "
                            f"{tuple(windows.shape)} {windows.dtype}")
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1 (got {batch_size})")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    total, n_windows = 0.0, windows.shape[0]
    for start in tqdm(range(0, n_windows, batch_size), desc=desc, unit="batch"):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                              reduction="none")  # float32 per token
        total += nll.double().sum().item()  # python float = float64 accumulation
    n_tokens = n_windows * (windows.shape[1] - 1)
    mean_nll = total / n_tokens
    ppl = torch.tensor(mean_nll, dtype=torch.float64).exp().item()  # inf on overflow, no raise
    return {"ppl": ppl, "nll": mean_nll, "n_tokens": n_tokens, "n_windows": n_windows}
