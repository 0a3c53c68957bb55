"""Textbook kernels: every conv, pool and norm op written the way a course (CS231n) writes it.

These are the readable twins of the fast kernels in :mod:`nbconv.kernels.conv`,
:mod:`~nbconv.kernels.depthwise`, :mod:`~nbconv.kernels.pool` and :mod:`~nbconv.kernels.norm`:
one loop per index of the formula, arrays indexed as ``(N, C, H, W)`` exactly as the maths
writes them, no layouts, no register blocks, no precomputed tables. A student can put the formula
next to the loop nest and tick off each index. They are compiled like the fast ones (``kernel``
from :mod:`nbconv._config`: ``@njit(parallel=True)``, cached) and called by the validating
wrappers in :mod:`nbconv.textbook`; ``benchmarks/report.py`` times them as the ``textbook``
column, which shows what the fast kernels' optimisations buy.

Conventions, shared by every kernel here:

- ``x`` ``(N, C, H, W)``; a window (conv or pool) at output ``(oh, ow)`` reads input row
  ``ih = oh*sh - pt + i*dh`` and column ``iw = ow*sw - pl + j*dw`` for kernel tap ``(i, j)``.
  Padding is never materialised: a tap with ``ih`` or ``iw`` outside the input is *skipped* (a
  bounds check), so no zero ever multiplies an input value and an ``inf`` in a pixel that no
  output reads cannot leak into the result as ``0 * inf = nan``.
- Race-free by construction: the ``prange`` loop runs over the axis the loop nest writes, so no
  two threads write the same element; every sum is taken by one thread in a fixed order, so
  results are bitwise the same for any thread count.
  * conv forward: over ``(n, f)`` output planes;
  * conv ``dx``: a *gather* over ``(n, c)`` input planes: each ``dx`` element sums, itself, the
    outputs that read it (the textbook scatter ``dx[...] += w * dy`` would race);
  * conv ``dw``/``db``: a reduction over filters ``f``: each thread owns its rows ``dw[f]``;
  * pooling: over ``(n, c)`` planes; backward scatters only inside its own plane;
  * norms: over what the statistics are taken of (``(n, g)`` for GroupNorm, ``c`` for
    BatchNorm2d), and over channels ``c`` for ``dweight``/``dbias``.
- Convolution sums run in the arrays' dtype (``x.dtype.type(0)``, as torch and the fast kernels
  do); the norms' statistics (mean, variance, gradient sums) in float64, two passes (mean, then
  the squared deviations from it).
"""
import math

from numba import prange

from .._config import kernel


# ---- convolution ----------------------------------------------------------------------------
# x (N, C, H, W), w (F, C/G, KH, KW), b (F,), y and dy (N, F, OH, OW). Filter f belongs to group
# g = f // (F/G) and reads input channels g*Cg .. g*Cg + Cg - 1 (Cg = C/G).

@kernel
def conv2d_forward(x, w, b, y, sh, sw, pt, pl, dh, dw):
    """The seven-loop convolution (n, f, oh, ow, c, i, j)::

        y[n, f, oh, ow] = b[f] + sum_{c, i, j} w[f, c, i, j] * x[n, g*Cg + c, ih, iw]
        ih = oh*sh - pt + i*dh,  iw = ow*sw - pl + j*dw        (taps outside x skipped)

    ``y`` ``(N, F, OH, OW)`` is allocated by the caller, who chose ``OH, OW``. The ``(n, f)``
    loops are fused into one ``prange`` so that one image still has ``F`` parallel tasks."""
    N, C, H, W = x.shape
    n_filters, Cg, KH, KW = w.shape
    OH, OW = y.shape[2], y.shape[3]
    Fg = n_filters // (C // Cg)              # filters per group
    for nf in prange(N * n_filters):         # loops 1, 2: one output plane (n, f) per task
        n = nf // n_filters
        f = nf % n_filters
        g = f // Fg
        for oh in range(OH):                 # loop 3
            for ow in range(OW):             # loop 4
                s = b[f]
                for c in range(Cg):          # loop 5
                    for i in range(KH):      # loop 6
                        ih = oh * sh - pt + i * dh
                        if ih < 0 or ih >= H:
                            continue         # a padding row: contributes nothing
                        for j in range(KW):  # loop 7
                            iw = ow * sw - pl + j * dw
                            if 0 <= iw < W:
                                s += w[f, c, i, j] * x[n, g * Cg + c, ih, iw]
                y[n, f, oh, ow] = s


@kernel
def conv2d_backward_input(dy, w, dx, sh, sw, pt, pl, dh, dw):
    """Input gradient as a gather: ``dx`` ``(N, C, H, W)`` from ``dy`` ``(N, F, OH, OW)``::

        dx[n, c, ih, iw] = sum_{f in group(c), i, j} w[f, c - g*Cg, i, j] * dy[n, f, oh, ow]

    over the taps ``(i, j)`` for which ``ih = oh*sh - pt + i*dh`` and ``iw = ow*sw - pl + j*dw``
    hold for a whole output ``(oh, ow)``, i.e. ``ih + pt - i*dh`` is a multiple of ``sh`` in
    ``[0, sh*OH)`` (columns likewise). Each ``dx`` element is written once, by one task."""
    N, C, H, W = dx.shape
    n_filters, Cg, KH, KW = w.shape
    OH, OW = dy.shape[2], dy.shape[3]
    Fg = n_filters // (C // Cg)
    for nc in prange(N * C):                 # one input plane (n, c) per task
        n = nc // C
        c = nc % C
        g = c // Cg
        cw = c - g * Cg                      # c's index inside its group's weights
        for ih in range(H):
            for iw in range(W):
                s = dx.dtype.type(0)
                for f in range(g * Fg, (g + 1) * Fg):
                    for i in range(KH):
                        th = ih + pt - i * dh    # = oh * sh if tap i of output row oh reads ih
                        if th < 0 or th % sh != 0 or th // sh >= OH:
                            continue
                        oh = th // sh
                        for j in range(KW):
                            tw = iw + pl - j * dw
                            if tw >= 0 and tw % sw == 0 and tw // sw < OW:
                                s += w[f, cw, i, j] * dy[n, f, oh, tw // sw]
                dx[n, c, ih, iw] = s


@kernel
def conv2d_backward_weight(dy, x, dwt, db, sh, sw, pt, pl, dh, dw):
    """Weight and bias gradients as a reduction over filters: ``dwt`` ``(F, C/G, KH, KW)``,
    ``db`` ``(F,)``::

        dwt[f, c, i, j] = sum_{n, oh, ow} dy[n, f, oh, ow] * x[n, g*Cg + c, ih, iw]
        db[f]           = sum_{n, oh, ow} dy[n, f, oh, ow]

    (``ih, iw`` as in :func:`conv2d_forward`, taps outside ``x`` skipped). Each task owns the
    rows of its filter ``f``."""
    N, C, H, W = x.shape
    n_filters, Cg, KH, KW = dwt.shape
    OH, OW = dy.shape[2], dy.shape[3]
    Fg = n_filters // (C // Cg)
    for f in prange(n_filters):
        g = f // Fg
        for c in range(Cg):
            for i in range(KH):
                for j in range(KW):
                    s = dwt.dtype.type(0)
                    for n in range(N):
                        for oh in range(OH):
                            ih = oh * sh - pt + i * dh
                            if ih < 0 or ih >= H:
                                continue
                            for ow in range(OW):
                                iw = ow * sw - pl + j * dw
                                if 0 <= iw < W:
                                    s += dy[n, f, oh, ow] * x[n, g * Cg + c, ih, iw]
                    dwt[f, c, i, j] = s
        s = db.dtype.type(0)
        for n in range(N):
            for oh in range(OH):
                for ow in range(OW):
                    s += dy[n, f, oh, ow]
        db[f] = s


# ---- pooling --------------------------------------------------------------------------------
# x, dx (N, C, H, W); y, dy, indices (N, C, OH, OW). Every kernel runs prange over the N*C planes.

@kernel
def max_pool2d_forward(x, y, indices, kh, kw, sh, sw, ph, pw, dh, dw):
    """``y[n, c, oh, ow]`` = max of the window's taps inside ``x`` (padding is never a
    candidate); ``indices[n, c, oh, ow]`` (int64) = ``ih * W + iw`` of that maximum in its
    plane, as PyTorch's ``return_indices``. Ties keep the first maximum in row-major window
    order; a NaN beats everything, and a later NaN the earlier one (PyTorch's CPU rule)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            for ow in range(OW):
                best = x.dtype.type(-math.inf)
                arg = -1
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if 0 <= iw < W:
                            v = x[n, c, ih, iw]
                            if arg < 0 or v > best or v != v:   # v != v: v is NaN
                                best = v
                                arg = ih * W + iw
                y[n, c, oh, ow] = best
                indices[n, c, oh, ow] = arg


@kernel
def max_pool2d_backward(dy, indices, dx):
    """``dx[n, c]`` = each ``dy[n, c, oh, ow]`` added at the input element its window took the
    maximum from (``indices`` from :func:`max_pool2d_forward`). ``dx`` must be zeroed by the
    caller. Overlapping windows add into the same element, but only inside one plane, which one
    task owns."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            for ow in range(OW):
                k = indices[n, c, oh, ow]
                dx[n, c, k // W, k % W] += dy[n, c, oh, ow]


@kernel
def avg_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw, count_include_pad):
    """``y[n, c, oh, ow]`` = sum of the window's input elements / divisor. The window
    ``[h0, h1) x [w0, w1)`` starts at ``oh*sh - ph`` and is clipped at the padded boundary
    ``H + ph`` (a ``ceil_mode`` window may reach past it); the divisor is its size
    (``count_include_pad``) or the number of input elements it covers (PyTorch's rule)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, H + ph)
            for ow in range(OW):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, W + pw)
                size = (h1 - h0) * (w1 - w0)             # padding included
                h0c, h1c = max(h0, 0), min(h1, H)       # the part inside x
                w0c, w1c = max(w0, 0), min(w1, W)
                if not count_include_pad:
                    size = (h1c - h0c) * (w1c - w0c)
                s = x.dtype.type(0)
                for ih in range(h0c, h1c):
                    for iw in range(w0c, w1c):
                        s += x[n, c, ih, iw]
                y[n, c, oh, ow] = s / x.dtype.type(size)


@kernel
def avg_pool2d_backward(dy, dx, kh, kw, sh, sw, ph, pw, count_include_pad):
    """``dx[n, c]``: each window adds ``dy / divisor`` to every input element it covers
    (windows and divisors as :func:`avg_pool2d_forward`). ``dx`` must be zeroed by the caller;
    a task owns its plane."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, H + ph)
            for ow in range(OW):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, W + pw)
                size = (h1 - h0) * (w1 - w0)
                h0c, h1c = max(h0, 0), min(h1, H)
                w0c, w1c = max(w0, 0), min(w1, W)
                if not count_include_pad:
                    size = (h1c - h0c) * (w1c - w0c)
                g = dy[n, c, oh, ow] / dy.dtype.type(size)
                for ih in range(h0c, h1c):
                    for iw in range(w0c, w1c):
                        dx[n, c, ih, iw] += g


@kernel
def global_avg_pool2d_forward(x, y):
    """``y[n, c]`` ``(N, C)`` = mean of ``x[n, c, :, :]``."""
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        s = x.dtype.type(0)
        for h in range(H):
            for w in range(W):
                s += x[n, c, h, w]
        y[n, c] = s / x.dtype.type(H * W)


@kernel
def global_avg_pool2d_backward(dy, dx):
    """``dx[n, c, h, w] = dy[n, c] / (H * W)``."""
    N, C, H, W = dx.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        g = dy[n, c] / dy.dtype.type(H * W)
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = g


# ---- normalisation --------------------------------------------------------------------------
# x, y, dy, dx (N, C, H, W); w, b, dw, db (C,); statistics float64. xhat = (x - mean) * rstd,
# rstd = 1 / sqrt(var + eps), y = xhat * w + b. With dxhat = dy * w and means over the L values
# the statistics were taken of, the input gradient is
#     dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

@kernel
def group_norm_forward(x, w, b, eps, G, y, mean, rstd):
    """GroupNorm: per sample ``n`` and group ``g`` (channels ``g*Cg .. g*Cg + Cg - 1``,
    ``Cg = C / G``), ``mean``/``rstd`` ``(N, G)`` of its ``L = Cg*H*W`` values (two passes),
    then ``y = (x - mean) * rstd * w[c] + b[c]``."""
    N, C, H, W = x.shape
    Cg = C // G
    L = Cg * H * W
    for ng in prange(N * G):
        n = ng // G
        g = ng % G
        s = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            for h in range(H):
                for ww in range(W):
                    s += x[n, c, h, ww]
        m = s / L
        v = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            for h in range(H):
                for ww in range(W):
                    d = x[n, c, h, ww] - m
                    v += d * d
        r = 1.0 / math.sqrt(v / L + eps)
        mean[n, g] = m
        rstd[n, g] = r
        for c in range(g * Cg, (g + 1) * Cg):
            for h in range(H):
                for ww in range(W):
                    y[n, c, h, ww] = (x[n, c, h, ww] - m) * r * w[c] + b[c]


@kernel
def group_norm_backward(dy, x, mean, rstd, w, G, dx, dw, db):
    """Gradients of :func:`group_norm_forward` (``mean``, ``rstd`` ``(N, G)``)::

        dw[c] = sum_{n, h, w} dy * xhat,  db[c] = sum_{n, h, w} dy      (a task per channel)
        dx    = rstd * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat))  (a task per (n, g))
    """
    N, C, H, W = x.shape
    Cg = C // G
    L = Cg * H * W
    for c in prange(C):
        g = c // Cg
        sw = 0.0
        sb = 0.0
        for n in range(N):
            for h in range(H):
                for ww in range(W):
                    xhat = (x[n, c, h, ww] - mean[n, g]) * rstd[n, g]
                    sw += dy[n, c, h, ww] * xhat
                    sb += dy[n, c, h, ww]
        dw[c] = sw
        db[c] = sb
    for ng in prange(N * G):
        n = ng // G
        g = ng % G
        m = mean[n, g]
        r = rstd[n, g]
        s1 = 0.0   # sum of dxhat
        s2 = 0.0   # sum of dxhat * xhat
        for c in range(g * Cg, (g + 1) * Cg):
            for h in range(H):
                for ww in range(W):
                    dxhat = dy[n, c, h, ww] * w[c]
                    s1 += dxhat
                    s2 += dxhat * (x[n, c, h, ww] - m) * r
        for c in range(g * Cg, (g + 1) * Cg):
            for h in range(H):
                for ww in range(W):
                    xhat = (x[n, c, h, ww] - m) * r
                    dxhat = dy[n, c, h, ww] * w[c]
                    dx[n, c, h, ww] = r * (dxhat - s1 / L - xhat * s2 / L)


@kernel
def batch_norm2d_forward(x, w, b, eps, y, mean, rstd, var):
    """BatchNorm2d in training mode: per channel ``c``, the batch ``mean``, biased ``var`` and
    ``rstd`` ``(C,)`` of its ``L = N*H*W`` values (two passes), then
    ``y = (x - mean) * rstd * w[c] + b[c]``."""
    N, C, H, W = x.shape
    L = N * H * W
    for c in prange(C):
        s = 0.0
        for n in range(N):
            for h in range(H):
                for ww in range(W):
                    s += x[n, c, h, ww]
        m = s / L
        v = 0.0
        for n in range(N):
            for h in range(H):
                for ww in range(W):
                    d = x[n, c, h, ww] - m
                    v += d * d
        v = v / L
        r = 1.0 / math.sqrt(v + eps)
        mean[c] = m
        var[c] = v
        rstd[c] = r
        for n in range(N):
            for h in range(H):
                for ww in range(W):
                    y[n, c, h, ww] = (x[n, c, h, ww] - m) * r * w[c] + b[c]


@kernel
def batch_norm2d_apply(x, mean, rstd, w, b, y):
    """BatchNorm2d with given statistics (eval mode: the running ones),
    ``y = (x - mean[c]) * rstd[c] * w[c] + b[c]``."""
    N, C, H, W = x.shape
    for c in prange(C):
        for n in range(N):
            for h in range(H):
                for ww in range(W):
                    y[n, c, h, ww] = (x[n, c, h, ww] - mean[c]) * rstd[c] * w[c] + b[c]


@kernel
def batch_norm2d_backward(dy, x, mean, rstd, w, training, dx, dw, db):
    """Gradients of BatchNorm2d, a task per channel ``c``::

        db[c] = sum dy,  dw[c] = sum dy * xhat                         (over n, h, w)
        dx    = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))  (training: batch stats)
        dx    = rstd * dxhat                                  (fixed running statistics)
    """
    N, C, H, W = x.shape
    L = N * H * W
    for c in prange(C):
        sb = 0.0
        sw = 0.0
        for n in range(N):
            for h in range(H):
                for ww in range(W):
                    sb += dy[n, c, h, ww]
                    sw += dy[n, c, h, ww] * (x[n, c, h, ww] - mean[c]) * rstd[c]
        db[c] = sb
        dw[c] = sw
        # sums of dxhat = dy * w[c] and of dxhat * xhat are w[c] times those of dy, dy * xhat
        s1 = 0.0
        s2 = 0.0
        if training:
            s1 = sb * w[c]
            s2 = sw * w[c]
        for n in range(N):
            for h in range(H):
                for ww in range(W):
                    xhat = (x[n, c, h, ww] - mean[c]) * rstd[c]
                    dxhat = dy[n, c, h, ww] * w[c]
                    dx[n, c, h, ww] = rstd[c] * (dxhat - s1 / L - xhat * s2 / L)
