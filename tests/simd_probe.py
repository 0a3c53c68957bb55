"""Kernels that exercise every op of :mod:`nbconv.kernels.simd`, for tests/test_simd.py.

They live in a module of their own (not in the test file) so that Numba can cache them on disk
like the package's kernels, which the cache tests rely on.
"""
from numba import njit

from nbconv.kernels import simd


@njit(cache=True)
def elementwise(w, a, b, c, out):
    """Per vector of a, b, c (whole vectors only): out rows 0..5 = fma(a, b, c), a + b, a - b,
    a * b, max(a, b), splat(a[0]) + zero; returns the lane count."""
    L = simd.lanes(w, a)
    n = a.shape[0]
    z = simd.zero(w, a)
    s = simd.splat(w, a[0])
    for i in range(0, n - L + 1, L):
        u = simd.load(w, a, i)
        v = simd.load(w, b, i)
        t = simd.load(w, c, i)
        simd.store(out, i, simd.fma(u, v, t))
        simd.store(out, n + i, simd.add(u, v))
        simd.store(out, 2 * n + i, simd.sub(u, v))
        simd.store(out, 3 * n + i, simd.mul(u, v))
        simd.store(out, 4 * n + i, simd.max(u, v))
        simd.store(out, 5 * n + i, simd.add(s, z))
    return L


@njit(cache=True)
def tail_copy(w, a, i, n, out, j):
    """out[j:j+n] = a[i:i+n] through load_tail/store_tail; returns the loaded vector's lanes
    summed (lanes n.. are zero)."""
    v = simd.load_tail(w, a, i, n)
    simd.store_tail(out, j, v, n)
    return simd.hsum(v)


@njit(cache=True)
def hsum_lanes(w, a, out):
    """Returns hsum(a[:L]) and writes lane(v, k) for every k into out[:L]."""
    v = simd.load(w, a, 0)
    for k in range(simd.lanes(w, a)):
        out[k] = simd.lane(v, k)
    return simd.hsum(v)


@njit(cache=True)
def width_lanes(w, a):
    """The float32 lanes of the width this code was compiled for."""
    return simd.lanes(w, a)


@njit(cache=True)
def gather4_scatter4(w, a, out):
    """out = a through load4 then store4 (whole blocks of 4L), and returns the first block's
    four vectors' lane sums (to check which elements each holds)."""
    L = simd.lanes(w, a)
    for i in range(0, a.shape[0] - 4 * L + 1, 4 * L):
        p, q, r, s = simd.load4(w, a, i)
        simd.store4(out, i, p, q, r, s)
    p, q, r, s = simd.load4(w, a, 0)
    return simd.hsum(p), simd.hsum(q), simd.hsum(r), simd.hsum(s)
