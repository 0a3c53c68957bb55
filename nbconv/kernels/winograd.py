"""Winograd F(4x4, 3x3) convolution loop nests (stride 1, dilation 1, 3x3 kernels).

Draft: see the module docstring's final version at the end of the work.
"""
import numpy as np
from numba import get_thread_id, prange

from .._config import kernel, serial_kernel

ALPHA = 6  # transform tile side (m + r - 1 = 4 + 3 - 1)
NE = ALPHA * ALPHA  # 36 transform points
L1_BYTES = 16384  # the product's block of transformed input rows


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
@kernel
def weight_transform(w, U, cst):
    """w (G*Fo, Cg, 3, 3) -> U (G, 36, Cp, Fp) = G w G^T per (f, c), transform point
    ``e = 6*a + b`` (rows and columns beyond ``Cg``/``Fo`` set to zero). ``cst`` holds the
    dtype's constants ``(2, 4, 5, 8, 1/4, 1/6, 1/12, 1/24)``."""
    G, _, Cp, Fp = U.shape
    Ft, Cg = w.shape[0], w.shape[1]
    Fo = Ft // G
    q4, q6, q12, q24 = cst[4], cst[5], cst[6], cst[7]
    zero = cst[0] - cst[0]
    for gf in prange(G * Fp):
        g = gf // Fp
        f = gf - g * Fp
        for c in range(Cp):
            if f >= Fo or c >= Cg:
                for e in range(NE):
                    U[g, e, c, f] = zero
                continue
            wk = w[g * Fo + f, c]
            t = np.empty((6, 3), w.dtype)
            for j in range(3):
                g0, g1, g2 = wk[0, j], wk[1, j], wk[2, j]
                t[0, j] = q4 * g0
                t[1, j] = -q6 * (g0 + g1 + g2)
                t[2, j] = -q6 * (g0 - g1 + g2)
                t[3, j] = q24 * g0 + q12 * g1 + q6 * g2
                t[4, j] = q24 * g0 - q12 * g1 + q6 * g2
                t[5, j] = g2
            for a in range(6):
                g0, g1, g2 = t[a, 0], t[a, 1], t[a, 2]
                U[g, 6 * a + 0, c, f] = q4 * g0
                U[g, 6 * a + 1, c, f] = -q6 * (g0 + g1 + g2)
                U[g, 6 * a + 2, c, f] = -q6 * (g0 - g1 + g2)
                U[g, 6 * a + 3, c, f] = q24 * g0 + q12 * g1 + q6 * g2
                U[g, 6 * a + 4, c, f] = q24 * g0 - q12 * g1 + q6 * g2
                U[g, 6 * a + 5, c, f] = g2


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
    """V[c, e, (n-n0)*nt + tw - tw0] = (B^T d B)[e] for the 6x6 patch ``d`` of channel
    ``ch0 + c`` of image ``n`` whose top-left corner is ``(4*th - pt, 4*tw - pl)`` (zero outside
    ``x``); ``rb`` (6, >= 4*nt + 2) is scratch."""
    H, W = x.shape[2], x.shape[3]
    k2, k4, k5 = cst[0], cst[1], cst[2]
    zero = k2 - k2
    Wb = 4 * nt + 2
    cx0 = 4 * tw0 - pl  # x column of rb[:, 0]
    u0 = min(Wb, max(0, -cx0))  # rb columns [u0, u1) lie inside x
    u1 = max(u0, min(Wb, W - cx0))
    for c in range(Cg):
        for n in range(n0, n1):
            for l in range(6):
                h = 4 * th + l - pt
                r = rb[l]
                if h < 0 or h >= H:
                    for u in range(Wb):
                        r[u] = zero
                else:
                    src = x[n, ch0 + c, h, cx0 + u0:cx0 + u1]
                    for u in range(u0):
                        r[u] = zero
                    dst = r[u0:u1]
                    for u in range(u1 - u0):
                        dst[u] = src[u]
                    for u in range(u1, Wb):
                        r[u] = zero
            j0 = (n - n0) * nt
            r0, r1, r2, r3, r4, r5 = rb[0], rb[1], rb[2], rb[3], rb[4], rb[5]
            for tw in range(nt):
                b = 4 * tw
                # columns first (B^T along each of the 6 rows)
                a00, a01, a02, a03, a04, a05 = _bt(r0[b], r0[b + 1], r0[b + 2], r0[b + 3],
                                                   r0[b + 4], r0[b + 5], k2, k4, k5)
                a10, a11, a12, a13, a14, a15 = _bt(r1[b], r1[b + 1], r1[b + 2], r1[b + 3],
                                                   r1[b + 4], r1[b + 5], k2, k4, k5)
                a20, a21, a22, a23, a24, a25 = _bt(r2[b], r2[b + 1], r2[b + 2], r2[b + 3],
                                                   r2[b + 4], r2[b + 5], k2, k4, k5)
                a30, a31, a32, a33, a34, a35 = _bt(r3[b], r3[b + 1], r3[b + 2], r3[b + 3],
                                                   r3[b + 4], r3[b + 5], k2, k4, k5)
                a40, a41, a42, a43, a44, a45 = _bt(r4[b], r4[b + 1], r4[b + 2], r4[b + 3],
                                                   r4[b + 4], r4[b + 5], k2, k4, k5)
                a50, a51, a52, a53, a54, a55 = _bt(r5[b], r5[b + 1], r5[b + 2], r5[b + 3],
                                                   r5[b + 4], r5[b + 5], k2, k4, k5)
                j = j0 + tw
                # then rows: V[6*i + k] = (B^T)[i, :] . a[:, k]
                v = _bt(a00, a10, a20, a30, a40, a50, k2, k4, k5)
                V[c, 0, j], V[c, 6, j], V[c, 12, j] = v[0], v[1], v[2]
                V[c, 18, j], V[c, 24, j], V[c, 30, j] = v[3], v[4], v[5]
                v = _bt(a01, a11, a21, a31, a41, a51, k2, k4, k5)
                V[c, 1, j], V[c, 7, j], V[c, 13, j] = v[0], v[1], v[2]
                V[c, 19, j], V[c, 25, j], V[c, 31, j] = v[3], v[4], v[5]
                v = _bt(a02, a12, a22, a32, a42, a52, k2, k4, k5)
                V[c, 2, j], V[c, 8, j], V[c, 14, j] = v[0], v[1], v[2]
                V[c, 20, j], V[c, 26, j], V[c, 32, j] = v[3], v[4], v[5]
                v = _bt(a03, a13, a23, a33, a43, a53, k2, k4, k5)
                V[c, 3, j], V[c, 9, j], V[c, 15, j] = v[0], v[1], v[2]
                V[c, 21, j], V[c, 27, j], V[c, 33, j] = v[3], v[4], v[5]
                v = _bt(a04, a14, a24, a34, a44, a54, k2, k4, k5)
                V[c, 4, j], V[c, 10, j], V[c, 16, j] = v[0], v[1], v[2]
                V[c, 22, j], V[c, 28, j], V[c, 34, j] = v[3], v[4], v[5]
                v = _bt(a05, a15, a25, a35, a45, a55, k2, k4, k5)
                V[c, 5, j], V[c, 11, j], V[c, 17, j] = v[0], v[1], v[2]
                V[c, 23, j], V[c, 29, j], V[c, 35, j] = v[3], v[4], v[5]


@serial_kernel
def _input_transform2(x, V, ch0, Cg, n0, n1, th, tw0, nt, pt, pl, rb, cst):
    """As :func:`_input_transform`, with the column transform run on whole padded rows (unit
    stride, vectorised) and only the row transform per tile: ``rb`` (12, >= 4*nt + 2) holds the
    6 zero padded input rows and then their ``B^T`` combinations."""
    H, W = x.shape[2], x.shape[3]
    C = x.shape[1]
    k2, k4, k5 = cst[0], cst[1], cst[2]
    zero = k2 - k2
    Wb = 4 * nt + 2
    L = rb.shape[1]
    cx0 = 4 * tw0 - pl  # x column of rb[:, 0]
    u0 = min(Wb, max(0, -cx0))  # rb columns [u0, u1) lie inside x
    u1 = max(u0, min(Wb, W - cx0))
    nu = u1 - u0
    x1 = x.reshape(-1)
    rf = rb.reshape(-1)
    for l in range(6):
        for u in range(Wb):
            rb[l, u] = zero
    for c in range(Cg):
        for n in range(n0, n1):
            for l in range(6):
                h = 4 * th + l - pt
                if h >= 0 and h < H:  # rows outside x stay zero, as do columns [0, u0), [u1, Wb)
                    xb = np.uint64(((n * C + ch0 + c) * H + h) * W + cx0 + u0)
                    rbase = np.uint64(l * L + u0)
                    for u in range(nu):
                        rf[rbase + np.uint64(u)] = x1[xb + np.uint64(u)]
            # R[a] = sum_l B^T[a, l] row_l, whole rows at once
            d0, d1, d2, d3, d4, d5 = rb[0, :Wb], rb[1, :Wb], rb[2, :Wb], rb[3, :Wb], \
                rb[4, :Wb], rb[5, :Wb]
            e0, e1, e2, e3, e4, e5 = rb[6, :Wb], rb[7, :Wb], rb[8, :Wb], rb[9, :Wb], \
                rb[10, :Wb], rb[11, :Wb]
            for u in range(Wb):
                e0[u], e1[u], e2[u], e3[u], e4[u], e5[u] = _bt(d0[u], d1[u], d2[u], d3[u],
                                                               d4[u], d5[u], k2, k4, k5)
            j0 = (n - n0) * nt
            for a in range(6):
                r = rb[6 + a]
                ea = V[c, 6 * a:6 * a + 6]
                for tw in range(nt):
                    b = 4 * tw
                    v0, v1, v2, v3, v4, v5 = _bt(r[b], r[b + 1], r[b + 2], r[b + 3], r[b + 4],
                                                 r[b + 5], k2, k4, k5)
                    j = j0 + tw
                    ea[0, j] = v0
                    ea[1, j] = v1
                    ea[2, j] = v2
                    ea[3, j] = v3
                    ea[4, j] = v4
                    ea[5, j] = v5


@serial_kernel
def _input_transform3(x, V, ch0, Cg, n0, n1, th, tw0, nt, pt, pl, rb, cst):
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
def _output_transform(M, y, bias, fy0, fn, n0, n1, th, tw0, nt, rb, cst):
    """y[n, fy0 + k, 4*th + a, 4*tw + b] = bias[fy0 + k] + (A^T M A)[a, b] of tile
    ``j = (n-n0)*nt + tw - tw0`` for k < fn, cropped to y; ``rb`` (4, >= 4*nt) is scratch."""
    OH, OW = y.shape[2], y.shape[3]
    k2, k4, k8 = cst[0], cst[1], cst[3]
    ox0 = 4 * tw0
    ncol = min(4 * nt, OW - ox0)
    nrow = min(4, OH - 4 * th)
    rb0, rb1, rb2, rb3 = rb[0], rb[1], rb[2], rb[3]
    for k in range(fn):
        bb = bias[fy0 + k]
        for n in range(n0, n1):
            j0 = (n - n0) * nt
            for tw in range(nt):
                j = j0 + tw
                # rows first: t[i] = A^T m[i, :] (4 values) for the 6 rows i
                t00, t01, t02, t03 = _at(M[k, 0, j], M[k, 1, j], M[k, 2, j], M[k, 3, j],
                                         M[k, 4, j], M[k, 5, j], k2, k4, k8)
                t10, t11, t12, t13 = _at(M[k, 6, j], M[k, 7, j], M[k, 8, j], M[k, 9, j],
                                         M[k, 10, j], M[k, 11, j], k2, k4, k8)
                t20, t21, t22, t23 = _at(M[k, 12, j], M[k, 13, j], M[k, 14, j], M[k, 15, j],
                                         M[k, 16, j], M[k, 17, j], k2, k4, k8)
                t30, t31, t32, t33 = _at(M[k, 18, j], M[k, 19, j], M[k, 20, j], M[k, 21, j],
                                         M[k, 22, j], M[k, 23, j], k2, k4, k8)
                t40, t41, t42, t43 = _at(M[k, 24, j], M[k, 25, j], M[k, 26, j], M[k, 27, j],
                                         M[k, 28, j], M[k, 29, j], k2, k4, k8)
                t50, t51, t52, t53 = _at(M[k, 30, j], M[k, 31, j], M[k, 32, j], M[k, 33, j],
                                         M[k, 34, j], M[k, 35, j], k2, k4, k8)
                b = 4 * tw
                for col in range(4):
                    if col == 0:
                        s = _at(t00, t10, t20, t30, t40, t50, k2, k4, k8)
                    elif col == 1:
                        s = _at(t01, t11, t21, t31, t41, t51, k2, k4, k8)
                    elif col == 2:
                        s = _at(t02, t12, t22, t32, t42, t52, k2, k4, k8)
                    else:
                        s = _at(t03, t13, t23, t33, t43, t53, k2, k4, k8)
                    rb0[b + col] = s[0] + bb
                    rb1[b + col] = s[1] + bb
                    rb2[b + col] = s[2] + bb
                    rb3[b + col] = s[3] + bb
            for a in range(nrow):
                src = rb[a]
                dst = y[n, fy0 + k, 4 * th + a, ox0:ox0 + ncol]
                for u in range(ncol):
                    dst[u] = src[u]


@serial_kernel
def _output_transform_v(M, y, bias, fy0, fn, n0, n1, th, tw0, nt, rb, S, Y, cst):
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
        for n in range(n0, n1):
            j0 = (n - n0) * nt
            for a in range(nrow):
                y0 = Y[a, 0, j0:j0 + nt]
                y1 = Y[a, 1, j0:j0 + nt]
                y2 = Y[a, 2, j0:j0 + nt]
                y3 = Y[a, 3, j0:j0 + nt]
                for tw in range(nt):
                    rb[4 * tw] = y0[tw]
                    rb[4 * tw + 1] = y1[tw]
                    rb[4 * tw + 2] = y2[tw]
                    rb[4 * tw + 3] = y3[tw]
                dst = y[n, fy0 + k, 4 * th + a, ox0:ox0 + ncol]
                for u in range(ncol):
                    dst[u] = rb[u]


@kernel
def winograd_forward(x, U, bias, y, tasks, pt, pl, Vs, Ms, Rs, Qs, cst):
    """x (N, G*Cg, H, W); U (G, 36, Cp, Fp) from :func:`weight_transform`; bias (G*Fo,);
    y (N, G*Fo, OH, OW) with ``y[n, f, oh, ow] = bias[f] + sum xpad[n, c, oh + i, ow + j] *
    w[f, c, i, j]`` where ``xpad`` is ``x`` shifted by ``(pt, pl)`` and zero outside (any
    integers, so also a crop). tasks (T, 6) rows ``(g, th, n0, n1, tw0, tw1)``: tile row ``th``
    of images ``[n0, n1)``, tile columns ``[tw0, tw1)``; every output element lies in exactly
    one task's tiles. Scratch per thread: Vs (threads, Cp, 36, Ts) zero (its rows ``c >= Cg``
    stay zero), Ms (threads, FBK, 36, Ts) (``FBK`` filters, a multiple of 4, share one pass over
    the transformed input), Rs (threads, 12, >= images*(4*tile columns + 2)), Qs (threads, 2, 6, 6, Ts), with
    ``Ts`` >= the tiles of a task."""
    G, _, Cp, Fp = U.shape
    Cg = x.shape[1] // G
    Fo = y.shape[1] // G
    FBK = Ms.shape[1]
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
        _input_transform3(x, V, g * Cg, Cg, n0, n1, th, tw0, nt, pt, pl, rb, cst)
        for f0 in range(0, Fp, FBK):
            fn = min(FBK, Fp - f0)
            _product(V, U[g], M, f0, fn, T, CB)
            if nt >= 4:  # vectorised over the tiles (slower for short image rows)
                _output_transform_v(M, y, bias, g * Fo + f0, min(fn, Fo - f0), n0, n1, th,
                                    tw0, nt, rb[0], Qs[tid, 0], Qs[tid, 1], cst)
            else:
                _output_transform(M, y, bias, g * Fo + f0, min(fn, Fo - f0), n0, n1, th, tw0,
                                  nt, rb, cst)
