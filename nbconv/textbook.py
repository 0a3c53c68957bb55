"""Textbook twins of the conv, pool and norm ops: thin validating wrappers around the readable
loop nests in :mod:`nbconv.kernels.textbook`.

Each function has the name, arguments and return values of its fast twin in
:mod:`nbconv.functional` (so a test or a benchmark can swap ``nbconv.functional`` for
``nbconv.textbook``), with two simplifications:

- ``max_pool2d(..., return_indices=True)`` returns int64 indices ``ih * W + iw`` into each
  ``(H, W)`` plane, as PyTorch does (the fast op returns window offsets ``i*kw + j``), so
  ``max_pool2d_backward(dy, indices, x_shape)`` needs no window geometry;
- ``conv2d_backward`` always returns all three gradients and has no ``prepared`` input.

Shapes and output sizes are those of :mod:`nbconv.functional` (``conv_out_size`` in
:mod:`nbconv._checks`). The wrappers check arguments with :mod:`nbconv._checks`, make arrays
C-contiguous, allocate the outputs and call one kernel; all the arithmetic is in the kernels.
The textbook kernels are slow by design (no layouts, no blocking): use :mod:`nbconv.functional`
for work, this module to read how each op is computed and to measure what the fast kernels'
optimisations buy (the ``textbook`` column of ``benchmarks/report.py``).

Why a module of its own rather than ``nbconv/functional/textbook.py``: these are not the
package's ops (layers never call them); like :mod:`nbconv.reference` they are a yardstick that
sits beside the ops, and the module reads as ``textbook.conv2d`` next to ``functional.conv2d``
and ``reference.conv2d_naive``.
"""
import numpy as np

from ._checks import (check_array, check_bool, check_float, check_groups, check_int,
                      check_out_size, check_running_stats, check_x_shape, conv2d_padding,
                      conv_out_size, pool_args, pool_out_size, to_pair)
from .kernels import textbook as _k

__all__ = ["conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
           "avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward",
           "group_norm", "group_norm_backward", "batch_norm2d", "batch_norm2d_backward"]



def _same_shape(a, name, shape):
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


# ---- conv -----------------------------------------------------------------------------------

def _conv_args(x_shape, weight, stride, padding, dilation, groups):
    """Validated ``(stride, (pt, pb, pl, pr), dilation, groups, (OH, OW))``."""
    groups = check_int(groups, "groups", 1)
    stride = to_pair(stride, "stride", 1)
    dilation = to_pair(dilation, "dilation", 1)
    n_filters, Cg, KH, KW = weight.shape
    pads = conv2d_padding(padding, (KH, KW), stride, dilation)
    C = x_shape[1]
    if n_filters % groups or C % groups:
        raise ValueError(f"groups={groups} must divide in_channels ({C}) and out_channels "
                         f"({n_filters}): x has shape {tuple(x_shape)}, weight {weight.shape}")
    if Cg * groups != C:
        raise ValueError(f"weight of shape {weight.shape} with groups={groups} expects "
                         f"{Cg * groups} input channels, but x has shape {tuple(x_shape)}")
    oh = conv_out_size(x_shape[2], KH, stride[0], pads[0], pads[1], dilation[0])
    ow = conv_out_size(x_shape[3], KW, stride[1], pads[2], pads[3], dilation[1])
    check_out_size((oh, ow), ("x of shape", tuple(x_shape)), ("weight of shape", weight.shape),
                   ("stride", stride), ("padding (top, bottom, left, right)", pads),
                   ("dilation", dilation))
    return stride, pads, dilation, groups, (oh, ow)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Textbook twin of :func:`nbconv.functional.conv2d`: ``x`` ``(N, C, H, W)``, ``weight``
    ``(F, C/groups, KH, KW)``, ``bias`` ``(F,)`` -> ``(N, F, OH, OW)``, with
    ``OH = floor((H + pt + pb - dh*(KH - 1) - 1) / sh) + 1`` (``OW`` likewise)."""
    weight = check_array(weight, "weight", ndim=4)
    x = check_array(x, "x", ndim=4, dtype=weight.dtype)
    (sh, sw), (pt, _, pl, _), (dh, dw), _, (oh, ow) = _conv_args(
        x.shape, weight, stride, padding, dilation, groups)
    F = weight.shape[0]
    if bias is None:
        bias = np.zeros(F, weight.dtype)
    bias = _same_shape(check_array(bias, "bias", ndim=1, dtype=weight.dtype), "bias", (F,))
    y = np.empty((x.shape[0], F, oh, ow), x.dtype)
    _k.conv2d_forward(x, weight, bias, y, sh, sw, pt, pl, dh, dw)
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of :func:`conv2d`: ``(dx (N, C, H, W), dweight (F, C/groups, KH, KW),
    dbias (F,))`` for ``dy`` ``(N, F, OH, OW)``."""
    weight = check_array(weight, "weight", ndim=4)
    x = check_array(x, "x", ndim=4, dtype=weight.dtype)
    (sh, sw), (pt, _, pl, _), (dh, dw), _, (oh, ow) = _conv_args(
        x.shape, weight, stride, padding, dilation, groups)
    dy = _same_shape(check_array(dy, "dy", ndim=4, dtype=weight.dtype), "dy",
                     (x.shape[0], weight.shape[0], oh, ow))
    dx = np.empty_like(x)
    dweight = np.empty_like(weight)
    dbias = np.empty(weight.shape[0], weight.dtype)
    _k.conv2d_backward_input(dy, weight, dx, sh, sw, pt, pl, dh, dw)
    _k.conv2d_backward_weight(dy, x, dweight, dbias, sh, sw, pt, pl, dh, dw)
    return dx, dweight, dbias


# ---- pool -----------------------------------------------------------------------------------


def _pool_out(x_shape, k, s, p, d, ceil_mode, name="x"):
    oh = pool_out_size(x_shape[2], k[0], s[0], p[0], p[0], d[0], ceil_mode)
    ow = pool_out_size(x_shape[3], k[1], s[1], p[1], p[1], d[1], ceil_mode)
    check_out_size((oh, ow), (f"{name} of shape", tuple(x_shape)), ("kernel_size", k),
                   ("stride", s), ("padding", p), ("dilation", d), ("ceil_mode", ceil_mode))
    return tuple(x_shape[:2]) + (oh, ow)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Textbook twin of :func:`nbconv.functional.max_pool2d`: ``(N, C, H, W) -> (N, C, OH,
    OW)``; with ``return_indices`` also int64 ``indices`` ``ih * W + iw`` (PyTorch's form)."""
    k, s, p, d = pool_args(kernel_size, stride, padding, dilation)
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    return_indices = check_bool(return_indices, "return_indices")
    x = check_array(x, "x", ndim=4)
    out = _pool_out(x.shape, k, s, p, d, ceil_mode)
    y = np.empty(out, x.dtype)
    indices = np.empty(out, np.int64)
    _k.max_pool2d_forward(x, y, indices, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1])
    return (y, indices) if return_indices else y


def max_pool2d_backward(dy, indices, x_shape):
    """Gradient of :func:`max_pool2d`: ``dx`` ``x_shape`` from ``dy`` and the ``indices``
    ``(N, C, OH, OW)`` that ``max_pool2d(..., return_indices=True)`` returned."""
    x_shape = check_x_shape(x_shape, unbatched=False)
    dy = check_array(dy, "dy", ndim=4)
    if dy.shape[:2] != x_shape[:2]:
        raise ValueError(f"dy of shape {dy.shape} does not match x_shape {x_shape} in (N, C)")
    if not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer numpy.ndarray, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    _same_shape(indices, "indices", dy.shape)
    plane = x_shape[2] * x_shape[3]
    if indices.min() < 0 or indices.max() >= plane:
        raise ValueError(f"indices must lie in [0, {plane}) (H*W of x_shape {x_shape}), got "
                         f"values in [{indices.min()}, {indices.max()}]")
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    dx = np.zeros(x_shape, dy.dtype)
    _k.max_pool2d_backward(dy, indices, dx)
    return dx


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Textbook twin of :func:`nbconv.functional.avg_pool2d`: ``(N, C, H, W) -> (N, C, OH,
    OW)``, each window's sum divided as PyTorch does (see
    :func:`nbconv.kernels.textbook.avg_pool2d_forward`)."""
    k, s, p, _ = pool_args(kernel_size, stride, padding, 1)
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    count_include_pad = check_bool(count_include_pad, "count_include_pad")
    x = check_array(x, "x", ndim=4)
    y = np.empty(_pool_out(x.shape, k, s, p, (1, 1), ceil_mode), x.dtype)
    _k.avg_pool2d_forward(x, y, k[0], k[1], s[0], s[1], p[0], p[1], count_include_pad)
    return y


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    """Gradient of :func:`avg_pool2d`: ``dx`` ``x_shape`` from ``dy`` ``(N, C, OH, OW)``."""
    k, s, p, _ = pool_args(kernel_size, stride, padding, 1)
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    count_include_pad = check_bool(count_include_pad, "count_include_pad")
    x_shape = check_x_shape(x_shape, unbatched=False)
    out = _pool_out(x_shape, k, s, p, (1, 1), ceil_mode, "x_shape")
    dy = _same_shape(check_array(dy, "dy", ndim=4), "dy", out)
    dx = np.zeros(x_shape, dy.dtype)
    _k.avg_pool2d_backward(dy, dx, k[0], k[1], s[0], s[1], p[0], p[1], count_include_pad)
    return dx


def global_avg_pool2d(x):
    """Mean over the spatial axes: ``(N, C, H, W) -> (N, C)``."""
    x = check_array(x, "x", ndim=4)
    y = np.empty(x.shape[:2], x.dtype)
    _k.global_avg_pool2d_forward(x, y)
    return y


def global_avg_pool2d_backward(dy, x_shape):
    """Gradient of :func:`global_avg_pool2d`: ``dy`` ``(N, C)`` -> ``dx`` ``x_shape``."""
    x_shape = check_x_shape(x_shape, unbatched=False)
    dy = _same_shape(check_array(dy, "dy", ndim=2), "dy", x_shape[:2])
    dx = np.empty(x_shape, dy.dtype)
    _k.global_avg_pool2d_backward(dy, dx)
    return dx


# ---- norm -----------------------------------------------------------------------------------

def _affine(a, name, C, dtype, default):
    if a is None:
        return np.full(C, default, dtype)
    return _same_shape(check_array(a, name, ndim=1, dtype=dtype), name, (C,))



def _stats(a, name, shape):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    return _same_shape(np.ascontiguousarray(a, dtype=np.float64), name, shape)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, return_stats=False):
    """Textbook twin of :func:`nbconv.functional.group_norm`: ``y`` ``(N, C, H, W)``, with
    ``return_stats`` also float64 ``mean``, ``rstd`` ``(N, G)``."""
    x = check_array(x, "x", ndim=4)
    C = x.shape[1]
    G = check_groups(num_groups, C)
    w = _affine(weight, "weight", C, x.dtype, 1)
    b = _affine(bias, "bias", C, x.dtype, 0)
    eps = check_float(eps, "eps", 0)
    y = np.empty_like(x)
    mean = np.empty((x.shape[0], G))
    rstd = np.empty((x.shape[0], G))
    _k.group_norm_forward(x, w, b, eps, G, y, mean, rstd)
    return (y, mean, rstd) if return_stats else y


def group_norm_backward(dy, x, mean, rstd, num_groups, weight=None):
    """Gradients of :func:`group_norm`: ``(dx (N, C, H, W), dweight (C,), dbias (C,))``."""
    x = check_array(x, "x", ndim=4)
    dy = _same_shape(check_array(dy, "dy", ndim=4, dtype=x.dtype), "dy", x.shape)
    C = x.shape[1]
    G = check_groups(num_groups, C)
    w = _affine(weight, "weight", C, x.dtype, 1)
    mean = _stats(mean, "mean", (x.shape[0], G))
    rstd = _stats(rstd, "rstd", (x.shape[0], G))
    dx = np.empty_like(x)
    dw = np.empty(C, x.dtype)
    db = np.empty(C, x.dtype)
    _k.group_norm_backward(dy, x, mean, rstd, w, G, dx, dw, db)
    return dx, dw, db


def batch_norm2d(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5, return_stats=False):
    """Textbook twin of :func:`nbconv.functional.batch_norm2d` (the same arguments: batch
    statistics when ``training``, then the running ones updated in place with the unbiased
    variance; else the running statistics)."""
    x = check_array(x, "x", ndim=4)
    N, C, H, W = x.shape
    training = check_bool(training, "training")
    w = _affine(weight, "weight", C, x.dtype, 1)
    b = _affine(bias, "bias", C, x.dtype, 0)
    eps = check_float(eps, "eps", 0)
    check_running_stats(running_mean, running_var, C, x.dtype, training)
    y = np.empty_like(x)
    L = N * H * W
    if training:
        momentum = check_float(momentum, "momentum", 0, 1)
        if L == 1:
            raise ValueError(f"expected more than 1 value per channel when training, got x of "
                             f"shape {x.shape}")
        mean, rstd, var = np.empty(C), np.empty(C), np.empty(C)
        _k.batch_norm2d_forward(x, w, b, eps, y, mean, rstd, var)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * (var * (L / (L - 1)))
    else:
        if running_mean is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean = running_mean.astype(np.float64)
        rstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        _k.batch_norm2d_apply(x, mean, rstd, w, b, y)
    return (y, mean, rstd) if return_stats else y


def batch_norm2d_backward(dy, x, mean, rstd, weight=None, training=True):
    """Gradients of :func:`batch_norm2d`: ``(dx (N, C, H, W), dweight (C,), dbias (C,))`` from
    the ``(C,)`` statistics it returned; ``training``: they were the batch's own."""
    x = check_array(x, "x", ndim=4)
    dy = _same_shape(check_array(dy, "dy", ndim=4, dtype=x.dtype), "dy", x.shape)
    C = x.shape[1]
    w = _affine(weight, "weight", C, x.dtype, 1)
    mean = _stats(mean, "mean", (C,))
    rstd = _stats(rstd, "rstd", (C,))
    training = check_bool(training, "training")
    dx = np.empty_like(x)
    dw = np.empty(C, x.dtype)
    db = np.empty(C, x.dtype)
    _k.batch_norm2d_backward(dy, x, mean, rstd, w, training, dx, dw, db)
    return dx, dw, db
