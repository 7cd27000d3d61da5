"""Per-tensor symmetric INT8 weight fake-quantization (the "W8" of paper B's W8A8, §5.1).

``scale = max|w| / 127`` over the whole tensor, ``y = clamp(round(w / scale), -127, 127) * scale``
in fp32 (half-to-even), cast back; an all-zero tensor is left unchanged. Triton: one kernel takes
a partial max |w| per span of the flattened tensor, torch reduces those few partials, a second
kernel quantizes (2 reads + 1 write).
"""

from __future__ import annotations

import torch

from ._common import CHUNK, HAVE_TRITON, use_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from ._common import rne

QMAX = 127.0
SPAN = CHUNK * 16


def tensor_fake_quant_ref(w: torch.Tensor, return_scale: bool = False):
    if w.numel() == 0:
        return (w.clone(), torch.zeros(())) if return_scale else w.clone()
    x = w.float()
    scale = x.abs().amax() / QMAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = torch.where(scale > 0, torch.clamp(torch.round(x / safe), -QMAX, QMAX) * safe, x).to(w.dtype)
    return (y, scale) if return_scale else y


if HAVE_TRITON:

    @triton.jit
    def _absmax_kernel(x_ptr, part_ptr, numel, span, CHUNK_: tl.constexpr):
        pid = tl.program_id(0)
        start = pid.to(tl.int64) * span
        end = tl.minimum(start + span, numel)
        acc = tl.zeros([CHUNK_], tl.float32)
        for off in range(start, end, CHUNK_):
            o = off + tl.arange(0, CHUNK_)
            acc = tl.maximum(acc, tl.abs(tl.load(x_ptr + o, mask=o < end, other=0.0).to(tl.float32)))
        tl.store(part_ptr + pid, tl.max(acc, axis=0))

    @triton.jit
    def _tensor_apply_kernel(x_ptr, y_ptr, scale_ptr, numel, span, CHUNK_: tl.constexpr):
        pid = tl.program_id(0)
        start = pid.to(tl.int64) * span
        end = tl.minimum(start + span, numel)
        scale = tl.load(scale_ptr)
        safe = tl.where(scale > 0, scale, 1.0)
        for off in range(start, end, CHUNK_):
            o = off + tl.arange(0, CHUNK_)
            m = o < end
            x = tl.load(x_ptr + o, mask=m, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(rne(tl.math.div_rn(x, safe)), -127.0), 127.0)
            y = tl.where(scale > 0, q * safe, x)
            tl.store(y_ptr + o, y.to(y_ptr.dtype.element_ty), mask=m)


def tensor_fake_quant_triton(w: torch.Tensor, return_scale: bool = False):
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    if w.numel() == 0:
        return tensor_fake_quant_ref(w, return_scale)
    x = w.contiguous().view(-1)
    n = x.numel()
    grid = (max(1, triton.cdiv(n, SPAN)),)
    part = torch.empty(grid[0], dtype=torch.float32, device=x.device)
    _absmax_kernel[grid](x, part, n, SPAN, CHUNK_=CHUNK, num_warps=4)
    scale = (part.amax() / QMAX).reshape(1)
    y = torch.empty_like(x)
    _tensor_apply_kernel[grid](x, y, scale, n, SPAN, CHUNK_=CHUNK, num_warps=4)
    y = y.view(w.shape)
    return (y, scale[0]) if return_scale else y


def tensor_fake_quant(w: torch.Tensor, return_scale: bool = False):
    """Dispatch: Triton on CUDA, the torch reference elsewhere."""
    fn = tensor_fake_quant_triton if use_triton(w) else tensor_fake_quant_ref
    return fn(w, return_scale)
