"""Loops of the basic layers: matrix products for Linear, ReLU, bias add, row sums, dropout
and the softmax cross-entropy loss.

All arrays are C-contiguous and of one float dtype (the wrappers in
:mod:`nbconv.functional.basic` guarantee it). Every kernel runs ``prange`` over disjoint blocks of
its output and sums in a fixed order, so results are bitwise identical across runs and thread
counts. No BLAS: NumPy's multi-threaded OpenBLAS fights Numba's worker threads for the two cores
(measured: a 64x8192x100 product went from 2 ms to 30-400 ms right after a Numba kernel).

- ``matmul_nt(a (M, K), b (N, K), c (M, N))``: ``c = a b^T`` (``c[i, j] = sum_k a[i, k]
  b[j, k]``), dot products of contiguous rows (the reduction innermost, vectorised along k), in
  4x4 register blocks: 16 vector accumulators, 8 loads per 16 FMAs.
- ``matmul_nn(a (M, K), b (K, N), c (M, N))``: ``c = a b`` (``c[i, j] = sum_k a[i, k]
  b[k, j]``), 4 rows of ``c`` built in L1 as sums of scaled rows of ``b`` (contiguous,
  vectorised along j), 8 terms per pass, in column chunks.

Measured on Zen 5 (AVX-512), one thread, float32, 64x8192x100 (the three-layer net's Linear):
forward (nt) 0.77-0.93 ms = 113-136 GFLOP/s (NumPy's OpenBLAS: 122), dx (nn, K=100) 74 GFLOP/s,
dweight (nn, K=64) 89 GFLOP/s. The earlier 2x4 nt kernel indexed ``a[i, k]`` on the 2-d arrays
and ran at 2 GFLOP/s there; 1-d row views vectorise.
"""
import numpy as np
from numba import prange

from .._config import FLAT  # elements per task of the elementwise kernels
from .._config import MATMUL_CHUNK as CHUNK  # columns of c per task in matmul_nn
from .._config import MATMUL_KC as KC  # reduction chunk of matmul_nt
from .._config import kernel, serial_kernel


@serial_kernel
def _nt_block44(a, b, c, i, j, k0, k1):
    """``c[i:i+4, j:j+4] += a[i:i+4, k0:k1] b[j:j+4, k0:k1]^T``: 16 dot products of contiguous
    rows in 16 scalar accumulators (vectorised along k: 16 vector accumulators, 8 loads per
    16 FMAs)."""
    a0 = a[i, k0:k1]; a1 = a[i + 1, k0:k1]; a2 = a[i + 2, k0:k1]; a3 = a[i + 3, k0:k1]
    b0 = b[j, k0:k1]; b1 = b[j + 1, k0:k1]; b2 = b[j + 2, k0:k1]; b3 = b[j + 3, k0:k1]
    z = a.dtype.type(0)
    s00 = z; s01 = z; s02 = z; s03 = z; s10 = z; s11 = z; s12 = z; s13 = z
    s20 = z; s21 = z; s22 = z; s23 = z; s30 = z; s31 = z; s32 = z; s33 = z
    for k in range(k1 - k0):
        x0 = a0[k]; x1 = a1[k]; x2 = a2[k]; x3 = a3[k]
        y0 = b0[k]; y1 = b1[k]; y2 = b2[k]; y3 = b3[k]
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3
        s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3
        s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3
    c[i, j] += s00; c[i, j + 1] += s01; c[i, j + 2] += s02; c[i, j + 3] += s03
    c[i + 1, j] += s10; c[i + 1, j + 1] += s11; c[i + 1, j + 2] += s12; c[i + 1, j + 3] += s13
    c[i + 2, j] += s20; c[i + 2, j + 1] += s21; c[i + 2, j + 2] += s22; c[i + 2, j + 3] += s23
    c[i + 3, j] += s30; c[i + 3, j + 1] += s31; c[i + 3, j + 2] += s32; c[i + 3, j + 3] += s33


@serial_kernel
def _nt_block14(a, b, c, i, j, k0, k1):
    """One row of :func:`_nt_block44` (the last ``M % 4`` rows)."""
    a0 = a[i, k0:k1]
    b0 = b[j, k0:k1]; b1 = b[j + 1, k0:k1]; b2 = b[j + 2, k0:k1]; b3 = b[j + 3, k0:k1]
    z = a.dtype.type(0)
    s0 = z; s1 = z; s2 = z; s3 = z
    for k in range(k1 - k0):
        x0 = a0[k]
        s0 += x0 * b0[k]; s1 += x0 * b1[k]; s2 += x0 * b2[k]; s3 += x0 * b3[k]
    c[i, j] += s0; c[i, j + 1] += s1; c[i, j + 2] += s2; c[i, j + 3] += s3


@serial_kernel
def _nt_col(a, b, c, j, k0, k1):
    """``c[:, j] += a[:, k0:k1] b[j, k0:k1]`` (the last ``N % 4`` columns)."""
    bj = b[j, k0:k1]
    for i in range(a.shape[0]):
        ai = a[i, k0:k1]
        s = a.dtype.type(0)
        for k in range(k1 - k0):
            s += ai[k] * bj[k]
        c[i, j] += s


@serial_kernel
def _nt_task(a, b, c, tb):
    """Columns ``4*tb .. 4*tb+3`` of ``c = a b^T`` (see :func:`matmul_nt`)."""
    M, K = a.shape
    N = b.shape[0]
    j = tb * 4
    jn = min(j + 4, N)
    for i in range(M):
        for jj in range(j, jn):
            c[i, jj] = 0
    M4 = M - M % 4
    for k0 in range(0, K, KC):
        k1 = min(k0 + KC, K)
        if jn - j == 4:
            for i in range(0, M4, 4):
                _nt_block44(a, b, c, i, j, k0, k1)
            for i in range(M4, M):
                _nt_block14(a, b, c, i, j, k0, k1)
        else:
            for jj in range(j, jn):
                _nt_col(a, b, c, jj, k0, k1)


@kernel
def matmul_nt(a, b, c):
    """``c[i, j] = sum_k a[i, k] * b[j, k]`` for ``a (M, K)``, ``b (N, K)``, ``c (M, N)``.

    One task per 4 rows of ``b`` (4 columns of ``c``); inside, the reduction runs in chunks of
    ``KC`` (``a``'s chunk panel stays in L2, ``b``'s 4 x ``KC`` block in L1), each chunk's 4x4
    block of dot products in 16 accumulators, added to ``c`` in chunk order."""
    for tb in prange((b.shape[0] + 3) // 4):
        _nt_task(a, b, c, tb)


@serial_kernel
def matmul_nt_serial(a, b, c):
    """:func:`matmul_nt` on one thread (small products: no thread wake-ups)."""
    for tb in range((b.shape[0] + 3) // 4):
        _nt_task(a, b, c, tb)


@serial_kernel
def _nn_rows4(a, b, c, i, j0, j1):
    """``c[i:i+4, j0:j1] = a[i:i+4, :] b[:, j0:j1]``: the 4 output row segments stay in L1 and
    each pass adds 8 scaled rows of ``b`` to them (8 loads of ``b`` and 4 loads + 4 stores of
    ``c`` per 32 FMAs: FMA-bound rather than load/store-bound)."""
    K = a.shape[1]
    z = a.dtype.type(0)
    r0 = c[i, j0:j1]; r1 = c[i + 1, j0:j1]; r2 = c[i + 2, j0:j1]; r3 = c[i + 3, j0:j1]
    r0[:] = z; r1[:] = z; r2[:] = z; r3[:] = z
    K8 = K - K % 8
    for k in range(0, K8, 8):
        p0 = b[k, j0:j1]; p1 = b[k + 1, j0:j1]; p2 = b[k + 2, j0:j1]; p3 = b[k + 3, j0:j1]
        p4 = b[k + 4, j0:j1]; p5 = b[k + 5, j0:j1]; p6 = b[k + 6, j0:j1]; p7 = b[k + 7, j0:j1]
        a00 = a[i, k]; a01 = a[i, k + 1]; a02 = a[i, k + 2]; a03 = a[i, k + 3]
        a04 = a[i, k + 4]; a05 = a[i, k + 5]; a06 = a[i, k + 6]; a07 = a[i, k + 7]
        a10 = a[i + 1, k]; a11 = a[i + 1, k + 1]; a12 = a[i + 1, k + 2]; a13 = a[i + 1, k + 3]
        a14 = a[i + 1, k + 4]; a15 = a[i + 1, k + 5]; a16 = a[i + 1, k + 6]; a17 = a[i + 1, k + 7]
        a20 = a[i + 2, k]; a21 = a[i + 2, k + 1]; a22 = a[i + 2, k + 2]; a23 = a[i + 2, k + 3]
        a24 = a[i + 2, k + 4]; a25 = a[i + 2, k + 5]; a26 = a[i + 2, k + 6]; a27 = a[i + 2, k + 7]
        a30 = a[i + 3, k]; a31 = a[i + 3, k + 1]; a32 = a[i + 3, k + 2]; a33 = a[i + 3, k + 3]
        a34 = a[i + 3, k + 4]; a35 = a[i + 3, k + 5]; a36 = a[i + 3, k + 6]; a37 = a[i + 3, k + 7]
        for j in range(j1 - j0):
            q0 = p0[j]; q1 = p1[j]; q2 = p2[j]; q3 = p3[j]
            q4 = p4[j]; q5 = p5[j]; q6 = p6[j]; q7 = p7[j]
            r0[j] += ((a00 * q0 + a01 * q1 + a02 * q2 + a03 * q3)
                      + (a04 * q4 + a05 * q5 + a06 * q6 + a07 * q7))
            r1[j] += ((a10 * q0 + a11 * q1 + a12 * q2 + a13 * q3)
                      + (a14 * q4 + a15 * q5 + a16 * q6 + a17 * q7))
            r2[j] += ((a20 * q0 + a21 * q1 + a22 * q2 + a23 * q3)
                      + (a24 * q4 + a25 * q5 + a26 * q6 + a27 * q7))
            r3[j] += ((a30 * q0 + a31 * q1 + a32 * q2 + a33 * q3)
                      + (a34 * q4 + a35 * q5 + a36 * q6 + a37 * q7))
    for k in range(K8, K):
        p0 = b[k, j0:j1]
        a0 = a[i, k]; a1 = a[i + 1, k]; a2 = a[i + 2, k]; a3 = a[i + 3, k]
        for j in range(j1 - j0):
            q0 = p0[j]
            r0[j] += a0 * q0; r1[j] += a1 * q0; r2[j] += a2 * q0; r3[j] += a3 * q0


@serial_kernel
def _nn_row(a, b, c, i, j0, j1):
    """One row of :func:`_nn_rows4` (the last ``M % 4`` rows), 4 rows of ``b`` per pass."""
    K = a.shape[1]
    r = c[i, j0:j1]
    r[:] = 0
    K4 = K - K % 4
    for k in range(0, K4, 4):
        a0 = a[i, k]; a1 = a[i, k + 1]; a2 = a[i, k + 2]; a3 = a[i, k + 3]
        p0 = b[k, j0:j1]; p1 = b[k + 1, j0:j1]; p2 = b[k + 2, j0:j1]; p3 = b[k + 3, j0:j1]
        for j in range(j1 - j0):
            r[j] += a0 * p0[j] + a1 * p1[j] + a2 * p2[j] + a3 * p3[j]
    for k in range(K4, K):
        ak = a[i, k]
        p0 = b[k, j0:j1]
        for j in range(j1 - j0):
            r[j] += ak * p0[j]


@serial_kernel
def _nn_task(a, b, c, t):
    """Task ``t`` of :func:`matmul_nn`: rows ``4*g .. 4*g+3`` of ``c`` (fewer in the last
    group), one column chunk."""
    M = a.shape[0]
    N = b.shape[1]
    nchunks = (N + CHUNK - 1) // CHUNK
    i = (t // nchunks) * 4
    j0 = (t % nchunks) * CHUNK
    j1 = min(j0 + CHUNK, N)
    if i + 4 <= M:
        _nn_rows4(a, b, c, i, j0, j1)
    else:
        for ii in range(i, M):
            _nn_row(a, b, c, ii, j0, j1)


@kernel
def matmul_nn(a, b, c):
    """``c[i, :] = sum_k a[i, k] * b[k, :]`` for ``a (M, K)``, ``b (K, N)``, ``c (M, N)``.

    One task per (4 rows of ``c``, ``CHUNK`` columns): the rows accumulate in L1 from the same
    loads of ``b``, 8 reduction terms per pass, summed in a fixed order."""
    for t in prange((a.shape[0] + 3) // 4 * ((b.shape[1] + CHUNK - 1) // CHUNK)):
        _nn_task(a, b, c, t)


@serial_kernel
def matmul_nn_serial(a, b, c):
    """:func:`matmul_nn` on one thread."""
    for t in range((a.shape[0] + 3) // 4 * ((b.shape[1] + CHUNK - 1) // CHUNK)):
        _nn_task(a, b, c, t)


@serial_kernel
def _nn_tasks(a, b):
    return (a.shape[0] + 3) // 4 * ((b.shape[1] + CHUNK - 1) // CHUNK)


@kernel
def matmul_nn_pair(a1, b1, c1, a2, b2, c2):
    """``c1 = a1 b1`` and ``c2 = a2 b2`` (each as :func:`matmul_nn`) in ONE parallel launch:
    Linear's dx and dweight share a fork/join (on a busy machine each launch waits for the
    second worker to be scheduled). Same tasks, same sums: results equal two matmul_nn calls."""
    n1 = _nn_tasks(a1, b1)
    n2 = _nn_tasks(a2, b2)
    both = 2 * min(n1, n2)   # interleaved first: each thread's contiguous share gets both kinds
    for t in prange(n1 + n2):
        if t < both:
            if t % 2 == 0:
                _nn_task(a1, b1, c1, t // 2)
            else:
                _nn_task(a2, b2, c2, t // 2)
        elif n1 > n2:
            _nn_task(a1, b1, c1, t - both + n2)
        else:
            _nn_task(a2, b2, c2, t - both + n1)


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
    """``dx = 0`` where ``y <= 0``, else ``dy`` (so a NaN ``y`` passes ``dy``, as PyTorch's
    ``threshold_backward``). ``dy`` is loaded unconditionally so the select vectorises (a
    conditional load made it branchy: 20x slower)."""
    zero = dy.dtype.type(0)
    ds = dy[lo:hi]
    ys = y[lo:hi]
    xs = dx[lo:hi]
    for i in range(hi - lo):
        d = ds[i]
        xs[i] = zero if ys[i] <= zero else d


@kernel
def relu_forward(x, y):
    """``y = max(x, 0)`` over flat arrays (NaN stays NaN)."""
    n = x.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _relu_fwd_range(x, y, t * FLAT, min(t * FLAT + FLAT, n))


@kernel
def relu_backward(dy, y, dx):
    """``dx = 0`` where ``y <= 0``, else ``dy`` (NaN passes ``dy``, as PyTorch; flat arrays)."""
    n = dy.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _relu_bwd_range(dy, y, dx, t * FLAT, min(t * FLAT + FLAT, n))


@serial_kernel
def relu_forward_serial(x, y):
    _relu_fwd_range(x, y, 0, x.shape[0])


@serial_kernel
def relu_backward_serial(dy, y, dx):
    _relu_bwd_range(dy, y, dx, 0, dy.shape[0])


@serial_kernel
def _dropout_range(x, mask, scale, y, lo, hi):
    """``mask`` is the boolean mask viewed as uint8; the product is computed unconditionally so
    the select vectorises (measured 29 -> 37 GB/s against a 31 GB/s copy)."""
    zero = x.dtype.type(0)
    for i in range(lo, hi):
        v = x[i] * scale
        y[i] = v if mask[i] != 0 else zero


@serial_kernel
def dropout_serial(x, mask, scale, y):
    """``y = x * scale`` where ``mask`` (uint8, 0 or 1) else 0 (flat arrays; ``scale`` of x's
    dtype)."""
    _dropout_range(x, mask, scale, y, 0, x.shape[0])


@kernel
def dropout(x, mask, scale, y):
    """:func:`dropout_serial` in ``FLAT``-element tasks."""
    n = x.shape[0]
    for t in prange((n + FLAT - 1) // FLAT):
        _dropout_range(x, mask, scale, y, t * FLAT, min(t * FLAT + FLAT, n))


@serial_kernel
def softmax_xent(logits, labels, losses, d):
    """Softmax cross-entropy of ``logits (N, K)`` with integer ``labels (N,)``, one pass per
    row: ``losses[i] = log(sum_j exp z[i, j]) - z[i, labels[i]]`` with ``z = logits - max``
    (row max; NaN propagates) and ``d = (softmax(logits) - onehot(labels)) / N``."""
    n, k = logits.shape
    one = logits.dtype.type(1)
    nn = logits.dtype.type(n)
    for i in range(n):
        row = logits[i]
        di = d[i]
        mx = row[0]
        for j in range(1, k):
            v = row[j]
            if v > mx or v != v:
                mx = v
        s = logits.dtype.type(0)
        for j in range(k):
            e = np.exp(row[j] - mx)
            di[j] = e
            s += e
        lab = labels[i]
        losses[i] = np.log(s) - (row[lab] - mx)
        for j in range(k):
            di[j] = di[j] / s
        di[lab] -= one
        for j in range(k):
            di[j] = di[j] / nn
