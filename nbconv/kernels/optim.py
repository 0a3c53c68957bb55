"""Fused optimizer updates: one pass over a parameter and its buffers instead of 8-12 NumPy
passes, for :mod:`nbconv.optim`.

Every kernel takes flat C-contiguous arrays of one dtype (the parameter ``p``, its gradient
``g`` and state buffers; an unused buffer is a 0-length array) and scalar hyper-parameters
already cast to that dtype, and updates ``p`` and the buffers in place, elementwise. Each
element goes through exactly the operations, in the same order and rounding, of the NumPy code
it replaces (see :mod:`nbconv.optim` for the rules): these kernels are compiled WITHOUT
fastmath, so LLVM neither contracts ``a * b + c`` into an FMA nor re-associates, and the
results are bitwise identical to the NumPy path (tested). They are built with
:mod:`nbconv._config`'s ``kernel(exact=True)`` / ``serial_kernel(exact=True)`` like every other
kernel, so the parallel ones run under the launch lock and the fork guard and
:mod:`nbconv.warmup` compiles them. Elementwise work needs no reduction, so results do not
depend on the thread count.

``*_range(..., lo, hi)`` updates elements ``lo:hi``; the public kernels run it over the whole
array on the calling thread (``serial``) or in ``FLAT``-element tasks under ``prange``.
"""
import numpy as np
from numba import prange

from .._config import FLAT, kernel, serial_kernel

_serial = serial_kernel(exact=True)  # no fastmath: bitwise NumPy's results
_parallel = kernel(exact=True)


@_serial
def _nanmax(a, b):
    """``np.maximum(a, b)`` for scalars: NaN if either is NaN."""
    if a != a or a > b:
        return a
    return b


@_serial
def _adam_range(p, g, m, v, vmax, c, flags, lo, hi):
    """Adam/AdamW on ``lo:hi``. ``c = (decay, wd, 1-b1, b2, 1-b2, 1/step?, bc2, eps, step)``
    (see :func:`adam`); ``flags = (decoupled, has_wd, amsgrad)``."""
    decay = c[0]
    wd = c[1]
    one_b1 = c[2]
    b2 = c[3]
    one_b2 = c[4]
    bc2 = c[5]
    eps = c[6]
    step = c[7]
    decoupled = flags[0]
    has_wd = flags[1]
    amsgrad = flags[2]
    for i in range(lo, hi):
        pi = p[i]
        gi = g[i]
        if has_wd:
            if decoupled:
                pi = pi * decay
            else:
                gi = gi + wd * pi
        mi = m[i] + (gi - m[i]) * one_b1
        m[i] = mi
        vi = v[i] * b2 + gi * one_b2 * gi
        v[i] = vi
        if amsgrad:
            vi = _nanmax(vmax[i], vi)
            vmax[i] = vi
        t = np.sqrt(vi) / bc2 + eps
        p[i] = pi - mi / t * step


@_serial
def adam_serial(p, g, m, v, vmax, c, flags):
    """Adam/AdamW update of flat ``p`` with gradient ``g`` and buffers ``m``, ``v`` (``vmax``
    for amsgrad, else 0-length), in place. ``c`` (array of p's dtype) =
    ``[1 - lr*wd, wd, 1 - b1, b2, 1 - b2, sqrt(1 - b2**t), eps, lr / (1 - b1**t)]``;
    ``flags`` (int64) = ``[decoupled, weight_decay != 0, amsgrad]``."""
    _adam_range(p, g, m, v, vmax, c, flags, 0, p.shape[0])


@_parallel
def adam(p, g, m, v, vmax, c, flags):
    """:func:`adam_serial` in ``FLAT``-element tasks on the thread pool."""
    n = p.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _adam_range(p, g, m, v, vmax, c, flags, t * FLAT, min(t * FLAT + FLAT, n))


@_serial
def _sgd_range(p, g, buf, c, flags, lo, hi):
    lr = c[0]
    wd = c[1]
    mom = c[2]
    damp1 = c[3]
    has_wd = flags[0]
    use_mom = flags[1]
    first = flags[2]
    nesterov = flags[3]
    for i in range(lo, hi):
        gi = g[i]
        if has_wd:
            gi = gi + wd * p[i]
        if use_mom:
            if first:
                b = gi
            else:
                b = buf[i] * mom + gi * damp1
            buf[i] = b
            if nesterov:
                gi = b * mom + gi
            else:
                gi = b
        p[i] = p[i] - gi * lr


@_serial
def sgd_serial(p, g, buf, c, flags):
    """SGD update in place. ``c = [lr, wd, momentum, 1 - dampening]``; ``flags = [wd != 0,
    momentum != 0, first step of the buffer (buf = g), nesterov]``."""
    _sgd_range(p, g, buf, c, flags, 0, p.shape[0])


@_parallel
def sgd(p, g, buf, c, flags):
    n = p.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _sgd_range(p, g, buf, c, flags, t * FLAT, min(t * FLAT + FLAT, n))


@_serial
def _rmsprop_range(p, g, v, a, buf, c, flags, lo, hi):
    lr = c[0]
    wd = c[1]
    alpha = c[2]
    one_alpha = c[3]
    eps = c[4]
    mom = c[5]
    has_wd = flags[0]
    centered = flags[1]
    use_mom = flags[2]
    for i in range(lo, hi):
        gi = g[i]
        if has_wd:
            gi = gi + wd * p[i]
        vi = v[i] * alpha + gi * one_alpha * gi
        v[i] = vi
        if centered:
            ai = a[i] + (gi - a[i]) * one_alpha
            a[i] = ai
            t = np.sqrt(vi - ai * ai)
        else:
            t = np.sqrt(vi)
        t = gi / (t + eps)
        if use_mom:
            b = buf[i] * mom + t
            buf[i] = b
            t = b * lr
        else:
            t = t * lr
        p[i] = p[i] - t


@_serial
def rmsprop_serial(p, g, v, a, buf, c, flags):
    """RMSprop update in place. ``c = [lr, wd, alpha, 1 - alpha, eps, momentum]``; ``flags =
    [wd != 0, centered, momentum > 0]``."""
    _rmsprop_range(p, g, v, a, buf, c, flags, 0, p.shape[0])


@_parallel
def rmsprop(p, g, v, a, buf, c, flags):
    n = p.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _rmsprop_range(p, g, v, a, buf, c, flags, t * FLAT, min(t * FLAT + FLAT, n))
