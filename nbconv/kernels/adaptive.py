"""Adaptive pooling loops: average and max pooling over PyTorch's adaptive bins.

Arrays come in as C-contiguous planes, ``(N, C, H, W)`` reshaped to ``(P, H, W)`` with
``P = N * C``; outputs ``(P, OH, OW)``. Output row ``oh`` pools input rows ``[hs[oh], he[oh])``
with ``hs[oh] = floor(oh * H / OH)`` and ``he[oh] = ceil((oh + 1) * H / OH)`` (columns
likewise with ``ws``, ``we``); the wrapper computes these tables, and ``div[oh, ow]`` (the bin
areas, in the array dtype) for average pooling. Bins may overlap and, when ``OH > H``, repeat
rows.

Every kernel runs ``prange`` over planes and writes only its own plane, so nothing races and
results are bitwise identical for any thread count:

- the average backward is a gather: input row ``h`` is covered by the output rows
  ``[oh_lo[h], oh_hi[h])`` (columns likewise), and ``dx[p, h, w]`` sums ``dy / div`` over the
  bins covering it, in row-major order;
- the max backward adds each ``dy`` at its argmax within its own plane, in row-major output
  order (a per-plane scatter: overlapping bins sum in a fixed order).

Max pooling follows PyTorch's rule: the first maximum in row-major order wins ties, and a NaN
wins over any number (the last NaN of the bin, as ``torch.nn.functional.adaptive_max_pool2d``
on the CPU); indices are flat positions ``h * W + w`` in the input plane, as PyTorch's.
"""
from numba import prange

from .._config import kernel


@kernel
def adaptive_avg_pool2d_forward(x, xf, y, hs, he, ws, we, div, zero):
    """``y[p, oh, ow]`` = sum of ``x[p]`` over the bin ``[hs, he) x [ws, we)`` / ``div``.
    ``xf`` is ``x`` viewed as ``(P, H*W)``: a bin spanning whole rows is one flat run (so a
    global pool is one vectorised loop per plane)."""
    P = y.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    W = x.shape[2]
    for p in prange(P):
        for oh in range(OH):
            for ow in range(OW):
                s = zero
                if ws[ow] == 0 and we[ow] == W:
                    for k in range(hs[oh] * W, he[oh] * W):
                        s += xf[p, k]
                else:
                    for h in range(hs[oh], he[oh]):
                        for w in range(ws[ow], we[ow]):
                            s += x[p, h, w]
                y[p, oh, ow] = s / div[oh, ow]


@kernel
def adaptive_avg_pool2d_backward(dy, dx, g, oh_lo, oh_hi, ow_lo, ow_hi, div, zero):
    """``dx[p, h, w]`` = sum of ``dy[p, oh, ow] / div[oh, ow]`` over the bins covering
    ``(h, w)`` (a gather). ``g`` is a ``(P, OH, OW)`` scratch for ``dy / div``."""
    P = dx.shape[0]
    H = dx.shape[1]
    W = dx.shape[2]
    OH = dy.shape[1]
    OW = dy.shape[2]
    for p in prange(P):
        for oh in range(OH):
            for ow in range(OW):
                g[p, oh, ow] = dy[p, oh, ow] / div[oh, ow]
        for h in range(H):
            for w in range(W):
                s = zero
                for oh in range(oh_lo[h], oh_hi[h]):
                    for ow in range(ow_lo[w], ow_hi[w]):
                        s += g[p, oh, ow]
                dx[p, h, w] = s


@kernel
def adaptive_max_pool2d_forward(x, y, idx, hs, he, ws, we, ninf):
    """``y[p, oh, ow]`` = max of ``x[p]`` over the bin, ``idx`` its flat position ``h*W + w``
    (first maximum on ties; a NaN wins, the last one of the bin)."""
    P = y.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    W = x.shape[2]
    for p in prange(P):
        for oh in range(OH):
            for ow in range(OW):
                best = ninf
                bi = hs[oh] * W + ws[ow]
                for h in range(hs[oh], he[oh]):
                    for w in range(ws[ow], we[ow]):
                        v = x[p, h, w]
                        if v > best or v != v:
                            best = v
                            bi = h * W + w
                y[p, oh, ow] = best
                idx[p, oh, ow] = bi


@kernel
def adaptive_max_pool2d_forward_large(x, y, idx, hs, he, ws, we, ninf):
    """As :func:`adaptive_max_pool2d_forward` (same results), for large bins: a branch-free
    pass for the maximum and whether the bin holds a NaN, then a search for the index (the
    first element equal to the maximum, or the last NaN). 5-8x faster on bins of 64 elements,
    slower on bins of a few."""
    P = y.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    W = x.shape[2]
    for p in prange(P):
        for oh in range(OH):
            for ow in range(OW):
                best = ninf
                has_nan = False
                for h in range(hs[oh], he[oh]):
                    for w in range(ws[ow], we[ow]):
                        v = x[p, h, w]
                        best = v if v > best else best
                        has_nan |= v != v
                bi = -1
                if has_nan:
                    for h in range(hs[oh], he[oh]):
                        for w in range(ws[ow], we[ow]):
                            if x[p, h, w] != x[p, h, w]:
                                bi = h * W + w
                                best = x[p, h, w]
                else:
                    for h in range(hs[oh], he[oh]):
                        for w in range(ws[ow], we[ow]):
                            if bi < 0 and x[p, h, w] == best:
                                bi = h * W + w
                    if bi < 0:
                        bi = hs[oh] * W + ws[ow]
                y[p, oh, ow] = best
                idx[p, oh, ow] = bi


@kernel
def adaptive_max_pool2d_backward(dy, idx, dx):
    """``dx`` (``(P, H*W)``, zeroed here) = each ``dy[p, q]`` added at ``idx[p, q]`` (flat
    ``(P, OH*OW)`` arrays; indices checked by the wrapper), in output order per plane."""
    P = dx.shape[0]
    HW = dx.shape[1]
    Q = dy.shape[1]
    for p in prange(P):
        for k in range(HW):
            dx[p, k] = 0
        for q in range(Q):
            dx[p, idx[p, q]] += dy[p, q]
