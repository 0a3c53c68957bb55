"""The machine's FMA peak, measured with the SIMD vocabulary (:mod:`nbconv.kernels.simd`).

``fma_chains`` keeps twelve independent accumulators in vector registers and updates each with
a fused multiply-add per step: no memory traffic, only the FMA units, so its rate is the
ceiling a kernel built on the same vocabulary can reach (twelve chains cover the FMA latency
of current x86 cores: two pipes x four cycles need eight). ``fma_peak`` runs one chain set per
task on the thread pool, for the all-cores figure. ``benchmarks/peak.py`` times them and
``benchmarks/report.py`` prints every conv row's GFLOP/s as a share of these peaks.

``tile_4x3_in_l1`` and ``dot_4x3_in_l1`` call the two micro-kernels of
:mod:`nbconv.kernels.gemm` over and over on operands that stay in the L1 cache: how close the
register-blocked inner loops themselves come to that ceiling (``benchmarks/peak.py`` prints
both as a share of the per-core peak).
"""
from numba import prange

from .._config import kernel, serial_kernel
from . import gemm, simd


@serial_kernel
def fma_chains(w, seed, steps, out):
    """``steps`` rounds of 12 vector FMAs (``2 * 12 * L`` flops each, ``L`` lanes) on values
    seeded from ``seed`` (at least ``L`` elements); their sum is stored in ``out[:L]`` so that
    nothing is optimised away."""
    a = simd.load(w, seed, 0)
    b = simd.splat(w, seed[1])
    c0 = simd.splat(w, seed[0])
    c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11 = c0, c0, c0, c0, c0, c0, c0, c0, c0, c0, c0
    for _ in range(steps):
        c0 = simd.fma(c0, a, b)
        c1 = simd.fma(c1, a, b)
        c2 = simd.fma(c2, a, b)
        c3 = simd.fma(c3, a, b)
        c4 = simd.fma(c4, a, b)
        c5 = simd.fma(c5, a, b)
        c6 = simd.fma(c6, a, b)
        c7 = simd.fma(c7, a, b)
        c8 = simd.fma(c8, a, b)
        c9 = simd.fma(c9, a, b)
        c10 = simd.fma(c10, a, b)
        c11 = simd.fma(c11, a, b)
    s = simd.add(simd.add(simd.add(c0, c1), simd.add(c2, c3)),
                 simd.add(simd.add(c4, c5), simd.add(c6, c7)))
    s = simd.add(s, simd.add(simd.add(c8, c9), simd.add(c10, c11)))
    simd.store(out, 0, s)


@kernel
def fma_peak(w, seed, steps, out):
    """``fma_chains`` once per row of ``out (tasks, L)``, the rows on the thread pool."""
    for t in prange(out.shape[0]):
        fma_chains(w, seed, steps, out[t])


@serial_kernel
def tile_4x3_in_l1(w, x, op, wq, buf, reps):
    """``reps`` calls of :func:`nbconv.kernels.gemm.tile_4x3` on the same operands (``x`` rows
    at the offsets ``op``, weights ``wq (4 * len(op),)``, ``buf (4, 3L)``): ``2 * 12 * L *
    len(op)`` flops per call, the first call overwriting ``buf``, the others adding to it."""
    for r in range(reps):
        gemm.tile_4x3(w, x, 0, op, wq, r == 0, buf, 0, 0)


@serial_kernel
def dot_4x3_in_l1(w, x, op, dy, nq, P, reps):
    """``reps`` calls of :func:`nbconv.kernels.gemm.dot_4x3` on the same operands (4 rows of
    ``x`` at ``op[0:4]``, the 3 rows of ``dy (3, nq)``, sums into ``P (4, 3)``): ``2 * 12 * nq``
    flops per call."""
    for _ in range(reps):
        gemm.dot_4x3(w, x, 0, op, 0, dy.reshape(-1), 0, nq, 2 * nq, nq, P, 0)
