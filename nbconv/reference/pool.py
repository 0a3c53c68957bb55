"""Plain NumPy pooling: max/avg (naive loops and vectorised twins), global average and
adaptive pooling."""
import numpy as np

from .._checks import pool_out_size


# ---- pool -----------------------------------------------------------------------------------
# Shapes: x (N, C, H, W) -> (N, C, OH, OW), OH = pool_out_size(H, kh, sh, ph, ph, dh, ceil_mode).
# Max pooling pads with -inf, keeps the first maximum (row-major window order) on ties and the
# last NaN if the window has any (PyTorch's CPU rule); indices are window offsets i*kw + j.
# Average pooling divides by the window size clipped at the padded boundary
# (count_include_pad=True) or by the number of input elements it covers (False).
# *_naive: loops over every output; the others: vectorised over (N, C, OH, OW), one strided
# slice per window tap.

def _pool_pairs(kernel_size, stride, padding, dilation):
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    k = pair(kernel_size)
    return k, pair(k if stride is None else stride), pair(padding), pair(dilation)


def _pool_out(x_shape, k, s, p, d, ceil_mode):
    return tuple(pool_out_size(x_shape[2 + a], k[a], s[a], p[a], p[a], d[a], ceil_mode)
                 for a in range(2))


def max_pool2d_naive(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Returns ``(y, indices)``; ``indices`` (int64) are window offsets ``i*kw + j``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_pairs(kernel_size, stride, padding, dilation)
    N, C, H, W = x.shape
    OH, OW = _pool_out(x.shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    idx = np.empty((N, C, OH, OW), np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    # a window over padding only (dilation): -inf at its first tap past
                    # the top/left padding
                    best = -np.inf
                    bi = (_first_tap(oh, sh, ph, dh) * kw + _first_tap(ow, sw, pw, dw))
                    seen = False
                    for i in range(kh):
                        for j in range(kw):
                            ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                            if 0 <= ih < H and 0 <= iw < W:
                                v = x[n, c, ih, iw]
                                if not seen or v > best or np.isnan(v):
                                    best, bi, seen = v, i * kw + j, True
                    y[n, c, oh, ow], idx[n, c, oh, ow] = best, bi
    return y, idx


def _first_tap(o, s, p, d):
    """The first tap of window ``o`` whose position ``o*s - p + i*d`` is not in the leading
    padding."""
    return max(0, -((o * s - p) // d))


def max_pool2d_backward_naive(dy, indices, x_shape, kernel_size, stride=None, padding=0,
                              dilation=1, ceil_mode=False):
    """An index pointing into the padding (a window over padding only) passes no gradient."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_pairs(kernel_size, stride, padding, dilation)
    dx = np.zeros(x_shape, dy.dtype)
    N, C, OH, OW = dy.shape
    H, W = x_shape[2:]
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    i, j = divmod(int(indices[n, c, oh, ow]), kw)
                    ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                    if 0 <= ih < H and 0 <= iw < W:
                        dx[n, c, ih, iw] += dy[n, c, oh, ow]
    return dx


def _avg_window(o, s, p, k, size):
    """Clipped window ``[lo, hi)`` along one axis and its size clipped at the padded boundary."""
    start = o * s - p
    end = min(start + k, size + p)
    return max(start, 0), min(end, size), end - start


def avg_pool2d_naive(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True):
    (kh, kw), (sh, sw), (ph, pw), _ = _pool_pairs(kernel_size, stride, padding, 1)
    N, C, H, W = x.shape
    OH, OW = _pool_out(x.shape, (kh, kw), (sh, sw), (ph, pw), (1, 1), ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    for oh in range(OH):
        h0, h1, nh = _avg_window(oh, sh, ph, kh, H)
        for ow in range(OW):
            w0, w1, nw = _avg_window(ow, sw, pw, kw, W)
            div = nh * nw if count_include_pad else (h1 - h0) * (w1 - w0)
            for n in range(N):
                for c in range(C):
                    y[n, c, oh, ow] = x[n, c, h0:h1, w0:w1].sum() / x.dtype.type(div)
    return y


def avg_pool2d_backward_naive(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                              count_include_pad=True):
    (kh, kw), (sh, sw), (ph, pw), _ = _pool_pairs(kernel_size, stride, padding, 1)
    N, C, H, W = x_shape
    dx = np.zeros(x_shape, dy.dtype)
    for oh in range(dy.shape[2]):
        h0, h1, nh = _avg_window(oh, sh, ph, kh, H)
        for ow in range(dy.shape[3]):
            w0, w1, nw = _avg_window(ow, sw, pw, kw, W)
            div = nh * nw if count_include_pad else (h1 - h0) * (w1 - w0)
            for n in range(N):
                for c in range(C):
                    dx[n, c, h0:h1, w0:w1] += dy[n, c, oh, ow] / dy.dtype.type(div)
    return dx


def _pool_taps(x_shape, k, s, p, d, out):
    """Padded size (room for ceil_mode overhang) and, per tap ``(i, j)``, the strided slice of
    the padded input that it reads for every output."""
    hp = max(x_shape[2] + 2 * p[0], (out[0] - 1) * s[0] + d[0] * (k[0] - 1) + 1)
    wp = max(x_shape[3] + 2 * p[1], (out[1] - 1) * s[1] + d[1] * (k[1] - 1) + 1)
    taps = [(i * k[1] + j,
             (Ellipsis, slice(i * d[0], i * d[0] + (out[0] - 1) * s[0] + 1, s[0]),
              slice(j * d[1], j * d[1] + (out[1] - 1) * s[1] + 1, s[1])))
            for i in range(k[0]) for j in range(k[1])]
    return (hp, wp), taps


def _pad_to(a, p, padded, value):
    N, C, H, W = a.shape
    out = np.full((N, C) + padded, value, a.dtype)
    out[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = a
    return out


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Vectorised twin of :func:`max_pool2d_naive`: returns ``(y, indices)``."""
    k, s, p, d = _pool_pairs(kernel_size, stride, padding, dilation)
    out = _pool_out(x.shape, k, s, p, d, ceil_mode)
    padded, taps = _pool_taps(x.shape, k, s, p, d, out)
    xp = _pad_to(x, p, padded, -np.inf)
    real = _pad_to(np.ones((1, 1) + x.shape[2:], bool), p, padded, False)
    y = np.full(x.shape[:2] + out, -np.inf, x.dtype)
    idx = np.full(x.shape[:2] + out, -1, np.int64)
    for off, sl in taps:
        v = xp[sl]
        take = real[sl] & ((idx < 0) | (v > y) | np.isnan(v))
        y = np.where(take, v, y)
        idx = np.where(take, off, idx)
    first = np.add.outer([_first_tap(o, s[0], p[0], d[0]) * k[1] for o in range(out[0])],
                         [_first_tap(o, s[1], p[1], d[1]) for o in range(out[1])])
    idx = np.where(idx < 0, first, idx)  # windows over padding only, as max_pool2d_naive
    return y, idx


def max_pool2d_backward(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    k, s, p, d = _pool_pairs(kernel_size, stride, padding, dilation)
    padded, taps = _pool_taps(x_shape, k, s, p, d, dy.shape[2:])
    dxp = np.zeros(tuple(x_shape[:2]) + padded, dy.dtype)
    for off, sl in taps:
        dxp[sl] += np.where(indices == off, dy, 0)
    return dxp[:, :, p[0]:p[0] + x_shape[2], p[1]:p[1] + x_shape[3]].copy()


def _avg_divisor(x_shape, k, s, p, out, padded, taps, count_include_pad, dtype):
    """Per-output divisor ``(OH, OW)``: taps that land in the padded input (include_pad) or in
    the input itself."""
    inside = np.ones((1, 1) + tuple(x_shape[2:]), dtype)
    if count_include_pad:
        inside = np.ones((1, 1, x_shape[2] + 2 * p[0], x_shape[3] + 2 * p[1]), dtype)
        p = (0, 0)
    mask = _pad_to(inside, p, padded, 0)
    return sum(mask[sl] for _, sl in taps)[0, 0]


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Vectorised twin of :func:`avg_pool2d_naive`."""
    k, s, p, d = _pool_pairs(kernel_size, stride, padding, 1)
    out = _pool_out(x.shape, k, s, p, d, ceil_mode)
    padded, taps = _pool_taps(x.shape, k, s, p, d, out)
    xp = _pad_to(x, p, padded, 0)
    total = sum(xp[sl] for _, sl in taps)
    return total / _avg_divisor(x.shape, k, s, p, out, padded, taps, count_include_pad, x.dtype)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    k, s, p, d = _pool_pairs(kernel_size, stride, padding, 1)
    padded, taps = _pool_taps(x_shape, k, s, p, d, dy.shape[2:])
    share = dy / _avg_divisor(x_shape, k, s, p, dy.shape[2:], padded, taps, count_include_pad,
                              dy.dtype)
    dxp = np.zeros(tuple(x_shape[:2]) + padded, dy.dtype)
    for _, sl in taps:
        dxp[sl] += share
    return dxp[:, :, p[0]:p[0] + x_shape[2], p[1]:p[1] + x_shape[3]].copy()


def global_avg_pool2d(x):
    """``(N, C, H, W) -> (N, C)``: mean over H and W."""
    return x.mean(axis=(2, 3), dtype=x.dtype)


def global_avg_pool2d_backward(dy, x_shape):
    return np.broadcast_to((dy / dy.dtype.type(x_shape[2] * x_shape[3]))[:, :, None, None],
                           x_shape).copy()


# ---- adaptive pooling -------------------------------------------------------------------------
# x (N, C, H, W) -> (N, C, OH, OW); output row oh pools input rows
#     [floor(oh * H / OH), ceil((oh + 1) * H / OH))
# (columns likewise). Max indices are flat positions h * W + w in the input plane.

def adaptive_bins(size, out):
    """``[(start, end)]`` of the ``out`` adaptive bins over ``size`` inputs (PyTorch's)."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def adaptive_avg_pool2d_naive(x, output_size):
    """Each output the mean of its bin (one NumPy mean per bin, over all planes at once)."""
    N, C, H, W = x.shape
    OH, OW = output_size
    y = np.empty((N, C, OH, OW), x.dtype)
    for oh, (h0, h1) in enumerate(adaptive_bins(H, OH)):
        for ow, (w0, w1) in enumerate(adaptive_bins(W, OW)):
            y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / ((h1 - h0) * (w1 - w0))
    return y


def adaptive_avg_pool2d_backward_naive(dy, x_shape):
    """Each bin spreads ``dy / area`` evenly over its input elements."""
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dx = np.zeros(x_shape, dy.dtype)
    for oh, (h0, h1) in enumerate(adaptive_bins(H, OH)):
        for ow, (w0, w1) in enumerate(adaptive_bins(W, OW)):
            dx[:, :, h0:h1, w0:w1] += (dy[:, :, oh, ow] / ((h1 - h0) * (w1 - w0)))[:, :, None,
                                                                                   None]
    return dx


def adaptive_max_pool2d_naive(x, output_size):
    """``(y, indices)``: the max of each bin and its flat input position ``h * W + w``; the
    first maximum on ties, the last NaN when the bin holds one (PyTorch's CPU rule)."""
    N, C, H, W = x.shape
    OH, OW = output_size
    y = np.empty((N, C, OH, OW), x.dtype)
    idx = np.empty((N, C, OH, OW), np.int64)
    for oh, (h0, h1) in enumerate(adaptive_bins(H, OH)):
        for ow, (w0, w1) in enumerate(adaptive_bins(W, OW)):
            win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
            nan = np.isnan(win)
            k = win.shape[2]
            last_nan = k - 1 - np.argmax(nan[:, :, ::-1], axis=2)
            first_max = np.argmax(np.where(nan, -np.inf, win), axis=2)
            j = np.where(nan.any(axis=2), last_nan, first_max)
            y[:, :, oh, ow] = np.take_along_axis(win, j[:, :, None], 2)[:, :, 0]
            idx[:, :, oh, ow] = (h0 + j // (w1 - w0)) * W + w0 + j % (w1 - w0)
    return y, idx


def adaptive_max_pool2d_backward_naive(dy, indices, x_shape):
    """Each ``dy`` added at its maximum's flat position."""
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H * W), dy.dtype)
    for n in range(N):
        for c in range(C):
            np.add.at(dx[n, c], indices[n, c].reshape(-1), dy[n, c].reshape(-1))
    return dx.reshape(x_shape)
