"""Winograd F(4x4, 3x3) convolution loop nests (stride 1, dilation 1, 3x3 kernels).

``y = A^T [ (G g G^T) . (B^T d B) ] A`` per 4x4 output tile: 36 products per tile and channel
pair instead of 144 (Lavin & Gray's points 0, +-1, +-2, inf; ``G`` holds the fractions, so
float64 stays exact to ~1e-14 relative). Everything on vectors of tiles, with the SIMD
vocabulary (:mod:`nbconv.kernels.simd`, width ``VW``):

- ``weight_transform``: ``U[g, e, f // 4, c, f % 4] = (G w[f, c] G^T)[e]`` (blocks of 4 filters
  contiguous, zero filters pad ``Fo`` to a multiple of 4). Small; recomputed per call.
- ``winograd_forward``: one parallel loop over tasks, each a tile row ``th`` of a few images (or a
  run of tile columns of one image), ``T`` <= 128 tiles, written only by that task (no reductions
  across tasks, so results are bitwise identical for any thread count). Per task, in per-thread
  scratch (NNPACK's structure: all channels of a tile block transformed into L2, the product
  blocked for L1):

  1. ``_gather_patches``: per channel, the 6 input rows of the task's images copied, zero
     padded, into a row buffer, then each tile's 6x6 patch into 36 arrays over the tiles;
     ``_input_transform``: ``B^T d B`` on vectors of tiles (column transforms, then row
     transforms) into ``V[c, e, :]``. Padding never enters as data: it is zeros.
  2. per block of ``FBK`` filters, per transform point ``e``, the batched product
     ``M[f, e, :] = sum_c U[e, c, f] V[c, e, :]`` by the micro-kernel
     :func:`nbconv.kernels.gemm.tile_4x3` (4 filters x 3 vectors of tiles in 12 registers,
     the channels as the reduction);
  3. ``_output_transform``: ``Y = A^T M A + bias`` on vectors of tiles, then each output row
     interleaved back from its tiles and cropped at the right/bottom edge.
- ``winograd_weight_grad``: the weight gradient in the Winograd domain: per task the input
  transform of ``x``'s tiles (as above) and ``dM = A dY A^T`` of ``dy``'s tiles
  (``_gather_dy_tiles``, ``_dy_transform``), then ``dU[e] += V[:, e] dM[:, e]^T`` by
  :func:`nbconv.kernels.gemm.dot_4x3` into a chunk's float64 partial sums (chunks fixed by the
  wrapper, added in order); ``weight_grad_transform`` gives ``dw = G^T dU G``.

Scratch rows hold an odd number of 64-byte lines, and a tile's 36 values sit in consecutive
rows (``V[c, e, j]``, ``M[k, e, j]``): the first layout, ``V[e, c, j]`` with a 256-byte row,
put all 36 values of a tile in the same few L1 sets and made both transforms 4-40x slower.

Non-finite inputs: every output of a 4x4 tile mixes its whole 6x6 input patch, so a NaN or inf
input makes NaN in the whole tile(s) that read it (a superset of the outputs that are NaN with
the direct algorithm; other tiles are untouched).

Measured on the SIMD kernels (AMD EPYC Zen 3, AVX2, one thread, ``time.thread_time``, best of
many on a busy machine; the FMA peak is 99 GFLOP/s per core):

- Accuracy (``tests/test_winograd.py::ACC_GRID``): forward within 10x of the direct kernel's
  float32 error (the test's bound; 4.2x measured before the rewrite); the weight gradient
  7-19x (bound 20x: both operands are transformed before the sum).
- Stages of (64, 64, 16x16, 64): patch gather 1.4-1.5 ms (22 ns per tile and channel; the
  scalar version with bounds checks per element took 55-115), input transform 0.4-0.5 ms
  (7 ns), product 4-4.7 ms (65-76 GFLOP/s, 66-77% of peak), output transform 1.1-1.3 ms
  (17 ns per tile and filter; scalar: 24-34).
- Whole forward, direct-equivalent GFLOP/s (Winograd / torch, one thread): (64,64,16,16,64)
  109-125 / 78-82, (64,32,32,32,32) 103 / 79, (64,128,8,8,128) 98-144 / 83-85,
  (64,16,32,32,16) 60-66 / 57-59, (8,64,56,56,64) 137-169 / 84-87, (64,256,8,8,256) 127-134
  / 74-88: 1.07-1.94x torch.

Before the SIMD rewrite (AMD Zen 5, AVX-512, a busy 2-core machine): the product with 4x4
scalar blocks and the accumulators in L1 ran at 70-100 GFLOP/s (37-50% of that core's peak),
the input transform took 30-45 ns per tile and channel, the output transform 15-25 ns per tile
and filter; whole forward passes 0.67-0.99x torch. Tried then and dropped: 8 channels x 2 or 4
filters per pass, a tile loop rounded to 16, a fixed 16-tile inner loop (scalar code once
unrolled), channel blocks of 4-128 rows, filter blocks 16-128, tasks of 64-512 tiles, V budgets
256 KiB-16 MiB, scratch rows of 9-15 cache lines, huge pages: all within +-10%.
"""
import numpy as np
from numba import get_thread_id, prange

from .._config import kernel, serial_kernel
from . import gemm, simd

ALPHA = 6  # transform tile side (m + r - 1 = 4 + 3 - 1)
NE = ALPHA * ALPHA  # 36 transform points

# The three transforms as matrices: _bt computes BT @ d, _g3 G @ g, _at AT @ m (tested against
# them). nbconv.functional._algorithm derives its overflow bound from these.
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)


# ---------------------------------------------------------------- 1-d transforms
# ---------------------------------------------------------------- weight transform
@serial_kernel
def _g3(g0, g1, g2, q4, q6, q12, q24):
    """G g for one 3-vector: 6 values."""
    return (q4 * g0,
            -q6 * (g0 + g1 + g2),
            -q6 * (g0 - g1 + g2),
            q24 * g0 + q12 * g1 + q6 * g2,
            q24 * g0 - q12 * g1 + q6 * g2,
            g2)


@kernel
def weight_transform(w, U, cst):
    """w (G*Fo, Cg, 3, 3) -> U (G, 36, Fp/4, Cg, 4): ``U[g, e, f // 4, c, f % 4] = (G w[g*Fo
    + f, c] G^T)[e]`` per transform point ``e = 6*a + b`` (filters ``Fo..Fp-1`` zero): each
    block of 4 filters' weights contiguous, as the product's micro-kernel
    (:func:`nbconv.kernels.gemm.tile_4x3`) reads them. ``cst`` holds the dtype's constants
    ``(2, 4, 5, 8, 1/4, 1/6, 1/12, 1/24)``. One task per (group, channel): its 36 x ``Fo``
    values computed in registers into a small buffer, then copied out."""
    G, _, Fq, Cg, _ = U.shape
    Ft = w.shape[0]
    Fo = Ft // G
    q4, q6, q12, q24 = cst[4], cst[5], cst[6], cst[7]
    zero = cst[0] - cst[0]
    for gc in prange(G * Cg):
        g = gc // Cg
        c = gc - g * Cg
        Ug = U[g]
        B = np.empty((NE, Fo), w.dtype)
        for f in range(Fo):
            wk = w[g * Fo + f, c]
            # t[:, j] = G w[:, j] (columns), then each row of t times G^T
            t00, t10, t20, t30, t40, t50 = _g3(wk[0, 0], wk[1, 0], wk[2, 0], q4, q6, q12, q24)
            t01, t11, t21, t31, t41, t51 = _g3(wk[0, 1], wk[1, 1], wk[2, 1], q4, q6, q12, q24)
            t02, t12, t22, t32, t42, t52 = _g3(wk[0, 2], wk[1, 2], wk[2, 2], q4, q6, q12, q24)
            B[0, f], B[1, f], B[2, f], B[3, f], B[4, f], B[5, f] = \
                _g3(t00, t01, t02, q4, q6, q12, q24)
            B[6, f], B[7, f], B[8, f], B[9, f], B[10, f], B[11, f] = \
                _g3(t10, t11, t12, q4, q6, q12, q24)
            B[12, f], B[13, f], B[14, f], B[15, f], B[16, f], \
                B[17, f] = _g3(t20, t21, t22, q4, q6, q12, q24)
            B[18, f], B[19, f], B[20, f], B[21, f], B[22, f], \
                B[23, f] = _g3(t30, t31, t32, q4, q6, q12, q24)
            B[24, f], B[25, f], B[26, f], B[27, f], B[28, f], \
                B[29, f] = _g3(t40, t41, t42, q4, q6, q12, q24)
            B[30, f], B[31, f], B[32, f], B[33, f], B[34, f], \
                B[35, f] = _g3(t50, t51, t52, q4, q6, q12, q24)
        for e in range(NE):
            for fb in range(Fq):
                for k in range(4):
                    f = 4 * fb + k
                    Ug[e, fb, c, k] = B[e, f] if f < Fo else zero


# ---------------------------------------------------------------- per-task passes
@serial_kernel
def _row_len(T, lane):
    """Row length >= T of the scratch arrays: an odd number of 64-byte lines, so that the 36
    rows a tile touches fall into different L1 sets (a power-of-two stride put them all in a
    few sets and made both transforms 4-10x slower)."""
    k = (T + lane - 1) // lane
    if k % 2 == 0:
        k += 1
    return k * lane


@serial_kernel
def _bt_v(d0, d1, d2, d3, d4, d5, k2, k4, k5):
    """``B^T d`` for 6 vectors (each lane a tile; Lavin & Gray's points 0, +-1, +-2, inf):
    ``4d0 - 5d2 + d4``, ``(d3 + d4) - 4(d1 + d2)``, ``(d4 - d3) + 4(d1 - d2)``,
    ``(d4 - d2) + 2(d3 - d1)``, ``(d4 - d2) - 2(d3 - d1)``, ``4d1 - 5d3 + d5``
    (``k2, k4, k5`` the constants splatted)."""
    return (simd.fma(k4, d0, simd.sub(d4, simd.mul(k5, d2))),
            simd.sub(simd.add(d3, d4), simd.mul(k4, simd.add(d1, d2))),
            simd.fma(k4, simd.sub(d1, d2), simd.sub(d4, d3)),
            simd.fma(k2, simd.sub(d3, d1), simd.sub(d4, d2)),
            simd.sub(simd.sub(d4, d2), simd.mul(k2, simd.sub(d3, d1))),
            simd.fma(k4, d1, simd.sub(d5, simd.mul(k5, d3))))


@serial_kernel
def _gather_patches(x, D, rb, Ts, ch, n0, n1, th, tw0, nt, pt, pl, VW):
    """The 6x6 input patch of each of the task's tiles, one array per patch position:
    ``D[(6*l + m)*Ts + j] = xpad[n, ch, 4*th + l, 4*(tw0 + tw) + m]`` for tile ``j = (n - n0)*nt
    + tw`` (``xpad`` is ``x`` shifted by ``(pt, pl)``, zero outside), so that the transform
    runs on whole vectors of tiles. Per patch row, the images' input rows are first copied,
    zero padded, into ``rb`` side by side (``4*nt + 2`` values each, then ``4L`` spare ones the
    vector gather reads past the last row), so the gather itself has no bounds checks: whole
    vectors of tiles of one image by two :func:`nbconv.kernels.simd.load4` gathers, the rest
    by flat unsigned indices."""
    H, W = x.shape[2], x.shape[3]
    C = x.shape[1]
    T = (n1 - n0) * nt
    L = simd.lanes(VW, D)
    zero = D.dtype.type(0)
    x1 = x.reshape(-1)
    Wb = 4 * nt + 2
    cx0 = 4 * tw0 - pl                 # x column of rb's column 0
    u0 = min(Wb, max(0, -cx0))         # rb columns [u0, u1) lie inside x
    u1 = max(u0, min(Wb, W - cx0))
    uTs = np.uint64(Ts)
    for l in range(6):
        h = 4 * th + l - pt
        d0 = np.uint64(6 * l * Ts)
        if h < 0 or h >= H:
            for m in range(6):
                for j in range(T):
                    D[d0 + np.uint64(m * Ts + j)] = zero
            continue
        for n in range(n0, n1):
            r0 = np.uint64((n - n0) * Wb)
            xr = np.uint64(((n * C + ch) * H + h) * W + cx0 + u0)
            for u in range(u0):
                rb[r0 + np.uint64(u)] = zero
            for u in range(u1 - u0):
                rb[r0 + np.uint64(u0 + u)] = x1[xr + np.uint64(u)]
            for u in range(u1, Wb):
                rb[r0 + np.uint64(u)] = zero
        for n in range(n1 - n0):
            # whole vectors of L tiles of this image: two stride-4 gathers (load4) give the
            # patch's 6 columns (columns 4 and 5 are columns 0 and 1 of the next tile)
            nv = nt // L
            for b in range(nv):
                s4 = n * Wb + 4 * L * b
                p0, p1, p2, p3 = simd.load4(VW, rb, s4)
                q0, q1, q2, q3 = simd.load4(VW, rb, s4 + 4)
                dst = 6 * l * Ts + n * nt + L * b
                simd.store(D, dst, p0)
                simd.store(D, dst + Ts, p1)
                simd.store(D, dst + 2 * Ts, p2)
                simd.store(D, dst + 3 * Ts, p3)
                simd.store(D, dst + 4 * Ts, q0)
                simd.store(D, dst + 5 * Ts, q1)
            src = np.uint64(n * Wb + 4 * L * nv)
            j = np.uint64(n * nt + L * nv)
            for tw in range(L * nv, nt):
                dst = d0 + j
                D[dst] = rb[src]
                D[dst + uTs] = rb[src + np.uint64(1)]
                D[dst + np.uint64(2) * uTs] = rb[src + np.uint64(2)]
                D[dst + np.uint64(3) * uTs] = rb[src + np.uint64(3)]
                D[dst + np.uint64(4) * uTs] = rb[src + np.uint64(4)]
                D[dst + np.uint64(5) * uTs] = rb[src + np.uint64(5)]
                src += np.uint64(4)
                j += np.uint64(1)


@serial_kernel
def _input_transform(D, Vf, vb, Ts, nv, VW, cst):
    """``V[e, j] = (B^T d_j B)[e]`` for the tiles' patches ``d_j`` in ``D`` (see
    :func:`_gather_patches`), into ``Vf[vb + e*Ts + j]``, for ``nv`` whole vectors of tiles:
    per vector, the column transform of the patch's 6 columns (6 vectors each), then the row
    transform of its 6 rows, every step on vectors of tiles."""
    L = simd.lanes(VW, D)
    k2, k4, k5 = simd.splat(VW, cst[0]), simd.splat(VW, cst[1]), simd.splat(VW, cst[2])
    Q = np.empty(36 * L, D.dtype)  # the column transforms of one vector of tiles
    for b in range(nv):
        j = b * L
        for m in range(6):
            r0, r1, r2, r3, r4, r5 = _bt_v(simd.load(VW, D, m * Ts + j),
                                           simd.load(VW, D, (6 + m) * Ts + j),
                                           simd.load(VW, D, (12 + m) * Ts + j),
                                           simd.load(VW, D, (18 + m) * Ts + j),
                                           simd.load(VW, D, (24 + m) * Ts + j),
                                           simd.load(VW, D, (30 + m) * Ts + j), k2, k4, k5)
            simd.store(Q, m * L, r0)
            simd.store(Q, (6 + m) * L, r1)
            simd.store(Q, (12 + m) * L, r2)
            simd.store(Q, (18 + m) * L, r3)
            simd.store(Q, (24 + m) * L, r4)
            simd.store(Q, (30 + m) * L, r5)
        for a in range(6):
            v0, v1, v2, v3, v4, v5 = _bt_v(simd.load(VW, Q, 6 * a * L),
                                           simd.load(VW, Q, (6 * a + 1) * L),
                                           simd.load(VW, Q, (6 * a + 2) * L),
                                           simd.load(VW, Q, (6 * a + 3) * L),
                                           simd.load(VW, Q, (6 * a + 4) * L),
                                           simd.load(VW, Q, (6 * a + 5) * L), k2, k4, k5)
            o = vb + 6 * a * Ts + j
            simd.store(Vf, o, v0)
            simd.store(Vf, o + Ts, v1)
            simd.store(Vf, o + 2 * Ts, v2)
            simd.store(Vf, o + 3 * Ts, v3)
            simd.store(Vf, o + 4 * Ts, v4)
            simd.store(Vf, o + 5 * Ts, v5)


@serial_kernel
def _at_v(m0, m1, m2, m3, m4, m5, k2, k4, k8):
    """``A^T m`` for 6 vectors (each lane a tile): ``m0 + (m1 + m2) + (m3 + m4)``,
    ``(m1 - m2) + 2(m3 - m4)``, ``(m1 + m2) + 4(m3 + m4)``, ``(m1 - m2) + 8(m3 - m4) + m5``
    (``k2, k4, k8`` the constants splatted)."""
    s12 = simd.add(m1, m2)
    d12 = simd.sub(m1, m2)
    s34 = simd.add(m3, m4)
    d34 = simd.sub(m3, m4)
    return (simd.add(simd.add(m0, s12), s34),
            simd.fma(k2, d34, d12),
            simd.fma(k4, s34, s12),
            simd.add(simd.fma(k8, d34, d12), m5))


@serial_kernel
def _output_transform(Mf, mb, Ts, y, bb, fy, n0, n1, th, tw0, nt, nv, Y, VW, cst):
    """``y`` tiles of filter ``fy`` from its 36 product rows ``Mf[mb + e*Ts + j]``: per vector
    of tiles, ``S = M A`` (each of the 6 rows), then ``Y = A^T S + bias`` (each of the 4
    columns), on vectors of tiles into ``Y[(4*a + b)*Ts + j]``; then each image's output rows
    interleaved back from the tiles (``Y`` (16*Ts,) scratch). ``nv`` whole vectors of tiles."""
    OH, OW = y.shape[2], y.shape[3]
    L = simd.lanes(VW, y)
    k2, k4, k8 = simd.splat(VW, cst[0]), simd.splat(VW, cst[1]), simd.splat(VW, cst[3])
    bv = simd.splat(VW, bb)
    S = np.empty(24 * L, y.dtype)   # the row transforms of one vector of tiles
    for v in range(nv):
        j = v * L
        for i in range(6):
            o = mb + 6 * i * Ts + j
            p0, p1, p2, p3 = _at_v(simd.load(VW, Mf, o), simd.load(VW, Mf, o + Ts),
                                   simd.load(VW, Mf, o + 2 * Ts), simd.load(VW, Mf, o + 3 * Ts),
                                   simd.load(VW, Mf, o + 4 * Ts), simd.load(VW, Mf, o + 5 * Ts),
                                   k2, k4, k8)
            simd.store(S, (4 * i) * L, p0)
            simd.store(S, (4 * i + 1) * L, p1)
            simd.store(S, (4 * i + 2) * L, p2)
            simd.store(S, (4 * i + 3) * L, p3)
        for b in range(4):
            r0, r1, r2, r3 = _at_v(simd.load(VW, S, b * L), simd.load(VW, S, (4 + b) * L),
                                   simd.load(VW, S, (8 + b) * L), simd.load(VW, S, (12 + b) * L),
                                   simd.load(VW, S, (16 + b) * L), simd.load(VW, S, (20 + b) * L),
                                   k2, k4, k8)
            simd.store(Y, b * Ts + j, simd.add(r0, bv))
            simd.store(Y, (4 + b) * Ts + j, simd.add(r1, bv))
            simd.store(Y, (8 + b) * Ts + j, simd.add(r2, bv))
            simd.store(Y, (12 + b) * Ts + j, simd.add(r3, bv))
    # Y back into y image by image, row by row (each output row written once, in order;
    # flat unsigned indices, no slices: a slice per row cost more than the row on small maps)
    yf = y.reshape(-1)
    ox0 = 4 * tw0
    ncol = min(4 * nt, OW - ox0)
    nrow = min(4, OH - 4 * th)
    uTs = np.uint64(Ts)
    for n in range(n0, n1):
        j0 = (n - n0) * nt
        for a in range(nrow):
            yb = np.uint64((((n * y.shape[1]) + fy) * OH + 4 * th + a) * OW + ox0)
            s0 = np.uint64(4 * a * Ts + j0)
            if ncol == 4 * nt:
                nvb = nt // L   # whole vectors of L tiles: one interleaving store (store4)
                for b in range(nvb):
                    o = 4 * a * Ts + j0 + L * b
                    simd.store4(yf, int(yb) + 4 * L * b, simd.load(VW, Y, o),
                                simd.load(VW, Y, o + Ts), simd.load(VW, Y, o + 2 * Ts),
                                simd.load(VW, Y, o + 3 * Ts))
                for tw in range(L * nvb, nt):
                    d = yb + np.uint64(4 * tw)
                    s = s0 + np.uint64(tw)
                    yf[d] = Y[s]
                    yf[d + np.uint64(1)] = Y[s + uTs]
                    yf[d + np.uint64(2)] = Y[s + np.uint64(2) * uTs]
                    yf[d + np.uint64(3)] = Y[s + np.uint64(3) * uTs]
            else:
                for tw in range(nt):
                    for b in range(min(4, ncol - 4 * tw)):
                        yf[yb + np.uint64(4 * tw + b)] = Y[s0 + np.uint64(b * Ts + tw)]


@kernel
def winograd_forward(x, U, bias, y, tasks, pt, pl, Vs, Ms, Ds, Rs, Qs, voff, cst, VW):
    """x (N, G*Cg, H, W); U (G, 36, Fp/4, Cg, 4) from :func:`weight_transform`; bias (G*Fo,);
    y (N, G*Fo, OH, OW) with ``y[n, f, oh, ow] = bias[f] + sum xpad[n, c, oh + i, ow + j] *
    w[f, c, i, j]`` where ``xpad`` is ``x`` shifted by ``(pt, pl)`` and zero outside (any
    integers, so also a crop). tasks (T, 6) rows ``(g, th, n0, n1, tw0, tw1)``: tile row ``th``
    of images ``[n0, n1)``, tile columns ``[tw0, tw1)``; every output element lies in exactly
    one task's tiles. Scratch per thread (``Ts`` >= the task's tiles rounded up to whole blocks
    of 3 vectors): Vs (threads, Cg, 36, Ts), Ms (threads, FBK, 36, Ts) (``FBK`` filters, a
    multiple of 4, share one pass over the transformed input), Ds (threads, 36, Ts), Rs
    (threads, >= images * (4 * tile columns + 2)), Qs (threads, 16 * Ts); voff (Cg,) int64
    ``c * 36 * Ts``; ``VW`` the vector width.

    Per task: each channel's patches gathered (:func:`_gather_patches`) and transformed on
    vectors of tiles (:func:`_input_transform`); per block of ``FBK`` filters, per transform
    point ``e``, the product ``M[f, e, :] = sum_c U[e, c, f] V[c, e, :]`` by the micro-kernel
    :func:`nbconv.kernels.gemm.tile_4x3` (4 filters x 3 vectors of tiles in registers, the
    channels as the reduction), then :func:`_output_transform`.

    Textbook twins: :func:`nbconv.kernels.textbook.conv2d_forward` (forward),
    :func:`nbconv.kernels.textbook.conv2d_backward_input` (the input gradient runs this kernel
    on ``dy`` with the flipped, channel-swapped weights)."""
    G, _, Fq, Cg, _ = U.shape
    Fp = 4 * Fq
    Fo = y.shape[1] // G
    FBK = Ms.shape[1]
    Ts = Vs.shape[3]
    L = simd.lanes(VW, x)
    for task in prange(tasks.shape[0]):
        g, th, n0, n1, tw0, tw1 = tasks[task, 0], tasks[task, 1], tasks[task, 2], \
            tasks[task, 3], tasks[task, 4], tasks[task, 5]
        nt = tw1 - tw0
        T = (n1 - n0) * nt
        nv3 = (T + 3 * L - 1) // (3 * L)
        tid = get_thread_id()
        Vf = Vs[tid].reshape(-1)
        M = Ms[tid]
        Mf = M.reshape(FBK, 36 * Ts)
        D = Ds[tid].reshape(-1)
        for c in range(Cg):
            _gather_patches(x, D, Rs[tid], Ts, g * Cg + c, n0, n1, th, tw0, nt, pt, pl, VW)
            _input_transform(D, Vf, c * 36 * Ts, Ts, 3 * nv3, VW, cst)
        for f0 in range(0, Fp, FBK):
            fn = min(FBK, Fp - f0)
            for e in range(NE):
                Ue = U[g, e].reshape(-1)
                for b in range(nv3):
                    for kb in range(fn // 4):
                        fb = f0 // 4 + kb
                        gemm.tile_4x3(VW, Vf, 0, voff, Ue[4 * Cg * fb:4 * Cg * (fb + 1)],
                                      True, Mf, 4 * kb, e * Ts + 3 * L * b)
            for k in range(min(fn, Fo - f0)):
                fy = g * Fo + f0 + k
                _output_transform(Mf.reshape(-1), k * 36 * Ts, Ts, y, bias[fy], fy, n0, n1, th,
                                  tw0, nt, 3 * nv3, Qs[tid], VW, cst)


# ---------------------------------------------------------------- weight gradient
@serial_kernel
def _a_v(v0, v1, v2, v3, k2, k4, k8):
    """``A v`` for 4 vectors (the transpose of :func:`_at_v`, each lane a tile): ``v0``,
    ``v0 + v1 + v2 + v3``, ``v0 - v1 + v2 - v3``, ``v0 + 2v1 + 4v2 + 8v3``, ``v0 - 2v1 + 4v2 -
    8v3``, ``v3``."""
    s = simd.add(v0, v2)
    t = simd.add(v1, v3)
    u = simd.fma(k4, v2, v0)
    w = simd.fma(k8, v3, simd.mul(k2, v1))
    return v0, simd.add(s, t), simd.sub(s, t), simd.add(u, w), simd.sub(u, w), v3


@serial_kernel
def _gather_dy_tiles(dy, D, Ts, f, n0, n1, th, tw0, nt):
    """``D[(4*a + b)*Ts + j] = dy[n, f, 4*th + a, 4*(tw0 + tw) + b]`` (zero past the output's
    last row or column) for the task's tiles ``j = (n - n0)*nt + tw``. Tiles wholly inside
    a row are copied without bounds checks (flat unsigned indices)."""
    OH, OW = dy.shape[2], dy.shape[3]
    F = dy.shape[1]
    T = (n1 - n0) * nt
    zero = D.dtype.type(0)
    d1 = dy.reshape(-1)
    full = min(nt, max(0, OW // 4 - tw0))   # tiles [0, full) have 4 columns inside dy
    uTs = np.uint64(Ts)
    for a in range(4):
        h = 4 * th + a
        da = np.uint64(4 * a * Ts)
        if h >= OH:
            for b in range(4):
                for j in range(T):
                    D[da + np.uint64(b * Ts + j)] = zero
            continue
        for n in range(n0, n1):
            src = np.uint64(((n * F + f) * OH + h) * OW + 4 * tw0)
            dst = da + np.uint64((n - n0) * nt)
            for tw in range(full):
                s = src + np.uint64(4 * tw)
                d = dst + np.uint64(tw)
                D[d] = d1[s]
                D[d + uTs] = d1[s + np.uint64(1)]
                D[d + np.uint64(2) * uTs] = d1[s + np.uint64(2)]
                D[d + np.uint64(3) * uTs] = d1[s + np.uint64(3)]
            for tw in range(full, nt):
                for b in range(4):
                    col = 4 * (tw0 + tw) + b
                    D[dst + np.uint64(b * Ts + tw)] = \
                        d1[src + np.uint64(4 * tw + b)] if col < OW else zero


@serial_kernel
def _dy_transform(D, Mf, mb, Ts, nv, VW, cst):
    """``dM = A dY A^T`` (4x4 -> 6x6, the transpose of the output transform) for the tiles'
    ``dy`` values in ``D`` (see :func:`_gather_dy_tiles`), into ``Mf[mb + e*Ts + j]``, on
    ``nv`` whole vectors of tiles."""
    L = simd.lanes(VW, D)
    k2, k4, k8 = simd.splat(VW, cst[0]), simd.splat(VW, cst[1]), simd.splat(VW, cst[3])
    S = np.empty(24 * L, D.dtype)
    for v in range(nv):
        j = v * L
        for b in range(4):
            t0, t1, t2, t3, t4, t5 = _a_v(simd.load(VW, D, b * Ts + j),
                                          simd.load(VW, D, (4 + b) * Ts + j),
                                          simd.load(VW, D, (8 + b) * Ts + j),
                                          simd.load(VW, D, (12 + b) * Ts + j), k2, k4, k8)
            simd.store(S, b * L, t0)
            simd.store(S, (4 + b) * L, t1)
            simd.store(S, (8 + b) * L, t2)
            simd.store(S, (12 + b) * L, t3)
            simd.store(S, (16 + b) * L, t4)
            simd.store(S, (20 + b) * L, t5)
        for i in range(6):
            r0, r1, r2, r3, r4, r5 = _a_v(simd.load(VW, S, 4 * i * L),
                                          simd.load(VW, S, (4 * i + 1) * L),
                                          simd.load(VW, S, (4 * i + 2) * L),
                                          simd.load(VW, S, (4 * i + 3) * L), k2, k4, k8)
            o = mb + 6 * i * Ts + j
            simd.store(Mf, o, r0)
            simd.store(Mf, o + Ts, r1)
            simd.store(Mf, o + 2 * Ts, r2)
            simd.store(Mf, o + 3 * Ts, r3)
            simd.store(Mf, o + 4 * Ts, r4)
            simd.store(Mf, o + 5 * Ts, r5)


@kernel
def winograd_weight_grad(x, dy, P, tasks, cut, pt, pl, Vs, Ms, Ds, Rs, voff, cst, VW):
    """The weight gradient in the Winograd domain: ``P[k, g, e, c, f] = sum over the tiles of
    chunk k of V[c, e, t] * dM[f, e, t]``, where ``V`` is the input transform of ``x``'s tiles
    (as :func:`winograd_forward`) and ``dM = A dY A^T`` that of ``dy``'s (the output transform
    transposed); :func:`weight_grad_transform` turns the reduced sums into ``dw = G^T dU G``.

    x (N, G*Cg, H, W), dy (N, G*Fo, OH, OW); P (chunks, G, 36, Cg4, F3) (``Cg4``, ``F3``: ``Cg``
    and ``Fo`` rounded up to multiples of 4 and 3, the micro-kernel's block; the extra rows and
    columns are dropped) is overwritten; chunk ``k`` sums tasks ``cut[k] .. cut[k+1]-1`` of
    ``tasks`` (rows as in :func:`winograd_forward`), in order, so the sums do not depend on
    the thread count. Scratch per thread as :func:`winograd_forward` (Ms (threads, FBK, 36,
    Ts): the transformed ``dy`` of ``FBK`` filters at a time); voff (Cg4,) int64 ``c * 36 *
    Ts`` (rows past ``Cg`` repeat channel 0). Per task, per block of filters, per transform
    point, per 4 channels x 3 filters: :func:`nbconv.kernels.gemm.dot_4x3` over the tiles.

    Textbook twin: :func:`nbconv.kernels.textbook.conv2d_backward_weight`."""
    nchunks, G, _, Cg4, F3 = P.shape
    Cg = x.shape[1] // G
    Fo = dy.shape[1] // G
    FBK = Ms.shape[1]
    Ts = Vs.shape[3]
    L = simd.lanes(VW, x)
    zero = cst[0] - cst[0]
    for k in prange(nchunks):
        Pk = P[k]
        for g in range(G):
            for e in range(NE):
                for c in range(Cg4):
                    for f in range(F3):
                        Pk[g, e, c, f] = zero
        tid = get_thread_id()
        Vf = Vs[tid].reshape(-1)
        Mf = Ms[tid].reshape(-1)
        D = Ds[tid].reshape(-1)
        for task in range(cut[k], cut[k + 1]):
            g, th, n0, n1, tw0, tw1 = tasks[task, 0], tasks[task, 1], tasks[task, 2], \
                tasks[task, 3], tasks[task, 4], tasks[task, 5]
            nt = tw1 - tw0
            T = (n1 - n0) * nt
            nv = (T + L - 1) // L
            for c in range(Cg):
                _gather_patches(x, D, Rs[tid], Ts, g * Cg + c, n0, n1, th, tw0, nt, pt, pl, VW)
                _input_transform(D, Vf, c * 36 * Ts, Ts, nv, VW, cst)
            for f0 in range(0, F3, FBK):
                fn = min(FBK, F3 - f0)
                for kk in range(min(fn, Fo - f0)):
                    _gather_dy_tiles(dy, D, Ts, g * Fo + f0 + kk, n0, n1, th, tw0, nt)
                    _dy_transform(D, Mf, kk * 36 * Ts, Ts, nv, VW, cst)
                last = min(fn, Fo - f0) - 1   # rows past Fo repeat the last filter's
                for e in range(NE):
                    Pe = Pk[g, e]
                    for c in range(0, Cg4, 4):
                        for f in range(0, fn, 3):
                            d0 = min(f, last) * 36 * Ts + e * Ts
                            d1 = min(f + 1, last) * 36 * Ts + e * Ts
                            d2 = min(f + 2, last) * 36 * Ts + e * Ts
                            gemm.dot_4x3(VW, Vf, e * Ts, voff, c, Mf, d0, d1, d2, T, Pe, f0 + f)


@kernel
def weight_grad_transform(dU, dw, cst):
    """dU (G, 36, Cg4, F3) (the reduced sums of :func:`winograd_weight_grad`) -> dw (G*Fo, Cg,
    3, 3): ``dw[g*Fo + f, c] = G^T dU[g, :, c, f] G`` (``G`` the 6x3 matrix of
    :func:`weight_transform`; ``cst`` as there)."""
    G = dU.shape[0]
    Ft, Cg = dw.shape[0], dw.shape[1]
    Fo = Ft // G
    q4, q6, q12, q24 = cst[4], cst[5], cst[6], cst[7]
    for gf in prange(G * Fo):
        g = gf // Fo
        f = gf - g * Fo
        for c in range(Cg):
            t = np.empty((6, 3), dw.dtype)
            for a in range(6):   # t[a, :] = dU[a, :] G  (rows)
                v0, v1, v2 = dU[g, 6 * a, c, f], dU[g, 6 * a + 1, c, f], dU[g, 6 * a + 2, c, f]
                v3, v4, v5 = dU[g, 6 * a + 3, c, f], dU[g, 6 * a + 4, c, f], \
                    dU[g, 6 * a + 5, c, f]
                t[a, 0] = q4 * v0 - q6 * (v1 + v2) + q24 * (v3 + v4)
                t[a, 1] = q6 * (v2 - v1) + q12 * (v3 - v4)
                t[a, 2] = q6 * (v3 + v4 - v1 - v2) + v5
            for j in range(3):   # dw[:, j] = G^T t[:, j]
                v0, v1, v2, v3, v4, v5 = t[0, j], t[1, j], t[2, j], t[3, j], t[4, j], t[5, j]
                dw[gf, c, 0, j] = q4 * v0 - q6 * (v1 + v2) + q24 * (v3 + v4)
                dw[gf, c, 1, j] = q6 * (v2 - v1) + q12 * (v3 - v4)
                dw[gf, c, 2, j] = q6 * (v3 + v4 - v1 - v2) + v5
