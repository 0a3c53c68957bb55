"""Normalisation loops: GroupNorm and BatchNorm2d forward and backward.

Layouts (free reshapes of C-contiguous ``(N, C, H, W)`` arrays, ``HW = H * W``):

- GroupNorm: ``x`` as ``(R, Cg, HW)`` with ``R = N * G`` rows and ``Cg = C // G``; row
  ``r = n * G + g`` holds the contiguous channels ``g*Cg .. g*Cg + Cg - 1`` of sample ``n``.
  Tasks own blocks of rows: their statistics and every element of them.
- BatchNorm2d: ``x`` as ``(N, C, HW)``; tasks own blocks of channels (all of ``x[:, c]``).

Statistics: two passes per row / channel, sums accumulated in float64 whatever the input dtype;
the mean ``m`` is split into ``mh = dtype(m)`` and ``ml = m - mh`` so that ``x - mh`` is exact for
values near the mean (``1e4 + randn`` in float32 normalises to float32 precision)::

    var  = sum((x - mh)^2) / L - ml^2            (L values per row / channel)
    rstd = 1 / sqrt(var + eps)

Memory traffic: the first pass over an item reads it from memory, later passes hit the cache.
Each task walks its block as a software pipeline: the first pass of item ``i + 1`` runs inside
the output loop of item ``i``, so reading and writing streams overlap.

Determinism: blocks depend only on the shape (:func:`block_size`), every sum is computed inside
one task in a fixed order, and GroupNorm's per-(n, c) partials of dweight/dbias, which cross the
parallel axis, are reduced serially in a fixed order afterwards, so results are bitwise the same
for any thread count. Elementwise loops run in the array dtype.
"""
import math

from numba import prange

from .._config import NORM_BLOCK, NORM_MIN_TASKS, kernel, serial_kernel


@serial_kernel
def block_size(items):
    """Items per task: up to ``NORM_BLOCK`` (16), and at least ``NORM_MIN_TASKS`` (16) tasks
    when there are enough items."""
    return max(1, min(NORM_BLOCK, items // NORM_MIN_TASKS))


# ---- GroupNorm -------------------------------------------------------------------------------

@serial_kernel
def _gn_sum(x, r):
    acc = 0.0
    for k in range(x.shape[1]):
        xk = x[r, k]
        for i in range(x.shape[2]):
            acc += xk[i]
    return acc


@serial_kernel
def _gn_rstd(x, r, mh, ml, eps):
    """``1 / sqrt(var + eps)`` of row ``r`` (second pass, centred on ``mh``)."""
    acc = 0.0
    for k in range(x.shape[1]):
        xk = x[r, k]
        for i in range(x.shape[2]):
            d = xk[i] - mh
            acc += d * d
    var = max(acc / (x.shape[1] * x.shape[2]) - ml * ml, 0.0)
    return 1.0 / math.sqrt(var + eps)


@serial_kernel
def _gn_dsums(dy, x, r, m, sdy, sdyx):
    """``sdy[r, k] = sum(dy)``, ``sdyx[r, k] = sum(dy * (x - m))`` over channel k of row r."""
    mh = x.dtype.type(m)
    ml = m - mh
    for k in range(x.shape[1]):
        xk = x[r, k]
        gk = dy[r, k]
        a = 0.0
        bx = 0.0
        for i in range(x.shape[2]):
            g = gk[i]
            a += g
            bx += g * (xk[i] - mh)
        sdy[r, k] = a
        sdyx[r, k] = bx - ml * a


@kernel
def group_norm_forward(x, w, b, eps, y, mean, rstd):
    """``x, y``: ``(R, Cg, HW)``; ``w, b``: ``(C,)`` (``C = G * Cg``, ``R = N * G``);
    ``mean, rstd``: float64 ``(R,)`` outputs.

    ``y = (x - mean) * rstd * w[c] + b[c]``, computed as ``(x - mh) * s + (b - ml * s)`` with
    ``s = rstd * w[c]``; the sum of the next row is taken in the same loop.

    Textbook twin: :func:`nbconv.kernels.textbook.group_norm_forward`."""
    R, Cg, HW = x.shape
    G = w.shape[0] // Cg
    L = Cg * HW
    B = block_size(R)
    for blk in prange((R + B - 1) // B):
        r0 = blk * B
        r1 = min(r0 + B, R)
        acc = _gn_sum(x, r0)
        for r in range(r0, r1):
            c0 = (r % G) * Cg
            m = acc / L
            mh = x.dtype.type(m)
            ml = m - mh
            rs = _gn_rstd(x, r, mh, ml, eps)
            mean[r] = m
            rstd[r] = rs
            rn = min(r + 1, r1 - 1)  # the last row re-sums itself, unused
            acc = 0.0
            for k in range(Cg):
                s = rs * w[c0 + k]
                sc = x.dtype.type(s)
                sh = x.dtype.type(b[c0 + k] - ml * s)
                xk = x[r, k]
                yk = y[r, k]
                xn = x[rn, k]
                for i in range(HW):
                    yk[i] = (xk[i] - mh) * sc + sh
                    acc += xn[i]


@kernel
def group_norm_backward(dy, x, mean, rstd, w, want_dx, dx, sdy, sdyx, dw, db):
    """``dy, x, dx``: ``(R, Cg, HW)``; ``mean, rstd``: float64 ``(R,)``; ``w``: ``(C,)``;
    scratch ``sdy, sdyx``: float64 ``(R, Cg)``; outputs ``dw, db``: ``(C,)``.

    Per row: ``sdy[r, k] = sum(dy)``, ``sdyx[r, k] = sum(dy * (x - mean))`` over channel k,
    then ``dx = rstd * (dy*w - mean_g(dy*w) - xhat * mean_g(dy*w*xhat))``, written as
    ``dx = dy * a[k] + (x - mh) * bb + cc`` (skipped unless ``want_dx``; the next row's sums
    are taken in the same loop). Afterwards, serially in the order n = 0 .. N-1:
    ``db[c] = sum_n sdy``, ``dw[c] = sum_n rstd * sdyx``.

    Textbook twin: :func:`nbconv.kernels.textbook.group_norm_backward`.
    """
    R, Cg, HW = x.shape
    C = w.shape[0]
    G = C // Cg
    N = R // G
    L = Cg * HW
    B = block_size(R)
    for blk in prange((R + B - 1) // B):
        r0 = blk * B
        r1 = min(r0 + B, R)
        _gn_dsums(dy, x, r0, mean[r0], sdy, sdyx)
        for r in range(r0, r1):
            c0 = (r % G) * Cg
            rn = r + 1
            if not want_dx:
                if rn < r1:
                    _gn_dsums(dy, x, rn, mean[rn], sdy, sdyx)
                continue
            rs = rstd[r]
            mh = x.dtype.type(mean[r])
            ml = mean[r] - mh
            s1 = 0.0   # sum over the row of dy * w
            s2 = 0.0   # sum over the row of dy * w * (x - mean)
            for k in range(Cg):
                s1 += w[c0 + k] * sdy[r, k]
                s2 += w[c0 + k] * sdyx[r, k]
            # dx = rs*w*dy - rs*s1/L - (x - m) * rs^3 * s2 / L
            c2 = rs * rs * rs * s2 / L
            bb = x.dtype.type(-c2)
            cc = x.dtype.type(ml * c2 - rs * s1 / L)
            rr = min(rn, r1 - 1)  # the last row re-sums itself, unused
            mn = mean[rr]
            mhn = x.dtype.type(mn)
            for k in range(Cg):
                ak = x.dtype.type(rs * w[c0 + k])
                xk = x[r, k]
                gk = dy[r, k]
                dk = dx[r, k]
                xn = x[rr, k]
                gn = dy[rr, k]
                a = 0.0
                bx = 0.0
                for i in range(HW):
                    dk[i] = gk[i] * ak + (xk[i] - mh) * bb + cc
                    g = gn[i]
                    a += g
                    bx += g * (xn[i] - mhn)
                if rn < r1:
                    sdy[rn, k] = a
                    sdyx[rn, k] = bx - (mn - mhn) * a
    for gg in range(G):
        for kk in range(Cg):
            ta = 0.0
            tb = 0.0
            for n in range(N):
                rr = n * G + gg
                ta += sdy[rr, kk]
                tb += sdyx[rr, kk] * rstd[rr]
            db[gg * Cg + kk] = ta
            dw[gg * Cg + kk] = tb


# ---- BatchNorm2d -----------------------------------------------------------------------------

@serial_kernel
def _bn_sum(x, c):
    acc = 0.0
    for n in range(x.shape[0]):
        xk = x[n, c]
        for i in range(x.shape[2]):
            acc += xk[i]
    return acc


@serial_kernel
def _bn_var(x, c, mh, ml):
    """Biased variance of channel ``c`` (second pass, centred on ``mh``)."""
    acc = 0.0
    for n in range(x.shape[0]):
        xk = x[n, c]
        for i in range(x.shape[2]):
            d = xk[i] - mh
            acc += d * d
    return max(acc / (x.shape[0] * x.shape[2]) - ml * ml, 0.0)


@serial_kernel
def _bn_dsums(dy, x, c, m):
    """``(sum(dy), sum(dy * (x - m)))`` over channel ``c``."""
    mh = x.dtype.type(m)
    a = 0.0
    bx = 0.0
    for n in range(x.shape[0]):
        xk = x[n, c]
        gk = dy[n, c]
        for i in range(x.shape[2]):
            g = gk[i]
            a += g
            bx += g * (xk[i] - mh)
    return a, bx - (m - mh) * a


@kernel
def batch_norm_train_forward(x, w, b, eps, y, mean, rstd, var):
    """Training forward with batch statistics. ``x, y``: ``(N, C, HW)``; ``w, b``: ``(C,)``;
    float64 outputs ``mean, rstd, var`` (biased variance): ``(C,)``. The sum of the next
    channel is taken in the output loop of the current one.

    Textbook twin: :func:`nbconv.kernels.textbook.batch_norm2d_forward`."""
    N, C, HW = x.shape
    L = N * HW
    B = block_size(C)
    for blk in prange((C + B - 1) // B):
        c0 = blk * B
        c1 = min(c0 + B, C)
        acc = _bn_sum(x, c0)
        for c in range(c0, c1):
            m = acc / L
            mh = x.dtype.type(m)
            ml = m - mh
            v = _bn_var(x, c, mh, ml)
            rs = 1.0 / math.sqrt(v + eps)
            mean[c] = m
            var[c] = v
            rstd[c] = rs
            s = rs * w[c]
            sc = x.dtype.type(s)
            sh = x.dtype.type(b[c] - ml * s)
            cn = min(c + 1, c1 - 1)  # the last channel re-sums itself, unused
            acc = 0.0
            for n in range(N):
                xk = x[n, c]
                yk = y[n, c]
                xn = x[n, cn]
                for i in range(HW):
                    yk[i] = (xk[i] - mh) * sc + sh
                    acc += xn[i]


@kernel
def batch_norm_apply(x, mean, rstd, w, b, y):
    """``y = (x - mean[c]) * rstd[c] * w[c] + b[c]`` with given (float64) statistics, e.g. the
    running ones in eval mode. ``x, y``: ``(N, C, HW)``; parallel over the ``N * C`` planes.

    Textbook twin: :func:`nbconv.kernels.textbook.batch_norm2d_apply`."""
    N, C, HW = x.shape
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        m = mean[c]
        mh = x.dtype.type(m)
        s = rstd[c] * w[c]
        sc = x.dtype.type(s)
        sh = x.dtype.type(b[c] - (m - mh) * s)
        xk = x[n, c]
        yk = y[n, c]
        for i in range(HW):
            yk[i] = (xk[i] - mh) * sc + sh


@kernel
def batch_norm_backward(dy, x, mean, rstd, w, batch_stats, want_dx, dx, dw, db):
    """``dy, x, dx``: ``(N, C, HW)``; float64 ``mean, rstd``: ``(C,)``; ``w, dw, db``: ``(C,)``.

    Per channel: ``db = sum(dy)``, ``dw = rstd * sum(dy * (x - mean))``, then (if ``want_dx``;
    the next channel's sums are taken in the same loop)

    - ``batch_stats`` (the statistics came from this batch, training mode):
      ``dx = rstd * w * (dy - db / L - (x - mean) * rstd * dw / L)``
    - otherwise (fixed running statistics): ``dx = rstd * w * dy``.

    Textbook twin: :func:`nbconv.kernels.textbook.batch_norm2d_backward`.
    """
    N, C, HW = x.shape
    L = N * HW
    B = block_size(C)
    for blk in prange((C + B - 1) // B):
        c0 = blk * B
        c1 = min(c0 + B, C)
        a, bx = _bn_dsums(dy, x, c0, mean[c0])
        for c in range(c0, c1):
            rs = rstd[c]
            db[c] = a
            dw[c] = bx * rs
            cn = c + 1
            if not want_dx:
                if cn < c1:
                    a, bx = _bn_dsums(dy, x, cn, mean[cn])
                continue
            mh = x.dtype.type(mean[c])
            ml = mean[c] - mh
            ak = rs * w[c]
            c2 = 0.0
            c3 = 0.0
            if batch_stats:
                c2 = ak * rs * rs * bx / L
                c3 = ml * c2 - ak * a / L
            gs = x.dtype.type(ak)
            bb = x.dtype.type(-c2)
            cc = x.dtype.type(c3)
            cr = min(cn, c1 - 1)  # the last channel re-sums itself, unused
            mn = mean[cr]
            mhn = x.dtype.type(mn)
            a = 0.0
            bx = 0.0
            for n in range(N):
                xk = x[n, c]
                gk = dy[n, c]
                dk = dx[n, c]
                xn = x[n, cr]
                gn = dy[n, cr]
                for i in range(HW):
                    dk[i] = gk[i] * gs + (xk[i] - mh) * bb + cc
                    g = gn[i]
                    a += g
                    bx += g * (xn[i] - mhn)
            bx -= (mn - mhn) * a
