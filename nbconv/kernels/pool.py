"""Pooling loops: max / average pooling forward and backward, global average pooling.

Arrays come in as C-contiguous *planes*: an ``(N, C, H, W)`` tensor is passed reshaped to
``(P, H, W)`` with ``P = N * C`` (a free reshape), outputs as ``(P, OH, OW)``. Every kernel runs
``prange`` over the planes (or chunks of planes) and writes only its own planes, so overlapping
windows in backward never race and the result does not depend on the thread count.

Window geometry is precomputed by the wrapper (no division per pixel): ``kh_lo[oh], kh_hi[oh]``
are the kernel rows ``i`` whose input row ``oh*sh - ph + i*dh`` lies inside ``[0, H)``; likewise
``kw_lo[ow], kw_hi[ow]`` for columns; ``div[oh, ow]`` (average pooling) is each window's
divisor in the array dtype.

Fast path (dilation 1, small windows): each plane is first copied into a padded,
column-de-interleaved scratch ``buf[r, hp, m] = xpad[hp, m*SW + r]`` (``xpad``: the input with
``ph``/``pw`` rows/columns of ``fill`` = -inf or 0 around it), so tap ``(i, j)`` of output
``(oh, ow)`` is ``buf[j % SW, oh*sh + i, ow + j // SW]``: a unit-stride read at a fixed offset,
with no border cases. ``k_h``, ``k_w``, ``s_w`` are tuples whose *lengths* are ``KH``, ``KW``,
``SW`` (compile-time constants: one cached specialisation per window size and column stride),
so the window loops unroll and LLVM vectorises the loop over output columns. Indices are
``uint64`` built from loop counters: Numba then emits no negative-index wraparound, which
blocks vectorisation (as do tap offsets read from a tuple and strides known only at run time).
The ``*_any`` kernels handle every other case with plain loops over each window.
"""
import numpy as np
from numba import prange

from .._config import kernel, serial_kernel


@serial_kernel
def _fill_plane(x, p, buf, fill, s_w, ph, pw, m_lo, m_hi):
    """``buf[r, hp, m] = x[p, hp - ph, m*SW + r - pw]``, ``fill`` outside the input
    (``SW = len(s_w)``). ``m_lo[r], m_hi[r]``: the ``m`` whose column lies inside ``[0, W)``
    for phase ``r``; the range common to all phases is copied with the phases interleaved."""
    SW = len(s_w)
    Hp = buf.shape[1]
    M = buf.shape[2]
    H = x.shape[1]
    swu = np.uint64(SW)
    lo = m_lo[0]                # m_lo and m_hi do not grow with r: the common range
    hi = max(m_hi[SW - 1], lo)
    lou = np.uint64(lo)
    cbu = np.uint64(lo * SW - pw)
    for hp in range(Hp):
        h = hp - ph
        if h < 0 or h >= H:
            for r in range(SW):
                for m in range(M):
                    buf[r, hp, m] = fill
            continue
        hu = np.uint64(h)
        for t in range(hi - lo):
            tu = np.uint64(t)
            for r in range(SW):
                buf[r, hp, lou + tu] = x[p, hu, cbu + tu * swu + np.uint64(r)]
        for r in range(SW):
            for m in range(m_lo[r]):
                buf[r, hp, m] = fill
            for m in range(m_lo[r], lo):
                buf[r, hp, m] = x[p, h, m * SW + r - pw]
            for m in range(hi, m_hi[r]):
                buf[r, hp, m] = x[p, h, m * SW + r - pw]
            for m in range(max(m_hi[r], hi), M):
                buf[r, hp, m] = fill


@serial_kernel
def _max_window(x, p, h0, w0, a, b, c, d, KW, dh, dw, ninf):
    """Max and its offset ``i*KW + j`` over taps ``a <= i < b``, ``c <= j < d`` of the window at
    ``(h0, w0)``. Ties keep the first maximum (row-major); a NaN wins (the last NaN, as
    PyTorch). Starts from ``-inf`` at the first valid tap, as padding is ``-inf``."""
    best = ninf
    bi = a * KW + c
    for i in range(a, b):
        ih = h0 + i * dh
        for j in range(c, d):
            v = x[p, ih, w0 + j * dw]
            if v > best or v != v:
                best = v
                bi = i * KW + j
    return best, bi


@kernel
def max_pool2d_forward(x, y, idx, ninf, k_h, k_w, s_w, sh, ph, pw, kh_lo, kw_lo, m_lo, m_hi,
                       Hp, M, nchunks):
    """``y[p, oh, ow]`` = max over the window, ``idx[p, oh, ow]`` = its offset ``i*KW + j``
    (the fast path of the module doc; ``ninf`` = -inf in the array dtype). Padding is -inf and
    never wins: the offset starts at the window's first real tap, ``kh_lo*KW + kw_lo``."""
    P = x.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    KH = len(k_h)
    KW = len(k_w)
    SW = len(s_w)
    shu = np.uint64(sh)
    for ch in prange(nchunks):
        buf = np.empty((SW, Hp, M), x.dtype)
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            _fill_plane(x, p, buf, ninf, s_w, ph, pw, m_lo, m_hi)
            for oh in range(OH):
                hu = np.uint64(oh) * shu
                first = kh_lo[oh] * KW
                for q in range(OW):
                    qu = np.uint64(q)
                    best = ninf
                    bi = first + kw_lo[q]
                    for i in range(KH):
                        for j in range(KW):
                            v = buf[j % SW, hu + np.uint64(i), qu + np.uint64(j // SW)]
                            if v > best or v != v:
                                best = v
                                bi = i * KW + j
                    y[p, oh, q] = best
                    idx[p, oh, q] = bi


@kernel
def max_pool2d_forward_any(x, y, idx, ninf, KW, sh, sw, ph, pw, dh, dw, kh_lo, kh_hi, kw_lo,
                           kw_hi):
    """As :func:`max_pool2d_forward` for any window (large, dilated), one window at a time."""
    P = x.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            for ow in range(OW):
                y[p, oh, ow], idx[p, oh, ow] = _max_window(
                    x, p, oh * sh - ph, ow * sw - pw, kh_lo[oh], kh_hi[oh], kw_lo[ow],
                    kw_hi[ow], KW, dh, dw, ninf)


@kernel
def max_pool2d_backward(dy, idx, dx, delta, W, sh, sw, ph, pw):
    """``dx`` (``(P, H*W)``) = each ``dy`` added at the input element its window offset points
    to, ``(oh*sh - ph)*W + ow*sw - pw + delta[offset]`` (``W`` is the input width). Outputs are
    visited in row-major order, so sums of overlapping windows are fixed."""
    P = dx.shape[0]
    HW = dx.shape[1]
    OH = dy.shape[1]
    OW = dy.shape[2]
    for p in prange(P):
        for k in range(HW):
            dx[p, k] = 0
        for oh in range(OH):
            for ow in range(OW):
                f = (oh * sh - ph) * W + ow * sw - pw + delta[idx[p, oh, ow]]
                if f >= 0 and f < HW:
                    dx[p, f] += dy[p, oh, ow]


@serial_kernel
def _avg_window(x, p, h0, w0, a, b, c, d, zero):
    """Sum of the window's input elements over taps ``a <= i < b``, ``c <= j < d``."""
    s = zero
    for i in range(a, b):
        for j in range(c, d):
            s += x[p, h0 + i, w0 + j]
    return s


@kernel
def avg_pool2d_forward(x, y, zero, k_h, k_w, s_w, sh, ph, pw, div, m_lo, m_hi, Hp, M, nchunks):
    """``y[p, oh, ow]`` = sum of the window (row-major, padding 0) / ``div[oh, ow]`` (the fast
    path of the module doc; ``zero`` = 0 in the array dtype)."""
    P = x.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    KH = len(k_h)
    KW = len(k_w)
    SW = len(s_w)
    shu = np.uint64(sh)
    for ch in prange(nchunks):
        buf = np.empty((SW, Hp, M), x.dtype)
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            _fill_plane(x, p, buf, zero, s_w, ph, pw, m_lo, m_hi)
            for oh in range(OH):
                hu = np.uint64(oh) * shu
                for q in range(OW):
                    qu = np.uint64(q)
                    s = zero
                    for i in range(KH):
                        for j in range(KW):
                            s += buf[j % SW, hu + np.uint64(i), qu + np.uint64(j // SW)]
                    y[p, oh, q] = s / div[oh, q]


@kernel
def avg_pool2d_forward_any(x, y, zero, sh, sw, ph, pw, kh_lo, kh_hi, kw_lo, kw_hi, div):
    """As :func:`avg_pool2d_forward` for any window (large), one window at a time."""
    P = x.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            for ow in range(OW):
                s = _avg_window(x, p, oh * sh - ph, ow * sw - pw, kh_lo[oh], kh_hi[oh],
                                kw_lo[ow], kw_hi[ow], zero)
                y[p, oh, ow] = s / div[oh, ow]


@serial_kernel
def _drain_plane(buf, dx, p, s_w, ph, pw, m_lo, m_hi):
    """The inverse of :func:`_fill_plane`: ``dx[p, h, c] = buf[r, h + ph, m]`` for
    ``c = m*SW + r - pw``; input elements that no window reaches get 0."""
    SW = len(s_w)
    Hp = buf.shape[1]
    M = buf.shape[2]
    H = dx.shape[1]
    W = dx.shape[2]
    swu = np.uint64(SW)
    lo = m_lo[0]
    hi = max(m_hi[SW - 1], lo)
    lou = np.uint64(lo)
    cbu = np.uint64(lo * SW - pw)
    for h in range(H):
        hp = h + ph
        if hp >= Hp:
            for c in range(W):
                dx[p, h, c] = 0
            continue
        hu = np.uint64(h)
        for t in range(hi - lo):
            tu = np.uint64(t)
            for r in range(SW):
                dx[p, hu, cbu + tu * swu + np.uint64(r)] = buf[r, hp, lou + tu]
        for r in range(SW):
            for m in range(m_lo[r], lo):
                dx[p, h, m * SW + r - pw] = buf[r, hp, m]
            for m in range(hi, m_hi[r]):
                dx[p, h, m * SW + r - pw] = buf[r, hp, m]
        for c in range(max(M * SW - pw, 0), W):
            dx[p, h, c] = 0


@kernel
def avg_pool2d_backward(dy, dx, zero, k_h, k_w, s_w, sh, ph, pw, div, m_lo, m_hi, Hp, M,
                        nchunks):
    """``dx[p]`` = sum over the windows containing each element of ``dy / div`` (the fast
    path of the module doc, transposed: each tap adds a row of ``dy / div`` into the scratch,
    in row-major output order, then the input region is copied out)."""
    P = dx.shape[0]
    OH = dy.shape[1]
    OW = dy.shape[2]
    KH = len(k_h)
    KW = len(k_w)
    SW = len(s_w)
    shu = np.uint64(sh)
    for ch in prange(nchunks):
        buf = np.empty((SW, Hp, M), dx.dtype)
        g = np.empty(OW, dx.dtype)
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            buf[:, :, :] = zero
            for oh in range(OH):
                for q in range(OW):
                    g[q] = dy[p, oh, q] / div[oh, q]
                hu = np.uint64(oh) * shu
                for i in range(KH):
                    for j in range(KW):
                        hi = hu + np.uint64(i)
                        for q in range(OW):
                            buf[j % SW, hi, np.uint64(q) + np.uint64(j // SW)] += g[q]
            _drain_plane(buf, dx, p, s_w, ph, pw, m_lo, m_hi)


@kernel
def avg_pool2d_backward_any(dy, dx, sh, sw, ph, pw, kh_lo, kh_hi, kw_lo, kw_hi, div):
    """As :func:`avg_pool2d_backward` for any window size: each window scatters into its own
    plane, in row-major output order."""
    P = dx.shape[0]
    H = dx.shape[1]
    W = dx.shape[2]
    OH = dy.shape[1]
    OW = dy.shape[2]
    for p in prange(P):
        for h in range(H):
            for w in range(W):
                dx[p, h, w] = 0
        for oh in range(OH):
            h0 = oh * sh - ph
            for ow in range(OW):
                w0 = ow * sw - pw
                g = dy[p, oh, ow] / div[oh, ow]
                for i in range(kh_lo[oh], kh_hi[oh]):
                    for j in range(kw_lo[ow], kw_hi[ow]):
                        dx[p, h0 + i, w0 + j] += g


@kernel
def global_avg_pool2d_forward(x, y, zero, count):
    """``y[p]`` = mean of row ``x[p, :]`` (``x`` is ``(P, H*W)``); ``count`` = H*W in dtype."""
    P = x.shape[0]
    M = x.shape[1]
    for p in prange(P):
        s = zero
        for k in range(M):
            s += x[p, k]
        y[p] = s / count


@kernel
def global_avg_pool2d_backward(dy, dx, count):
    """``dx[p, :]`` = ``dy[p] / count`` (``dx`` is ``(P, H*W)``)."""
    P = dx.shape[0]
    M = dx.shape[1]
    for p in prange(P):
        g = dy[p] / count
        for k in range(M):
            dx[p, k] = g
