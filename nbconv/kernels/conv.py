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

from .._config import CONV_FB as FB  # outputs whose row block stays in L1 in ``conv_rows``
from .._config import CONV_FW as FW  # filters whose dy rows stay in L2 in ``conv_weight_grad``
from .._config import kernel, serial_kernel


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
def conv_rows(x, xs, gstride, w, off, bias, y, tasks, ph_out, Nr, Wx, osh, osw, zero):
    """x (flat); w (P, G, E4, Fo) and off (P, E4) int64 per phase p, E4 % 4 == 0 (zero
    weights pad it); bias (G*Fo,); y (N, G*Fo, Hy, Wy); tasks (T, 5) rows
    ``(p, g, n0, r0, r1)``: output rows ``r = oh*Nr + (n - n0)`` in ``[r0, r1)`` of phase ``p``
    read ``x[n0*xs + g*gstride + off[p, e] + r*Wx + ow]`` (``Nr = N, n0 = 0``: batch-interleaved
    planes; ``Nr = 1``: one image per task, ``xs`` apart); ``ph_out[p] = (OW, oy0, ox0, ne)``
    places pixel ``(oh, n, ow)`` at ``y[n, g*Fo + f, oy0 + oh*osh, ox0 + ow*osw]`` and says
    that the first ``ne`` elements are used.

    Textbook twins: :func:`nbconv.kernels.textbook.conv2d_forward` (forward),
    :func:`nbconv.kernels.textbook.conv2d_backward_input` (input gradient)."""
    Ft, Hy, Wy = y.shape[1], y.shape[2], y.shape[3]
    G, Fo2 = w.shape[1], w.shape[3]  # Fo2 == Fo
    Fo = Ft // G
    y1 = y.reshape(-1)
    for task in prange(tasks.shape[0]):
        p, g, n0, r0, r1 = tasks[task, 0], tasks[task, 1], tasks[task, 2], tasks[task, 3], \
            tasks[task, 4]
        OW, oy0, ox0, ne = ph_out[p, 0], ph_out[p, 1], ph_out[p, 2], ph_out[p, 3]
        xr = x[n0 * xs + g * gstride + r0 * Wx:]
        wp = w[p, g]
        op = off[p]
        omax = 0
        for e in range(ne):
            omax = max(omax, op[e])
        # whole vectors where the buffer allows (the extra columns are dropped)
        nq = min(((r1 - r0) * Wx + 7) // 8 * 8, xr.shape[0] - omax)
        buf = np.empty((min(FB, Fo2), nq), y.dtype)
        for f0 in range(0, Fo2, FB):
            fn = min(FB, Fo2 - f0)
            ne4 = ne - ne % 4
            for e in range(0, ne4, 4):
                x0 = xr[op[e]:op[e] + nq]
                x1 = xr[op[e + 1]:op[e + 1] + nq]
                x2 = xr[op[e + 2]:op[e + 2] + nq]
                x3 = xr[op[e + 3]:op[e + 3] + nq]
                for k in range(0, fn - 3, 4):  # 4 elements x 4 outputs: 16 FMAs per 4 loads
                    f = f0 + k
                    w00, w01, w02, w03 = wp[e, f], wp[e, f + 1], wp[e, f + 2], wp[e, f + 3]
                    w10, w11, w12, w13 = wp[e + 1, f], wp[e + 1, f + 1], wp[e + 1, f + 2], \
                        wp[e + 1, f + 3]
                    w20, w21, w22, w23 = wp[e + 2, f], wp[e + 2, f + 1], wp[e + 2, f + 2], \
                        wp[e + 2, f + 3]
                    w30, w31, w32, w33 = wp[e + 3, f], wp[e + 3, f + 1], wp[e + 3, f + 2], \
                        wp[e + 3, f + 3]
                    b0 = buf[k]
                    b1 = buf[k + 1]
                    b2 = buf[k + 2]
                    b3 = buf[k + 3]
                    if e == 0:
                        for q in range(nq):
                            a0 = x0[q]
                            a1 = x1[q]
                            a2 = x2[q]
                            a3 = x3[q]
                            b0[q] = w00 * a0 + w10 * a1 + w20 * a2 + w30 * a3
                            b1[q] = w01 * a0 + w11 * a1 + w21 * a2 + w31 * a3
                            b2[q] = w02 * a0 + w12 * a1 + w22 * a2 + w32 * a3
                            b3[q] = w03 * a0 + w13 * a1 + w23 * a2 + w33 * a3
                    else:
                        for q in range(nq):
                            a0 = x0[q]
                            a1 = x1[q]
                            a2 = x2[q]
                            a3 = x3[q]
                            b0[q] += w00 * a0 + w10 * a1 + w20 * a2 + w30 * a3
                            b1[q] += w01 * a0 + w11 * a1 + w21 * a2 + w31 * a3
                            b2[q] += w02 * a0 + w12 * a1 + w22 * a2 + w32 * a3
                            b3[q] += w03 * a0 + w13 * a1 + w23 * a2 + w33 * a3
                for k in range(fn // 4 * 4, fn - 1, 2):
                    f = f0 + k
                    w00, w01 = wp[e, f], wp[e, f + 1]
                    w10, w11 = wp[e + 1, f], wp[e + 1, f + 1]
                    w20, w21 = wp[e + 2, f], wp[e + 2, f + 1]
                    w30, w31 = wp[e + 3, f], wp[e + 3, f + 1]
                    b0 = buf[k]
                    b1 = buf[k + 1]
                    if e == 0:
                        for q in range(nq):
                            a0 = x0[q]
                            a1 = x1[q]
                            a2 = x2[q]
                            a3 = x3[q]
                            b0[q] = w00 * a0 + w10 * a1 + w20 * a2 + w30 * a3
                            b1[q] = w01 * a0 + w11 * a1 + w21 * a2 + w31 * a3
                    else:
                        for q in range(nq):
                            a0 = x0[q]
                            a1 = x1[q]
                            a2 = x2[q]
                            a3 = x3[q]
                            b0[q] += w00 * a0 + w10 * a1 + w20 * a2 + w30 * a3
                            b1[q] += w01 * a0 + w11 * a1 + w21 * a2 + w31 * a3
                if fn % 2 == 1:  # an odd last output (e.g. depthwise): no wasted twin
                    f = f0 + fn - 1
                    w00, w10, w20, w30 = wp[e, f], wp[e + 1, f], wp[e + 2, f], wp[e + 3, f]
                    b0 = buf[fn - 1]
                    if e == 0:
                        for q in range(nq):
                            b0[q] = w00 * x0[q] + w10 * x1[q] + w20 * x2[q] + w30 * x3[q]
                    else:
                        for q in range(nq):
                            b0[q] += w00 * x0[q] + w10 * x1[q] + w20 * x2[q] + w30 * x3[q]
            # the last ne % 4 elements one at a time: no zero weight pads the block, since
            # 0 * inf would put a NaN where the true sum is inf
            for e in range(ne4, ne):
                xe = xr[op[e]:op[e] + nq]
                for k in range(fn):
                    we = wp[e, f0 + k]
                    bk = buf[k]
                    if e == 0:
                        for q in range(nq):
                            bk[q] = we * xe[q]
                    else:
                        for q in range(nq):
                            bk[q] += we * xe[q]
            for k in range(fn):
                f = f0 + k
                if f < Fo:
                    bb = bias[g * Fo + f]
                    bk = buf[k]
                    oh = r0 // Nr
                    n = r0 - oh * Nr
                    oswu = np.uint64(osw)
                    for r in range(r1 - r0):
                        # flat unsigned indices: no slices per row (rows can be 8 values)
                        su = np.uint64(r * Wx)
                        du = np.uint64((((n0 + n) * Ft + g * Fo + f) * Hy + oy0 + oh * osh) * Wy
                                       + ox0)
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
def conv_weight_grad(x, xs, gstride, dy, off, part, pbias, block, zero):
    """x (flat, image i at ``i*xs``); dy (Ni, G*Fo, Q) with Q pixels per image (zero in dropped
    columns); off (E4,) int64; part (nchunks, G, E4, Fo2) is overwritten with the sums over each
    chunk's pixel blocks (``block`` pixels of one image each, a multiple of 8), and pbias
    (nchunks, G, Fo) (if not empty) with each chunk's sums of dy. The loops also multiply the
    dropped columns and the zero padding of ``x`` (by a zero ``dy``, or a ``dy`` by a zero of
    ``x``): exact for finite values; the wrapper recomputes a non-finite result.

    Textbook twin: :func:`nbconv.kernels.textbook.conv2d_backward_weight`."""
    nchunks, G, E4, Fo2 = part.shape
    Ni = dy.shape[0]
    Fo = dy.shape[1] // G
    Q = dy.shape[2]
    nbi = (Q + block - 1) // block
    nb = Ni * nbi
    for task in prange(nchunks * G):
        c = task // G
        g = task - c * G
        P = part[c, g]
        for e in range(E4):
            for f in range(Fo2):
                P[e, f] = zero
        b0, b1 = (c * nb) // nchunks, ((c + 1) * nb) // nchunks
        if pbias.shape[0] > 0:
            for f in range(Fo):
                s = zero
                for blk in range(b0, b1):
                    i = blk // nbi
                    q0 = (blk - i * nbi) * block
                    d = dy[i, g * Fo + f, q0:min(Q, q0 + block)]
                    t = zero
                    for q in range(d.shape[0]):
                        t += d[q]
                    s += t
                pbias[c, g, f] = s
        for blk in range(b0, b1):
            i = blk // nbi
            q0 = (blk - i * nbi) * block
            nq = min(block, Q - q0)
            xr = x[i * xs + g * gstride + q0:]
            dyi = dy[i]
            for f0 in range(0, Fo2, FW):  # a slab of dy rows that stays in L2
                for e in range(0, E4, 4):
                    x0 = xr[off[e]:off[e] + nq]
                    x1 = xr[off[e + 1]:off[e + 1] + nq]
                    x2 = xr[off[e + 2]:off[e + 2] + nq]
                    x3 = xr[off[e + 3]:off[e + 3] + nq]
                    fend = min(Fo2, f0 + FW)
                    for f in range(f0, fend - 3, 4):  # 4 elements x 4 filters: 16 sums
                        d0 = dyi[g * Fo + f, q0:q0 + nq]
                        d1 = dyi[g * Fo + f + 1, q0:q0 + nq]
                        d2 = dyi[g * Fo + f + 2, q0:q0 + nq]
                        d3 = dyi[g * Fo + min(f + 3, Fo - 1), q0:q0 + nq]
                        s00 = zero
                        s01 = zero
                        s02 = zero
                        s03 = zero
                        s10 = zero
                        s11 = zero
                        s12 = zero
                        s13 = zero
                        s20 = zero
                        s21 = zero
                        s22 = zero
                        s23 = zero
                        s30 = zero
                        s31 = zero
                        s32 = zero
                        s33 = zero
                        for q in range(nq):
                            a = d0[q]
                            b = d1[q]
                            c2 = d2[q]
                            c3 = d3[q]
                            v0 = x0[q]
                            v1 = x1[q]
                            v2 = x2[q]
                            v3 = x3[q]
                            s00 += v0 * a
                            s01 += v0 * b
                            s02 += v0 * c2
                            s03 += v0 * c3
                            s10 += v1 * a
                            s11 += v1 * b
                            s12 += v1 * c2
                            s13 += v1 * c3
                            s20 += v2 * a
                            s21 += v2 * b
                            s22 += v2 * c2
                            s23 += v2 * c3
                            s30 += v3 * a
                            s31 += v3 * b
                            s32 += v3 * c2
                            s33 += v3 * c3
                        P[e, f] += s00
                        P[e, f + 1] += s01
                        P[e, f + 2] += s02
                        P[e, f + 3] += s03
                        P[e + 1, f] += s10
                        P[e + 1, f + 1] += s11
                        P[e + 1, f + 2] += s12
                        P[e + 1, f + 3] += s13
                        P[e + 2, f] += s20
                        P[e + 2, f + 1] += s21
                        P[e + 2, f + 2] += s22
                        P[e + 2, f + 3] += s23
                        P[e + 3, f] += s30
                        P[e + 3, f + 1] += s31
                        P[e + 3, f + 2] += s32
                        P[e + 3, f + 3] += s33
                    for f in range(f0 + (fend - f0) // 4 * 4, fend, 2):
                        d0 = dyi[g * Fo + f, q0:q0 + nq]
                        d1 = dyi[g * Fo + min(f + 1, Fo - 1), q0:q0 + nq]
                        s00 = zero
                        s01 = zero
                        s10 = zero
                        s11 = zero
                        s20 = zero
                        s21 = zero
                        s30 = zero
                        s31 = zero
                        for q in range(nq):
                            a = d0[q]
                            b = d1[q]
                            s00 += x0[q] * a
                            s01 += x0[q] * b
                            s10 += x1[q] * a
                            s11 += x1[q] * b
                            s20 += x2[q] * a
                            s21 += x2[q] * b
                            s30 += x3[q] * a
                            s31 += x3[q] * b
                        P[e, f] += s00
                        P[e, f + 1] += s01
                        P[e + 1, f] += s10
                        P[e + 1, f + 1] += s11
                        P[e + 2, f] += s20
                        P[e + 2, f + 1] += s21
                        P[e + 3, f] += s30
                        P[e + 3, f + 1] += s31
