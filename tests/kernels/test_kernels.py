"""Triton quantization kernels against their torch references.

Off GPU the kernels run under ``TRITON_INTERPRET=1`` (set in conftest) on small odd shapes: sizes
that are not multiples of the block, one row, short tails, both the fused and the two-kernel
paths. fp32 and fp16 must match the reference exactly (values, scales, zero points, so the
integer codes too). bf16: the interpreter's casts truncate where the GPU rounds to nearest even,
so bf16 outputs may differ by one bf16 ulp (2**-7 relative); the fp32 codes are still compared
exactly. ``gpu``-marked tests run the compiled kernels on CUDA at real sizes.
"""

import os

import pytest
import torch

from kernels import block_quant as bq
from kernels import tensor_quant as tq
from kernels import token_quant as kq

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="kernel-vs-reference on CPU needs TRITON_INTERPRET=1")

BLOCK_CASES = [  # (shape, block_size, clip, tile)
    ((1, 1), 4, None, None),
    ((3, 7), 5, None, None),  # tail block of 1
    ((1, 33), 8, None, None),  # one row
    ((17, 19), 64, (-1.5, 1.5), None),  # clipping; fused path, several blocks per program
    ((5, 1000), 4097, None, None),  # two-kernel path, short last block
    ((2, 9000), 16385 + 7, (-2.0, 2.5), None),  # two-kernel path, several spans per block, clip
    ((9, 13), 0, None, (4, 3)),  # 2-D tiles with partial edge tiles
    ((8, 8), 0, None, (8, 8)),
]


def _codes(y, scale, zero, block_size):
    """Integer codes implied by a dequantized tensor and its block parameters."""
    flat = y.reshape(-1).float()
    idx = torch.arange(flat.numel()) // block_size
    s = torch.where(scale > 0, scale, torch.ones_like(scale))[idx]
    return torch.round(flat / s + zero[idx])


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,block,clip,tile", BLOCK_CASES)
def test_block_quant_kernel_matches_reference_exactly(shape, block, clip, tile, dtype):
    w = (torch.randn(shape) * 0.05).to(dtype)
    w.view(-1)[w.numel() // 2] = 0.9  # an outlier
    ref = bq.block_fake_quant_ref(w, 4, block, clip, tile, return_params=True)
    got = bq.block_fake_quant_triton(w, 4, block, clip, tile, return_params=True)
    assert got[0].dtype == dtype and got[0].shape == w.shape
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a, b)
    if tile is None:
        assert torch.equal(_codes(*ref, block), _codes(*got, block))
        assert _codes(*ref, block).min() >= 0 and _codes(*ref, block).max() <= 15


@needs_interpreter
def test_block_quant_kernel_bf16_within_one_ulp():
    w = (torch.randn(7, 301) * 0.05).to(torch.bfloat16)
    ref = bq.block_fake_quant_ref(w, 4, 128)
    got = bq.block_fake_quant_triton(w, 4, 128)
    tol = ref.float().abs() * 2 ** -7 + 1e-30
    assert ((got.float() - ref.float()).abs() <= tol).all()


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,outliers", [((1, 1), None), ((3, 7), None), ((1, 33), [4]),
                                            ((5, 100), [3, 50]), ((2, 3, 9000), [7, 8999])])
def test_token_quant_kernel_matches_reference_exactly(shape, outliers, dtype):
    x = torch.randn(shape).to(dtype)
    if outliers:
        x[..., outliers[0]] = 300.0 if dtype == torch.float16 else 2500.0
    ref = kq.token_fake_quant_ref(x, outliers, return_scale=True)
    got = kq.token_fake_quant_triton(x, outliers, return_scale=True)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1,), (3, 7), (1, 33), (5, 10000), (40000,)])
def test_tensor_quant_kernel_matches_reference_exactly(shape, dtype):
    w = torch.randn(shape).to(dtype)
    ref = tq.tensor_fake_quant_ref(w, return_scale=True)
    got = tq.tensor_fake_quant_triton(w, return_scale=True)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_block_error_falls_as_blocks_shrink():
    w = torch.randn(64, 512) * 0.02
    w[3, 100] = 1.0  # one outlier widens its block's range
    err = [float((bq.block_fake_quant_ref(w, 4, b) - w).pow(2).mean()) for b in (64, 1024, 8192, w.numel())]
    assert err == sorted(err) and err[0] < err[-1] / 4


def test_block_quant_levels_and_constant_blocks():
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0])
    y, scale, zero = bq.block_fake_quant_ref(w, 2, 4, return_params=True)
    assert torch.equal(y[:4], w[:4])  # 4 values on a 2-bit grid are exact
    assert torch.equal(y[4:], w[4:]) and scale[1] == 0  # a constant block stays as it is
    assert len(torch.unique(bq.block_fake_quant_ref(torch.randn(1000), 3, 1000))) <= 8


def test_clip_bounds_the_range_and_tiles_are_tiles():
    w = torch.randn(16, 16) * 0.1
    w[0, 0] = 10.0
    y = bq.block_fake_quant_ref(w, 4, 256, clip=(-0.5, 0.5))
    step = 1.0 / 15  # (hi - lo) / levels: the zero point is rounded, so +- half a step
    assert y.max() <= 0.5 + step / 2 + 1e-6 and (y[1:] - w[1:]).abs().max() < 0.1
    # 2-D tile (4 x 16) of rows 0-3 holds the outlier; rows 4+ are untouched by its range
    yt = bq.block_fake_quant_ref(w, 4, 0, tile=(4, 16))
    assert torch.equal(yt[4:], bq.block_fake_quant_ref(w[4:].contiguous(), 4, 64))


def test_token_quant_replace_restore_keeps_the_outlier_and_helps_the_rest():
    x = torch.randn(4, 256)
    x[0, 17] = 3000.0  # a super activation
    naive = kq.token_fake_quant_ref(x)
    aware = kq.token_fake_quant_ref(x, outliers=[17])
    assert aware[0, 17] == x[0, 17]
    others = torch.ones_like(x, dtype=torch.bool)
    others[0, 17] = False
    assert (aware - x)[0][others[0]].abs().mean() < (naive - x)[0][others[0]].abs().mean() / 10
    # rows where the listed channel is not the largest: it is ordinary there, quantized as naive
    assert torch.equal(aware[1:], naive[1:])
    x[2, 17] = 50.0  # the largest of row 2 but not listed -> plain; listed -> kept, row rescaled
    both = kq.token_fake_quant_ref(x, outliers=[17])
    assert both[2, 17] == 50.0 and (both[2] - x[2]).abs().max() < (naive[2] - x[2]).abs().max()


def test_tensor_quant_is_symmetric_int8():
    w = torch.randn(50, 30)
    y, scale = tq.tensor_fake_quant_ref(w, return_scale=True)
    codes = torch.round(y / scale)
    assert codes.abs().max() == 127 and torch.allclose(codes * scale, y)
    assert (y - w).abs().max() <= scale / 2 + 1e-7


def test_dispatch_uses_the_reference_on_cpu():
    w = torch.randn(10, 10)
    assert torch.equal(bq.block_fake_quant(w, 4, 16), bq.block_fake_quant_ref(w, 4, 16))
    assert torch.equal(kq.token_fake_quant(w, [1]), kq.token_fake_quant_ref(w, [1]))
    assert torch.equal(tq.tensor_fake_quant(w), tq.tensor_fake_quant_ref(w))


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="bits"):
        bq.block_fake_quant_ref(torch.randn(4), 0, 2)
    with pytest.raises(ValueError, match="out of range"):
        kq.token_fake_quant_ref(torch.randn(2, 4), [9])


gpu = pytest.mark.gpu


@gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                    reason="compiled kernels need CUDA and TRITON_INTERPRET=0")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_compiled_kernels_match_reference_on_gpu(dtype):
    torch.manual_seed(0)
    w = (torch.randn(4096, 11008, device="cuda") * 0.02).to(dtype)
    for block in (64, 16384, 1024 * 1024):
        ref = bq.block_fake_quant_ref(w, 4, block, return_params=True)
        got = bq.block_fake_quant(w, 4, block, return_params=True)
        assert torch.equal(ref[1], got[1]) and torch.equal(ref[2], got[2])
        assert torch.equal(ref[0], got[0])
    x = torch.randn(2048, 4096, device="cuda").to(dtype)
    x[0, 7] = 1000
    assert torch.equal(kq.token_fake_quant(x, [7]), kq.token_fake_quant_ref(x, [7]))
    assert torch.equal(tq.tensor_fake_quant(w), tq.tensor_fake_quant_ref(w))


# --- oracles that share no code with kernels/block_quant.py ------------------------------------
def _paper_b_rtn(w: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Paper B's own fake quantizer, written out: ``w.reshape(-1, blocksize)``, per row min-max,
    scale = (max - min) / (2^bits - 1), zero = round(-min / scale), round, clamp, dequantize.
    (It needs numel divisible by the block, as paper B's code does. A constant block, which paper
    B's code turns into NaN, is kept as it is, as our quantizer does.)"""
    levels = 2 ** bits - 1
    x = w.float().reshape(-1, block)
    mn, mx = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    scale = (mx - mn) / levels
    zero = torch.round(-mn / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return torch.where(scale > 0, (q - zero) * scale, x).reshape(w.shape).to(w.dtype)


def _naive_tiles(w: torch.Tensor, bits: int, tile: tuple[int, int]) -> torch.Tensor:
    """A loop over the (rows x cols) tiles of the matrix, each quantized on its own range (edge
    tiles hold what is left: the replicated padding of the reference adds no new values)."""
    out = torch.empty_like(w)
    tr, tc = tile
    for r in range(0, w.shape[0], tr):
        for c in range(0, w.shape[1], tc):
            part = w[r:r + tr, c:c + tc]
            out[r:r + tr, c:c + tc] = _paper_b_rtn(part.contiguous(), bits, part.numel())
    return out


@pytest.mark.parametrize("shape,block", [((16, 64), 64), ((8, 256), 128), ((32, 32), 1024)])
def test_block_reference_equals_paper_b_reshape_rtn(shape, block):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bq.block_fake_quant_ref(w, 4, block), _paper_b_rtn(w, 4, block))


@pytest.mark.parametrize("shape,tile", [((16, 24), (4, 8)), ((9, 13), (4, 3)), ((12, 12), (12, 3))])
def test_tiles_equal_a_naive_per_tile_loop(shape, tile):
    """The independent oracle for the 2-D layout: with the tile permutation replaced by a plain
    flatten (a layout bug both kernel and reference would share), this fails."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(bq.block_fake_quant_ref(w, 4, 0, tile=tile), _naive_tiles(w, 4, tile))


@needs_interpreter
@pytest.mark.parametrize("shape,tile", [((16, 24), (4, 8)), ((9, 13), (4, 3))])
def test_tile_kernel_equals_the_naive_loop(shape, tile):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(bq.block_fake_quant_triton(w, 4, 0, tile=tile), _naive_tiles(w, 4, tile))
