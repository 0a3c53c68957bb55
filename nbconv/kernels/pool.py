"""Pooling loops: max / average pooling forward and backward, global average pooling.

Arrays come in as C-contiguous *planes*: an ``(N, C, H, W)`` tensor is passed reshaped to
``(P, H, W)`` with ``P = N * C`` (a free reshape), outputs as ``(P, OH, OW)``. Every kernel runs
``prange`` over the planes (or chunks of planes) and writes only its own planes, so overlapping
windows in backward never race and the result does not depend on the thread count.

Window geometry is precomputed by the wrapper (no division per pixel): ``kh_lo[oh], kh_hi[oh]``
are the kernel rows ``i`` whose input row ``oh*sh - ph + i*dh`` lies inside ``[0, H)``; likewise
``kw_lo[ow], kw_hi[ow]`` for columns; ``div[oh, ow]`` (average pooling) is each window's
divisor in the array dtype.

Fast paths (dilation 1, small windows). ``k_h``, ``k_w``, ``s_h``, ``s_w`` are tuples whose
*lengths* are ``KH``, ``KW``, ``SH``, ``SW`` (compile-time constants: one cached specialisation
per window size and stride), so the window loops unroll and LLVM vectorises the loop over
outputs. Indices are ``uint64`` built from loop counters: Numba then emits no negative-index
wraparound, which blocks vectorisation (as do tap offsets read from a tuple and strides known
only at run time).

- ``*_direct``: no padding, every window inside the input and no overlap along rows
  (``KW <= SW``): ``x`` is read in place (2x2/2 pooling, the common case).
- ``max_pool2d_forward`` / ``avg_pool2d_forward``: each plane is first copied into a
  phase-split scratch ``S[((a*SW + b)*Hq + t)*Mq + u] = xpad[a + SH*t, b + SW*u]`` (``xpad``:
  the input with ``ph``/``pw`` rows/columns of -inf or 0 around it), so tap ``(i, j)`` of output
  ``(oh, ow)`` sits at a fixed offset from ``q = oh*Mq + ow``: all windows of a plane are one
  long unit-stride loop over ``q``, with no border cases.
- ``avg_pool2d_backward_tiles`` (stride = kernel, no padding) writes each ``dy / div`` to its
  tile; ``avg_pool2d_backward`` otherwise adds ``dy / div`` into a column-de-interleaved
  scratch ``buf[r, hp, m] = dxpad[hp, m*SW + r]`` and copies the image part out.

A loop nest that LLVM should vectorise is kept free of branchy border code: in the same
function, such code made the vectorised loop fall back to scalar code (5-15x slower).
The ``*_any`` kernels handle every other case with plain loops over each window.
"""
import numpy as np
from numba import prange

from .._config import kernel, serial_kernel


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
def max_pool2d_forward_any(x, y, idx, ninf, KW, sh, sw, ph, pw, dh, dw, kh_lo, kh_hi, kw_lo,
                           kw_hi):
    """As :func:`max_pool2d_forward` for any window (large, dilated), one window at a time.

    Textbook twin: :func:`nbconv.kernels.textbook.max_pool2d_forward`."""
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
def max_pool2d_backward(dy, idx, dx, di, dj, H, W, sh, sw, ph, pw):
    """``dx`` (``(P, H*W)``) = each ``dy`` added at the input element its window offset ``k``
    points to: row ``oh*sh - ph + di[k]``, column ``ow*sw - pw + dj[k]``. An offset whose row or
    column lies in the padding (a window that covers only padding, whose maximum is -inf and
    does not depend on ``x``) adds nothing: row and column are checked apart, so it never
    wraps onto another pixel. Outputs are visited in row-major order, so sums of overlapping
    windows are fixed.

    Textbook twin: :func:`nbconv.kernels.textbook.max_pool2d_backward`."""
    P = dx.shape[0]
    HW = dx.shape[1]
    OH = dy.shape[1]
    OW = dy.shape[2]
    for p in prange(P):
        for k in range(HW):
            dx[p, k] = 0
        for oh in range(OH):
            for ow in range(OW):
                t = idx[p, oh, ow]
                r = oh * sh - ph + di[t]
                c = ow * sw - pw + dj[t]
                if r >= 0 and r < H and c >= 0 and c < W:
                    dx[p, r * W + c] += dy[p, oh, ow]


@serial_kernel
def _avg_window(x, p, h0, w0, a, b, c, d, zero):
    """Sum of the window's input elements over taps ``a <= i < b``, ``c <= j < d``."""
    s = zero
    for i in range(a, b):
        for j in range(c, d):
            s += x[p, h0 + i, w0 + j]
    return s


@kernel
def avg_pool2d_forward_any(x, y, zero, sh, sw, ph, pw, kh_lo, kh_hi, kw_lo, kw_hi, div):
    """As :func:`avg_pool2d_forward` for any window (large), one window at a time.

    Textbook twin: :func:`nbconv.kernels.textbook.avg_pool2d_forward`."""
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
    """Copy the image part of the scratch out: ``dx[p, h, c] = buf[r, h + ph, m]`` for
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
            # a phase may end before the common range starts (a column stride larger than
            # the input): stop at m_hi[r], or the write lands in the next row or plane
            for m in range(m_lo[r], min(lo, m_hi[r])):
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
    in row-major output order, then the input region is copied out).

    Textbook twin: :func:`nbconv.kernels.textbook.avg_pool2d_backward`."""
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
    plane, in row-major output order.

    Textbook twin: :func:`nbconv.kernels.textbook.avg_pool2d_backward`."""
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
    """``y[p]`` = mean of row ``x[p, :]`` (``x`` is ``(P, H*W)``); ``count`` = H*W in dtype.

    Textbook twin: :func:`nbconv.kernels.textbook.global_avg_pool2d_forward`."""
    P = x.shape[0]
    M = x.shape[1]
    for p in prange(P):
        s = zero
        for k in range(M):
            s += x[p, k]
        y[p] = s / count


@kernel
def global_avg_pool2d_backward(dy, dx, count):
    """``dx[p, :]`` = ``dy[p] / count`` (``dx`` is ``(P, H*W)``).

    Textbook twin: :func:`nbconv.kernels.textbook.global_avg_pool2d_backward`."""
    P = dx.shape[0]
    M = dx.shape[1]
    for p in prange(P):
        g = dy[p] / count
        for k in range(M):
            dx[p, k] = g


# ---- unpadded windows that lie inside the input: read x directly (no scratch copy) ----------

@kernel
def max_pool2d_forward_direct(x, y, idx, ninf, k_h, k_w, s_w, sh, nchunks):
    """:func:`max_pool2d_forward` when every window lies inside ``x`` (no padding, dilation 1)
    and windows do not overlap along rows (``KW <= SW``): tap ``(i, j)`` of output
    ``(oh, ow)`` is ``x[p, oh*sh + i, ow*SW + j]``, read in place (no scratch copy; the
    de-interleaving loads vectorise well only without overlap).

    Textbook twin: :func:`nbconv.kernels.textbook.max_pool2d_forward`."""
    P = x.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    KH = len(k_h)
    KW = len(k_w)
    swu = np.uint64(len(s_w))
    for ch in prange(nchunks):
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            for oh in range(OH):
                hu = np.uint64(oh * sh)
                for q in range(OW):
                    cu = np.uint64(q) * swu
                    best = ninf
                    bi = 0
                    for i in range(KH):
                        for j in range(KW):
                            v = x[p, hu + np.uint64(i), cu + np.uint64(j)]
                            if v > best or v != v:
                                best = v
                                bi = i * KW + j
                    y[p, oh, q] = best
                    idx[p, oh, q] = bi


@kernel
def avg_pool2d_forward_direct(x, y, zero, k_h, k_w, s_w, sh, div, nchunks):
    """:func:`avg_pool2d_forward` in the case of :func:`max_pool2d_forward_direct`: every
    window sums ``KH*KW`` input elements, divided by ``div``.

    Textbook twin: :func:`nbconv.kernels.textbook.avg_pool2d_forward`."""
    P = x.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    KH = len(k_h)
    KW = len(k_w)
    swu = np.uint64(len(s_w))
    for ch in prange(nchunks):
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            for oh in range(OH):
                hu = np.uint64(oh * sh)
                for q in range(OW):
                    cu = np.uint64(q) * swu
                    s = zero
                    for i in range(KH):
                        for j in range(KW):
                            s += x[p, hu + np.uint64(i), cu + np.uint64(j)]
                    y[p, oh, q] = s / div


@kernel
def avg_pool2d_backward_tiles(dy, dx, zero, k_h, k_w, div, nchunks):
    """:func:`avg_pool2d_backward` when windows tile the input (stride = kernel, no padding):
    ``dx[p, oh*KH + i, ow*KW + j] = dy[p, oh, ow] / div``, and 0 in the rows and columns past
    the last window.

    Textbook twin: :func:`nbconv.kernels.textbook.avg_pool2d_backward`."""
    P = dx.shape[0]
    H = dx.shape[1]
    W = dx.shape[2]
    OH = dy.shape[1]
    OW = dy.shape[2]
    KH = len(k_h)
    KW = len(k_w)
    kwu = np.uint64(KW)
    for ch in prange(nchunks):
        g = np.empty(OW, dx.dtype)
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            for oh in range(OH):
                for q in range(OW):
                    g[q] = dy[p, oh, q] / div
                for i in range(KH):
                    hu = np.uint64(oh * KH + i)
                    for q in range(OW):
                        cu = np.uint64(q) * kwu
                        for j in range(KW):
                            dx[p, hu, cu + np.uint64(j)] = g[q]
                    for c in range(OW * KW, W):
                        dx[p, hu, c] = zero
            for h in range(OH * KH, H):
                for c in range(W):
                    dx[p, h, c] = zero


# ---- padded or overlapping windows: a phase-split scratch copy, every window one flat loop ---

@serial_kernel
def _phase_fill(x, p, S, s_h, s_w, ph, pw, Hq, Mq):
    """Copy plane ``p`` into the phase-split scratch ``S``: ``S[((a*SW + b)*Hq + t)*Mq + u] =
    x[p, a + SH*t - ph, b + SW*u - pw]``. The padding is not touched: it holds the fill value
    from the start, at the same places for every plane. Rows and columns past the scratch (no
    window reads them) are skipped."""
    SH = len(s_h)
    SW = len(s_w)
    H = x.shape[1]
    W = x.shape[2]
    nh = max(0, min(H, SH * Hq - ph))
    ncol = max(0, min(W, SW * Mq - pw))
    if SW == 1:
        for h in range(nh):
            r = h + ph
            base = ((r % SH) * Hq + r // SH) * Mq + pw
            src = x[p, h, :ncol]
            dst = S[base:base + ncol]
            for c in range(ncol):
                dst[c] = src[c]
        return
    if SW == 2:
        be = pw % 2  # the column phase of the even columns
        oe = be * Hq * Mq + pw // 2
        oo = (1 - be) * Hq * Mq + (pw + 1) // 2
        npair = ncol // 2
        for h in range(nh):
            r = h + ph
            base = ((r % SH) * 2 * Hq + r // SH) * Mq
            src = x[p, h]
            de = S[base + oe:]
            do = S[base + oo:]
            for k in range(npair):
                de[k] = src[2 * k]
                do[k] = src[2 * k + 1]
        if ncol % 2:  # after the loop above: a store in it would keep it from vectorising
            for h in range(nh):
                r = h + ph
                S[((r % SH) * 2 * Hq + r // SH) * Mq + oe + npair] = x[p, h, ncol - 1]
        return
    for h in range(nh):
        r = h + ph
        src = x[p, h]
        for b in range(SW):
            c0 = (b - pw) % SW          # the first column of phase b
            cnt = max(0, (ncol - c0 + SW - 1) // SW)
            base = (((r % SH) * SW + b) * Hq + r // SH) * Mq + (c0 + pw) // SW
            dst = S[base:base + cnt]
            for k in range(cnt):
                dst[k] = src[c0 + SW * k]


@kernel
def max_pool2d_forward(x, y, idx, ninf, k_h, k_w, s_h, s_w, ph, pw, first, Hq, Mq,
                            nchunks):
    """Max pooling for small windows with padding or overlap (dilation 1): each plane is copied
    into a phase-split scratch (:func:`_phase_fill`, -inf padding), where tap ``(i, j)`` of
    output ``(oh, ow)`` sits at the fixed offset ``((i%SH*SW + j%SW)*Hq + i//SH)*Mq + j//SW``
    from ``oh*Mq + ow``: all windows of a plane are one flat loop over ``q = oh*Mq + ow`` (the
    columns ``ow >= OW`` are computed and dropped). ``first[q]``: the offset of the window's
    first real tap (padding is -inf and never wins), padded to a multiple of 8 windows: whole
    vectors, no scalar remainder loop (which cost up to 20% on small planes).

    Textbook twin: :func:`nbconv.kernels.textbook.max_pool2d_forward` (which returns ``ih*W + iw``,
    not window offsets)."""
    P = x.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    KH = len(k_h)
    KW = len(k_w)
    SH = len(s_h)
    SW = len(s_w)
    L = first.shape[0]  # a multiple of 8: the wrapper pads it
    for ch in prange(nchunks):
        S = np.full(SH * SW * Hq * Mq + 8, ninf, x.dtype)  # + the padding windows' reads
        yt = np.empty(L, x.dtype)
        it = np.empty(L, idx.dtype)
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            _phase_fill(x, p, S, s_h, s_w, ph, pw, Hq, Mq)
            for q in range(L):
                qu = np.uint64(q)
                best = ninf
                bi = np.int32(first[q])  # int32, not int64: half the vector width
                for i in range(KH):
                    for j in range(KW):
                        o = np.uint64(((i % SH * SW + j % SW) * Hq + i // SH) * Mq + j // SW)
                        v = S[o + qu]
                        if v > best or v != v:
                            best = v
                            bi = np.int32(i * KW + j)
                yt[q] = best
                it[q] = bi
            for oh in range(OH):
                ys = yt[oh * Mq:oh * Mq + OW]
                js = it[oh * Mq:oh * Mq + OW]
                yd = y[p, oh]
                jd = idx[p, oh]
                for ow in range(OW):
                    yd[ow] = ys[ow]
                for ow in range(OW):
                    jd[ow] = js[ow]


@kernel
def avg_pool2d_forward(x, y, zero, k_h, k_w, s_h, s_w, ph, pw, div, Hq, Mq, nchunks):
    """Average pooling as :func:`max_pool2d_forward` (zero padding); ``div`` (L,) holds
    each window's divisor at ``q = oh*Mq + ow`` (padded with ones to a multiple of 8).

    Textbook twin: :func:`nbconv.kernels.textbook.avg_pool2d_forward`."""
    P = x.shape[0]
    OH = y.shape[1]
    OW = y.shape[2]
    KH = len(k_h)
    KW = len(k_w)
    SH = len(s_h)
    SW = len(s_w)
    L = div.shape[0]
    for ch in prange(nchunks):
        S = np.full(SH * SW * Hq * Mq + 8, zero, x.dtype)  # + the padding windows' reads
        yt = np.empty(L, x.dtype)
        for p in range(ch * P // nchunks, (ch + 1) * P // nchunks):
            _phase_fill(x, p, S, s_h, s_w, ph, pw, Hq, Mq)
            for q in range(L):
                qu = np.uint64(q)
                s = zero
                for i in range(KH):
                    for j in range(KW):
                        o = np.uint64(((i % SH * SW + j % SW) * Hq + i // SH) * Mq + j // SW)
                        s += S[o + qu]
                yt[q] = s / div[q]
            for oh in range(OH):
                ys = yt[oh * Mq:oh * Mq + OW]
                yd = y[p, oh]
                for ow in range(OW):
                    yd[ow] = ys[ow]
