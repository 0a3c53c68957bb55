"""Winograd F(4x4, 3x3) convolution loop nests (stride 1, dilation 1, 3x3 kernels).

``y = A^T [ (G g G^T) . (B^T d B) ] A`` per 4x4 output tile: 36 products per tile and channel
pair instead of 144 (Lavin & Gray's points 0, +-1, +-2, inf; ``G`` holds the fractions, so
float64 stays exact to ~1e-14 relative).

- ``weight_transform``: ``U[g, e, c, f] = (G w[f, c] G^T)[e]`` (zero rows/columns pad ``Cg``/``Fo``
  to multiples of 4). Small; recomputed per call.
- ``winograd_forward``: one parallel loop over tasks, each a tile row ``th`` of a few images (or a
  run of tile columns of one image), ``T`` <= 128 tiles, written only by that task (no reductions
  across tasks, so results are bitwise identical for any thread count). Per task, in per-thread
  scratch (NNPACK's structure: all channels of a tile block transformed into L2, the product
  blocked by channels for L1):

  1. ``_input_transform``: per channel, the 6 input rows of all the task's images, zero padded,
     side by side; the column transform ``B^T`` on whole rows (unit stride, vectorised); the row
     transform ``B`` per tile; into ``V[c, e, j]``. Padding never enters as data: it is zeros
     written once per task.
  2. ``_product`` per block of ``FBK`` filters: ``M[k, e, :] = sum_c U[e, c, f] V[c, e, :]``,
     4 channels x 4 filters per pass over a run of tiles, the 4 output rows in L1 as
     accumulators (16 FMAs per 4 x-loads, 4 accumulator loads and 4 stores), channels in blocks
     whose rows stay in L1.
  3. ``_output_transform``: ``Y = A^T M A + bias`` as unit-stride loops over the tiles, then
     each output row interleaved back from its tiles and cropped at the right/bottom edge.

Scratch rows hold an odd number of 64-byte lines, and a tile's 36 values sit in consecutive
rows (``V[c, e, j]``, ``M[k, e, j]``): the first layout, ``V[e, c, j]`` with a 256-byte row,
put all 36 values of a tile in the same few L1 sets and made both transforms 4-40x slower.

Non-finite inputs: every output of a 4x4 tile mixes its whole 6x6 input patch, so a NaN or inf
input makes NaN in the whole tile(s) that read it (a superset of the outputs that are NaN with
the direct algorithm; other tiles are untouched).

Measured (AMD Zen 5, AVX-512, numba 0.68, float32, a busy shared 2-core machine):

- Accuracy (``tests/test_winograd.py::ACC_GRID``, unit-normal inputs, He-scaled weights, padding
  1): max abs error against a float64 reference of the same float32 inputs: Winograd 2.66e-5,
  direct kernel (``nbconv.functional.conv2d``) 6.40e-6, so 4.2x (the test asserts <= 10x);
  PyTorch 1.88e-6. float64 Winograd: 1.1e-14 relative.
- ``inspect_asm`` of ``_product``'s accumulate loop (float32 and float64): 16 ``vfmadd231p[sd]``
  on zmm per iteration, 4 zmm stores, 7 zmm loads, 5 of the 16 broadcast weights reloaded from
  the stack (LLVM keeps scalar copies of the weights for the remainder loop; no spill stores).
- Where the time goes (one thread, ``time.thread_time``, which on this busy machine is far more
  stable than wall time; torch's single-thread conv runs at up to ~190 direct GFLOP/s here, so
  a core's fp32 peak is >= 190 GFLOP/s, i.e. >= 3 GHz x 2 x 512-bit FMA): the product, alone
  with data in L1/L2, 70-100 GFLOP/s (37-50% of peak) for C = F = 16-128, T = 128; 55-60 for
  T = 64. Per task, input transform 30-45 ns per tile and channel, output transform 15-25 ns
  per tile and filter (was 110-160 on 8x8 maps before the row-by-row write-back), weight
  transform 0.36 ms for 128 x 128 channels (was 3.4 ms: a temporary array per (f, c) and 36
  stores per filter into one L1 set). On (64,64,16,16,64): product ~53% of the time, input
  transform ~31%, output ~16%.
- Whole forward, one thread, ms (Winograd / torch): (64,32,32,32,32) 12.2/10.1,
  (64,64,16,16,64) 11.0/7.6, (64,128,8,8,128) 9.5/6.4 (was 13.3/6.0), (128,16,32,32,16)
  7.6/7.6, (128,32,16,16,32) 5.1/4.0, (128,64,8,8,64) 4.6/3.3 (was 7.4/3.3),
  (64,128,16,16,128) 27.0/24.7: 0.67-0.99x torch (8x8 maps were 0.45x).
- Tried and dropped: product with 8 channels x 2 filters per pass (10 loads, 2 stores per 16
  FMAs): 0.65x of 4x4; 8 channels x 4 filters (two 4-channel sums per accumulator store):
  0.99-1.15x alone, inside the noise; a tile loop rounded up to a multiple of 16 (no remainder
  loop, so no stack reloads: 16 FMAs, 0 reloads per iteration): 0.94-1.13x, no gain, and
  0.72-1.0x combined with 8 channels; a fixed 16-tile inner loop (LLVM unrolls it fully before
  vectorising, SLP is off in Numba: scalar code, 0.2x); channel blocks of 4-128 rows, filter
  blocks 16-128, tasks of 64-512 tiles, V budgets 256 KiB-16 MiB, scratch rows of 9-15 cache
  lines, scratch on transparent huge pages: all within +-10%. Input transform per tile in
  scalar code (two 1-d passes in registers): 19-46 ns; rows split by column phase (in the copy
  from x, so both passes run with unit stride over the tiles): 2x slower (4 short strided copy
  loops per row and image); copy from x image by image instead of row by row: no change;
  the row transform on every window of 6 columns (unit stride, vectorised, 4x the flops), then
  the tiles' windows gathered into V by a table: 1.1-1.25x slower. Output transform per tile
  in scalar code: 13-17 ns. Paired sums in the accumulate (LLVM re-chains them): no change.
  Not tried: the channels-innermost product with scalar accumulators (its horizontal sums per
  4x4 block cost too much for C = 16-64), F(2x2,3x3) for tiny maps, the weight gradient in the
  Winograd domain (it stays direct), fusing the three passes per block of tiles.
"""
import numpy as np
from numba import get_thread_id, prange

from .._config import kernel, serial_kernel

ALPHA = 6  # transform tile side (m + r - 1 = 4 + 3 - 1)
NE = ALPHA * ALPHA  # 36 transform points
L1_BYTES = 16384  # the product's block of transformed input rows

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
@serial_kernel
def _bt(d0, d1, d2, d3, d4, d5, k2, k4, k5):
    """B^T d for one 6-vector (Lavin & Gray's points 0, +-1, +-2, inf)."""
    return (k4 * d0 - k5 * d2 + d4,
            (d3 + d4) - k4 * (d1 + d2),
            (d4 - d3) + k4 * (d1 - d2),
            (d4 - d2) + k2 * (d3 - d1),
            (d4 - d2) - k2 * (d3 - d1),
            k4 * d1 - k5 * d3 + d5)


@serial_kernel
def _at(m0, m1, m2, m3, m4, m5, k2, k4, k8):
    """A^T m for one 6-vector: 4 outputs."""
    s12 = m1 + m2
    d12 = m1 - m2
    s34 = m3 + m4
    d34 = m3 - m4
    return (m0 + s12 + s34,
            d12 + k2 * d34,
            s12 + k4 * s34,
            d12 + k8 * d34 + m5)


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
    """w (G*Fo, Cg, 3, 3) -> U (G, 36, Cp, Fp) = G w G^T per (f, c), transform point
    ``e = 6*a + b`` (rows and columns beyond ``Cg``/``Fo`` set to zero). ``cst`` holds the
    dtype's constants ``(2, 4, 5, 8, 1/4, 1/6, 1/12, 1/24)``. One task per (group, channel):
    its 36 rows ``U[g, :, c, :]`` computed in registers into a small buffer, then copied row
    by row (36 rows written per filter are 36 lines in one L1 set)."""
    G, _, Cp, Fp = U.shape
    Ft, Cg = w.shape[0], w.shape[1]
    Fo = Ft // G
    q4, q6, q12, q24 = cst[4], cst[5], cst[6], cst[7]
    zero = cst[0] - cst[0]
    for gc in prange(G * Cp):
        g = gc // Cp
        c = gc - g * Cp
        Ug = U[g]
        if c >= Cg:
            for e in range(NE):
                for f in range(Fp):
                    Ug[e, c, f] = zero
            continue
        B = np.empty((NE, Fo), w.dtype)  # the 36 rows of U lie in one L1 set (stride
        # Cp*Fp): computed into this buffer, then copied a row at a time
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
            Be = B[e]
            Ue = Ug[e, c]
            for f in range(Fo):
                Ue[f] = Be[f]
        for e in range(NE):
            for f in range(Fo, Fp):
                Ug[e, c, f] = zero


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
def _input_transform(x, V, ch0, Cg, n0, n1, th, tw0, nt, pt, pl, rb, cst):
    """As :func:`_input_transform`: per channel, the 6 zero padded input rows of all the task's
    images side by side in ``rb[l, n*Wb + u]`` (``Wb = 4*nt + 2``), their column transform
    ``B^T`` on whole rows at once (unit stride, vectorised) into ``rb[6 + a]``, then the row
    transform per tile. ``rb`` (12, >= (n1-n0)*Wb) is scratch."""
    H, W = x.shape[2], x.shape[3]
    C = x.shape[1]
    k2, k4, k5 = cst[0], cst[1], cst[2]
    zero = k2 - k2
    Wb = 4 * nt + 2
    nb = n1 - n0
    Lw = nb * Wb
    L = rb.shape[1]
    cx0 = 4 * tw0 - pl  # x column of rb[:, 0]
    u0 = min(Wb, max(0, -cx0))  # rb columns [u0, u1) lie inside x
    u1 = max(u0, min(Wb, W - cx0))
    nu = u1 - u0
    x1 = x.reshape(-1)
    rf = rb.reshape(-1)
    # padding (rows outside x, columns [0, u0) and [u1, Wb) of each image) is the same for
    # every channel: zero it once
    for l in range(6):
        for u in range(Lw):
            rb[l, u] = zero
    for c in range(Cg):
        for l in range(6):
            h = 4 * th + l - pt
            if h >= 0 and h < H:
                for n in range(n0, n1):
                    xb = np.uint64(((n * C + ch0 + c) * H + h) * W + cx0 + u0)
                    rbase = np.uint64(l * L + (n - n0) * Wb + u0)
                    for u in range(nu):
                        rf[rbase + np.uint64(u)] = x1[xb + np.uint64(u)]
        # R[a] = sum_l B^T[a, l] row_l, all images' rows at once
        d0, d1, d2, d3, d4, d5 = rb[0, :Lw], rb[1, :Lw], rb[2, :Lw], rb[3, :Lw], \
            rb[4, :Lw], rb[5, :Lw]
        e0, e1, e2, e3, e4, e5 = rb[6, :Lw], rb[7, :Lw], rb[8, :Lw], rb[9, :Lw], \
            rb[10, :Lw], rb[11, :Lw]
        for u in range(Lw):
            e0[u], e1[u], e2[u], e3[u], e4[u], e5[u] = _bt(d0[u], d1[u], d2[u], d3[u],
                                                           d4[u], d5[u], k2, k4, k5)
        for a in range(6):
            r = rb[6 + a]
            ea = V[c, 6 * a:6 * a + 6]
            j = 0
            for n in range(nb):
                for tw in range(nt):
                    b = n * Wb + 4 * tw
                    v0, v1, v2, v3, v4, v5 = _bt(r[b], r[b + 1], r[b + 2], r[b + 3], r[b + 4],
                                                 r[b + 5], k2, k4, k5)
                    ea[0, j] = v0
                    ea[1, j] = v1
                    ea[2, j] = v2
                    ea[3, j] = v3
                    ea[4, j] = v4
                    ea[5, j] = v5
                    j += 1


@serial_kernel
def _product(V, U, M, f0, fn, T, CB):
    """M[k, e, :T] = sum_c U[e, c, f0 + k] * V[c, e, :T] for k < fn (fn % 4 == 0): 4 channels
    x 4 filters per pass over a run of T tiles, the 4 output rows (L1) as accumulators, over
    blocks of CB channels (their rows of this transform point stay in L1)."""
    Cp = V.shape[0]
    for e in range(NE):
        Ue = U[e]
        for cb in range(0, Cp, CB):  # CB channels' rows (of this e) stay in L1
            for k in range(0, fn, 4):
                f = f0 + k
                m0 = M[k, e, :T]
                m1 = M[k + 1, e, :T]
                m2 = M[k + 2, e, :T]
                m3 = M[k + 3, e, :T]
                for c in range(cb, min(Cp, cb + CB), 4):
                    x0 = V[c, e, :T]
                    x1 = V[c + 1, e, :T]
                    x2 = V[c + 2, e, :T]
                    x3 = V[c + 3, e, :T]
                    w00, w01, w02, w03 = Ue[c, f], Ue[c, f + 1], Ue[c, f + 2], Ue[c, f + 3]
                    w10, w11, w12, w13 = Ue[c + 1, f], Ue[c + 1, f + 1], Ue[c + 1, f + 2], \
                        Ue[c + 1, f + 3]
                    w20, w21, w22, w23 = Ue[c + 2, f], Ue[c + 2, f + 1], Ue[c + 2, f + 2], \
                        Ue[c + 2, f + 3]
                    w30, w31, w32, w33 = Ue[c + 3, f], Ue[c + 3, f + 1], Ue[c + 3, f + 2], \
                        Ue[c + 3, f + 3]
                    if c == 0:
                        for q in range(T):
                            a0, a1, a2, a3 = x0[q], x1[q], x2[q], x3[q]
                            m0[q] = w00 * a0 + w10 * a1 + w20 * a2 + w30 * a3
                            m1[q] = w01 * a0 + w11 * a1 + w21 * a2 + w31 * a3
                            m2[q] = w02 * a0 + w12 * a1 + w22 * a2 + w32 * a3
                            m3[q] = w03 * a0 + w13 * a1 + w23 * a2 + w33 * a3
                    else:
                        for q in range(T):
                            a0, a1, a2, a3 = x0[q], x1[q], x2[q], x3[q]
                            m0[q] += w00 * a0 + w10 * a1 + w20 * a2 + w30 * a3
                            m1[q] += w01 * a0 + w11 * a1 + w21 * a2 + w31 * a3
                            m2[q] += w02 * a0 + w12 * a1 + w22 * a2 + w32 * a3
                            m3[q] += w03 * a0 + w13 * a1 + w23 * a2 + w33 * a3


@serial_kernel
def _output_transform(M, y, bias, fy0, fn, n0, n1, th, tw0, nt, rb, S, Y, cst):
    """As :func:`_output_transform`, vectorised over the task's tiles: ``P = M A`` then
    ``Y = A^T P + bias`` as unit-stride loops over the tiles ``j``, then
    each image's output rows interleaved back from the tiles (``rb`` (>= 4*nt,), S (6, 4, >= T)
    and Y (4, 4, >= T) scratch)."""
    OH, OW = y.shape[2], y.shape[3]
    k2, k4, k8 = cst[0], cst[1], cst[3]
    T = (n1 - n0) * nt
    ox0 = 4 * tw0
    ncol = min(4 * nt, OW - ox0)
    nrow = min(4, OH - 4 * th)
    for k in range(fn):
        bb = bias[fy0 + k]
        for i in range(6):  # S[i, b] = sum_k' M[i, k'] A[k', b] (rows i of the 6x6 tile)
            m0, m1, m2, m3, m4, m5 = M[k, 6 * i, :T], M[k, 6 * i + 1, :T], \
                M[k, 6 * i + 2, :T], M[k, 6 * i + 3, :T], M[k, 6 * i + 4, :T], \
                M[k, 6 * i + 5, :T]
            p0, p1, p2, p3 = S[i, 0, :T], S[i, 1, :T], S[i, 2, :T], S[i, 3, :T]
            for j in range(T):
                p0[j], p1[j], p2[j], p3[j] = _at(m0[j], m1[j], m2[j], m3[j], m4[j], m5[j],
                                                 k2, k4, k8)
        for b in range(4):  # Y[a, b] = sum_i A^T[a, i] S[i, b] + bias, into Y[a, b]
            t0, t1, t2, t3, t4, t5 = S[0, b, :T], S[1, b, :T], S[2, b, :T], S[3, b, :T], \
                S[4, b, :T], S[5, b, :T]
            o0, o1, o2, o3 = Y[0, b, :T], Y[1, b, :T], Y[2, b, :T], Y[3, b, :T]
            for j in range(T):
                r0, r1, r2, r3 = _at(t0[j], t1[j], t2[j], t3[j], t4[j], t5[j], k2, k4, k8)
                o0[j] = r0 + bb
                o1[j] = r1 + bb
                o2[j] = r2 + bb
                o3[j] = r3 + bb
        # Y back into y image by image, row by row (each output row written once, in order;
        # flat indices, no slices: a slice per row cost more than the row on small maps)
        Yf = Y.reshape(-1)
        yf = y.reshape(-1)
        Tsy = Y.shape[2]
        Yr = Y.shape[1] * Tsy
        for n in range(n0, n1):
            j0 = (n - n0) * nt
            for a in range(nrow):
                yb = (((n * y.shape[1]) + fy0 + k) * OH + 4 * th + a) * OW + ox0
                s0 = a * Yr + j0
                if ncol == 4 * nt:
                    for tw in range(nt):
                        d = np.uint64(yb + 4 * tw)
                        s = np.uint64(s0 + tw)
                        yf[d] = Yf[s]
                        yf[d + np.uint64(1)] = Yf[s + np.uint64(Tsy)]
                        yf[d + np.uint64(2)] = Yf[s + np.uint64(2 * Tsy)]
                        yf[d + np.uint64(3)] = Yf[s + np.uint64(3 * Tsy)]
                else:
                    for tw in range(nt):
                        for b in range(min(4, ncol - 4 * tw)):
                            yf[np.uint64(yb + 4 * tw + b)] = Yf[np.uint64(s0 + b * Tsy + tw)]


@kernel
def winograd_forward(x, U, bias, y, tasks, pt, pl, Vs, Ms, Rs, Qs, cst):
    """x (N, G*Cg, H, W); U (G, 36, Cp, Fp) from :func:`weight_transform`; bias (G*Fo,);
    y (N, G*Fo, OH, OW) with ``y[n, f, oh, ow] = bias[f] + sum xpad[n, c, oh + i, ow + j] *
    w[f, c, i, j]`` where ``xpad`` is ``x`` shifted by ``(pt, pl)`` and zero outside (any
    integers, so also a crop). tasks (T, 6) rows ``(g, th, n0, n1, tw0, tw1)``: tile row ``th``
    of images ``[n0, n1)``, tile columns ``[tw0, tw1)``; every output element lies in exactly
    one task's tiles. Scratch per thread (``Ts`` >= the tiles of a task): Vs (threads, Cp, 36,
    Ts), Ms (threads, FBK, 36, Ts) (``FBK`` filters, a multiple of 4, share one pass over the
    transformed input), Rs (threads, 12, >= images * (4 * tile columns + 2)), Qs (threads, 2,
    6, 6, Ts)."""
    G, _, Cp, Fp = U.shape
    Cg = x.shape[1] // G
    Fo = y.shape[1] // G
    FBK = Ms.shape[1]
    zero = cst[0] - cst[0]
    CB = max(4, L1_BYTES // (Vs.shape[3] * x.itemsize) // 4 * 4)
    for task in prange(tasks.shape[0]):
        g, th, n0, n1, tw0, tw1 = tasks[task, 0], tasks[task, 1], tasks[task, 2], \
            tasks[task, 3], tasks[task, 4], tasks[task, 5]
        nt = tw1 - tw0
        T = (n1 - n0) * nt
        tid = get_thread_id()
        V = Vs[tid]
        M = Ms[tid]
        rb = Rs[tid]
        for c in range(Cg, Cp):  # padding channels: zero rows (zero weights meet them)
            for e in range(NE):
                for j in range(T):
                    V[c, e, j] = zero
        _input_transform(x, V, g * Cg, Cg, n0, n1, th, tw0, nt, pt, pl, rb, cst)
        for f0 in range(0, Fp, FBK):
            fn = min(FBK, Fp - f0)
            _product(V, U[g], M, f0, fn, T, CB)
            _output_transform(M, y, bias, g * Fo + f0, min(fn, Fo - f0), n0, n1, th, tw0,
                                nt, rb[0], Qs[tid, 0], Qs[tid, 1], cst)
