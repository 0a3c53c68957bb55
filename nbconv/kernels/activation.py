"""Loops of the elementwise activations: LeakyReLU, GELU (erf and tanh forms), SiLU, Sigmoid,
Tanh, forward and backward, over flat C-contiguous arrays of one float dtype.

One forward and one backward loop serve every activation: ``op`` (one of the codes below) picks
the formula outside the element loop, so each loop is a plain pass over its data. The formulas
are PyTorch's CPU ones, term for term, so NaN, inf and underflow behave as there (e.g.
``silu(-inf)`` and ``gelu(-inf)`` are NaN, ``sigmoid(-inf)`` is 0). The backward takes ``s``,
the saved array: the input ``x`` for LeakyReLU, GELU and SiLU, the output ``y`` for Sigmoid and
Tanh (``dx = dy * y * (1 - y)``, ``dy * (1 - y * y)``). The parallel kernels run ``FLAT``-element
tasks, disjoint slices of the output; the ``_serial`` ones one pass (small arrays).

Compiled without fastmath (below), so each element's result depends on its inputs only: the
same bits from either kernel, for any thread count, wherever the arrays lie in memory.
"""
import math

from numba import prange

from .._config import FLAT  # elements per task of the elementwise kernels
from .._config import kernel, serial_kernel

# Without fastmath (``exact=True``): LLVM vectorises these loops and keeps a scalar copy for the
# last elements and for when a runtime check finds an output starting within a vector's bytes
# behind an input's end (a fresh allocation right behind another one on the heap, 16 bytes
# apart). With fastmath the two copies were simplified differently (sigmoid's and GELU-tanh's
# backward: the last bit of up to a third of the elements), so a result changed with the heap's
# state. Without it both copies do the same IEEE operations in the written order.
#
# The range loops index slices from 0: with ``x[i]`` for i in ``range(lo, hi)`` LLVM cannot
# rule out a negative (wrap-around) index, so every access selected between two addresses and
# the alias checks compared an output against the END of an input (firing for disjoint arrays
# that merely lie back to back). From 0 they fire only for arrays that overlap, and the parallel
# kernels run as fast as the serial ones. AMD EPYC Zen 3, one thread, 1M float32, best of 60,
# ms, fastmath and range(lo, hi) -> this: parallel LeakyReLU forward 0.87 -> 0.17, Sigmoid
# backward 1.11 -> 0.25, SiLU backward 5.6 -> 3.5, GELU-tanh backward 27.6 -> 21.4; serial
# kernels 0-4% slower (no FMA contraction; the libm calls of exp/erf/tanh dominate, the rest is
# memory-bound).
_serial = serial_kernel(exact=True)
_parallel = kernel(exact=True)

LEAKY_RELU, GELU, GELU_TANH, SILU, SIGMOID, TANH = range(6)

SQRT1_2 = 0.7071067811865476        # 1 / sqrt(2)
INV_SQRT_2PI = 0.3989422804014327   # 1 / sqrt(2 pi): the normal density's factor
SQRT_2_PI = 0.7978845608028654      # sqrt(2 / pi): GELU's tanh form
KAPPA = 0.044715                    # GELU's tanh form


@_serial
def _forward_range(x, y, op, alpha, lo, hi):
    """``y[lo:hi] = f(x[lo:hi])`` for activation ``op`` (``alpha``: LeakyReLU's slope)."""
    x = x[lo:hi]
    y = y[lo:hi]
    n = hi - lo
    t = x.dtype.type
    zero, half, one = t(0), t(0.5), t(1)
    if op == LEAKY_RELU:
        a = t(alpha)
        for i in range(n):
            v = x[i]
            y[i] = v if v > zero else v * a
    elif op == GELU:
        c = t(SQRT1_2)
        for i in range(n):
            v = x[i]
            y[i] = v * half * (one + math.erf(v * c))
    elif op == GELU_TANH:
        b, k = t(SQRT_2_PI), t(KAPPA)
        for i in range(n):
            v = x[i]
            y[i] = half * v * (one + math.tanh(b * (v + k * (v * v * v))))
    elif op == SILU:
        for i in range(n):
            v = x[i]
            y[i] = v / (one + math.exp(-v))
    elif op == SIGMOID:
        for i in range(n):
            y[i] = one / (one + math.exp(-x[i]))
    else:   # TANH
        for i in range(n):
            y[i] = math.tanh(x[i])


@_serial
def _backward_range(dy, s, dx, op, alpha, lo, hi):
    """``dx[lo:hi] = dy * f'(...)`` for activation ``op`` from the saved ``s`` (see the module
    doc for which array it is)."""
    dy = dy[lo:hi]
    s = s[lo:hi]
    dx = dx[lo:hi]
    n = hi - lo
    t = dy.dtype.type
    zero, half, one = t(0), t(0.5), t(1)
    if op == LEAKY_RELU:
        a = t(alpha)
        for i in range(n):
            d = dy[i]
            dx[i] = d if s[i] > zero else d * a
    elif op == GELU:
        c, p = t(SQRT1_2), t(INV_SQRT_2PI)
        for i in range(n):
            v = s[i]
            cdf = half * (one + math.erf(v * c))
            pdf = math.exp(-half * v * v) * p
            dx[i] = dy[i] * (cdf + v * pdf)
    elif op == GELU_TANH:
        b, k, k3 = t(SQRT_2_PI), t(KAPPA), t(3 * KAPPA)
        for i in range(n):
            v = s[i]
            v2 = v * v
            th = math.tanh(b * (v + k * (v2 * v)))
            left = half * v
            right = one + th
            dleft = half * right
            dright = left * (one - th * th) * (b * (one + k3 * v2))
            dx[i] = dy[i] * (dleft + dright)
    elif op == SILU:
        for i in range(n):
            v = s[i]
            sg = one / (one + math.exp(-v))
            dx[i] = dy[i] * sg * (one + v * (one - sg))
    elif op == SIGMOID:
        for i in range(n):
            v = s[i]
            dx[i] = dy[i] * (one - v) * v
    else:   # TANH
        for i in range(n):
            v = s[i]
            dx[i] = dy[i] * (one - v * v)


@_parallel
def forward(x, y, op, alpha):
    """``y = f(x)`` (flat arrays) in ``FLAT``-element tasks."""
    n = x.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _forward_range(x, y, op, alpha, t * FLAT, min(t * FLAT + FLAT, n))


@_parallel
def backward(dy, s, dx, op, alpha):
    """``dx = dy * f'`` (flat arrays) in ``FLAT``-element tasks."""
    n = dy.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _backward_range(dy, s, dx, op, alpha, t * FLAT, min(t * FLAT + FLAT, n))


@_serial
def forward_serial(x, y, op, alpha):
    _forward_range(x, y, op, alpha, 0, x.shape[0])


@_serial
def backward_serial(dy, s, dx, op, alpha):
    _backward_range(dy, s, dx, op, alpha, 0, dy.shape[0])
