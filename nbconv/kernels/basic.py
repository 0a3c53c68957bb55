"""Loops of the basic layers: matrix products for Linear, ReLU, bias add, row sums, dropout
and the softmax cross-entropy loss.

All arrays are C-contiguous and of one float dtype (the wrappers in
:mod:`nbconv.functional.basic` guarantee it). Every kernel runs ``prange`` over disjoint blocks of
its output and sums in a fixed order, so results are bitwise identical across runs and thread
counts. No BLAS: NumPy's multi-threaded OpenBLAS fights Numba's worker threads for the two cores
(measured: a 64x8192x100 product went from 2 ms to 30-400 ms right after a Numba kernel).

Linear's products, on the register-blocked micro-kernels of :mod:`nbconv.kernels.gemm` (the
SIMD vocabulary :mod:`nbconv.kernels.simd`; ``V`` the vector width, the last argument):

- ``linear_forward(x (N, K), w (F, K), ...)``: ``y = x w^T (+ bias)`` as dot products of
  contiguous rows, 4 rows of ``x`` x 3 of ``w`` per call of ``gemm.dot_4x3``; neither operand
  is copied.
- ``linear_grads(dy, w, x, dx, dw, ...)``: ``dx = dy w`` and ``dw = dy^T x`` in one launch,
  each as 4 output rows x 3 vectors of columns per call of ``gemm.tile_4x3`` (``dy`` packed in
  4-row blocks; ``w`` / ``x`` rows read in place or, where their stride is a multiple of 1-4
  KiB, copied panel by panel).
- ``matmul_nt(a (M, K), b (N, K), c (M, N))``: ``c = a b^T`` as dot products in 4x4 blocks of
  scalar accumulators (LLVM vectorises along k): the forward for short rows (``K < 128``),
  where it measured as fast as the micro-kernel or faster.

Measured (AMD EPYC Zen 3, AVX2, FMA peak 98 GFLOP/s per core; one thread, ``time.thread_time``,
best of 3 alternating runs on a busy machine, float32, GFLOP/s, today's / the previous scalar
kernels / PyTorch 2.13): (64, 8192) -> 100 forward 72 / 47 / 73, backward (dx + dweight) 73 /
42 / 75; (256, 4096) -> 1000 forward 74 / 48 / 92, backward 85 / 23 / 89. The forward's
micro-kernel loads 7 vectors per 12 FMAs and reaches 72-81 GFLOP/s in L1 (``tile_4x3``, 3
loads and 4 broadcasts: 95-101); the other form, ``y^T = w x^T`` on ``tile_4x3``, needs a
transposed copy of ``x`` on every call and measured no faster (66-74 against 64-71 on
(256, 4096) -> 1000).
"""
import numpy as np
from numba import prange

from .._config import FLAT  # elements per task of the elementwise kernels
from .._config import MATMUL_CHUNK as CHUNK  # columns per pass of sum_rows
from .._config import MATMUL_KC as KC  # reduction chunk of matmul_nt
from .._config import kernel, serial_kernel
from . import gemm, simd


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


# ---- Linear on the SIMD micro-kernels (nbconv.kernels.gemm) -----------------------------------

@serial_kernel
def _lin_fwd_setup(x, F):
    """Row offsets ``op`` (N4,) of ``x``'s rows (the last one repeated up to a multiple of 4)
    and the padded sums ``P`` (N4, F3) of :func:`linear_forward`."""
    N, K = x.shape
    N4 = (N + 3) // 4 * 4
    op = np.empty(N4, np.int64)
    for i in range(N4):
        op[i] = min(i, N - 1) * K
    return op, np.empty((N4, (F + 2) // 3 * 3), x.dtype)


@serial_kernel
def _lin_fwd_task(x1, w1, op, P, y, bias, hasb, K, i0, i1, j0, j1, kc, jc, V):
    """Rows ``[i0, i1)`` x columns ``[j0, j1)`` of ``P`` (whole 4-row and 3-column blocks),
    then of ``y`` (the rows and columns that exist), see :func:`linear_forward`."""
    N, F = y.shape
    zero = P.dtype.type(0)
    for i in range(i0, i1):
        for j in range(j0, j1):
            P[i, j] = zero
    for s0 in range(j0, j1, jc):          # a slab of weight rows whose chunk stays in L2
        s1 = min(j1, s0 + jc)
        for k0 in range(0, K, kc):        # 4 rows of x x kc stay in L1
            nq = min(kc, K - k0)
            for i in range(i0, i1, 4):
                for j in range(s0, s1, 3):
                    gemm.dot_4x3(V, x1, k0, op, i, w1, min(j, F - 1) * K + k0,
                                 min(j + 1, F - 1) * K + k0, min(j + 2, F - 1) * K + k0, nq,
                                 P, j)
    for i in range(i0, min(i1, N)):
        Pi = P[i]
        yi = y[i]
        if hasb:
            for j in range(j0, min(j1, F)):
                yi[j] = Pi[j] + bias[j]
        else:
            for j in range(j0, min(j1, F)):
                yi[j] = Pi[j]


@kernel
def linear_forward(x, w, bias, hasb, y, tasks, kc, jc, V):
    """``y[i, j] = sum_k x[i, k] w[j, k] (+ bias[j] if hasb)`` for ``x (N, K)``, ``w (F, K)``,
    ``y (N, F)``: dot products of contiguous rows (no copy of either operand), 4 rows of ``x``
    x 3 rows of ``w`` per call of the micro-kernel :func:`nbconv.kernels.gemm.dot_4x3` (12
    vector partial sums in registers, each added across its lanes in a fixed order).

    Blocked as BLAS blocks: per task (``tasks (T, 4)`` rows ``(i0, i1, j0, j1)``, whole 4-row
    and 3-column blocks of the padded sums ``P (ceil4(N), ceil3(F))``), per slab of ``jc``
    weight rows (their ``kc``-chunk stays in L2), per chunk of ``kc`` reduction elements
    (``kc`` a multiple of the lanes), per 4 rows of ``x`` (in L1), per 3 rows of ``w``. Each
    chunk's sums are added to ``P`` in chunk order (fixed by ``kc``, not by the tasks), so
    results are the same for every task table and thread count. Past the last row or column
    the micro-kernel repeats the last row of ``x`` or ``w``, and those sums are dropped: no
    zero is multiplied into a result (``0 * inf`` would be NaN). ``V``: the vector width.

    Textbook twin: :func:`nbconv.reference.linear_naive`."""
    op, P = _lin_fwd_setup(x, w.shape[0])
    x1 = x.reshape(-1)
    w1 = w.reshape(-1)
    K = x.shape[1]
    for t in prange(tasks.shape[0]):
        _lin_fwd_task(x1, w1, op, P, y, bias, hasb, K, tasks[t, 0], tasks[t, 1], tasks[t, 2],
                      tasks[t, 3], kc, jc, V)


@serial_kernel
def linear_forward_serial(x, w, bias, hasb, y, tasks, kc, jc, V):
    """:func:`linear_forward` on one thread."""
    op, P = _lin_fwd_setup(x, w.shape[0])
    x1 = x.reshape(-1)
    w1 = w.reshape(-1)
    K = x.shape[1]
    for t in range(tasks.shape[0]):
        _lin_fwd_task(x1, w1, op, P, y, bias, hasb, K, tasks[t, 0], tasks[t, 1], tasks[t, 2],
                      tasks[t, 3], kc, jc, V)


@serial_kernel
def _lin_pack4(a, trans, M):
    """``A`` (M, K) (``a``, or ``a.T`` when ``trans``) packed for the micro-kernel: ``ap[b,
    4*e + k] = A[4*b + k, e]``, zero past row ``M`` (those rows' sums are never stored)."""
    K = a.shape[0] if trans else a.shape[1]
    ap = np.empty(((M + 3) // 4, 4 * K), a.dtype)
    zero = a.dtype.type(0)
    for b in range(ap.shape[0]):
        m = 4 * b
        p = ap[b]
        if m + 4 <= M and trans:
            for e in range(K):
                r = a[e, m:m + 4]
                p[4 * e] = r[0]
                p[4 * e + 1] = r[1]
                p[4 * e + 2] = r[2]
                p[4 * e + 3] = r[3]
        elif m + 4 <= M:
            r0, r1, r2, r3 = a[m], a[m + 1], a[m + 2], a[m + 3]
            for e in range(K):
                p[4 * e] = r0[e]
                p[4 * e + 1] = r1[e]
                p[4 * e + 2] = r2[e]
                p[4 * e + 3] = r3[e]
        else:
            for e in range(K):
                for k in range(4):
                    if m + k >= M:
                        p[4 * e + k] = zero
                    elif trans:
                        p[4 * e + k] = a[e, m + k]
                    else:
                        p[4 * e + k] = a[m + k, e]
    return ap


@serial_kernel
def _lin_nn_task(ap, b1, op, opn, copy, c, r0, r1, q0, q1, kc, pw, V):
    """``c[r0:r1, q0:q1] = A[r0:r1, :] B[:, q0:q1]`` for ``A`` packed by :func:`_lin_pack4`
    and ``B (K, Nc)`` flat in ``b1`` (``c (M, Nc)``; ``r0`` a multiple of 4, ``r1`` one or
    ``>= M``; ``op[e] = 3 * L * e``, ``opn[e] = Nc * e``). Per panel of ``pw`` blocks of 3
    vectors of columns (its block of ``c`` stays in L2), per chunk of ``kc`` reduction
    elements (in order): when ``copy``, the panel's rows of ``B`` are first copied into
    contiguous ``kc`` x 3-vector blocks (``B``'s rows are ``Nc`` apart: read in place, a
    power-of-two stride maps them all to one L1 set; each row's part is read as one run),
    else read in place (few rows to share a block: the copy would cost more than it saves);
    then per block (in L1), per 4 rows: :func:`nbconv.kernels.gemm.tile_4x3`. The last rows
    (fewer than 4) go through :func:`nbconv.kernels.gemm.tile_4x3_edge`, the last columns
    vector by vector through :func:`nbconv.kernels.gemm.tile_4x1_edge` (masked: nothing
    outside ``c`` or ``B`` is touched)."""
    M, Nc = c.shape
    K = ap.shape[1] // 4
    L = simd.lanes(V, b1)
    B3 = 3 * L
    re = min(r1, M)
    rf = r0 + (re - r0) // 4 * 4
    ke = min(kc, K)
    bp = np.empty(min(pw, (q1 - q0 + B3 - 1) // B3) * ke * B3 if copy else 0, b1.dtype)
    for p0 in range(q0, q1, pw * B3):
        p1 = min(q1, p0 + pw * B3)
        nf = (p1 - p0) // L * L           # whole vectors of the panel's rows
        for k0 in range(0, K, kc):
            k1 = min(K, k0 + kc)
            ne = k1 - k0
            first = k0 == 0
            if copy:
                src = bp
                opc = op[:ne]
                for e in range(ne):       # block-major, rows of 3 vectors
                    s = (k0 + e) * Nc + p0
                    for u in range(0, nf, L):
                        simd.store(bp, (u // B3 * ne + e) * B3 + u % B3,
                                   simd.load(V, b1, s + u))
                    if nf < p1 - p0:
                        simd.store_tail(bp, (nf // B3 * ne + e) * B3 + nf % B3,
                                        simd.load_tail(V, b1, s + nf, p1 - p0 - nf),
                                        p1 - p0 - nf)
            else:
                src = b1
                opc = opn[:ne]
            for q in range(p0, p1, B3):
                nw = min(B3, p1 - q)
                # index of column q's element 0 in src, less q
                bb = (q - p0) // B3 * ne * B3 - q if copy else k0 * Nc
                if nw == B3:
                    for r in range(r0, rf, 4):
                        gemm.tile_4x3(V, src, bb, opc, ap[r // 4, 4 * k0:4 * k1], first, c, r,
                                      q)
                else:
                    for v in range(0, nw, L):
                        for r in range(r0, rf, 4):
                            gemm.tile_4x1_edge(V, src, bb, opc, ap[r // 4, 4 * k0:4 * k1],
                                               first, c, r, q + v, 4, min(L, nw - v))
                if rf < re:
                    wq = ap[rf // 4, 4 * k0:4 * k1]
                    if nw == B3:
                        gemm.tile_4x3_edge(V, src, bb, opc, wq, first, c, rf, q, re - rf)
                    else:
                        for v in range(0, nw, L):
                            gemm.tile_4x1_edge(V, src, bb, opc, wq, first, c, rf, q + v,
                                               re - rf, min(L, nw - v))


@serial_kernel
def _lin_grads_setup(dy, x, dx, kc, V):
    """The packed ``dy`` (for ``dx``, if wanted) and ``dy^T`` (for ``dweight``) and the row
    offsets of the copied blocks of ``w`` or ``x`` (3 vectors wide) and of their rows in place
    (``in`` values wide) for :func:`linear_grads`."""
    N, F = dy.shape
    apx = _lin_pack4(dy, False, N if dx.shape[0] > 0 else 0)
    apw = _lin_pack4(dy, True, F)
    op = np.empty(min(kc, max(N, F)), np.int64)
    opn = np.empty(op.shape[0], np.int64)
    for e in range(op.shape[0]):
        op[e] = e * 3 * simd.lanes(V, x)
        opn[e] = e * x.shape[1]
    return apx, apw, op, opn


@kernel
def linear_grads(dy, w, x, dx, dw, tasks, kc, pw, copyx, copyw, V):
    """``dx = dy w`` (skipped when ``dx`` has no rows) and ``dw = dy^T x`` for ``dy (N, F)``,
    ``w (F, K)``, ``x (N, K)``, ``dx (N, K)``, ``dw (F, K)``, both in one parallel launch:
    ``tasks (T, 5)`` rows ``(which, r0, r1, q0, q1)`` (0: a block of ``dx``, 1: of ``dw``)
    each run by :func:`_lin_nn_task` (4 output rows x 3 vectors of columns in registers:
    :func:`nbconv.kernels.gemm.tile_4x3`, ``dy`` packed in 4-row blocks). Every output
    element is one task's chain of fused multiply-adds over the reduction in order, so results
    are the same for every task table and thread count. ``V``: the vector width.

    Textbook twin: :func:`nbconv.reference.linear_backward`."""
    apx, apw, op, opn = _lin_grads_setup(dy, x, dx, kc, V)
    for t in prange(tasks.shape[0]):
        _lin_grads_task(apx, apw, w, x, op, opn, copyx, copyw, dx, dw, tasks[t], kc, pw, V)


@serial_kernel
def linear_grads_serial(dy, w, x, dx, dw, tasks, kc, pw, copyx, copyw, V):
    """:func:`linear_grads` on one thread."""
    apx, apw, op, opn = _lin_grads_setup(dy, x, dx, kc, V)
    for t in range(tasks.shape[0]):
        _lin_grads_task(apx, apw, w, x, op, opn, copyx, copyw, dx, dw, tasks[t], kc, pw, V)


@serial_kernel
def _lin_grads_task(apx, apw, w, x, op, opn, copyx, copyw, dx, dw, task, kc, pw, V):
    """One row ``(which, r0, r1, q0, q1)`` of :func:`linear_grads`'s task table: a block of
    ``dx`` (``which == 0``) or of ``dw``."""
    if task[0] == 0:
        _lin_nn_task(apx, w.reshape(-1), op, opn, copyx, dx, task[1], task[2], task[3], task[4],
                     kc, pw, V)
    else:
        _lin_nn_task(apw, x.reshape(-1), op, opn, copyw, dw, task[1], task[2], task[3], task[4],
                     kc, pw, V)


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
