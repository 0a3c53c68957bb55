"""Convolution loop nests (:mod:`nbconv.functional._conv_plan` plans the layouts and tables).

The kernels work on *batch-interleaved planes*: a 1-d buffer holding, per channel (or stride
phase of a channel), ``Hx`` rows, each row holding the same image row of all ``N`` images one
after the other, ``Wx`` values each: element ``(c, h, n, w)`` sits at
``((c * Hx + h) * N + n) * Wx + w``. Output pixel ``(oh, n, ow)`` has the flat index
``q = (oh * N + n) * Wx + ow``, and the input it needs for reduction element ``e`` (a channel
and a kernel tap) is ``x[gbase + off[e] + q]``. So every inner loop runs over a long contiguous
range of ``q`` in both operands, whatever the image size, with no index arithmetic; columns
``ow >= OW`` of the padded rows are computed and dropped (``conv_rows``) or are zero in ``dy``
(``conv_weight_grad``). With ``N = 1`` per task (``Nr = 1``, images ``xs`` apart) the same
loops read plain NCHW planes (1x1, stride-1, unpadded convolutions).

- ``to_planes``: NCHW -> zero padded, stride-phase split, batch-interleaved planes (two layouts
  in one parallel loop).
- ``conv_rows``: ``y[n, g*Fo+f, oy0+oh*osh, ox0+ow*osw] = bias[g*Fo+f] + sum_e w[p, g, e, f] *
  x[...]``: the forward pass and (flipped weights on padded ``dy``, all stride phases in one
  call) the input gradient. Register block: 4 elements x 4 outputs over a run of pixels (then
  pairs, then one), the runs of ``FB`` outputs kept in an L1 buffer; the last ``ne % 4``
  elements run one at a time (no zero-weight padding: ``0 * inf`` would be NaN). Each output
  element is written by one task.
- ``conv_weight_grad``: ``part[c, g, e, f] = sum_{q in chunk c} x[...] * dy[g*Fo+f, q]`` (and
  the bias gradient's partial sums): chunks are fixed by the wrapper (not by the thread count)
  and reduced in a fixed order by it, so results are bitwise reproducible. Register block:
  4 elements x 4 filters (then pairs), 16 scalar accumulators over a run of pixels.

Measured (AMD Zen 5, AVX-512, one thread, numba 0.68; a busy shared machine, best of 15):
per-core fp32 peak of a tiny L1-resident Numba FMA loop (8 accumulators, one load per 8 FMAs)
is 221-233 GFLOP/s (float64 113-118). ``inspect_asm`` (needs an empty cache, e.g.
``NUMBA_CACHE_DIR=/tmp/x``) shows both inner loops as packed ``vfmadd231ps zmm`` (LLVM picks
512-bit vectors for ``znver5``) with no stack spill in the loop (``rsp`` appears only in the
setup around it, or as a pointer reload in the 4x2 loop of ``conv_rows``; no zmm is
spilled): ``conv_rows`` 4x4 and 4x2 blocks, ``conv_weight_grad``'s 4x4 block a 28-line loop of
16 zmm FMAs with 16 zmm accumulators and no ``rsp`` reference. Whole ops (layout, tasks, write-out
included), N=4 one thread, float32: forward 3x3 C=32 16x16 about 40-55 GFLOP/s (18-24% of
peak), 3x3 C=64 8x8 23-30 (10-13%), 7x7 C=3 74-99 (33-43%), 1x1 C=64 69-97 (30-42%); dx+dw
18-42%. So the micro-kernels are not the limit on this CPU: the L1 buffer traffic per FMA,
short runs on small maps and the layout copies are; a tile held in zmm registers across the
reduction (oneDNN's nChw16c) is the next step.

Accumulators are seeded with ``zero``, a scalar of the arrays' dtype passed by the wrapper, so
no float64 enters a float32 loop.
"""
import numpy as np
from numba import prange

from .._config import CONV_FW as FW  # filters whose dy rows stay in L2 in ``conv_weight_grad``
from .._config import CONV_KC as KC  # reduction elements per pass of ``conv_rows``
from .._config import kernel, serial_kernel
from . import simd


@serial_kernel
def _plane_rows(src, dst, task, sh, sw, pa, pb, pt, pl, Hq, Wq, zero):
    """Row group ``task = ((c*na + ia)*nb + ib)*Hq + t`` of :func:`to_planes` (phase
    ``a = pa[ia], b = pb[ib]``): ``N`` rows of ``Wq`` values
    ``dst[(task*N + n)*Wq + u] = src[n, c, a + sh*t - pt, b + sw*u - pl]``."""
    N, C, H, W = src.shape
    na, nb = pa.shape[0], pb.shape[0]
    c = task // (na * nb * Hq)
    rem = task - c * (na * nb * Hq)
    iab = rem // Hq
    t = rem - iab * Hq
    ia = iab // nb
    a = pa[ia]
    b = pb[iab - ia * nb]
    h = a + sh * t - pt
    if h < 0 or h >= H:  # a padding row in every image
        group = dst[task * N * Wq:(task + 1) * N * Wq]
        for k in range(N * Wq):
            group[k] = zero
        return
    # columns u with 0 <= b + sw*u - pl < W
    u0 = min(Wq, max(0, (pl - b + sw - 1) // sw))
    u1 = u0
    if pl - b + W - 1 >= 0:
        u1 = min(Wq, max(u0, (pl - b + W - 1) // sw + 1))
    c0 = b + sw * u0 - pl
    nv = u1 - u0
    src1 = src.reshape(-1)
    # flat unsigned indices: no slices or calls per row (rows are short, often < 20 values)
    swu = np.uint64(sw)
    for n in range(N):
        ru = np.uint64((task * N + n) * Wq)
        for u in range(u0):
            dst[ru + np.uint64(u)] = zero
        for u in range(u1, Wq):
            dst[ru + np.uint64(u)] = zero
        du = ru + np.uint64(u0)
        su = np.uint64(((n * C + c) * H + h) * W + c0)
        if sw == 1:
            for k in range(nv):
                dst[du + np.uint64(k)] = src1[su + np.uint64(k)]
        elif sw == 2:
            for k in range(nv):
                dst[du + np.uint64(k)] = src1[su + np.uint64(2 * k)]
        else:
            for k in range(nv):
                dst[du + np.uint64(k)] = src1[su + np.uint64(k) * swu]


@kernel
def to_planes(src, dst, sh, sw, pa, pb, pt, pl, Hq, Wq, dst2, pt2, pl2, Hq2, Wq2, zero):
    """src (N, C, H, W) -> dst[((((c*na + ia)*nb + ib)*Hq + t)*N + n)*Wq + u] =
    src[n, c, a + sh*t - pt, b + sw*u - pl] for the stride phases ``a = pa[ia]``,
    ``b = pb[ib]`` that the kernel taps use (zero outside ``src``) and, in the same parallel
    loop, the stride-1 layout ``dst2`` with ``pt2, pl2, Hq2, Wq2`` (``Hq2 = 0``: none). Only
    the first ``C*na*nb*Hq*N*Wq`` elements of ``dst`` are written (likewise ``dst2``).

    Textbook twin: none, a layout step (:func:`nbconv.kernels.textbook.conv2d_forward` reads ``x``
    in place and skips padding taps)."""
    C = src.shape[1]
    T1 = C * pa.shape[0] * pb.shape[0] * Hq
    p0 = pa[:1] * 0
    for task in prange(T1 + C * Hq2):
        if task < T1:
            _plane_rows(src, dst, task, sh, sw, pa, pb, pt, pl, Hq, Wq, zero)
        else:
            _plane_rows(src, dst2, task - T1, 1, 1, p0, p0, pt2, pl2, Hq2, Wq2, zero)


@serial_kernel
def _rows_4x3(V, x, xb, op, wq, first, buf, f, q):
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
def _rows_4x1(V, x, xb, op, wq, first, buf, f, q, t):
    """:func:`_rows_4x3` for one vector of pixels (the remainder of a run), of which only the
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


@kernel
def conv_rows(x, xs, gstride, w, off, bias, y, tasks, ph_out, Nr, Wx, osh, osw, V):
    """x (flat); w (P, G, Fp/4, E, 4) and off (P, E) int64 per phase p: ``w[p, g, f // 4, e,
    f % 4]`` is output ``f``'s weight for reduction element ``e`` (``Fp`` outputs, a multiple
    of 4, zero weights pad them); bias (G*Fo,); y (N, G*Fo, Hy, Wy); tasks (T, 5) rows
    ``(p, g, n0, r0, r1)``: output rows ``r = oh*Nr + (n - n0)`` in ``[r0, r1)`` of phase ``p``
    read ``x[n0*xs + g*gstride + off[p, e] + r*Wx + ow]`` (``Nr = N, n0 = 0``: batch-interleaved
    planes; ``Nr = 1``: one image per task, ``xs`` apart); ``ph_out[p] = (OW, oy0, ox0, ne)``
    places pixel ``(oh, n, ow)`` at ``y[n, g*Fo + f, oy0 + oh*osh, ox0 + ow*osw]`` and says
    that the first ``ne`` elements are used. ``V`` is the vector width
    (:mod:`nbconv.kernels.simd`). Reads of ``x`` run up to three vectors past a task's last
    pixel (whole 3-vector blocks): into a buffer's tail, or, at the end of an ``x`` without
    one, vector by vector with the last masked (their results are dropped).

    A GEMM with indirect rows, blocked as BLAS blocks one: per task (a run of pixels, all
    outputs in an L1/L2 buffer), per chunk of ``KC`` reduction elements, per 3 vectors of
    pixels (their ``x`` values, ``KC`` x 3 vectors, stay in L1), per 4 outputs (their ``KC`` x 4
    weights are contiguous): :func:`_rows_4x3` with the 4 x 3-vector output tile in registers
    (one vector at the end of the run: :func:`_rows_4x1`). Then the valid columns go to ``y``
    with the bias. The reduction runs over exactly the ``ne`` elements: no zero weight pads it
    (``0 * inf`` would be NaN where the true sum is inf). Each output element is written by
    one task.

    Textbook twins: :func:`nbconv.kernels.textbook.conv2d_forward` (forward),
    :func:`nbconv.kernels.textbook.conv2d_backward_input` (input gradient)."""
    Ft, Hy, Wy = y.shape[1], y.shape[2], y.shape[3]
    G, Fq = w.shape[1], w.shape[2]
    Fo = Ft // G
    L = simd.lanes(V, x)
    y1 = y.reshape(-1)
    for task in prange(tasks.shape[0]):
        p, g, n0, r0, r1 = tasks[task, 0], tasks[task, 1], tasks[task, 2], tasks[task, 3], \
            tasks[task, 4]
        OW, oy0, ox0, ne = ph_out[p, 0], ph_out[p, 1], ph_out[p, 2], ph_out[p, 3]
        xb = n0 * xs + g * gstride + r0 * Wx
        op = off[p]
        # whole 3-vector blocks (the extra columns are dropped), but where x ends before
        # them (NCHW input read in place): single vectors, the last one masked
        nv = ((r1 - r0) * Wx + L - 1) // L
        nv3 = (nv + 2) // 3 * 3
        omax = 0
        for e in range(ne):
            omax = max(omax, op[e])
        avail = x.shape[0] - xb - omax
        nfull = min(nv3, avail // L)
        nblk = min(Fq, (Fo + 3) // 4)
        buf = np.empty((4 * nblk, nv3 * L), y.dtype)
        wg = w[p, g].reshape(-1)   # (Fp/4 blocks of E x 4) flat
        E = w.shape[3]
        for e0 in range(0, max(ne, 1), KC):
            e1 = min(ne, e0 + KC)
            opc = op[e0:e1]
            for b in range(nfull // 3):
                for fb in range(nblk):
                    _rows_4x3(V, x, xb, opc, wg[4 * (fb * E + e0):4 * (fb * E + e1)], e0 == 0,
                              buf, 4 * fb, 3 * L * b)
            for b in range(nfull // 3 * 3, nv):
                t = L if b < nfull else avail - L * nfull
                for fb in range(nblk):
                    _rows_4x1(V, x, xb, opc, wg[4 * (fb * E + e0):4 * (fb * E + e1)], e0 == 0,
                              buf, 4 * fb, L * b, t)
        for f in range(Fo):
            bb = bias[g * Fo + f]
            bk = buf[f]
            oh = r0 // Nr
            n = r0 - oh * Nr
            oswu = np.uint64(osw)
            for r in range(r1 - r0):
                # flat unsigned indices: no slices per row (rows can be 8 values)
                su = np.uint64(r * Wx)
                du = np.uint64((((n0 + n) * Ft + g * Fo + f) * Hy + oy0 + oh * osh) * Wy + ox0)
                if osw == 1:
                    for ow in range(OW):
                        y1[du + np.uint64(ow)] = bk[su + np.uint64(ow)] + bb
                else:
                    for ow in range(OW):
                        y1[du + np.uint64(ow) * oswu] = bk[su + np.uint64(ow)] + bb
                n += 1
                if n == Nr:
                    n = 0
                    oh += 1


@serial_kernel
def _grad_4x3(V, x, xb, op, e, dy, d0, d1, d2, nq, P, f):
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
def _row_sum(V, dy, d, nq):
    """``dy[d:d+nq].sum()`` in vectors (a fixed order)."""
    L = simd.lanes(V, dy)
    s = simd.zero(V, dy)
    nfull = nq // L * L
    for q in range(0, nfull, L):
        s = simd.add(s, simd.load(V, dy, d + q))
    if nq > nfull:
        s = simd.add(s, simd.load_tail(V, dy, d + nfull, nq - nfull))
    return simd.hsum(s)


@kernel
def conv_weight_grad(x, xs, gstride, dy, off, part, pbias, block, V):
    """x (flat, image i at ``i*xs``); dy (Ni, G*Fo, Q) with Q pixels per image (zero in dropped
    columns); off (E4,) int64 (``E4 % 4 == 0``; padding elements point anywhere valid, their
    rows are dropped); part (nchunks, G, E4, F3) (``F3 >= Fo`` a multiple of 3; columns past
    ``Fo`` repeat the last filter's and are dropped) is overwritten with the sums over each
    chunk's pixel blocks (``block`` pixels of one image each), and pbias (nchunks, G, Fo) (if
    not empty) with each chunk's sums of dy. ``V``: the vector width. The loops also multiply
    the dropped columns and the zero padding of ``x`` (by a zero ``dy``, or a ``dy`` by a zero of
    ``x``): exact for finite values; the wrapper recomputes a non-finite result. Chunks are fixed
    by the wrapper (not by the thread count) and reduced in a fixed order by it, so results are
    bitwise reproducible.

    Per block of pixels, per 4 reduction elements (their ``x`` rows stay in L1), per slab of
    ``FW`` filters (their ``dy`` rows stay in L2): :func:`_grad_4x3` per 3 filters.

    Textbook twin: :func:`nbconv.kernels.textbook.conv2d_backward_weight`."""
    nchunks, G, E4, F3 = part.shape
    Ni = dy.shape[0]
    Fo = dy.shape[1] // G
    Q = dy.shape[2]
    nbi = (Q + block - 1) // block
    nb = Ni * nbi
    dy1 = dy.reshape(-1)
    zero = part.dtype.type(0)
    for task in prange(nchunks * G):
        c = task // G
        g = task - c * G
        P = part[c, g]
        for e in range(E4):
            for f in range(F3):
                P[e, f] = zero
        b0, b1 = (c * nb) // nchunks, ((c + 1) * nb) // nchunks
        if pbias.shape[0] > 0:
            for f in range(Fo):
                s = zero
                for blk in range(b0, b1):
                    i = blk // nbi
                    q0 = (blk - i * nbi) * block
                    s += _row_sum(V, dy1, (i * G * Fo + g * Fo + f) * Q + q0,
                                  min(block, Q - q0))
                pbias[c, g, f] = s
        for blk in range(b0, b1):
            i = blk // nbi
            q0 = (blk - i * nbi) * block
            nq = min(block, Q - q0)
            xb = i * xs + g * gstride + q0
            drow = (i * G * Fo + g * Fo) * Q + q0   # dy row of filter f: drow + f * Q
            for f0 in range(0, F3, FW):  # a slab of dy rows that stays in L2
                fend = min(F3, f0 + FW)
                for e in range(0, E4, 4):
                    for f in range(f0, fend, 3):
                        _grad_4x3(V, x, xb, off, e, dy1, drow + min(f, Fo - 1) * Q,
                                  drow + min(f + 1, Fo - 1) * Q, drow + min(f + 2, Fo - 1) * Q,
                                  nq, P, f)
