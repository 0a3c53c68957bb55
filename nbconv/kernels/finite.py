"""One pass over an array to tell whether every value is finite (no NaN, no inf).

``all_finite(a (n,))`` multiplies every value by zero and sums the products in fixed blocks:
``v * 0`` is 0 for a finite ``v`` and NaN for NaN or +-inf, so the sum is 0 exactly when all
values are finite (no overflow, unlike summing the values). No temporary array (unlike
``np.isfinite(a).all()``, which writes a boolean array as large as ``a``); ``prange`` over
blocks. ``nbconv._config.FASTMATH`` lacks ``nnan``/``ninf``, so LLVM may not fold ``v * 0``.
"""
import numpy as np
from numba import prange

from .._config import FLAT, kernel


@kernel
def all_finite(a):
    n = a.size
    nb = (n + FLAT - 1) // FLAT
    bad = np.zeros(nb, np.uint8)
    zero = a.dtype.type(0)
    for b in prange(nb):
        s = zero
        for i in range(b * FLAT, min(n, (b + 1) * FLAT)):
            s += a[i] * zero
        if s != zero:  # NaN compares unequal to everything
            bad[b] = 1
    return bad.sum() == 0
