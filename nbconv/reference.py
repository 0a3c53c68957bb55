"""Plain NumPy twins of every op, written to be obviously correct rather than fast.

Each op has a naive loop version that reads like the textbook formula and, where it matters for
speed comparisons, a vectorised version (im2col/col2im for convolution). Tests check the Numba
kernels against both; benchmarks compare against the vectorised one.
"""
import numpy as np

from ._checks import conv2d_padding, conv_out_size, pool_out_size  # noqa: F401  (one parser for every module)


# ---- conv -----------------------------------------------------------------------------------
# Shapes: x (N, C, H, W), weight (Fo, C/groups, KH, KW), bias (Fo,), y and dy (N, Fo, OH, OW)
# (Fo filters) with
#     OH = floor((H + pad_top + pad_bottom - dilation_h * (KH - 1) - 1) / stride_h) + 1
# (OW likewise). ``padding`` is an int, a pair (ph, pw), 'valid', 'same' (stride 1; the odd extra
# row/column at the bottom/right, as PyTorch) or 'full' (dilation * (k - 1) on each side), parsed
# by :func:`nbconv._checks.conv2d_padding`, the parser the kernels' wrappers use. Group g maps
# input channels [g*C/G, (g+1)*C/G) to filters [g*Fo/G, (g+1)*Fo/G). Backward returns
# (dx, dweight, dbias).

def _conv_geometry(x_shape, w_shape, stride, padding, dilation):
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    kh, kw = w_shape[2:]
    pt, pb, pl, pr = conv2d_padding(padding, (kh, kw), (sh, sw), (dh, dw))
    oh = conv_out_size(x_shape[2], kh, sh, pt, pb, dh)
    ow = conv_out_size(x_shape[3], kw, sw, pl, pr, dw)
    return (sh, sw), (pt, pb, pl, pr), (dh, dw), (oh, ow)


def conv2d_naive(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Textbook loops: ``y[n,f,oh,ow] = b[f] + sum_{c,i,j} w[f,c,i,j] * x[n, g*Cg + c,
    oh*sh - pt + i*dh, ow*sw - pl + j*dw]`` (terms outside the input are zero)."""
    N, C, H, W = x.shape
    Fo, Cg, KH, KW = weight.shape
    (sh, sw), (pt, _, pl, _), (dh, dw), (OH, OW) = _conv_geometry(x.shape, weight.shape, stride,
                                                                 padding, dilation)
    Fg = Fo // groups
    y = np.zeros((N, Fo, OH, OW), x.dtype)
    for n in range(N):
        for f in range(Fo):
            g = f // Fg
            for oh in range(OH):
                for ow in range(OW):
                    s = 0.0 if bias is None else bias[f]
                    for c in range(Cg):
                        for i in range(KH):
                            for j in range(KW):
                                ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                if 0 <= ih < H and 0 <= iw < W:
                                    s += weight[f, c, i, j] * x[n, g * Cg + c, ih, iw]
                    y[n, f, oh, ow] = s
    return y


def conv2d_backward_naive(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """The same loops as :func:`conv2d_naive`, each product's gradient added to both factors."""
    N, C, H, W = x.shape
    Fo, Cg, KH, KW = weight.shape
    (sh, sw), (pt, _, pl, _), (dh, dw), (OH, OW) = _conv_geometry(x.shape, weight.shape, stride,
                                                                 padding, dilation)
    Fg = Fo // groups
    dx, dwt = np.zeros_like(x), np.zeros_like(weight)
    for n in range(N):
        for f in range(Fo):
            g = f // Fg
            for oh in range(OH):
                for ow in range(OW):
                    d = dy[n, f, oh, ow]
                    for c in range(Cg):
                        for i in range(KH):
                            for j in range(KW):
                                ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                if 0 <= ih < H and 0 <= iw < W:
                                    dx[n, g * Cg + c, ih, iw] += weight[f, c, i, j] * d
                                    dwt[f, c, i, j] += x[n, g * Cg + c, ih, iw] * d
    return dx, dwt, dy.sum(axis=(0, 2, 3))


def im2col(x, kernel_hw, stride=1, padding=0, dilation=1):
    """Columns ``(C*KH*KW, N*OH*OW)`` of ``x`` (rows ordered (c, i, j), columns (n, oh, ow))."""
    N, C, H, W = x.shape
    kh, kw = kernel_hw
    (sh, sw), (pt, pb, pl, pr), (dh, dw), (OH, OW) = _conv_geometry(
        x.shape, (0, 0, kh, kw), stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    s = xp.strides
    v = np.lib.stride_tricks.as_strided(
        xp, (C, kh, kw, N, OH, OW), (s[1], s[2] * dh, s[3] * dw, s[0], s[2] * sh, s[3] * sw))
    return v.reshape(C * kh * kw, N * OH * OW)


def conv2d_im2col(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """im2col + one matrix product per group (CS231n style)."""
    N = x.shape[0]
    Fo, Cg, KH, KW = weight.shape
    _, _, _, (OH, OW) = _conv_geometry(x.shape, weight.shape, stride, padding, dilation)
    cols = im2col(x, (KH, KW), stride, padding, dilation)
    Fg, K = Fo // groups, Cg * KH * KW
    w2 = weight.reshape(Fo, K)
    y = np.empty((Fo, N * OH * OW), x.dtype)
    for g in range(groups):
        np.matmul(w2[g * Fg:(g + 1) * Fg], cols[g * K:(g + 1) * K], out=y[g * Fg:(g + 1) * Fg])
    if bias is not None:
        y += bias[:, None]
    return np.ascontiguousarray(y.reshape(Fo, N, OH, OW).transpose(1, 0, 2, 3))


def conv2d_backward_im2col(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, cols=None):
    """dweight = dy @ cols.T, dcols = weight.T @ dy, then col2im: one strided add per kernel
    tap. ``cols`` (from :func:`im2col`, e.g. kept by the forward pass) is recomputed if None."""
    N, C, H, W = x.shape
    Fo, Cg, KH, KW = weight.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw), (OH, OW) = _conv_geometry(
        x.shape, weight.shape, stride, padding, dilation)
    if cols is None:
        cols = im2col(x, (KH, KW), stride, padding, dilation)
    Fg, K = Fo // groups, Cg * KH * KW
    w2 = weight.reshape(Fo, K)
    dy2 = dy.transpose(1, 0, 2, 3).reshape(Fo, N * OH * OW)
    dw2 = np.empty((Fo, K), x.dtype)
    dcols = np.empty((C * KH * KW, N * OH * OW), x.dtype)
    for g in range(groups):
        fs, ks = slice(g * Fg, (g + 1) * Fg), slice(g * K, (g + 1) * K)
        np.matmul(dy2[fs], cols[ks].T, out=dw2[fs])
        np.matmul(w2[fs].T, dy2[fs], out=dcols[ks])
    dcols = dcols.reshape(C, KH, KW, N, OH, OW)
    dxp = np.zeros((C, N, H + pt + pb, W + pl + pr), x.dtype)  # (C, N): dcols' order
    for i in range(KH):
        for j in range(KW):
            dxp[:, :, i * dh:i * dh + sh * (OH - 1) + 1:sh,
                j * dw:j * dw + sw * (OW - 1) + 1:sw] += dcols[:, i, j]
    dx = np.ascontiguousarray(dxp[:, :, pt:pt + H, pl:pl + W].transpose(1, 0, 2, 3))
    return dx, dw2.reshape(weight.shape), dy.sum(axis=(0, 2, 3))


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


# ---- norm -----------------------------------------------------------------------------------
# Shapes: x, y, dy, dx (N, C, H, W); weight, bias, dweight, dbias (C,) (None: 1 and 0).
# Computed in x's dtype (pass float64 copies for accurate values). Statistics are the mean and
# the biased variance over the normalised values; xhat = (x - mean) / sqrt(var + eps), y = xhat *
# weight + bias, and with dxhat = dy * weight the input gradient is the textbook
#     dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps)
# (means over the same values as the statistics), or dxhat / sqrt(var + eps) for fixed statistics.

def _affine(C, weight, bias, dtype):
    w = np.ones(C, dtype) if weight is None else weight
    b = np.zeros(C, dtype) if bias is None else bias
    return w.reshape(1, C, 1, 1), b.reshape(1, C, 1, 1)


def group_norm_naive(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Loop over (sample, group): normalise the group's ``C/G * H * W`` values."""
    N, C = x.shape[:2]
    cg = C // num_groups
    w, b = _affine(C, weight, bias, x.dtype)
    y = np.empty_like(x)
    for n in range(N):
        for g in range(num_groups):
            v = x[n, g * cg:(g + 1) * cg]
            mean = v.sum() / v.size
            var = ((v - mean) ** 2).sum() / v.size
            y[n, g * cg:(g + 1) * cg] = (v - mean) / np.sqrt(var + eps)
    return y * w + b


def _group_view(a, num_groups):
    return a.reshape(a.shape[0], num_groups, -1)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Vectorised over (sample, group): returns ``y``."""
    v = _group_view(x, num_groups)
    mean = v.mean(axis=2, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=2, keepdims=True)
    w, b = _affine(x.shape[1], weight, bias, x.dtype)
    return ((v - mean) / np.sqrt(var + eps)).reshape(x.shape) * w + b


def group_norm_backward(dy, x, num_groups, weight=None, eps=1e-5):
    """Returns ``(dx, dweight, dbias)``, recomputing the statistics from ``x``."""
    v = _group_view(x, num_groups)
    mean = v.mean(axis=2, keepdims=True)
    rstd = 1 / np.sqrt(((v - mean) ** 2).mean(axis=2, keepdims=True) + eps)
    xhat = ((v - mean) * rstd).reshape(x.shape)
    w, _ = _affine(x.shape[1], weight, None, x.dtype)
    dxhat = _group_view(dy * w, num_groups)
    xh = _group_view(xhat, num_groups)
    dx = rstd * (dxhat - dxhat.mean(axis=2, keepdims=True)
                 - xh * (dxhat * xh).mean(axis=2, keepdims=True))
    return dx.reshape(x.shape), (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))


def batch_norm2d(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5):
    """Returns ``y``. ``training``: batch statistics over (N, H, W), and the running ones (if
    given) updated in place with the unbiased variance; else the running statistics."""
    L = x.shape[0] * x.shape[2] * x.shape[3]
    if training:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * L / (L - 1)
    else:
        mean, var = running_mean, running_var
    w, b = _affine(x.shape[1], weight, bias, x.dtype)
    return (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps) * w + b


def batch_norm2d_backward(dy, x, weight=None, training=True, running_mean=None,
                          running_var=None, eps=1e-5):
    """Returns ``(dx, dweight, dbias)``; ``training``: the statistics were the batch's own,
    else the given running ones (fixed)."""
    if training:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))
    else:
        mean, var = running_mean, running_var
    rstd = (1 / np.sqrt(var + eps))[:, None, None]
    xhat = (x - mean[:, None, None]) * rstd
    w, _ = _affine(x.shape[1], weight, None, x.dtype)
    dxhat = dy * w
    if training:
        dx = rstd * (dxhat - dxhat.mean(axis=(0, 2, 3), keepdims=True)
                     - xhat * (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True))
    else:
        dx = rstd * dxhat
    return dx, (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))


# ---- basic ----------------------------------------------------------------------------------
# Shapes: relu any; linear x (N, in), weight (out, in), bias (out,) -> y (N, out) = x @ weight.T
# + bias; softmax cross-entropy logits (N, K), labels (N,) ints -> (mean loss, dlogits (N, K)).

def relu(x):
    return np.where(x > 0, x, np.zeros_like(x))


def relu_backward(dy, x):
    """``dx = dy`` where ``x > 0``, else 0."""
    return np.where(x > 0, dy, np.zeros_like(dy))


def linear_naive(x, weight, bias=None):
    N, (O, I) = x.shape[0], weight.shape
    y = np.zeros((N, O), x.dtype)
    for n in range(N):
        for o in range(O):
            s = x.dtype.type(0) if bias is None else bias[o]
            for i in range(I):
                s += x[n, i] * weight[o, i]
            y[n, o] = s
    return y


def linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


def linear_backward(dy, x, weight):
    """Returns ``(dx, dweight, dbias)``."""
    return dy @ weight, dy.T @ x, dy.sum(axis=0)


def dropout(x, mask, p):
    """Inverted dropout with a boolean keep-``mask``: ``x * mask / (1 - p)``."""
    if p == 1:
        return np.zeros_like(x)
    return x * mask.astype(x.dtype) / x.dtype.type(1 - p)


def softmax_cross_entropy_naive(logits, labels):
    """Row by row with the log-sum-exp shift; returns ``(loss, dlogits)``."""
    N, K = logits.shape
    loss = 0.0
    d = np.empty_like(logits)
    for n in range(N):
        m = max(logits[n])
        e = [np.exp(logits[n, k] - m) for k in range(K)]
        s = sum(e)
        loss += np.log(s) - (logits[n, labels[n]] - m)
        for k in range(K):
            d[n, k] = (e[k] / s - (k == labels[n])) / N
    return logits.dtype.type(loss / N), d


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


# ---- transposed convolution -------------------------------------------------------------------
# x (N, C_in, H, W), weight (C_in, C_out/groups, KH, KW) (PyTorch's layout), bias (C_out,),
# y (N, C_out, OH, OW) with OH = (H - 1)*sh - 2*ph + dh*(KH - 1) + output_padding_h + 1.

def conv_transpose2d_naive(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                           dilation=1):
    """Scatter loops: ``y[n, g*Cog + o, i*sh - ph + k*dh, j*sw - pw + l*dw] += x[n, c, i, j] *
    weight[c, o, k, l]`` for input channel ``c`` of group ``g`` (targets outside are dropped)."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = (pair(v) for v in (stride, padding,
                                                                   output_padding, dilation))
    N, C, H, W = x.shape
    _, Cog, KH, KW = weight.shape
    Cig = C // groups
    OH = (H - 1) * sh - 2 * ph + dh * (KH - 1) + oph + 1
    OW = (W - 1) * sw - 2 * pw + dw * (KW - 1) + opw + 1
    y = np.zeros((N, Cog * groups, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            g = c // Cig
            for i in range(H):
                for j in range(W):
                    for k in range(KH):
                        oh = i * sh - ph + k * dh
                        if not 0 <= oh < OH:
                            continue
                        for l in range(KW):  # noqa: E741
                            ow = j * sw - pw + l * dw
                            if 0 <= ow < OW:
                                y[n, g * Cog:(g + 1) * Cog, oh, ow] += x[n, c, i, j] * \
                                    weight[c, :, k, l]
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv_transpose2d_backward_naive(dy, x, weight, stride=1, padding=0, output_padding=0,
                                    groups=1, dilation=1):
    """``(dx, dweight, dbias)`` of :func:`conv_transpose2d_naive` by the same index map: each
    (input pixel, tap) pair that reached ``y`` reads ``dy`` there."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = (pair(v) for v in (stride, padding, dilation))
    N, C, H, W = x.shape
    _, Cog, KH, KW = weight.shape
    Cig = C // groups
    OH, OW = dy.shape[2:]
    dx = np.zeros_like(x)
    dwt = np.zeros_like(weight)
    for n in range(N):
        for c in range(C):
            g = c // Cig
            for i in range(H):
                for j in range(W):
                    for k in range(KH):
                        oh = i * sh - ph + k * dh
                        if not 0 <= oh < OH:
                            continue
                        for l in range(KW):  # noqa: E741
                            ow = j * sw - pw + l * dw
                            if 0 <= ow < OW:
                                d = dy[n, g * Cog:(g + 1) * Cog, oh, ow]
                                dx[n, c, i, j] += (d * weight[c, :, k, l]).sum()
                                dwt[c, :, k, l] += x[n, c, i, j] * d
    return dx, dwt, dy.sum(axis=(0, 2, 3))
