"""Perplexity on token windows (paper A Table 3, paper B Table 1), with the per-window values an
interval needs and the KL divergence from the unmodified model.

Follows the official massive-activations code (``lib/eval_utils.eval_ppl``): non-overlapping
windows, each scored on its own, cross-entropy of every next token. It differs in one detail: the
official code computes ``exp(sum(mean_CE * seqlen) / (n * seqlen))``, i.e. weights each window's
mean over its ``seqlen - 1`` predictions by ``seqlen``; with equal window lengths that is the
same number. Here the total NLL over exactly the predicted tokens is summed in float64 (from
float32 log-softmax) and divided by their count.

KL(unmodified || modified), mean per predicted token, is the direct measure of how faithfully an
edited model reproduces the original; perplexity only approximates it (a quantized model can lower
perplexity by chance on a few thousand tokens). The unmodified model's log-probabilities are
computed once and kept in a :class:`LogProbCache` (float32, a memory-mapped file) that every
condition is compared with: no second baseline forward per condition.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.core.errors import PipelineError


class LogProbCache:
    """The unmodified model's next-token log-probabilities of ``n_windows`` windows, (N, L - 1, V)
    float32, on disk in ``folder`` (deleted with the cache's folder; the OS keeps hot pages in RAM)."""

    def __init__(self, folder: Path, name: str, n_windows: int) -> None:
        self.path, self.n_windows, self.array = Path(folder) / f"{name}.f32", n_windows, None

    def put(self, start: int, logp: torch.Tensor) -> None:
        if self.array is None:
            shape = (self.n_windows, *logp.shape[1:])
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=shape)
        self.array[start:start + logp.shape[0]] = logp.cpu().numpy()

    def get(self, start: int, n: int) -> torch.Tensor:
        if self.array is None:
            raise PipelineError("the unmodified model's log-probabilities were not computed before a condition")
        return torch.from_numpy(np.ascontiguousarray(self.array[start:start + n]))


def baseline_folder() -> tempfile.TemporaryDirectory:
    """A scratch folder for :class:`LogProbCache` files (removed on cleanup)."""
    return tempfile.TemporaryDirectory(prefix="pipeline-logprobs-")


@torch.inference_mode()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 1,
               device: torch.device | str | None = None, desc: str = "perplexity",
               record: LogProbCache | None = None, baseline: LogProbCache | None = None) -> dict:
    """Perplexity of ``model`` over ``(N, L)`` token windows (from ``data.token_windows``, which
    already applied the dataset's BOS rule). Each window predicts its ``L - 1`` next tokens.

    ``record``: keep these log-probabilities (this is the unmodified model); ``baseline``: also
    the mean per-token KL(baseline || model) of every window.

    Returns ``{"ppl", "nll" (mean per predicted token), "n_tokens", "n_windows", "window_nll"
    (mean per window), "kl" and "window_kl" (None without a baseline)}``; inf and NaN are valid
    results (e.g. after zeroing massive activations) and are returned, never raised.
    """
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.is_floating_point():
        raise PipelineError(f"perplexity needs (N, L>=2) integer token windows, got "
                            f"{tuple(windows.shape)} {windows.dtype}")
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1 (got {batch_size})")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n_windows, window_nll, window_kl = windows.shape[0], [], []
    for start in tqdm(range(0, n_windows, batch_size), desc=desc, unit="batch"):
        batch = windows[start:start + batch_size].to(device)
        logp = F.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, batch[:, 1:, None])[..., 0]  # float32 per token
        window_nll += nll.double().mean(-1).tolist()  # float64 accumulation
        if record is not None:
            record.put(start, logp)
        if baseline is not None:
            base = baseline.get(start, batch.shape[0]).to(logp.device)
            kl = (base.exp() * (base - logp)).sum(-1)  # per token
            window_kl += kl.double().mean(-1).tolist()
    mean_nll = float(np.mean(window_nll))  # equal window lengths: the mean over all predicted tokens
    ppl = torch.tensor(mean_nll, dtype=torch.float64).exp().item()  # inf on overflow, no raise
    return {"ppl": ppl, "nll": mean_nll, "n_tokens": n_windows * (windows.shape[1] - 1), "n_windows": n_windows,
            "window_nll": window_nll, "kl": float(np.mean(window_kl)) if window_kl else None,
            "window_kl": window_kl or None}
