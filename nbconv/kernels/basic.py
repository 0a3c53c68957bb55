"""Loops of the basic layers: matrix products for Linear, ReLU, bias add and row sums.

All arrays are C-contiguous and of one float dtype (the wrappers in
:mod:`nbconv.functional.basic` guarantee it). Every kernel runs ``prange`` over disjoint blocks of
its output and sums in a fixed order, so results are bitwise identical across runs and thread
counts. No BLAS: NumPy's multi-threaded OpenBLAS fights Numba's worker threads for the two cores
(measured: a 64x8192x100 product went from 2 ms to 30-400 ms right after a Numba kernel).

- ``matmul_nt(a (M, K), b (N, K), c (M, N))``: ``c = a b^T`` (``c[i, j] = sum_k a[i, k] b[j, k]``), dot products of contiguous rows
  (the reduction innermost), in 2x4 register blocks.
- ``matmul_nn(a (M, K), b (K, N), c (M, N))``: ``c = a b`` (``c[i, j] = sum_k a[i, k] b[k, j]``), rows of ``c`` built as sums of
  scaled rows of ``b`` (contiguous, vectorised), 4 terms per pass, in column chunks.
"""
import numpy as np
from numba import prange

from .._config import FLAT  # elements per task of the elementwise kernels
from .._config import MATMUL_CHUNK as CHUNK  # columns of c per task in matmul_nn
from .._config import MATMUL_KC as KC  # reduction chunk of matmul_nt
from .._config import kernel, serial_kernel


@serial_kernel
def _dot(a, i, b, j, K):
    s = a.dtype.type(0)
    for k in range(K):
        s += a[i, k] * b[j, k]
    return s




@serial_kernel
def _nt_task(a, b, c, tb):
    """Columns ``4*tb .. 4*tb+3`` of ``c = a b^T`` (``c[i, j] = sum_k a[i, k] b[j, k]``) (see :func:`matmul_nt`)."""
    M, K = a.shape
    N = b.shape[0]
    M2 = M // 2
    j = tb * 4
    if j + 4 > N:   # the last 1-3 columns
        for i in range(M):
            for jj in range(j, N):
                c[i, jj] = _dot(a, i, b, jj, K)
        return
    for i in range(M):
        for jj in range(4):
            c[i, j + jj] = 0
    for k0 in range(0, K, KC):
        k1 = min(k0 + KC, K)
        for ip in range(M2):
            i = ip * 2
            z = a.dtype.type(0)
            s00 = z
            s01 = z
            s02 = z
            s03 = z
            s10 = z
            s11 = z
            s12 = z
            s13 = z
            for k in range(k0, k1):
                a0 = a[i, k]
                a1 = a[i + 1, k]
                b0 = b[j, k]
                b1 = b[j + 1, k]
                b2 = b[j + 2, k]
                b3 = b[j + 3, k]
                s00 += a0 * b0
                s01 += a0 * b1
                s02 += a0 * b2
                s03 += a0 * b3
                s10 += a1 * b0
                s11 += a1 * b1
                s12 += a1 * b2
                s13 += a1 * b3
            c[i, j] += s00
            c[i, j + 1] += s01
            c[i, j + 2] += s02
            c[i, j + 3] += s03
            c[i + 1, j] += s10
            c[i + 1, j + 1] += s11
            c[i + 1, j + 2] += s12
            c[i + 1, j + 3] += s13
        if M % 2:
            i = M - 1
            for jj in range(j, j + 4):
                s = a.dtype.type(0)
                for k in range(k0, k1):
                    s += a[i, k] * b[jj, k]
                c[i, jj] += s


@kernel
def matmul_nt(a, b, c):
    """``c[i, j] = sum_k a[i, k] * b[j, k]`` for ``a (M, K)``, ``b (N, K)``, ``c (M, N)``.

    One task per 4 rows of ``b`` (4 columns of ``c``); inside, the reduction runs in chunks of
    ``KC`` (so ``a``'s chunk panel stays in L2 and ``b``'s block in L1), each chunk's 2x4 block
    of dot products in 8 scalar accumulators, added to ``c`` in chunk order."""
    for tb in prange((b.shape[0] + 3) // 4):
        _nt_task(a, b, c, tb)


@serial_kernel
def matmul_nt_serial(a, b, c):
    """:func:`matmul_nt` on one thread (small products: no thread wake-ups)."""
    for tb in range((b.shape[0] + 3) // 4):
        _nt_task(a, b, c, tb)


@serial_kernel
def _axpy_rows(a, i, b, row, j0, j1, K):
    """``row[:] = sum_k a[i, k] * b[k, j0:j1]`` (4 terms per pass)."""
    row[:] = 0
    K4 = K // 4
    for q in range(K4):
        k = q * 4
        a0 = a[i, k]
        a1 = a[i, k + 1]
        a2 = a[i, k + 2]
        a3 = a[i, k + 3]
        b0 = b[k, j0:j1]
        b1 = b[k + 1, j0:j1]
        b2 = b[k + 2, j0:j1]
        b3 = b[k + 3, j0:j1]
        for j in range(j1 - j0):
            row[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
    for k in range(K4 * 4, K):
        ak = a[i, k]
        bk = b[k, j0:j1]
        for j in range(j1 - j0):
            row[j] += ak * bk[j]


@serial_kernel
def _nn_task(a, b, c, t):
    """Task ``t`` of :func:`matmul_nn`: rows ``i, i+1`` of ``c``, one column chunk."""
    M, K = a.shape
    N = b.shape[1]
    nchunks = (N + CHUNK - 1) // CHUNK
    K2 = K // 2
    i = (t // nchunks) * 2
    j0 = (t % nchunks) * CHUNK
    j1 = min(j0 + CHUNK, N)
    if i + 1 == M:
        _axpy_rows(a, i, b, c[i, j0:j1], j0, j1, K)
        return
    r0 = c[i, j0:j1]
    r1 = c[i + 1, j0:j1]
    r0[:] = 0
    r1[:] = 0
    for q in range(K2):
        k = q * 2
        a00 = a[i, k]
        a01 = a[i, k + 1]
        a10 = a[i + 1, k]
        a11 = a[i + 1, k + 1]
        b0 = b[k, j0:j1]
        b1 = b[k + 1, j0:j1]
        for j in range(j1 - j0):
            r0[j] += a00 * b0[j] + a01 * b1[j]
            r1[j] += a10 * b0[j] + a11 * b1[j]
    if K % 2:
        k = K - 1
        a0 = a[i, k]
        a1 = a[i + 1, k]
        bk = b[k, j0:j1]
        for j in range(j1 - j0):
            r0[j] += a0 * bk[j]
            r1[j] += a1 * bk[j]


@kernel
def matmul_nn(a, b, c):
    """``c[i, :] = sum_k a[i, k] * b[k, :]`` for ``a (M, K)``, ``b (K, N)``, ``c (M, N)``.

    One task per (2 rows of ``c``, ``CHUNK`` columns): both rows accumulate in L1 from the same
    loads of ``b``, 2 reduction terms per pass."""
    for t in prange((a.shape[0] + 1) // 2 * ((b.shape[1] + CHUNK - 1) // CHUNK)):
        _nn_task(a, b, c, t)


@serial_kernel
def matmul_nn_serial(a, b, c):
    """:func:`matmul_nn` on one thread."""
    for t in range((a.shape[0] + 1) // 2 * ((b.shape[1] + CHUNK - 1) // CHUNK)):
        _nn_task(a, b, c, t)


@serial_kernel
def add_bias(y, bias):
    """``y[i, :] += bias`` in place."""
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] += bias[j]


@serial_kernel
def sum_rows(a, out):
    """``out[j] = sum_i a[i, j]`` (in row order), in column chunks."""
    M, N = a.shape
    nchunks = (N + CHUNK - 1) // CHUNK
    for t in range(nchunks):
        j0 = t * CHUNK
        j1 = min(j0 + CHUNK, N)
        for j in range(j0, j1):
            out[j] = 0
        for i in range(M):
            for j in range(j0, j1):
                out[j] += a[i, j]




@serial_kernel
def _relu_fwd_range(x, y, lo, hi):
    zero = x.dtype.type(0)
    xs = x[lo:hi]
    ys = y[lo:hi]
    for i in range(hi - lo):
        v = xs[i]
        ys[i] = v if (v > zero or v != v) else zero


@serial_kernel
def _relu_bwd_range(dy, y, dx, lo, hi):
    """``dy`` is loaded unconditionally so the select vectorises (a conditional load made it
    branchy: 20x slower)."""
    zero = dy.dtype.type(0)
    ds = dy[lo:hi]
    ys = y[lo:hi]
    xs = dx[lo:hi]
    for i in range(hi - lo):
        d = ds[i]
        xs[i] = d if ys[i] > zero else zero


@kernel
def relu_forward(x, y):
    """``y = max(x, 0)`` over flat arrays (NaN stays NaN)."""
    n = x.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _relu_fwd_range(x, y, t * FLAT, min(t * FLAT + FLAT, n))


@kernel
def relu_backward(dy, y, dx):
    """``dx = dy`` where ``y > 0``, else 0 (flat arrays)."""
    n = dy.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _relu_bwd_range(dy, y, dx, t * FLAT, min(t * FLAT + FLAT, n))


@serial_kernel
def relu_forward_serial(x, y):
    _relu_fwd_range(x, y, 0, x.shape[0])


@serial_kernel
def relu_backward_serial(dy, y, dx):
    _relu_bwd_range(dy, y, dx, 0, dy.shape[0])
