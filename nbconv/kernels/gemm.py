"""Register-blocked micro-kernels on the SIMD vocabulary (:mod:`nbconv.kernels.simd`).

The inner loops of every GEMM-shaped kernel (the direct convolution, the input gradient, the
Winograd product, the weight gradient, Linear's products), written once. ``V`` is the vector
width, ``L`` its lanes.

- ``tile_4x3``: ``buf[f+k, q:q+3L] (+)= sum_e wq[4e+k] * x[xb + op[e] + q : ...]``: 4 outputs x
  3 vectors of pixels held in 12 vector registers over a run of reduction elements whose rows
  start at ``xb + op[e]`` ("indirect rows": a conv tap, a Winograd channel): per element 3
  vector loads, 4 broadcasts, 12 FMAs. 12 accumulators cover the FMA latency (2 pipes x 4
  cycles) and, with 3 loads and a broadcast, fit the 16 registers of AVX2.
- ``tile_4x1``: the same for one vector (the remainder of a run), optionally masked.
- ``tile_4x3_edge``, ``tile_4x1_edge``: the same at the last rows and columns of an output
  matrix without padding (Linear's ``dx`` and ``dweight``, written in place): only the rows
  (and lanes) that exist are read and written.
- ``dot_4x3``: ``P[e+i, f+j] += sum_q x[xb + op[e+i] + q] * dy[dj + q]``: 4 x 3 dot products
  over a run of pixels, as 12 vector partial sums, each added across its lanes in a fixed order.
- ``row_sum``: one run's sum, in vectors.

Measured (AMD EPYC Zen 3, AVX2, one thread, ``benchmarks/peak.py`` on a quiet machine): the
FMA peak (:mod:`nbconv.kernels.peak`) 102 GFLOP/s; ``tile_4x3`` in L1 99-101 GFLOP/s (97-101%)
for 64 to 1024 reduction elements per call (76-80 on a busy machine; 95-101 as Linear's
backward calls it). ``dot_4x3`` in L1: 28 GFLOP/s for 64 pixels per call, 43 for 128, 85 for
1024: its 12 horizontal sums per call cost about as much as 64 pixels of FMAs. (Summing the
small maps of several images in one call, so that each call runs 640-1024 pixels, measured no
faster in whole weight gradients on 8x8 and 16x16 maps: within 5% either way, so it was not
kept.)
LLVM unrolls its loop by two; the register allocator then spills some accumulators when the
loop bounds are runtime values, but stores forward to loads and the rate is the same.
"""
from .._config import serial_kernel
from . import simd


@serial_kernel
def tile_4x3(V, x, xb, op, wq, first, buf, f, q):
    """The forward micro-kernel: ``buf[f+k, q:q+3L] (+)= sum_e wq[4*e + k] *
    x[xb+op[e]+q : ...+3L]`` for the 4 outputs ``k`` and the ``len(op)`` reduction elements
    ``e`` (``L`` lanes; ``=`` when ``first``): 12 vector accumulators in registers, per element
    3 vector loads, 4 broadcasts and 12 FMAs."""
    L = simd.lanes(V, x)
    n = buf.shape[1]
    r0, r1, r2, r3 = f * n + q, (f + 1) * n + q, (f + 2) * n + q, (f + 3) * n + q
    if first:
        a00 = simd.zero(V, x)
        a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32 = \
            a00, a00, a00, a00, a00, a00, a00, a00, a00, a00, a00
    else:
        a00, a01, a02 = simd.load(V, buf, r0), simd.load(V, buf, r0 + L), \
            simd.load(V, buf, r0 + 2 * L)
        a10, a11, a12 = simd.load(V, buf, r1), simd.load(V, buf, r1 + L), \
            simd.load(V, buf, r1 + 2 * L)
        a20, a21, a22 = simd.load(V, buf, r2), simd.load(V, buf, r2 + L), \
            simd.load(V, buf, r2 + 2 * L)
        a30, a31, a32 = simd.load(V, buf, r3), simd.load(V, buf, r3 + L), \
            simd.load(V, buf, r3 + 2 * L)
    for e in range(op.shape[0]):
        i = xb + op[e] + q
        x0 = simd.load(V, x, i)
        x1 = simd.load(V, x, i + L)
        x2 = simd.load(V, x, i + 2 * L)
        c = simd.splat(V, wq[4 * e])
        a00 = simd.fma(x0, c, a00)
        a01 = simd.fma(x1, c, a01)
        a02 = simd.fma(x2, c, a02)
        c = simd.splat(V, wq[4 * e + 1])
        a10 = simd.fma(x0, c, a10)
        a11 = simd.fma(x1, c, a11)
        a12 = simd.fma(x2, c, a12)
        c = simd.splat(V, wq[4 * e + 2])
        a20 = simd.fma(x0, c, a20)
        a21 = simd.fma(x1, c, a21)
        a22 = simd.fma(x2, c, a22)
        c = simd.splat(V, wq[4 * e + 3])
        a30 = simd.fma(x0, c, a30)
        a31 = simd.fma(x1, c, a31)
        a32 = simd.fma(x2, c, a32)
    simd.store(buf, r0, a00)
    simd.store(buf, r0 + L, a01)
    simd.store(buf, r0 + 2 * L, a02)
    simd.store(buf, r1, a10)
    simd.store(buf, r1 + L, a11)
    simd.store(buf, r1 + 2 * L, a12)
    simd.store(buf, r2, a20)
    simd.store(buf, r2 + L, a21)
    simd.store(buf, r2 + 2 * L, a22)
    simd.store(buf, r3, a30)
    simd.store(buf, r3 + L, a31)
    simd.store(buf, r3 + 2 * L, a32)


@serial_kernel
def tile_4x1(V, x, xb, op, wq, first, buf, f, q, t):
    """:func:`tile_4x3` for one vector of pixels (the remainder of a run), of which only the
    first ``t`` lanes are read from ``x`` (``t < L``: a masked load at the end of ``x``)."""
    L = simd.lanes(V, x)
    n = buf.shape[1]
    r0, r1, r2, r3 = f * n + q, (f + 1) * n + q, (f + 2) * n + q, (f + 3) * n + q
    if first:
        a0 = simd.zero(V, x)
        a1, a2, a3 = a0, a0, a0
    else:
        a0, a1 = simd.load(V, buf, r0), simd.load(V, buf, r1)
        a2, a3 = simd.load(V, buf, r2), simd.load(V, buf, r3)
    for e in range(op.shape[0]):
        if t == L:
            x0 = simd.load(V, x, xb + op[e] + q)
        else:
            x0 = simd.load_tail(V, x, xb + op[e] + q, t)
        a0 = simd.fma(x0, simd.splat(V, wq[4 * e]), a0)
        a1 = simd.fma(x0, simd.splat(V, wq[4 * e + 1]), a1)
        a2 = simd.fma(x0, simd.splat(V, wq[4 * e + 2]), a2)
        a3 = simd.fma(x0, simd.splat(V, wq[4 * e + 3]), a3)
    simd.store(buf, r0, a0)
    simd.store(buf, r1, a1)
    simd.store(buf, r2, a2)
    simd.store(buf, r3, a3)


@serial_kernel
def dot_4x3(V, x, xb, op, e, dy, d0, d1, d2, nq, P, f):
    """The weight-gradient micro-kernel: ``P[e+i, f+j] += sum_{q<nq} x[xb + op[e+i] + q] *
    dy[dj + q]`` for 4 elements ``i`` and the 3 dy rows starting at ``d0, d1, d2`` (flat):
    12 vector partial sums in registers (per vector of pixels 4 + 3 loads and 12 FMAs), the
    last partial vector through masked loads (nothing past a row is read), each sum added
    across its lanes in a fixed order at the end."""
    L = simd.lanes(V, x)
    i0, i1, i2, i3 = xb + op[e], xb + op[e + 1], xb + op[e + 2], xb + op[e + 3]
    s00 = simd.zero(V, x)
    s01, s02, s10, s11, s12, s20, s21, s22, s30, s31, s32 = \
        s00, s00, s00, s00, s00, s00, s00, s00, s00, s00, s00
    nfull = nq // L * L
    for q in range(0, nfull, L):
        a = simd.load(V, dy, d0 + q)
        b = simd.load(V, dy, d1 + q)
        c = simd.load(V, dy, d2 + q)
        v = simd.load(V, x, i0 + q)
        s00 = simd.fma(v, a, s00)
        s01 = simd.fma(v, b, s01)
        s02 = simd.fma(v, c, s02)
        v = simd.load(V, x, i1 + q)
        s10 = simd.fma(v, a, s10)
        s11 = simd.fma(v, b, s11)
        s12 = simd.fma(v, c, s12)
        v = simd.load(V, x, i2 + q)
        s20 = simd.fma(v, a, s20)
        s21 = simd.fma(v, b, s21)
        s22 = simd.fma(v, c, s22)
        v = simd.load(V, x, i3 + q)
        s30 = simd.fma(v, a, s30)
        s31 = simd.fma(v, b, s31)
        s32 = simd.fma(v, c, s32)
    t = nq - nfull
    if t > 0:
        q = nfull
        a = simd.load_tail(V, dy, d0 + q, t)
        b = simd.load_tail(V, dy, d1 + q, t)
        c = simd.load_tail(V, dy, d2 + q, t)
        v = simd.load_tail(V, x, i0 + q, t)
        s00 = simd.fma(v, a, s00)
        s01 = simd.fma(v, b, s01)
        s02 = simd.fma(v, c, s02)
        v = simd.load_tail(V, x, i1 + q, t)
        s10 = simd.fma(v, a, s10)
        s11 = simd.fma(v, b, s11)
        s12 = simd.fma(v, c, s12)
        v = simd.load_tail(V, x, i2 + q, t)
        s20 = simd.fma(v, a, s20)
        s21 = simd.fma(v, b, s21)
        s22 = simd.fma(v, c, s22)
        v = simd.load_tail(V, x, i3 + q, t)
        s30 = simd.fma(v, a, s30)
        s31 = simd.fma(v, b, s31)
        s32 = simd.fma(v, c, s32)
    P[e, f] += simd.hsum(s00)
    P[e, f + 1] += simd.hsum(s01)
    P[e, f + 2] += simd.hsum(s02)
    P[e + 1, f] += simd.hsum(s10)
    P[e + 1, f + 1] += simd.hsum(s11)
    P[e + 1, f + 2] += simd.hsum(s12)
    P[e + 2, f] += simd.hsum(s20)
    P[e + 2, f + 1] += simd.hsum(s21)
    P[e + 2, f + 2] += simd.hsum(s22)
    P[e + 3, f] += simd.hsum(s30)
    P[e + 3, f + 1] += simd.hsum(s31)
    P[e + 3, f + 2] += simd.hsum(s32)


@serial_kernel
def row_sum(V, dy, d, nq):
    """``dy[d:d+nq].sum()`` in vectors (a fixed order)."""
    L = simd.lanes(V, dy)
    s = simd.zero(V, dy)
    nfull = nq // L * L
    for q in range(0, nfull, L):
        s = simd.add(s, simd.load(V, dy, d + q))
    if nq > nfull:
        s = simd.add(s, simd.load_tail(V, dy, d + nfull, nq - nfull))
    return simd.hsum(s)


@serial_kernel
def tile_4x1_edge(V, x, xb, op, wq, first, c, f, q, rows, t):
    """:func:`tile_4x1` at the edge of an output matrix ``c`` that has no padding: only the
    first ``rows`` (1-4) rows ``f..f+rows-1`` and the first ``t`` (1..L) lanes of
    ``c[., q:q+L]`` are read and written (masked loads and stores), and only ``t`` lanes of
    each ``x`` row are read. The weights of the missing rows (``wq[4*e + k]``, ``k >=
    rows``) are read but their sums are never stored."""
    L = simd.lanes(V, x)
    n = c.shape[1]
    r0, r1, r2, r3 = f * n + q, (f + 1) * n + q, (f + 2) * n + q, (f + 3) * n + q
    a0 = simd.zero(V, x)
    a1, a2, a3 = a0, a0, a0
    if not first:
        a0 = simd.load_tail(V, c, r0, t)
        if rows > 1:
            a1 = simd.load_tail(V, c, r1, t)
        if rows > 2:
            a2 = simd.load_tail(V, c, r2, t)
        if rows > 3:
            a3 = simd.load_tail(V, c, r3, t)
    for e in range(op.shape[0]):
        if t == L:
            x0 = simd.load(V, x, xb + op[e] + q)
        else:
            x0 = simd.load_tail(V, x, xb + op[e] + q, t)
        a0 = simd.fma(x0, simd.splat(V, wq[4 * e]), a0)
        a1 = simd.fma(x0, simd.splat(V, wq[4 * e + 1]), a1)
        a2 = simd.fma(x0, simd.splat(V, wq[4 * e + 2]), a2)
        a3 = simd.fma(x0, simd.splat(V, wq[4 * e + 3]), a3)
    simd.store_tail(c, r0, a0, t)
    if rows > 1:
        simd.store_tail(c, r1, a1, t)
    if rows > 2:
        simd.store_tail(c, r2, a2, t)
    if rows > 3:
        simd.store_tail(c, r3, a3, t)



@serial_kernel
def tile_4x3_edge(V, x, xb, op, wq, first, c, f, q, rows):
    """:func:`tile_4x3` at the last rows of an output matrix ``c`` that has no padding: all 12
    vector sums are formed (full speed: the missing rows' weights ``wq[4*e + k]``, ``k >=
    rows``, are read), but only rows ``f..f+rows-1`` (``rows`` 1-4) of ``c[., q:q+3L]`` are
    read and written."""
    L = simd.lanes(V, x)
    n = c.shape[1]
    r0, r1, r2, r3 = f * n + q, (f + 1) * n + q, (f + 2) * n + q, (f + 3) * n + q
    a00 = simd.zero(V, x)
    a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32 = \
        a00, a00, a00, a00, a00, a00, a00, a00, a00, a00, a00
    if not first:
        a00, a01, a02 = simd.load(V, c, r0), simd.load(V, c, r0 + L), \
            simd.load(V, c, r0 + 2 * L)
        if rows > 1:
            a10, a11, a12 = simd.load(V, c, r1), simd.load(V, c, r1 + L), \
                simd.load(V, c, r1 + 2 * L)
        if rows > 2:
            a20, a21, a22 = simd.load(V, c, r2), simd.load(V, c, r2 + L), \
                simd.load(V, c, r2 + 2 * L)
        if rows > 3:
            a30, a31, a32 = simd.load(V, c, r3), simd.load(V, c, r3 + L), \
                simd.load(V, c, r3 + 2 * L)
    for e in range(op.shape[0]):
        i = xb + op[e] + q
        x0 = simd.load(V, x, i)
        x1 = simd.load(V, x, i + L)
        x2 = simd.load(V, x, i + 2 * L)
        w = simd.splat(V, wq[4 * e])
        a00 = simd.fma(x0, w, a00)
        a01 = simd.fma(x1, w, a01)
        a02 = simd.fma(x2, w, a02)
        w = simd.splat(V, wq[4 * e + 1])
        a10 = simd.fma(x0, w, a10)
        a11 = simd.fma(x1, w, a11)
        a12 = simd.fma(x2, w, a12)
        w = simd.splat(V, wq[4 * e + 2])
        a20 = simd.fma(x0, w, a20)
        a21 = simd.fma(x1, w, a21)
        a22 = simd.fma(x2, w, a22)
        w = simd.splat(V, wq[4 * e + 3])
        a30 = simd.fma(x0, w, a30)
        a31 = simd.fma(x1, w, a31)
        a32 = simd.fma(x2, w, a32)
    simd.store(c, r0, a00)
    simd.store(c, r0 + L, a01)
    simd.store(c, r0 + 2 * L, a02)
    if rows > 1:
        simd.store(c, r1, a10)
        simd.store(c, r1 + L, a11)
        simd.store(c, r1 + 2 * L, a12)
    if rows > 2:
        simd.store(c, r2, a20)
        simd.store(c, r2 + L, a21)
        simd.store(c, r2 + 2 * L, a22)
    if rows > 3:
        simd.store(c, r3, a30)
        simd.store(c, r3 + L, a31)
        simd.store(c, r3 + 2 * L, a32)
