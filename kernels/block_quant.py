"""Blockwise weight fake-quantization: asymmetric min-max round-to-nearest to ``bits`` bits per
block, quantize and dequantize in one pass (paper B §5.2, Fig. 7, Table 6).

A block is a contiguous chunk of ``block_size`` elements of the row-major flattened weight, as in
paper B's code (``weight.reshape(-1, blocksize)``: "128x128" = 16,384 consecutive elements); the
last block may be shorter. Option ``tile=(rows, cols)``: 2-D tiles of the matrix instead, done by
permuting each tile into a contiguous run (edge tiles padded by repeating their own edge values,
which changes no tile's range), quantizing those runs as 1-D blocks, and permuting back.

Option ``clip=(lo, hi)``: values are clamped to [lo, hi] before the block range is computed
(paper B's z-score clipping, lo/hi = mean -/+ z * std of the tensor, chosen by the caller); the
clamped values are what gets quantized.

Per block, in fp32 whatever the storage dtype::

    scale = (max - min) / (2**bits - 1)        (a block with max == min is left unchanged)
    zero  = round(-min / scale)
    q     = clamp(round(x / scale) + zero, 0, 2**bits - 1)
    y     = (q - zero) * scale                 -> cast back to the input dtype

``round`` is half-to-even. Triton layout: blocks of up to 4,096 elements are done in one fused
kernel, several blocks per program, read once; larger blocks in two kernels over spans of up to
16,384 elements (partial min/max per span, then quantize with the block's range), so that a few
huge blocks still spread over the whole GPU (2 reads + 1 write of the tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import CHUNK, HAVE_TRITON, next_pow2, use_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from ._common import rne

FUSED_MAX = 4096  # largest block done by the one-pass kernel
SPAN_STEPS = 16  # CHUNK-sized steps per program in the two-kernel path


def _params(mn: torch.Tensor, mx: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per block in fp32; scale 0 marks a constant block (left unchanged)."""
    scale = (mx - mn) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.round(-mn / safe)


def _tiles(w: torch.Tensor, tile: tuple[int, int]) -> tuple[torch.Tensor, tuple]:
    """The matrix with each (rows x cols) tile made contiguous (edge tiles padded by replication)."""
    if w.ndim != 2:
        raise ValueError(f"2-D tiles need a matrix, got shape {tuple(w.shape)}")
    tr, tc = tile
    r, c = w.shape
    pr, pc = -r % tr, -c % tc
    x = w
    if pr or pc:
        x = F.pad(w[None].float(), (0, pc, 0, pr), mode="replicate")[0].to(w.dtype)
    gr, gc = x.shape[0] // tr, x.shape[1] // tc
    runs = x.reshape(gr, tr, gc, tc).permute(0, 2, 1, 3).contiguous().reshape(-1)
    return runs, (r, c, gr, gc, tr, tc)


def _untile(runs: torch.Tensor, meta: tuple) -> torch.Tensor:
    r, c, gr, gc, tr, tc = meta
    return runs.reshape(gr, gc, tr, tc).permute(0, 2, 1, 3).reshape(gr * tr, gc * tc)[:r, :c].contiguous()


def _on_tiles(fn, w, bits, clip, tile, return_params):
    """``fn`` (reference or Triton) on the tiles made contiguous, the result put back in place."""
    runs, meta = _tiles(w, tile)
    out = fn(runs, bits, tile[0] * tile[1], clip, None, return_params)
    return (_untile(out[0], meta), *out[1:]) if return_params else _untile(out, meta)


def _check(w: torch.Tensor, bits: int, block_size: int) -> None:
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if not w.is_floating_point():
        raise ValueError(f"expected a floating-point weight, got {w.dtype}")


def block_fake_quant_ref(w: torch.Tensor, bits: int = 4, block_size: int = 16384,
                         clip: tuple[float, float] | None = None, tile: tuple[int, int] | None = None,
                         return_params: bool = False):
    """Pure-torch reference (the test oracle and the CPU path). Returns the fake-quantized tensor
    (same shape and dtype), and with ``return_params`` also per-block (scale, zero) in fp32."""
    if tile is not None:
        return _on_tiles(block_fake_quant_ref, w, bits, clip, tile, return_params)
    _check(w, bits, block_size)
    if w.numel() == 0:
        empty = torch.zeros(0, device=w.device)
        return (w.clone(), empty, empty) if return_params else w.clone()
    levels = 2 ** bits - 1
    x = w.reshape(-1).float()
    if clip is not None:
        x = x.clamp(float(clip[0]), float(clip[1]))
    n = x.numel()
    pad = -n % block_size
    if pad:  # repeat the last element: it belongs to the last block, so no range changes
        x = torch.cat([x, x[-1:].expand(pad)])
    xb = x.view(-1, block_size)
    scale, zero = _params(xb.amin(1), xb.amax(1), levels)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    q = torch.clamp(torch.round(xb / safe) + zero[:, None], 0, levels)
    y = torch.where(scale[:, None] > 0, (q - zero[:, None]) * safe, xb)
    y = y.reshape(-1)[:n].to(w.dtype).view(w.shape)
    return (y, scale, zero) if return_params else y


if HAVE_TRITON:

    @triton.jit
    def _load_clipped(ptrs, mask, clip_lo, clip_hi, HAS_CLIP: tl.constexpr):
        """Masked load as fp32, clamped to [clip_lo, clip_hi] when HAS_CLIP."""
        x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        if HAS_CLIP:
            x = tl.minimum(tl.maximum(x, clip_lo), clip_hi)
        return x

    @triton.jit
    def _block_fq_fused_kernel(x_ptr, y_ptr, scale_ptr, zero_ptr, numel, block, n_blocks,
                               clip_lo, clip_hi, levels,
                               HAS_CLIP: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
        b = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        c = tl.arange(0, COLS)
        offs = b.to(tl.int64)[:, None] * block + c[None, :]
        mask = (b[:, None] < n_blocks) & (c[None, :] < block) & (offs < numel)
        x = _load_clipped(x_ptr + offs, mask, clip_lo, clip_hi, HAS_CLIP)
        mn = tl.min(tl.where(mask, x, float("inf")), axis=1)
        mx = tl.max(tl.where(mask, x, float("-inf")), axis=1)
        mn = tl.where(b < n_blocks, mn, 0.0)  # rows past the last block: no inf - inf
        mx = tl.where(b < n_blocks, mx, 0.0)
        scale = tl.math.div_rn(mx - mn, levels)
        safe = tl.where(scale > 0, scale, 1.0)
        zero = rne(tl.math.div_rn(-mn, safe))
        q = tl.minimum(tl.maximum(rne(tl.math.div_rn(x, safe[:, None])) + zero[:, None], 0.0), levels)
        y = tl.where(scale[:, None] > 0, (q - zero[:, None]) * safe[:, None], x)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(scale_ptr + b, scale, mask=b < n_blocks)
        tl.store(zero_ptr + b, zero, mask=b < n_blocks)

    @triton.jit
    def _span_bounds(pid, splits, span, block, numel):
        blk = pid // splits
        start = blk.to(tl.int64) * block + (pid % splits) * span
        end = tl.minimum(tl.minimum(start + span, blk.to(tl.int64) * block + block), numel)
        return blk, start, end

    @triton.jit
    def _block_minmax_kernel(x_ptr, mn_ptr, mx_ptr, numel, block, splits, span, clip_lo, clip_hi,
                             HAS_CLIP: tl.constexpr, CHUNK_: tl.constexpr):
        pid = tl.program_id(0)
        _blk, start, end = _span_bounds(pid, splits, span, block, numel)
        acc_mn = tl.full([CHUNK_], float("inf"), tl.float32)
        acc_mx = tl.full([CHUNK_], float("-inf"), tl.float32)
        for off in range(start, end, CHUNK_):
            o = off + tl.arange(0, CHUNK_)
            m = o < end
            x = _load_clipped(x_ptr + o, m, clip_lo, clip_hi, HAS_CLIP)
            acc_mn = tl.minimum(acc_mn, tl.where(m, x, float("inf")))
            acc_mx = tl.maximum(acc_mx, tl.where(m, x, float("-inf")))
        tl.store(mn_ptr + pid, tl.min(acc_mn, axis=0))
        tl.store(mx_ptr + pid, tl.max(acc_mx, axis=0))

    @triton.jit
    def _block_apply_kernel(x_ptr, y_ptr, scale_ptr, zero_ptr, numel, block, splits, span,
                            clip_lo, clip_hi, levels, HAS_CLIP: tl.constexpr, CHUNK_: tl.constexpr):
        pid = tl.program_id(0)
        blk, start, end = _span_bounds(pid, splits, span, block, numel)
        scale = tl.load(scale_ptr + blk)
        zero = tl.load(zero_ptr + blk)
        safe = tl.where(scale > 0, scale, 1.0)
        for off in range(start, end, CHUNK_):
            o = off + tl.arange(0, CHUNK_)
            m = o < end
            x = _load_clipped(x_ptr + o, m, clip_lo, clip_hi, HAS_CLIP)
            q = tl.minimum(tl.maximum(rne(tl.math.div_rn(x, safe)) + zero, 0.0), levels)
            y = tl.where(scale > 0, (q - zero) * safe, x)
            tl.store(y_ptr + o, y.to(y_ptr.dtype.element_ty), mask=m)


def block_fake_quant_triton(w: torch.Tensor, bits: int = 4, block_size: int = 16384,
                            clip: tuple[float, float] | None = None, tile: tuple[int, int] | None = None,
                            return_params: bool = False):
    """The Triton kernels (CUDA, or the interpreter in tests); same contract as the reference."""
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    if tile is not None:
        return _on_tiles(block_fake_quant_triton, w, bits, clip, tile, return_params)
    _check(w, bits, block_size)
    if w.numel() == 0:
        return block_fake_quant_ref(w, bits, block_size, clip, None, return_params)
    x = w.contiguous().view(-1)
    n, levels = x.numel(), float(2 ** bits - 1)
    n_blocks = -(-n // block_size)
    y = torch.empty_like(x)
    scale = torch.empty(n_blocks, dtype=torch.float32, device=x.device)
    zero = torch.empty_like(scale)
    lo, hi = (float(clip[0]), float(clip[1])) if clip is not None else (0.0, 0.0)
    if block_size <= FUSED_MAX:
        cols = next_pow2(block_size)
        rows = max(1, FUSED_MAX // cols)
        _block_fq_fused_kernel[(triton.cdiv(n_blocks, rows),)](
            x, y, scale, zero, n, block_size, n_blocks, lo, hi, levels,
            HAS_CLIP=clip is not None, ROWS=rows, COLS=cols, num_warps=8)
    else:
        span = CHUNK * SPAN_STEPS
        splits = triton.cdiv(block_size, span)
        grid = (n_blocks * splits,)
        mn = torch.empty(n_blocks * splits, dtype=torch.float32, device=x.device)
        mx = torch.empty_like(mn)
        _block_minmax_kernel[grid](x, mn, mx, n, block_size, splits, span, lo, hi,
                                   HAS_CLIP=clip is not None, CHUNK_=CHUNK, num_warps=4)
        # spans past the end of a short last block saw no element: +-inf, ignored by min/max
        s, z = _params(mn.view(n_blocks, splits).amin(1), mx.view(n_blocks, splits).amax(1), int(levels))
        scale.copy_(s)
        zero.copy_(z)
        _block_apply_kernel[grid](x, y, scale, zero, n, block_size, splits, span, lo, hi, levels,
                                  HAS_CLIP=clip is not None, CHUNK_=CHUNK, num_warps=4)
    y = y.view(w.shape)
    return (y, scale, zero) if return_params else y


def block_fake_quant(w: torch.Tensor, bits: int = 4, block_size: int = 16384,
                     clip: tuple[float, float] | None = None, tile: tuple[int, int] | None = None,
                     return_params: bool = False):
    """Dispatch: Triton on CUDA, the torch reference elsewhere."""
    fn = block_fake_quant_triton if use_triton(w) else block_fake_quant_ref
    return fn(w, bits, block_size, clip, tile, return_params)
