"""pool ops: validating wrappers around nbconv.kernels.pool.

Shapes: ``x`` (the ``input`` argument) is ``(N, C, H, W)``, or unbatched ``(C, H, W)`` as
PyTorch accepts (then the output, ``dy``, ``indices`` and ``dx`` are unbatched too and
``x_shape`` is ``(C, H, W)``); pooled outputs are ``(N, C, OH, OW)`` with, per axis,

    OH = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1        (ceil instead of floor with
                                                               ``ceil_mode``)

and, with ``ceil_mode``, the last window dropped if it would start in the right padding
(PyTorch's rule, see :func:`nbconv._checks.pool_out_size`). Average pooling has no dilation
(``dh = dw = 1``). ``global_avg_pool2d`` maps ``(N, C, H, W) -> (N, C)``.

Hyper-parameters follow PyTorch: ``stride`` defaults to ``kernel_size``; ``padding`` must be at
most half the (undilated) kernel size, ``padding <= kernel_size // 2`` per axis.

Windows of at most ``UNROLL_MAX_AREA`` taps, strides at most ``UNROLL_MAX_STRIDE`` and no
dilation run the fast kernels (compiled once per window size and stride, then cached; see
:mod:`nbconv.kernels.pool`); other windows the general ``*_any`` kernels. Both give the same
results.
"""
import numpy as np

from .._checks import (add_batch, check_array, check_bool, check_dy, check_out_size,
                       check_x_shape, is_unbatched, is_unbatched_shape, pool_args,
                       pool_out_size)
from .._config import POOL_MAX_CHUNKS as MAX_CHUNKS
from .._config import UNROLL_MAX_AREA, UNROLL_MAX_STRIDE
from .._config import VEC as _VEC
from ..kernels import pool as _k

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "global_avg_pool2d", "global_avg_pool2d_backward"]


def _out_shape(x_shape, k, s, p, d, ceil_mode, name="x"):
    n, c, h, w = x_shape
    oh = pool_out_size(h, k[0], s[0], p[0], p[0], d[0], ceil_mode)
    ow = pool_out_size(w, k[1], s[1], p[1], p[1], d[1], ceil_mode)
    check_out_size((oh, ow), (f"{name} of shape", tuple(x_shape)), ("kernel_size", k),
                   ("stride", s), ("padding", p), ("dilation", d), ("ceil_mode", ceil_mode))
    return (n, c, oh, ow)


def _ranges(size, out, k, s, p, d):
    """``lo, hi`` (int64, length ``out``): the kernel taps ``i`` of each window whose input
    position ``o*s - p + i*d`` lies in ``[0, size)``."""
    start = np.arange(out, dtype=np.int64) * s - p
    lo = np.maximum(0, -(start // d))
    hi = np.minimum(k, (size - 1 - start) // d + 1)
    return lo, hi


# Windows up to UNROLL_MAX_AREA taps and strides up to UNROLL_MAX_STRIDE, without dilation, use
# the fast kernels specialised on the window size and stride (see nbconv.kernels.pool); others
# *_any. Planes are handed to threads in MAX_CHUNKS chunks at most (one scratch buffer per
# chunk); the flat kernels' window count is padded to a multiple of _VEC. Values: nbconv._config.


def _specialise(k, s, p, d=(1, 1)):
    """The fast kernels' leading hyper-parameters: tuples ``k_h, k_w, s_w`` whose lengths are
    the window size and the column stride, then ``sh, ph, pw``; ``None`` when the window is too
    large to unroll, strided more than ``UNROLL_MAX_STRIDE`` or dilated (the ``*_any`` kernels
    handle it)."""
    if k[0] * k[1] > UNROLL_MAX_AREA or max(s) > UNROLL_MAX_STRIDE or d != (1, 1):
        return None
    return ((0,) * k[0], (0,) * k[1], (0,) * s[1], s[0], p[0], p[1])


def _scratch(x_shape, out, k, s, p):
    """The fast kernels' scratch geometry (see :mod:`nbconv.kernels.pool`): ``m_lo, m_hi`` (per
    column phase ``r``, the scratch columns ``m`` whose input column ``m*sw + r - pw`` lies in
    ``[0, W)``), the scratch rows ``Hp`` and columns ``M``, and the number of plane chunks."""
    w, sw = x_shape[3], s[1]
    hp = (out[0] - 1) * s[0] + k[0]
    m = out[1] + (k[1] - 1) // sw
    r = np.arange(sw)
    m_lo = np.maximum(0, -((r - p[1]) // sw))
    m_hi = np.maximum(np.minimum(m, (w - 1 - r + p[1]) // sw + 1), m_lo)
    return m_lo, m_hi, hp, m, min(x_shape[0] * x_shape[1], MAX_CHUNKS)


def _direct(x_shape, out, k, s, p, d=(1, 1)):
    """True when the ``*_direct`` kernels apply: every window lies inside the input (no
    padding, no dilation, the last window of a ``ceil_mode`` output not past the edge) and
    windows do not overlap along rows (``kw <= sw``). They read ``x`` in place; other windows
    go through the padded, phase-split scratch copy (:func:`_flat`)."""
    return p == (0, 0) and d == (1, 1) and k[1] <= s[1] \
        and (out[0] - 1) * s[0] + k[0] <= x_shape[2] and (out[1] - 1) * s[1] + k[1] <= x_shape[3]


def _flat(out, k, s, p, kh_lo, kw_lo, div=None):
    """The flat kernels' scratch geometry: ``(k_h, k_w, s_h, s_w)`` tuples, ``(ph, pw)``, the
    per-output table (``first``: offset of the first real tap, uint8/16/32; or ``div``) laid
    out with row pitch ``Mq``, and ``Hq, Mq`` (rows and columns of one phase plane)."""
    (oh, ow), (kh, kw), (sh, sw) = out, k, s
    Hq = -(-((oh - 1) * sh + kh) // sh)
    Mq = -(-((ow - 1) * sw + kw) // sw)
    L = (oh - 1) * Mq + ow
    table = np.zeros((oh, Mq), np.int64 if div is None else div.dtype)
    if div is None:
        table[:, :ow] = kh_lo[:, None] * kw + kw_lo[None, :]
        table = table.astype(index_dtype(kh * kw))
    else:
        table[:, :ow] = div
        table[:, ow:] = 1
    tuples = ((0,) * kh, (0,) * kw, (0,) * sh, (0,) * sw)
    # whole vectors (no scalar remainder loop, which costs most on small planes); the padding
    # windows read the scratch's tail and are dropped
    n = -(-L // _VEC) * _VEC
    flat = np.full(n, 0 if div is None else 1, table.dtype)
    flat[:L] = table.reshape(-1)[:L]
    return tuples, (p[0], p[1]), flat, Hq, Mq


def index_dtype(kernel_area):
    """The smallest unsigned integer dtype that holds window offsets ``0 .. kernel_area - 1``."""
    if kernel_area <= 1 << 8:
        return np.dtype(np.uint8)
    if kernel_area <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max pooling of ``x`` ``(N, C, H, W)`` -> ``y`` ``(N, C, OH, OW)`` (see the module doc).

    Padding counts as ``-inf``. A tie returns the first maximum in row-major window order; a NaN
    in the window is the maximum (the last NaN, as PyTorch's CPU kernel). With
    ``return_indices`` also returns ``indices`` ``(N, C, OH, OW)``: the window offset
    ``i*kw + j`` of each maximum, in :func:`index_dtype` of ``kh*kw`` (not PyTorch's flat
    input index), to pass to :func:`max_pool2d_backward`.
    """
    if is_unbatched(input):
        out = max_pool2d(input[None], kernel_size, stride, padding, dilation, ceil_mode,
                         return_indices)
        return (out[0][0], out[1][0]) if return_indices else out[0]
    k, s, p, d = pool_args(kernel_size, stride, padding, dilation)
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    return_indices = check_bool(return_indices, "return_indices")
    x = check_array(input, "x", ndim=4)
    n, c, oh, ow = _out_shape(x.shape, k, s, p, d, ceil_mode)
    h, w = x.shape[2:]
    y = np.empty((n, c, oh, ow), x.dtype)
    idx = np.empty((n, c, oh, ow), index_dtype(k[0] * k[1]))
    kh_lo, kh_hi = _ranges(h, oh, k[0], s[0], p[0], d[0])
    kw_lo, kw_hi = _ranges(w, ow, k[1], s[1], p[1], d[1])
    arrays = (x.reshape(n * c, h, w), y.reshape(n * c, oh, ow), idx.reshape(n * c, oh, ow),
              x.dtype.type(-np.inf))
    spec = _specialise(k, s, p, d)
    if spec is None:
        _k.max_pool2d_forward_any(*arrays, k[1], s[0], s[1], p[0], p[1], d[0], d[1],
                                  kh_lo, kh_hi, kw_lo, kw_hi)
    elif _direct(x.shape, (oh, ow), k, s, p, d):
        _k.max_pool2d_forward_direct(*arrays, *spec[:4], min(n * c, MAX_CHUNKS))
    else:
        tuples, pads, first, Hq, Mq = _flat((oh, ow), k, s, p, kh_lo, kw_lo)
        _k.max_pool2d_forward(*arrays, *tuples, *pads, first, Hq, Mq, min(n * c, MAX_CHUNKS))
    return (y, idx) if return_indices else y


def max_pool2d_backward(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Gradient of :func:`max_pool2d` w.r.t. ``x``: ``dx`` of shape ``x_shape`` ``(N, C, H, W)``.

    ``dy`` and ``indices`` (the window offsets returned by ``max_pool2d(...,
    return_indices=True)``) are ``(N, C, OH, OW)``; each ``dy`` element is added at its window's
    maximum, so overlapping windows sum. A window that covers only padding (possible with
    dilation) has output -inf whatever ``x`` is and passes no gradient (PyTorch's CPU kernel
    adds it to an unrelated pixel).
    """
    if is_unbatched_shape(x_shape):
        return max_pool2d_backward(add_batch(dy, "dy"), add_batch(indices, "indices"),
                                   (1,) + tuple(x_shape), kernel_size, stride, padding,
                                   dilation, ceil_mode)[0]
    k, s, p, d = pool_args(kernel_size, stride, padding, dilation)
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    x_shape = check_x_shape(x_shape)
    out_shape = _out_shape(x_shape, k, s, p, d, ceil_mode, "x_shape")
    dy = check_dy(dy, out_shape)
    if not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer numpy.ndarray, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    if indices.shape != dy.shape:
        raise ValueError(f"indices must have the shape of dy {dy.shape}, got {indices.shape}")
    area = k[0] * k[1]
    lo, hi = (int(indices.min()), int(indices.max()))
    if lo < 0 or hi >= area:
        raise ValueError(f"indices must be window offsets in [0, {area}) for kernel_size {k}, "
                         f"got values in [{lo}, {hi}]")
    indices = np.ascontiguousarray(indices, dtype=index_dtype(area))
    n, c, h, w = x_shape
    oh, ow = out_shape[2:]
    dx = np.empty(x_shape, dy.dtype)
    i = np.arange(area, dtype=np.int64)
    _k.max_pool2d_backward(dy.reshape(n * c, oh, ow), indices.reshape(n * c, oh, ow),
                           dx.reshape(n * c, h * w), (i // k[1]) * d[0], (i % k[1]) * d[1],
                           h, w, s[0], s[1], p[0], p[1])
    return dx


def _avg_tables(h, w, oh, ow, k, s, p, count_include_pad, dtype):
    kh_lo, kh_hi = _ranges(h, oh, k[0], s[0], p[0], 1)
    kw_lo, kw_hi = _ranges(w, ow, k[1], s[1], p[1], 1)
    if count_include_pad:
        # windows clipped at the padded boundary (only ceil_mode windows reach past it)
        hs = np.arange(oh) * s[0] - p[0]
        ws = np.arange(ow) * s[1] - p[1]
        nh = np.minimum(hs + k[0], h + p[0]) - hs
        nw = np.minimum(ws + k[1], w + p[1]) - ws
    else:
        nh, nw = kh_hi - kh_lo, kw_hi - kw_lo
    div = np.multiply.outer(nh, nw).astype(dtype)
    return kh_lo, kh_hi, kw_lo, kw_hi, div


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """Average pooling of ``x`` ``(N, C, H, W)`` -> ``(N, C, OH, OW)`` (see the module doc).

    The divisor of a window is, as PyTorch, its size clipped at the padded boundary
    (``count_include_pad=True``: padding counts, the overhang of a ``ceil_mode`` window does
    not) or the number of input elements it covers (``count_include_pad=False``).
    """
    if is_unbatched(input):
        return avg_pool2d(input[None], kernel_size, stride, padding, ceil_mode,
                          count_include_pad)[0]
    k, s, p, _ = pool_args(kernel_size, stride, padding)
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    count_include_pad = check_bool(count_include_pad, "count_include_pad")
    x = check_array(input, "x", ndim=4)
    n, c, oh, ow = _out_shape(x.shape, k, s, p, (1, 1), ceil_mode)
    h, w = x.shape[2:]
    tables = _avg_tables(h, w, oh, ow, k, s, p, count_include_pad, x.dtype)
    y = np.empty((n, c, oh, ow), x.dtype)
    arrays = (x.reshape(n * c, h, w), y.reshape(n * c, oh, ow), x.dtype.type(0))
    spec = _specialise(k, s, p)
    if spec is None:
        _k.avg_pool2d_forward_any(*arrays, s[0], s[1], p[0], p[1], *tables)
    elif _direct(x.shape, (oh, ow), k, s, p):
        _k.avg_pool2d_forward_direct(*arrays, *spec[:4], x.dtype.type(k[0] * k[1]),
                                     min(n * c, MAX_CHUNKS))
    else:
        tuples, pads, div, Hq, Mq = _flat((oh, ow), k, s, p, tables[0], tables[2], tables[4])
        _k.avg_pool2d_forward(*arrays, *tuples, *pads, div, Hq, Mq, min(n * c, MAX_CHUNKS))
    return y


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    """Gradient of :func:`avg_pool2d` w.r.t. ``x``: ``dx`` of shape ``x_shape`` ``(N, C, H, W)``
    from ``dy`` ``(N, C, OH, OW)``: each element collects ``dy / divisor`` of every window
    containing it."""
    if is_unbatched_shape(x_shape):
        return avg_pool2d_backward(add_batch(dy, "dy"), (1,) + tuple(x_shape), kernel_size,
                                   stride, padding, ceil_mode, count_include_pad)[0]
    k, s, p, _ = pool_args(kernel_size, stride, padding)
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    count_include_pad = check_bool(count_include_pad, "count_include_pad")
    x_shape = check_x_shape(x_shape)
    out_shape = _out_shape(x_shape, k, s, p, (1, 1), ceil_mode, "x_shape")
    dy = check_dy(dy, out_shape)
    n, c, h, w = x_shape
    oh, ow = out_shape[2:]
    tables = _avg_tables(h, w, oh, ow, k, s, p, count_include_pad, dy.dtype)
    dx = np.empty(x_shape, dy.dtype)
    arrays = (dy.reshape(n * c, oh, ow), dx.reshape(n * c, h, w))
    spec = _specialise(k, s, p)
    if spec is not None and k == s and _direct(x_shape, (oh, ow), k, s, p):
        _k.avg_pool2d_backward_tiles(*arrays, dy.dtype.type(0), *spec[:2],
                                     dy.dtype.type(k[0] * k[1]), min(n * c, MAX_CHUNKS))
    elif spec is None:
        _k.avg_pool2d_backward_any(*arrays, s[0], s[1], p[0], p[1], *tables)
    else:
        _k.avg_pool2d_backward(*arrays, dy.dtype.type(0), *spec, tables[4],
                               *_scratch(x_shape, (oh, ow), k, s, p))
    return dx


def global_avg_pool2d(input):
    """Mean over the spatial axes: ``input`` ``(N, C, H, W)`` -> ``(N, C)`` (``(C, H, W)`` ->
    ``(C,)``)."""
    if is_unbatched(input):
        return global_avg_pool2d(input[None])[0]
    x = check_array(input, "x", ndim=4)
    n, c, h, w = x.shape
    y = np.empty((n, c), x.dtype)
    _k.global_avg_pool2d_forward(x.reshape(n * c, h * w), y.reshape(n * c), x.dtype.type(0),
                                 x.dtype.type(h * w))
    return y


def global_avg_pool2d_backward(dy, x_shape):
    """Gradient of :func:`global_avg_pool2d`: ``dy`` ``(N, C)`` -> ``dx`` ``x_shape``
    ``(N, C, H, W)`` with ``dx[n, c, :, :] = dy[n, c] / (H*W)`` (``(C,)`` -> ``(C, H, W)``)."""
    if is_unbatched_shape(x_shape):
        if isinstance(dy, np.ndarray) and dy.ndim != 1:
            raise ValueError(f"dy must be 1-d (C,) for an unbatched input, got shape {dy.shape}")
        return global_avg_pool2d_backward(dy[None] if isinstance(dy, np.ndarray) else dy,
                                          (1,) + tuple(x_shape))[0]
    x_shape = check_x_shape(x_shape)
    n, c, h, w = x_shape
    dy = check_dy(dy, (n, c))
    dx = np.empty(x_shape, dy.dtype)
    _k.global_avg_pool2d_backward(dy.reshape(n * c), dx.reshape(n * c, h * w), dy.dtype.type(h * w))
    return dx
