"""Loop nests for convolutions where every filter reads one input channel (``C/groups == 1``:
depthwise, with any channel multiplier ``Fg = F/C``).

Such a convolution does ``KH*KW`` multiply-adds per output, so it is bound by memory, not
arithmetic: these kernels read ``x`` (and ``dy``) straight from NCHW, one image plane at a
time, and never build the padded copy the general kernels use. Each task copies its plane into
a small scratch buffer that stays in L1 (zero padded, split into stride phases) and then runs
every kernel tap as one long unit-stride loop over the flattened plane:

    S[((a*sw + b)*Hq + t)*Wq + u] = x[n, c, a + sh*t - pt, b + sw*u - pl]   (0 outside x)
    acc[oh*Wq + ow] = bias[f] + sum_taps w[f, i, j] * S[off[i, j] + oh*Wq + ow]

with ``off[i, j] = ((a*sw + b)*Hq + i*dh // sh)*Wq + j*dw // sw``, ``a = i*dh % sh``,
``b = j*dw % sw``; columns ``ow >= OW`` are computed and dropped. The padding of ``S`` sits at
the same places for every plane, so it is zeroed once per task and only the image is copied.

The input gradient is the same loop on ``dy`` spread into a zero buffer ``Dz`` (``dy[oh, ow]``
at row ``oh*sh + Toff``, column ``ow*sw + Loff``), reading
``Dz[(h + pt - i*dh + Toff)*Wz + w + pl - j*dw + Loff]``: a gather, so each ``dx`` element is
written by one task. The weight gradient of a tap is the sum of products of ``dy`` (rows of
``Wq`` with zeros after ``OW``) with ``S`` at the tap's offset. A backward task takes one channel
and a fixed range of images, summed in order, and the wrapper adds the ranges' partial sums in
order: results are identical for any thread count.

Taps are taken three at a time (one pass over the output buffer per three taps); a last group
of one or two taps has its own loop, so no zero weight ever multiplies an inf of ``x``.
"""
import numpy as np
from numba import prange

from .._config import kernel, serial_kernel


@serial_kernel
def _fill_rows(xp, S, sh, pt, pl, Hq, Wq):
    """:func:`_fill` for ``sw == 1``: rows are copied whole."""
    H, W = xp.shape
    for h in range(H):
        row = xp[h]
        base = ((h + pt) % sh * Hq + (h + pt) // sh) * Wq + pl
        dst = S[base:base + W]
        for v in range(W):
            dst[v] = row[v]


@serial_kernel
def _fill_pairs(xp, S, sh, pt, pl, Hq, Wq):
    """:func:`_fill` for ``sw == 2``: even and odd columns in one pass over a row."""
    H, W = xp.shape
    be = pl % 2                     # the column phase of the even columns
    oe = be * Hq * Wq + pl // 2
    oo = (1 - be) * Hq * Wq + (pl + 1) // 2
    for h in range(H):
        row = xp[h]
        base = ((h + pt) % sh * 2 * Hq + (h + pt) // sh) * Wq
        de = S[base + oe:]
        do = S[base + oo:]
        for k in range(W // 2):
            de[k] = row[2 * k]
            do[k] = row[2 * k + 1]
    if W % 2:  # the last column (a store after the loop above keeps it from vectorising)
        for h in range(H):
            base = ((h + pt) % sh * 2 * Hq + (h + pt) // sh) * Wq
            S[base + oe + W // 2] = xp[h, W - 1]


@serial_kernel
def _fill(xp, S, sh, sw, pt, pl, Hq, Wq):
    """Copy the plane ``xp (H, W)`` into the phase-split scratch ``S`` (padding untouched):
    input row ``h`` is row ``t = (h + pt) // sh`` of row phase ``a = (h + pt) % sh``, column
    ``w`` is column ``u = (w + pl) // sw`` of column phase ``b = (w + pl) % sw``."""
    if sw == 1:
        _fill_rows(xp, S, sh, pt, pl, Hq, Wq)
        return
    if sw == 2:
        _fill_pairs(xp, S, sh, pt, pl, Hq, Wq)
        return
    H, W = xp.shape
    for h in range(H):
        row = xp[h]
        a = (h + pt) % sh
        t = (h + pt) // sh
        for b in range(sw):
            w0 = (b - pl) % sw           # first column of phase b
            cnt = (W - w0 + sw - 1) // sw
            base = ((a * sw + b) * Hq + t) * Wq + (w0 + pl) // sw
            dst = S[base:base + cnt]
            src = row[w0:]
            for k in range(cnt):
                dst[k] = src[sw * k]


@serial_kernel
def _taps(S, wf, offs, out, L, base, init):
    """``out[q] (=|+=) base + sum_t wf[t] * S[offs[t] + q]`` for ``q < L`` (``base`` only when
    ``init``), three taps per pass."""
    T = wf.shape[0]
    t = 0
    while t < T:
        k = min(3, T - t)
        s0 = S[offs[t]:offs[t] + L]
        w0 = wf[t]
        if k == 3:
            s1 = S[offs[t + 1]:offs[t + 1] + L]
            s2 = S[offs[t + 2]:offs[t + 2] + L]
            w1, w2 = wf[t + 1], wf[t + 2]
            if init:
                for q in range(L):
                    out[q] = base + w0 * s0[q] + w1 * s1[q] + w2 * s2[q]
            else:
                for q in range(L):
                    out[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q]
        elif k == 2:
            s1 = S[offs[t + 1]:offs[t + 1] + L]
            w1 = wf[t + 1]
            if init:
                for q in range(L):
                    out[q] = base + w0 * s0[q] + w1 * s1[q]
            else:
                for q in range(L):
                    out[q] += w0 * s0[q] + w1 * s1[q]
        else:
            if init:
                for q in range(L):
                    out[q] = base + w0 * s0[q]
            else:
                for q in range(L):
                    out[q] += w0 * s0[q]
        init = False
        t += k


@serial_kernel
def _tap_grads(S, D, offs, L, out, zero):
    """The weight gradient of each tap: ``out[t] += sum_{q < L} D[q] * S[offs[t] + q]``, three
    taps per pass over ``D``."""
    T = offs.shape[0]
    d = D[:L]
    t = 0
    while t < T:
        k = min(3, T - t)
        s0 = S[offs[t]:offs[t] + L]
        if k == 3:
            s1 = S[offs[t + 1]:offs[t + 1] + L]
            s2 = S[offs[t + 2]:offs[t + 2] + L]
            a0 = zero
            a1 = zero
            a2 = zero
            for q in range(L):
                v = d[q]
                a0 += v * s0[q]
                a1 += v * s1[q]
                a2 += v * s2[q]
            out[t] += a0
            out[t + 1] += a1
            out[t + 2] += a2
        elif k == 2:
            s1 = S[offs[t + 1]:offs[t + 1] + L]
            a0 = zero
            a1 = zero
            for q in range(L):
                v = d[q]
                a0 += v * s0[q]
                a1 += v * s1[q]
            out[t] += a0
            out[t + 1] += a1
        else:
            a0 = zero
            for q in range(L):
                a0 += d[q] * s0[q]
            out[t] += a0
        t += k


@kernel
def depthwise_forward(x, w, offs, bias, y, sh, sw, pt, pl, Hq, Wq, nchunks, zero):
    """x (N, C, H, W); w (F, T) taps ``t = i*KW + j``; offs (T,) int64; bias (F,);
    y (N, F, OH, OW) with ``F = Fg*C``: filter ``f`` reads channel ``f // Fg``. Planes
    ``(n, c)`` are split into ``nchunks`` tasks.

    Textbook twin: :func:`nbconv.kernels.textbook.conv2d_forward`."""
    N, C = x.shape[0], x.shape[1]
    n_filters, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Fg = n_filters // C
    P = N * C
    L = ((OH - 1) * Wq + OW + 7) // 8 * 8  # whole vectors: the scratch tails absorb the rest
    y1 = y.reshape(-1)
    for ch in prange(nchunks):
        S = np.zeros(sh * sw * Hq * Wq + Wq + 8, x.dtype)
        acc = np.empty(L, x.dtype)
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            n = p // C
            c = p - n * C
            _fill(x[n, c], S, sh, sw, pt, pl, Hq, Wq)
            for f in range(c * Fg, (c + 1) * Fg):
                _taps(S, w[f], offs, acc, L, bias[f], True)
                for oh in range(OH):  # flat unsigned indices: no slices per short row
                    su = np.uint64(oh * Wq)
                    du = np.uint64(((n * n_filters + f) * OH + oh) * OW)
                    for ow in range(OW):
                        y1[du + np.uint64(ow)] = acc[su + np.uint64(ow)]


@kernel
def depthwise_backward(x, dy, w, offs, offs_dx, dx, dwp, dbp, sh, sw, pt, pl, Hq, Wq, Toff,
                       Loff, Hz, Wz, need_dx, zero):
    """Gradients of :func:`depthwise_forward` for dy (N, F, OH, OW). Task ``(c, s)`` takes
    channel ``c`` and the images ``[s*N//S, (s+1)*N//S)`` in order (``S = dwp.shape[0]``,
    fixed by the wrapper) and overwrites its partial sums dwp[s, f] (T,) and dbp[s, f] of the
    channel's filters; with ``need_dx`` it also writes those images' dx (N, C, H, W).
    ``offs_dx[t] = (pt - i*dh + Toff)*Wz + pl - j*dw + Loff`` reads the spread ``dy`` buffer
    ``(Hz, Wz)``.

    Textbook twins: :func:`nbconv.kernels.textbook.conv2d_backward_input`,
    :func:`nbconv.kernels.textbook.conv2d_backward_weight`."""
    N, C, H, W = x.shape
    n_filters, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    Fg = n_filters // C
    nsplit = dwp.shape[0]
    L = ((OH - 1) * Wq + OW + 7) // 8 * 8   # whole vectors: the scratch tails absorb the rest
    Ldx = ((H - 1) * Wz + W + 7) // 8 * 8
    dy1 = dy.reshape(-1)
    dx1 = dx.reshape(-1)
    swu = np.uint64(sw)
    for task in prange(C * nsplit):
        c = task // nsplit
        sp = task - c * nsplit
        S = np.zeros(sh * sw * Hq * Wq + Wq + 8, x.dtype)
        D = np.zeros(OH * Wq + 8, x.dtype)
        Dz = np.zeros(Hz * Wz + 8 if need_dx else 0, x.dtype)
        dxb = np.empty(Ldx if need_dx else 0, x.dtype)
        dw = dwp[sp]
        db = dbp[sp]
        for f in range(c * Fg, (c + 1) * Fg):
            db[f] = zero
            for t in range(dw.shape[1]):
                dw[f, t] = zero
        for n in range(sp * N // nsplit, (sp + 1) * N // nsplit):
            _fill(x[n, c], S, sh, sw, pt, pl, Hq, Wq)
            for f in range(c * Fg, (c + 1) * Fg):
                # rows of dy into D (and spread into Dz): flat unsigned indices, no slices
                s = zero
                for oh in range(OH):
                    su = np.uint64(((n * n_filters + f) * OH + oh) * OW)
                    du = np.uint64(oh * Wq)
                    for ow in range(OW):
                        v = dy1[su + np.uint64(ow)]
                        D[du + np.uint64(ow)] = v
                        s += v
                db[f] += s
                _tap_grads(S, D, offs, L, dw[f], zero)
                if need_dx:
                    for oh in range(OH):
                        su = np.uint64(((n * n_filters + f) * OH + oh) * OW)
                        du = np.uint64((oh * sh + Toff) * Wz + Loff)
                        for ow in range(OW):
                            Dz[du + np.uint64(ow) * swu] = dy1[su + np.uint64(ow)]
                    _taps(Dz, w[f], offs_dx, dxb, Ldx, zero, f == c * Fg)
            if need_dx:
                for h in range(H):
                    su = np.uint64(h * Wz)
                    du = np.uint64(((n * C + c) * H + h) * W)
                    for v in range(W):
                        dx1[du + np.uint64(v)] = dxb[su + np.uint64(v)]
