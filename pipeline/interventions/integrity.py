"""The contract every intervention keeps, checked: on exit the model is bit-identical, weights and
buffers alike, and no hook is left behind.

A check on a probe's logits (what the condition loop compared before) is blind when the logits are
NaN, inf or saturated: a leaky edit then passes. The fingerprint reads the bits of every parameter
and buffer instead (two integer sums per tensor, one position-weighted, on the tensor's own device:
no copy of the model), and counts the forward hooks of every module.
"""

from __future__ import annotations

import torch

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> tuple:
    flat = t.detach().contiguous().view(-1)
    raw = flat.view(INT_VIEW[flat.element_size()]).to(torch.int64) if flat.numel() else flat.to(torch.int64)
    weights = torch.arange(raw.numel(), device=raw.device, dtype=torch.int64) % 65521 + 1
    return tuple(t.shape), str(t.dtype), int(raw.sum()), int((raw * weights).sum())


@torch.no_grad()
def fingerprint(model: torch.nn.Module) -> dict:
    """What must be the same after an intervention: each parameter's and buffer's bits, and the
    number of forward (pre-)hooks on each module."""
    tensors = {f"param:{n}": _bits(p) for n, p in model.named_parameters()}
    tensors |= {f"buffer:{n}": _bits(b) for n, b in model.named_buffers()}
    hooks = {f"hooks:{n}": (len(m._forward_hooks), len(m._forward_pre_hooks))
             for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks}
    return tensors | hooks


def check_unchanged(model: torch.nn.Module, before: dict, what: str) -> None:
    """Raise if ``model`` differs from its ``before`` fingerprint (naming the first difference)."""
    after = fingerprint(model)
    if after != before:
        first = next(k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k))
        raise RuntimeError(f"{what} left the model changed ({first}): an edit leaked")
