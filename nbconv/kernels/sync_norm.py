"""Loops of SyncBatchNorm2d: per-channel partial sums of this rank's slice of the batch (to be
combined over the ranks) and dx from given (global) sums.

Layout as BatchNorm2d's: ``x``, ``dy``, ``dx`` as ``(N, C, HW)``; statistics float64 ``(C,)``.
Each task owns whole channels (moments, sums) or whole ``(n, c)`` planes (dx), so every value
is computed by one task in a fixed order: bitwise the same for any thread count.
"""
from numba import prange

from .._config import kernel
from .norm import _bn_dsums, _bn_sum, _bn_var


@kernel
def channel_moments(x, mean, m2):
    """Per channel ``c``: ``mean[c]`` and ``m2[c] = sum((x[:, c] - mean[c])^2)`` (two passes,
    float64) over the ``N * HW`` values of this rank.

    Textbook twin of the statistics: :func:`nbconv.kernels.norm.batch_norm_train_forward`."""
    N, C, HW = x.shape
    L = N * HW
    for c in prange(C):
        m = _bn_sum(x, c) / L
        mh = x.dtype.type(m)
        mean[c] = m
        m2[c] = _bn_var(x, c, mh, m - mh) * L


@kernel
def channel_dsums(dy, x, mean, a, bx):
    """Per channel ``c``: ``a[c] = sum(dy[:, c])``, ``bx[c] = sum(dy[:, c] * (x[:, c] -
    mean[c]))`` (float64) over this rank's values; ``mean``: the global batch mean."""
    C = x.shape[1]
    for c in prange(C):
        a[c], bx[c] = _bn_dsums(dy, x, c, mean[c])


@kernel
def batch_norm_dx(dy, x, mean, rstd, w, a, bx, L, dx):
    """``dx = rstd * w * (dy - a / L - (x - mean) * rstd^2 * bx / L)`` per channel, with the
    global sums ``a``, ``bx`` ``(C,)`` (see :func:`channel_dsums`) and global count ``L``.
    Parallel over the ``N * C`` planes."""
    N, C, HW = x.shape
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        rs = rstd[c]
        mh = x.dtype.type(mean[c])
        ml = mean[c] - mh
        ak = rs * w[c]
        c2 = ak * rs * rs * bx[c] / L
        c3 = ml * c2 - ak * a[c] / L
        gs = x.dtype.type(ak)
        bb = x.dtype.type(-c2)
        cc = x.dtype.type(c3)
        xk = x[n, c]
        gk = dy[n, c]
        dk = dx[n, c]
        for i in range(HW):
            dk[i] = gk[i] * gs + (xk[i] - mh) * bb + cc
