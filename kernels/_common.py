"""Shared pieces of the quantization kernels: Triton import guard, dispatch rule, rounding.

Rounding is round-half-to-even everywhere (``torch.round``'s rule). Triton gets it from
:func:`rne`, built from floor and a tie fix rather than ``libdevice.rint``, so that the same code
runs compiled and under ``TRITON_INTERPRET=1``. It is exact for |x| < 2**22, far above the
quantization grids used here (|x / scale| <= 2**bits).
"""

from __future__ import annotations

import os

import torch

try:  # a CPU-only install may still lack Triton: the references need only torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton, tl = None, None

HAVE_TRITON = triton is not None
CHUNK = 1024  # elements one program step touches (a power of two)


def use_triton(x: torch.Tensor) -> bool:
    """Dispatch rule: compiled Triton for CUDA tensors; the torch reference elsewhere (the
    interpreter is for tests only, far too slow for real sizes)."""
    return HAVE_TRITON and x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1"


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


if HAVE_TRITON:

    @triton.jit
    def rne(x):
        """Round half to even (torch.round's rule) from floor, exact for |x| < 2**22."""
        r = tl.floor(x + 0.5)
        tie = (r - x) == 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where(tie & odd, r - 1.0, r)
