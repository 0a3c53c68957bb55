"""norm ops: validating wrappers around nbconv.kernels.norm.

Shapes: ``x``, ``y``, ``dy``, ``dx`` are ``(N, C, H, W)``; ``weight``, ``bias`` and their
gradients are ``(C,)``. Statistics returned for backward are float64 whatever the input dtype:
``(N, G)`` per (sample, group) for GroupNorm, ``(C,)`` per channel for BatchNorm2d.

GroupNorm splits the C channels into G contiguous groups of ``Cg = C // G`` and normalises each
(sample, group) over its ``Cg * H * W`` values (G = 1: layer norm over (C, H, W); G = C: instance
norm)::

    y[n, c] = (x[n, c] - mean[n, g]) / sqrt(var[n, g] + eps) * weight[c] + bias[c],  g = c // Cg

BatchNorm2d normalises each channel over its ``N * H * W`` values with the batch statistics
(``training``) or the running ones. Variances are biased (divide by the count).
"""
import numpy as np

from .._checks import (check_array, check_bool, check_dy, check_float, check_groups,
                       check_running_stats)
from ..kernels import norm as _k

__all__ = ["group_norm", "group_norm_backward", "batch_norm2d", "batch_norm2d_backward"]


def _check_x(x, name="x"):
    return check_array(x, name, ndim=4)


def _check_affine(a, name, C, dtype, default):
    """``weight``/``bias``: ``None`` (``default`` everywhere) or a ``(C,)`` array of ``dtype``."""
    if a is None:
        return np.full(C, default, dtype)
    a = check_array(a, name, ndim=1, dtype=dtype)
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) (the channels of x), got {a.shape}")
    return a


def _check_stats(a, name, shape):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float64)


# ---- GroupNorm -------------------------------------------------------------------------------

def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, return_stats=False):
    """Group normalisation of ``x`` ``(N, C, H, W)`` -> ``y`` ``(N, C, H, W)``.

    ``weight``/``bias`` ``(C,)`` default to 1 / 0. With ``return_stats`` returns
    ``(y, mean, rstd)``, ``mean`` and ``rstd = 1 / sqrt(var + eps)`` float64 ``(N, G)``,
    which :func:`group_norm_backward` needs. (``x`` is ``input``, PyTorch's name.)"""
    x = _check_x(input)
    N, C, H, W = x.shape
    G = check_groups(num_groups, C)
    w = _check_affine(weight, "weight", C, x.dtype, 1)
    b = _check_affine(bias, "bias", C, x.dtype, 0)
    eps = check_float(eps, "eps", 0)
    y = np.empty_like(x)
    mean = np.empty(N * G)
    rstd = np.empty(N * G)
    shape3 = (N * G, C // G, H * W)
    _k.group_norm_forward(x.reshape(shape3), w, b, eps, y.reshape(shape3), mean, rstd)
    if return_stats:
        return y, mean.reshape(N, G), rstd.reshape(N, G)
    return y


def group_norm_backward(dy, x, mean, rstd, num_groups, weight=None, need_dx=True):
    """Gradients of :func:`group_norm`: ``(dx, dweight, dbias)`` with ``dx`` ``(N, C, H, W)``
    (``None`` unless ``need_dx``) and ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)`` ``(C,)``
    (over N, H, W; computed also when ``weight`` is ``None``, i.e. 1).

    ``mean``, ``rstd``: ``(N, G)`` from ``group_norm(..., return_stats=True)``."""
    x = _check_x(x)
    dy = check_dy(dy, x.shape, x.dtype, "the shape of x")
    N, C, H, W = x.shape
    G = check_groups(num_groups, C)
    w = _check_affine(weight, "weight", C, x.dtype, 1)
    mean = _check_stats(mean, "mean", (N, G))
    rstd = _check_stats(rstd, "rstd", (N, G))
    need_dx = check_bool(need_dx, "need_dx")
    shape3 = (N * G, C // G, H * W)
    dx = np.empty_like(x) if need_dx else np.empty((1, 1, 1, 1), x.dtype)  # unused stand-in
    dw = np.empty(C, x.dtype)
    db = np.empty(C, x.dtype)
    sdy = np.empty((N * G, C // G))
    sdyx = np.empty((N * G, C // G))
    dx3 = dx.reshape(shape3) if need_dx else dx.reshape(1, 1, 1)
    _k.group_norm_backward(dy.reshape(shape3), x.reshape(shape3), mean.reshape(-1),
                           rstd.reshape(-1), w, need_dx, dx3, sdy, sdyx, dw, db)
    return (dx if need_dx else None), dw, db


# ---- BatchNorm2d -----------------------------------------------------------------------------

def batch_norm2d(input, running_mean=None, running_var=None, weight=None, bias=None,
                 training=False, momentum=0.1, eps=1e-5, return_stats=False):
    """Batch normalisation of ``x`` ``(N, C, H, W)`` -> ``y`` ``(N, C, H, W)``, like
    ``torch.nn.functional.batch_norm``.

    - ``training=True``: normalise with the batch mean and biased variance over (N, H, W); if
      ``running_mean``/``running_var`` ``(C,)`` are given they are **updated in place**:
      ``running = (1 - momentum) * running + momentum * batch`` with the unbiased variance
      (``var * L / (L - 1)``, ``L = N*H*W``). ``L == 1`` raises ``ValueError``.
    - ``training=False``: normalise with ``running_mean``/``running_var`` (required).

    With ``return_stats`` returns ``(y, mean, rstd)``, the float64 ``(C,)`` statistics used
    (``rstd = 1 / sqrt(var + eps)``), which :func:`batch_norm2d_backward` needs. (``x`` is
    ``input``, PyTorch's name.)"""
    x = _check_x(input)
    N, C, H, W = x.shape
    training = check_bool(training, "training")
    w = _check_affine(weight, "weight", C, x.dtype, 1)
    b = _check_affine(bias, "bias", C, x.dtype, 0)
    eps = check_float(eps, "eps", 0)
    check_running_stats(running_mean, running_var, C, x.dtype, training)
    L = N * H * W
    y = np.empty_like(x)
    x3, y3 = x.reshape(N, C, H * W), y.reshape(N, C, H * W)
    if training:
        momentum = check_float(momentum, "momentum", 0, 1)
        if L == 1:
            raise ValueError(f"expected more than 1 value per channel when training, got x of "
                             f"shape {x.shape}")
        mean, rstd, var = np.empty(C), np.empty(C), np.empty(C)
        _k.batch_norm_train_forward(x3, w, b, eps, y3, mean, rstd, var)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * (var * (L / (L - 1)))
    else:
        if running_mean is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean = running_mean.astype(np.float64)
        rstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        _k.batch_norm_apply(x3, mean, rstd, w, b, y3)
    if return_stats:
        return y, mean, rstd
    return y


def batch_norm2d_backward(dy, x, mean, rstd, weight=None, training=True, need_dx=True):
    """Gradients of :func:`batch_norm2d`: ``(dx, dweight, dbias)``, ``dx`` ``(N, C, H, W)``
    (``None`` unless ``need_dx``), ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)`` ``(C,)``.

    ``mean``, ``rstd``: the ``(C,)`` statistics :func:`batch_norm2d` returned. ``training``:
    they were the batch's own (gradient flows through them), else fixed running statistics
    (``dx = dy * weight * rstd``)."""
    x = _check_x(x)
    dy = check_dy(dy, x.shape, x.dtype, "the shape of x")
    N, C, H, W = x.shape
    w = _check_affine(weight, "weight", C, x.dtype, 1)
    mean = _check_stats(mean, "mean", (C,))
    rstd = _check_stats(rstd, "rstd", (C,))
    training = check_bool(training, "training")
    need_dx = check_bool(need_dx, "need_dx")
    shape3 = (N, C, H * W)
    dx = np.empty_like(x) if need_dx else np.empty((1, C, 1, 1), x.dtype)
    dw = np.empty(C, x.dtype)
    db = np.empty(C, x.dtype)
    _k.batch_norm_backward(dy.reshape(shape3), x.reshape(shape3), mean, rstd, w, training,
                           need_dx, dx.reshape(shape3 if need_dx else (1, C, 1)), dw, db)
    return (dx if need_dx else None), dw, db
