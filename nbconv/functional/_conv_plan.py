"""The convolution planner: sizes, layouts and task tables of the direct kernels
(:mod:`nbconv.kernels.conv`), for the engines that run them (:mod:`nbconv.functional.direct`,
:mod:`nbconv.functional.pointwise`). It decides nothing about *which* engine runs: that is
:func:`nbconv.functional._dispatch.select_engine`.

A :class:`ConvGeometry` holds the sizes of one validated convolution and the geometry of the
*planes* layout: the input zero padded, split into the stride phase planes that the kernel taps
read (``xq[c, a, b, t, u] = xpad[c, a + sh*t, b + sw*u]``; all ``sh*sw`` of them but for
kernels smaller than the stride) and laid out batch-interleaved, ``(C, phases, Hq, N, Wq)``
flattened with a zero tail. Every (channel, tap) pair is then one flat offset
(:meth:`ConvGeometry.offsets`) and a block of output rows one contiguous run (:func:`tasks`),
so all inner loops are long and unit-stride, for any image size. The input gradient is the
same gather kernel run on zero padded ``dy`` with the flipped, channel-swapped weights, once per
stride phase of ``dx``, with only the taps that reach that phase (:func:`dx_plan`). The weight
gradient reduces over pixels in chunks fixed by the shapes (:func:`dweight_chunks`) with
private partial sums that :func:`reduce_partials` adds in a fixed order, so every result is
bitwise identical across runs and thread counts.

Work done here in NumPy rather than in a kernel, each small next to the kernels' work:
:func:`reduce_partials` (the partial sums of the weight and bias gradients) and the weight
re-orderings (:func:`fwd_weights`, in :func:`dx_plan`). :func:`threads_for_copy` runs small
layout copies on the calling thread.

Names: ``geom`` is a geometry, ``g`` a group index, ``G`` the number of groups, ``Fg`` / ``Cg``
the filters / input channels per group, ``n_filters`` all filters.
"""
import contextlib
import functools

import numba
import numpy as np

from .._checks import conv_out_size
from .._config import (CONV_BLOCK_BYTES, CONV_DW_BLOCK_BYTES, CONV_TASK_BYTES, MIN_TASKS,
                       SMALL_COPY_BYTES)
from ..kernels import simd

P0 = np.zeros(1, np.int64)  # the single phase of a stride-1 layout
TAIL = 96  # a buffer's zero tail past its last row: conv_rows reads up to three vectors (of at
#            most 16 lanes) past a task's last pixel, plus the 32 the layouts always had


# ---- geometry ---------------------------------------------------------------------------------

class ConvGeometry:
    """Sizes of one convolution, already validated, and the geometry of its planes layout.

    ``x (N, C, H, W)``, ``weight (n_filters, Cg, KH, KW)`` in ``G`` groups of ``Fg`` filters,
    stride ``(sh, sw)``, dilation ``(dh, dw)``, padding ``(pt, pb, pl, pr)``, output
    ``(N, n_filters, OH, OW)`` (``y_shape``). The planes hold ``Hq`` rows of ``Wq`` values per
    image, channel and stride phase; ``pha`` / ``phb`` are the row / column phases some tap
    reads.
    """

    def __init__(self, x_shape, w_shape, stride, pads, dilation, groups, dtype):
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        self.N, self.C, self.H, self.W = self.x_shape
        self.n_filters, self.Cg, self.KH, self.KW = self.w_shape
        self.G = groups
        self.Fg = self.n_filters // groups
        self.sh, self.sw = stride
        self.dh, self.dw = dilation
        self.pt, self.pb, self.pl, self.pr = pads
        self.dtype = np.dtype(dtype)
        self.OH = conv_out_size(self.H, self.KH, self.sh, self.pt, self.pb, self.dh)
        self.OW = conv_out_size(self.W, self.KW, self.sw, self.pl, self.pr, self.dw)
        self.y_shape = (self.N, self.n_filters, self.OH, self.OW)
        self.Hq = -(-(self.H + self.pt + self.pb) // self.sh)
        # Row length per image in the planes. With stride 1 along W the next image's left zero
        # padding (and, after a plane's last row, the next plane's) doubles as this image's
        # right padding when every window still fits: fewer computed-and-dropped columns.
        self.Wq = -(-(self.W + self.pl + self.pr) // self.sw)
        if self.sw == 1 and self.OW <= self.W + self.pl and \
                self.OW - 1 + (self.KW - 1) * self.dw < self.W + 2 * self.pl:
            self.Wq = self.W + self.pl
        # the stride phases that some kernel tap reads (all of them unless e.g. a 1x1 kernel)
        self.pha = np.array(sorted({i * self.dh % self.sh for i in range(self.KH)}), np.int64)
        self.phb = np.array(sorted({j * self.dw % self.sw for j in range(self.KW)}), np.int64)

    @functools.cached_property
    def offsets(self):
        """Flat offset of each reduction element ``e = (c, i, j)`` in the planes (relative to
        its group's start), int64, zero padded to a multiple of 4."""
        c = np.arange(self.Cg)[:, None, None]
        ih = np.arange(self.KH)[None, :, None] * self.dh
        jw = np.arange(self.KW)[None, None, :] * self.dw
        ia = np.searchsorted(self.pha, ih % self.sh)
        ib = np.searchsorted(self.phb, jw % self.sw)
        off = ((((c * len(self.pha) + ia) * len(self.phb) + ib) * self.Hq + ih // self.sh)
               * (self.N * self.Wq) + jw // self.sw).reshape(-1)
        out = np.zeros(pad4(off.size), np.int64)
        out[:off.size] = off
        return out

    @property
    def group_stride(self):
        """Distance between two groups' first elements in the planes."""
        return self.Cg * len(self.pha) * len(self.phb) * self.Hq * self.N * self.Wq

    @property
    def pointwise(self):
        """A 1x1 kernel without padding: every output reads one input pixel per channel."""
        return (self.KH, self.KW, self.pt, self.pb, self.pl, self.pr) == (1, 1, 0, 0, 0, 0)


def pad4(n):
    """``n`` rounded up to a multiple of 4 (the kernels' register block)."""
    return -(-n // 4) * 4


# ---- tables -----------------------------------------------------------------------------------

def rows_per_task(most, Wx, lanes):
    """Rows of ``Wx`` pixels per task, at most ``most``: ``conv_rows`` computes whole blocks of
    3 vectors, so prefer a count whose pixels fill them (the extra columns are computed and
    dropped): the largest with at most 5% extra, else the one with the least extra among the
    upper half."""
    block = 3 * lanes
    extra = lambda r: (-(r * Wx) % block) / (r * Wx)  # noqa: E731
    for r in range(most, 0, -1):
        if extra(r) <= 0.05:
            return r
    return min(range(most, (most - 1) // 2, -1), key=extra)


def tasks(rows_per_phase, G, Wx, itemsize, outputs, images=1):
    """Task table ``(T, 5)`` int64 of rows ``(p, g, n0, r0, r1)`` for
    :func:`nbconv.kernels.conv.conv_rows`: whole rows of ``Wx`` pixels, as many as keep the
    task's ``outputs`` (per group) x pixels within ``CONV_TASK_BYTES`` (and fill whole blocks of
    3 vectors, :func:`rows_per_task`), at least ``MIN_TASKS`` tasks when there are enough
    rows; ``images > 1``: per-image tasks (``n0``) of one-image planes."""
    total = sum(rows_per_phase) * images
    rows = max(1, CONV_TASK_BYTES // (itemsize * Wx * pad4(outputs)))
    rows = rows_per_task(max(1, min(rows, max(rows_per_phase, default=1))), Wx,
                          simd.WIDTH.nbytes // itemsize)
    while rows > 1 and G * -(-total // rows) < MIN_TASKS:
        rows = (rows + 1) // 2
    out = [(p, g, n, r0, min(R, r0 + rows)) for p, R in enumerate(rows_per_phase)
           for n in range(images) for g in range(G) for r0 in range(0, R, rows)]
    return np.array(out, np.int64).reshape(-1, 5)


def nchw_rows(geom):
    """The ``"nchw"`` path reads NCHW directly: each image plane is viewed as ``(H/k, k*W)``
    rows of at most about ``CONV_BLOCK_BYTES`` (``k`` divides ``H``)."""
    k = max([d for d in range(1, geom.H + 1) if geom.H % d == 0
             and d * geom.W * geom.dtype.itemsize <= CONV_BLOCK_BYTES] or [1])
    return geom.H // k, k * geom.W


def blocks_of_4(wt):
    """(..., E, Fp) -> (..., Fp/4, E, 4): each block of 4 outputs' weights contiguous, as
    :func:`nbconv.kernels.conv.conv_rows` reads them (``Fp`` a multiple of 4)."""
    *lead, E, Fp = wt.shape
    return np.ascontiguousarray(wt.reshape(*lead, E, Fp // 4, 4).swapaxes(-3, -2))


def fwd_weights(weight, geom):
    """weight (n_filters, Cg, KH, KW) -> (G, Fp/4, E, 4): ``wt[g, f // 4, e, f % 4] =
    weight[g*Fg + f, e]`` (``e = (c, i, j)``; ``Fp`` is ``Fg`` rounded up to a multiple of 4,
    the register block of :func:`nbconv.kernels.conv.conv_rows`; the extra outputs are
    zero)."""
    E = geom.Cg * geom.KH * geom.KW
    wt = np.zeros((geom.G, E, pad4(geom.Fg)), geom.dtype)
    wt[:, :, :geom.Fg] = weight.reshape(geom.G, geom.Fg, E).transpose(0, 2, 1)
    return blocks_of_4(wt)


def phase_taps(size, s, d, k, p_lo):
    """Per stride phase ``r`` of the input axis that some kernel tap reaches (at most ``k`` of
    the ``min(s, size)`` phases, whatever the stride; the others get no gradient), in
    increasing ``r``: ``(r, Q, taps, rel)``: input positions ``r + s*q`` (``q < Q``) get kernel
    taps ``taps`` reading ``dy[q + rel]``."""
    out = []
    for r in sorted(r for r in {(i * d - p_lo) % s for i in range(k)} if r < size):
        taps = [i for i in range(k) if (r + p_lo - i * d) % s == 0]
        rel = [(r + p_lo - i * d) // s for i in taps]
        out.append((r, (size - r + s - 1) // s, taps, rel))
    return out


def dx_plan(weight, geom):
    """The input gradient as gathers: per phase ``(rh, rw)`` of ``dx`` a stride-1 correlation
    of zero padded ``dy`` (layout ``(n_filters, Hd, N, Wd)`` with ``dy`` at row ``T``, column
    ``L``) with the phase's flipped taps, written to ``dx[:, :, rh::sh, rw::sw]``. Returns the
    padding ``(T, L, Hd, Wd)`` and the kernel arguments ``(w (P, G, E4, Cg), off (P, E4),
    tasks, ph_out (P, 4), dx_needs_zeros)`` (``P`` phases)."""
    ph_h = phase_taps(geom.H, geom.sh, geom.dh, geom.KH, geom.pt)
    ph_w = phase_taps(geom.W, geom.sw, geom.dw, geom.KW, geom.pl)
    rels_h = [v for _, _, _, rel in ph_h for v in rel] or [0]
    rels_w = [v for _, _, _, rel in ph_w for v in rel] or [0]
    T, L = max(0, -min(rels_h)), max(0, -min(rels_w))
    Hd = max([T + geom.OH] + [Q + T + max(rel) for _, Q, _, rel in ph_h if rel])
    # row length per image: holds dy and the phase's outputs; reads past it land in the next
    # image's left zero padding (L columns)
    Wd = max([L + geom.OW] + [Q for _, Q, t, _ in ph_w if t]
             + [Q + max(rel) + 1 for _, Q, _, rel in ph_w if rel])
    phases = [(a, b) for a in ph_h for b in ph_w]
    E4 = max([4] + [pad4(geom.Fg * len(a[2]) * len(b[2])) for a, b in phases])
    wt = np.zeros((len(phases), geom.G, E4, pad4(geom.Cg)), geom.dtype)
    off = np.zeros((len(phases), E4), np.int64)
    ph_out = np.zeros((len(phases), 4), np.int64)
    w5 = weight.reshape(geom.G, geom.Fg, geom.Cg, geom.KH, geom.KW)
    fidx = np.arange(geom.Fg)[:, None, None] * (Hd * geom.N * Wd)
    for p, ((rh, Qh, ti, ri), (rw, Qw, tj, rj)) in enumerate(phases):
        o = (fidx + (np.array(ri)[None, :, None] + T) * (geom.N * Wd)
             + (np.array(rj)[None, None, :] + L)).reshape(-1)
        off[p, :o.size] = o
        wsel = w5[:, :, :, ti][:, :, :, :, tj]                 # (G, Fg, Cg, nI, nJ)
        wt[p, :, :o.size, :geom.Cg] = wsel.transpose(0, 1, 3, 4, 2).reshape(geom.G, o.size,
                                                                          geom.Cg)
        ph_out[p] = (Qw, rh, rw, o.size)
    table = tasks([a[1] * geom.N for a, _ in phases], geom.G, Wd, geom.dtype.itemsize, geom.Cg)
    wt = blocks_of_4(wt)
    missing = len(phases) < min(geom.sh, geom.H) * min(geom.sw, geom.W)
    return (T, L, Hd, Wd), (wt, off, table, ph_out, missing)


def dweight_chunks(geom, images, Q):
    """Pixel blocks and chunks of the weight gradient: fixed by the shapes, not the threads."""
    block = max(8, CONV_DW_BLOCK_BYTES // geom.dtype.itemsize // 8 * 8)
    nb = images * -(-Q // block)
    return block, max(1, min(nb, -(-MIN_TASKS // geom.G)))


# ---- work done in Python ----------------------------------------------------------------------

@contextlib.contextmanager
def threads_for_copy(nbytes):
    """A copy below ``SMALL_COPY_BYTES`` is not worth waking the thread pool for (a parallel
    region costs a fork/join, milliseconds on a busy machine): run it on the calling thread."""
    if nbytes >= SMALL_COPY_BYTES:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def reduce_partials(parts):
    """``parts (chunks, ...)`` -> ``parts[0] + parts[1] + ...`` added in that order, in place
    into ``parts[0]``, which is returned. The chunks are fixed by the shapes and the order by
    this loop, so the sum is bitwise the same for any thread count."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN, as in torch
        for c in range(1, parts.shape[0]):
            parts[0] += parts[c]
    return parts[0]


def empty_planes(C, na, nb, Hq, N, Wq, dtype):
    """A flat buffer for ``(C, na, nb, Hq, N, Wq)`` planes plus a zero tail, so reads just past
    a plane stay inside the buffer (their results are dropped or multiplied by zero)."""
    size = C * na * nb * Hq * N * Wq
    buf = np.empty(size + Wq + TAIL, dtype)
    buf[size:] = 0
    return buf


def planes_to_x(xb, geom):
    """x (N, C, H, W) read back from the ``"planes"`` layout (rows and columns of a stride phase
    that no tap reads are not stored and come back as garbage: no tap reads them)."""
    na, nb = len(geom.pha), len(geom.phb)
    xq = xb[:geom.C * na * nb * geom.Hq * geom.N * geom.Wq].reshape(
        geom.C, na, nb, geom.Hq, geom.N, geom.Wq)
    r, c = np.arange(geom.H) + geom.pt, np.arange(geom.W) + geom.pl
    ia = np.minimum(np.searchsorted(geom.pha, r % geom.sh), na - 1)
    ib = np.minimum(np.searchsorted(geom.phb, c % geom.sw), nb - 1)
    x = xq[:, ia[:, None], ib[None, :], (r // geom.sh)[:, None], :, (c // geom.sw)[None, :]]
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))   # (H, W, C, N) -> (N, C, H, W)
