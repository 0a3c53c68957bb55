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
- ``conv_rows``: ``y[n, g*Fo+f, oy0+oh*osh, ox0+ow*osw] = bias[g*Fo+f] + sum_e w[...] *
  x[...]``: the forward pass and (flipped weights on padded ``dy``, all stride phases in one
  call) the input gradient. A GEMM whose reduction rows are found through the offsets (an
  "indirect" GEMM, no im2col copy), blocked as BLAS blocks one: per task a run of whole rows of
  pixels and all outputs (their sums in a buffer), per pass ``KC`` reduction elements, per 3
  vectors of pixels, per 4 outputs the micro-kernel :func:`nbconv.kernels.gemm.tile_4x3` with
  the 4 x 3-vector tile in registers. The reduction runs over exactly the used elements (no
  zero-weight padding: ``0 * inf`` would be NaN). Each output element is written by one task.
- ``conv_weight_grad``: ``part[c, g, e, f] = sum_{q in chunk c} x[...] * dy[g*Fo+f, q]`` (and
  the bias gradient's partial sums): chunks are fixed by the wrapper (not by the thread count)
  and reduced in a fixed order by it, so results are bitwise reproducible. Micro-kernel:
  :func:`nbconv.kernels.gemm.dot_4x3`, 4 elements x 3 filters as vector partial sums.

Both take the vector width ``V`` (:mod:`nbconv.kernels.simd`) as their last argument.

Measured (AMD EPYC Zen 3, AVX2, 2 cores; one thread, ``time.thread_time``, best of 15 on a
machine busy with other jobs): FMA peak 99 GFLOP/s per core; forward (``conv_rows`` alone) on
(N64, C64, 16x16, F64), (64, 32, 32x32, 32) and (64, 128, 8x8, 128), 3x3 padding 1: 60-72
GFLOP/s (61-73% of peak; PyTorch 80-85), the input gradient a little less (wider rows per
image: more dropped columns), the weight gradient 39-58. The earlier scalar loops (4x4 blocks
with accumulators in memory) ran at 10-43% of peak on Zen 5.
"""
import numpy as np
from numba import prange

from .._config import CONV_FW as FW  # filters whose dy rows stay in L2 in ``conv_weight_grad``
from .._config import CONV_KC as KC  # reduction elements per pass of ``conv_rows``
from .._config import kernel, serial_kernel
from . import gemm, simd


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
        npass = max(1, (ne + KC - 1) // KC)   # equal passes of at most KC elements
        for ip in range(npass):
            e0, e1 = ne * ip // npass, ne * (ip + 1) // npass
            opc = op[e0:e1]
            for b in range(nfull // 3):
                for fb in range(nblk):
                    wq = wg[4 * (fb * E + e0):4 * (fb * E + e1)]
                    gemm.tile_4x3(V, x, xb, opc, wq, e0 == 0, buf, 4 * fb, 3 * L * b)
            for b in range(nfull // 3 * 3, nv):
                t = L if b < nfull else avail - L * nfull
                for fb in range(nblk):
                    wq = wg[4 * (fb * E + e0):4 * (fb * E + e1)]
                    gemm.tile_4x1(V, x, xb, opc, wq, e0 == 0, buf, 4 * fb, L * b, t)
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
    ``FW`` filters rounded down to whole 3-filter blocks (their ``dy`` rows stay in L2):
    :func:`nbconv.kernels.gemm.dot_4x3` per 3 filters.

    Textbook twin: :func:`nbconv.kernels.textbook.conv2d_backward_weight`."""
    nchunks, G, E4, F3 = part.shape
    Ni = dy.shape[0]
    Fo = dy.shape[1] // G
    Q = dy.shape[2]
    nbi = (Q + block - 1) // block
    nb = Ni * nbi
    dy1 = dy.reshape(-1)
    FW3 = max(3, FW // 3 * 3)   # slabs of whole 3-filter blocks (F3 is a multiple of 3)
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
                    s += gemm.row_sum(V, dy1, (i * G * Fo + g * Fo + f) * Q + q0,
                                  min(block, Q - q0))
                pbias[c, g, f] = s
        for blk in range(b0, b1):
            i = blk // nbi
            q0 = (blk - i * nbi) * block
            nq = min(block, Q - q0)
            xb = i * xs + g * gstride + q0
            drow = (i * G * Fo + g * Fo) * Q + q0   # dy row of filter f: drow + f * Q
            for f0 in range(0, F3, FW3):  # a slab of dy rows that stays in L2
                fend = min(F3, f0 + FW3)
                for e in range(0, E4, 4):
                    for f in range(f0, fend, 3):
                        gemm.dot_4x3(V, x, xb, off, e, dy1, drow + min(f, Fo - 1) * Q,
                                  drow + min(f + 1, Fo - 1) * Q, drow + min(f + 2, Fo - 1) * Q,
                                  nq, P, f)
