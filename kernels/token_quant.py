"""Per-token (per-row) symmetric INT8 activation fake-quantization, with paper B's
super-outlier option (§5.1, Tables 3/4/7).

Plain: per row, ``scale = max|x| / 127``, ``y = clamp(round(x / scale), -127, 127) * scale``.

With ``outliers`` (channel indices, e.g. the super activation's channel): in each row, a listed
entry larger in magnitude than every unlisted entry of that row is an outlier of that row (the
super activation sits at one token; elsewhere the channel is ordinary). Outliers are replaced by
the row median before the scale is computed, the row is quantized and dequantized, and the
outliers are restored in full precision (paper B's REPLACE -> quantize -> RESTORE). The reference
does exactly that. The kernel uses that the scale then equals max |unlisted entries| / 127 (the
median lies within the other entries' range when at most half a row is an outlier, always the
case here), so it needs no median: one pass for the scale, one to quantize, outliers written back
unchanged. A row whose scale is 0 is left unchanged. Rounding is half-to-even; math in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import CHUNK, HAVE_TRITON, next_pow2, use_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from ._common import rne

QMAX = 127.0


def _outlier_mask(n_cols: int, outliers: Sequence[int] | None, device) -> torch.Tensor | None:
    if not outliers:
        return None
    idx = torch.as_tensor(list(outliers), dtype=torch.long)
    if idx.min() < -n_cols or idx.max() >= n_cols:
        raise ValueError(f"outlier channel out of range for {n_cols} channels: {list(outliers)}")
    mask = torch.zeros(n_cols, dtype=torch.bool)
    mask[idx] = True
    return mask.to(device)


def token_fake_quant_ref(x: torch.Tensor, outliers: Sequence[int] | None = None,
                         return_scale: bool = False):
    """Reference: literal replace-with-median -> quantize -> restore, per row of the last dim."""
    rows = x.reshape(-1, x.shape[-1]).float()
    if rows.numel() == 0:
        return (x.clone(), torch.zeros(rows.shape[0])) if return_scale else x.clone()
    mask = _outlier_mask(rows.shape[1], outliers, x.device)
    work, keep = rows, torch.zeros_like(rows, dtype=torch.bool)
    if mask is not None:
        largest_other = torch.where(mask, 0.0, rows.abs()).amax(dim=1, keepdim=True)
        keep = mask & (rows.abs() > largest_other)
        median = rows.median(dim=1, keepdim=True).values
        work = torch.where(keep, median, rows)
    scale = work.abs().amax(dim=1, keepdim=True) / QMAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = torch.clamp(torch.round(work / safe), -QMAX, QMAX) * safe
    keep = keep | (scale == 0)
    y = torch.where(keep, rows, y).to(x.dtype).view(x.shape)
    return (y, scale[:, 0]) if return_scale else y


if HAVE_TRITON:

    @triton.jit
    def _token_fq_kernel(x_ptr, y_ptr, scale_ptr, mask_ptr, n_cols, stride,
                         HAS_MASK: tl.constexpr, CHUNK_: tl.constexpr, ONE_PASS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = row * stride
        if ONE_PASS:  # the whole row in registers: read once
            c = tl.arange(0, CHUNK_)
            m = c < n_cols
            x = tl.load(x_ptr + base + c, mask=m, other=0.0).to(tl.float32)
            listed = c < 0
            if HAS_MASK:
                listed = tl.load(mask_ptr + c, mask=m, other=0) != 0
            amax = tl.max(tl.where(listed, 0.0, tl.abs(x)), axis=0)
            keep = listed & (tl.abs(x) > amax)
            scale = tl.math.div_rn(amax, 127.0)
            safe = tl.where(scale > 0, scale, 1.0)
            q = tl.minimum(tl.maximum(rne(tl.math.div_rn(x, safe)), -127.0), 127.0)
            y = tl.where(keep, x, tl.where(scale > 0, q * safe, x))
            tl.store(y_ptr + base + c, y.to(y_ptr.dtype.element_ty), mask=m)
        else:
            acc = tl.zeros([CHUNK_], tl.float32)
            for off in range(0, n_cols, CHUNK_):
                c = off + tl.arange(0, CHUNK_)
                m = c < n_cols
                x = tl.load(x_ptr + base + c, mask=m, other=0.0).to(tl.float32)
                if HAS_MASK:
                    x = tl.where(tl.load(mask_ptr + c, mask=m, other=0) != 0, 0.0, x)
                acc = tl.maximum(acc, tl.abs(x))
            scale = tl.math.div_rn(tl.max(acc, axis=0), 127.0)
            safe = tl.where(scale > 0, scale, 1.0)
            for off in range(0, n_cols, CHUNK_):
                c = off + tl.arange(0, CHUNK_)
                m = c < n_cols
                x = tl.load(x_ptr + base + c, mask=m, other=0.0).to(tl.float32)
                keep = c < 0
                if HAS_MASK:
                    keep = (tl.load(mask_ptr + c, mask=m, other=0) != 0) & (tl.abs(x) > tl.max(acc, axis=0))
                q = tl.minimum(tl.maximum(rne(tl.math.div_rn(x, safe)), -127.0), 127.0)
                y = tl.where(keep, x, tl.where(scale > 0, q * safe, x))
                tl.store(y_ptr + base + c, y.to(y_ptr.dtype.element_ty), mask=m)
        tl.store(scale_ptr + row, scale)


ONE_PASS_MAX = 8192  # widest row held in registers


def token_fake_quant_triton(x: torch.Tensor, outliers: Sequence[int] | None = None,
                            return_scale: bool = False):
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    if x.numel() == 0:
        return token_fake_quant_ref(x, outliers, return_scale)
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n_rows, n_cols = rows.shape
    mask = _outlier_mask(n_cols, outliers, x.device)
    y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    scale = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    one_pass = n_cols <= ONE_PASS_MAX
    if n_rows:
        _token_fq_kernel[(n_rows,)](
            rows, y, scale, mask.to(torch.int8) if mask is not None else scale, n_cols, rows.stride(0),
            HAS_MASK=mask is not None, CHUNK_=next_pow2(n_cols) if one_pass else CHUNK,
            ONE_PASS=one_pass, num_warps=8 if n_cols > 2048 else 4)
    y = y.view(x.shape)
    return (y, scale) if return_scale else y


def token_fake_quant(x: torch.Tensor, outliers: Sequence[int] | None = None, return_scale: bool = False):
    """Dispatch: Triton on CUDA, the torch reference elsewhere."""
    fn = token_fake_quant_triton if use_triton(x) else token_fake_quant_ref
    return fn(x, outliers, return_scale)
