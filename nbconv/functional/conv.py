"""conv ops: validating wrappers around :mod:`nbconv.kernels.conv`.

Shapes: ``x`` ``(N, C, H, W)``, ``weight`` ``(F, C/groups, KH, KW)``, ``bias`` ``(F,)``,
``y`` and ``dy`` ``(N, F, OH, OW)`` with, per axis,

    OH = floor((H + pad_top + pad_bottom - dilation_h * (KH - 1) - 1) / stride_h) + 1

``padding`` is an int, a pair ``(ph, pw)`` (the same on both sides), ``'valid'`` (0),
``'same'`` (stride 1 only; total ``dilation * (k - 1)``, the odd extra row/column at the
bottom/right as PyTorch) or ``'full'`` (``dilation * (k - 1)`` on each side). Group ``g`` maps
input channels ``[g*C/G, (g+1)*C/G)`` to filters ``[g*F/G, (g+1)*F/G)``.

How the kernels see the data (see :mod:`nbconv.kernels.conv`): the input is zero padded, split
into the stride phase planes that the kernel taps read (``xq[c, a, b, t, u] = xpad[c, a + sh*t,
b + sw*u]``; all ``sh*sw`` of them but for kernels smaller than the stride) and laid out
batch-interleaved, ``(C, phases, Hq, N, Wq)`` flattened with a zero tail. Every
(channel, tap) pair is then one flat offset and a block of output rows one contiguous run, so
all inner loops are long and unit-stride, for any image size. The input gradient is the same
gather kernel run on zero padded ``dy`` with the flipped, channel-swapped weights, once per
stride phase of ``dx`` (with only the taps that reach that phase). A 1x1, stride-1, unpadded
convolution needs no layout: the kernels read ``x`` and ``dy`` as they are (NCHW), one image
per task. Neither does a convolution whose filters each read one input channel (depthwise, with
any channel multiplier, or a single input channel): it is bound by memory, and
:mod:`nbconv.kernels.depthwise` works on one NCHW plane at a time in an L1 scratch buffer; a
strided 1x1 unpadded convolution runs as a stride-1 one on the sub-sampled input. The weight
gradient reduces over pixels in fixed chunks with private partial sums that are added in a
fixed order, so every result is bitwise identical across runs and thread counts.
"""
import contextlib

import numba
import numpy as np

from .._checks import check_array, check_int, conv2d_padding, conv_out_size, to_pair
from ..kernels import conv as _k
from ..kernels import depthwise as _dk

__all__ = ["conv2d", "conv2d_backward", "conv2d_prepare", "conv2d_padding"]

_QBYTES = 2048  # bytes of one block of output pixels (the kernels' L1 working unit)
_P0 = np.zeros(1, np.int64)  # the single phase of a stride-1 layout
_SMALL_COPY = 1 << 20  # layout copies below this many bytes run on the calling thread only


@contextlib.contextmanager
def _threads_for_copy(nbytes):
    """A small memory-bound copy is not worth waking the thread pool for (a parallel region
    costs a fork/join, milliseconds on a busy machine): run it on the calling thread."""
    if nbytes >= _SMALL_COPY:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(old)


class ConvGeometry:
    """Validated sizes of one convolution and the layout of its prepared input."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, dtype):
        self.N, self.C, self.H, self.W = x_shape
        self.F, self.Cg, self.KH, self.KW = w_shape
        self.G = groups
        self.Fg = self.F // groups
        self.sh, self.sw = stride
        self.dh, self.dw = dilation
        self.pt, self.pb, self.pl, self.pr = padding
        self.dtype = np.dtype(dtype)
        self.OH = conv_out_size(self.H, self.KH, self.sh, self.pt, self.pb, self.dh)
        self.OW = conv_out_size(self.W, self.KW, self.sw, self.pl, self.pr, self.dw)
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
        self.native = (self.KH, self.KW, self.sh, self.sw, self.pt, self.pb, self.pl,
                       self.pr) == (1, 1, 1, 1, 0, 0, 0, 0)
        # one input channel per filter (depthwise, any channel multiplier; a single input
        # channel): memory-bound, read straight from NCHW by :mod:`nbconv.kernels.depthwise`
        self.depthwise = self.Cg == 1
        if self.depthwise:
            self.native = False
        # a strided 1x1 unpadded convolution is the stride-1 one on the sub-sampled input
        # (x[:, :, ::sh, ::sw], read as NCHW): ``sub`` is that convolution's geometry
        self.sub = None
        if not self.depthwise and (self.KH, self.KW, self.pt, self.pb, self.pl, self.pr) == \
                (1, 1, 0, 0, 0, 0) and (self.sh, self.sw) != (1, 1):
            self.sub = ConvGeometry((self.N, self.C, self.OH, self.OW), w_shape, (1, 1),
                                    (0, 0, 0, 0), (1, 1), groups, dtype)

    def key(self):
        return (self.N, self.C, self.H, self.W, self.F, self.Cg, self.KH, self.KW, self.G,
                self.sh, self.sw, self.dh, self.dw, self.pt, self.pb, self.pl, self.pr,
                self.dtype)


def _validate(x, weight, bias, stride, padding, dilation, groups, x_name="x"):
    weight = check_array(weight, "weight", ndim=4)
    if x is not None:
        x = check_array(x, x_name, ndim=4, dtype=weight.dtype)
    groups = check_int(groups, "groups", 1)
    stride = to_pair(stride, "stride", 1)
    dilation = to_pair(dilation, "dilation", 1)
    F, Cg, KH, KW = weight.shape
    if F % groups:
        raise ValueError(f"groups={groups} must divide out_channels: weight has shape "
                         f"{weight.shape} ({F} filters)")
    pads = conv2d_padding(padding, (KH, KW), stride, dilation)
    if bias is not None:
        bias = check_array(bias, "bias", ndim=1, dtype=weight.dtype)
        if bias.shape != (F,):
            raise ValueError(f"bias must have shape ({F},) for weight of shape {weight.shape}, "
                             f"got {bias.shape}")
    return x, weight, bias, stride, pads, dilation, groups


def _geometry(x_shape, weight, stride, pads, dilation, groups, x_name="x"):
    C = x_shape[1]
    if C % groups:
        raise ValueError(f"groups={groups} must divide in_channels: {x_name} has shape "
                         f"{tuple(x_shape)} ({C} channels)")
    if weight.shape[1] * groups != C:
        raise ValueError(f"weight of shape {weight.shape} with groups={groups} expects "
                         f"{weight.shape[1] * groups} input channels, but {x_name} has shape "
                         f"{tuple(x_shape)}")
    geo = ConvGeometry(tuple(x_shape), weight.shape, stride, pads, dilation, groups,
                       weight.dtype)
    if geo.OH < 1 or geo.OW < 1:
        raise ValueError(f"output size ({geo.OH}, {geo.OW}) is too small: {x_name} of shape "
                         f"{tuple(x_shape)}, weight of shape {weight.shape}, stride {stride}, "
                         f"padding (top, bottom, left, right) {pads}, dilation {dilation}")
    return geo


def _tasks(rows_per_phase, G, Wx, itemsize, outputs, images=1):
    """Task table ``(p, g, n0, r0, r1)`` for :func:`nbconv.kernels.conv.conv_rows`: blocks of
    about ``_QBYTES`` of pixels per output kept in L1 (up to ``FB`` of ``outputs``; whole rows
    of ``Wx``), at least 8 tasks when there are enough rows; ``images > 1``: per-image tasks
    (``n0``) of one-image planes."""
    total = sum(rows_per_phase) * images
    per_out = _QBYTES * _k.FB // min(_k.FB, outputs)
    rows = max(1, per_out // (itemsize * Wx))
    while rows > 1 and G * -(-total // rows) < 8:
        rows = (rows + 1) // 2
    out = [(p, g, n, r0, min(R, r0 + rows)) for p, R in enumerate(rows_per_phase)
           for n in range(images) for g in range(G) for r0 in range(0, R, rows)]
    return np.array(out, np.int64).reshape(-1, 5)


def _native_rows(geo):
    """1x1, stride 1, unpadded convolutions read NCHW directly: each image plane is viewed as
    ``(H/k, k*W)`` rows of at most about ``_QBYTES`` (``k`` divides ``H``)."""
    g = geo
    k = max([d for d in range(1, g.H + 1) if g.H % d == 0
             and d * g.W * g.dtype.itemsize <= _QBYTES] or [1])
    return g.H // k, k * g.W


def _pad4(n):
    return -(-n // 4) * 4


class Prepared:
    """The input laid out for the kernels (flat ``xb``), reusable by the backward pass."""

    def __init__(self, geo, xb):
        self.geo, self.xb = geo, xb


def _empty_planes(C, na, nb, Hq, N, Wq, dtype):
    """A flat buffer for ``(C, na, nb, Hq, N, Wq)`` planes plus a zero tail, so reads just past
    a plane stay inside the buffer (their results are dropped or multiplied by zero)."""
    size = C * na * nb * Hq * N * Wq
    buf = np.empty(size + Wq + 32, dtype)
    buf[size:] = 0
    return buf


def _layout(x, geo):
    """x (N, C, H, W) -> zero padded, stride-phase split, batch-interleaved planes (or ``x``
    itself, flat, for a 1x1 stride-1 unpadded convolution; its sub-sampled copy for a strided
    one; ``x`` itself, 4-d, when every filter reads one input channel)."""
    g = geo
    if g.depthwise:
        return x
    if g.native:
        return x.reshape(-1)
    if g.sub is not None:
        return np.ascontiguousarray(x[:, :, ::g.sh, ::g.sw]).reshape(-1)
    xb = _empty_planes(g.C, len(g.pha), len(g.phb), g.Hq, g.N, g.Wq, g.dtype)
    with _threads_for_copy(xb.nbytes):
        _k.to_planes(x, xb, g.sh, g.sw, g.pha, g.phb, g.pt, g.pl, g.Hq, g.Wq, xb[:0], 0, 0, 0,
                     1, g.dtype.type(0))
    return xb


def _offsets(geo):
    """Flat offset of each reduction element ``e = (c, i, j)`` in a prepared buffer (relative
    to its group's start), padded with zeros to a multiple of 4."""
    g = geo
    if g.native:
        return np.arange(_pad4(g.Cg), dtype=np.int64) % g.Cg * (g.H * g.W)
    c = np.arange(g.Cg)[:, None, None]
    ih = np.arange(g.KH)[None, :, None] * g.dh
    jw = np.arange(g.KW)[None, None, :] * g.dw
    ia = np.searchsorted(g.pha, ih % g.sh)
    ib = np.searchsorted(g.phb, jw % g.sw)
    off = ((((c * len(g.pha) + ia) * len(g.phb) + ib) * g.Hq + ih // g.sh) * (g.N * g.Wq)
           + jw // g.sw).reshape(-1)
    out = np.zeros(_pad4(off.size), np.int64)
    out[:off.size] = off
    return out


def _fwd_weights(weight, geo):
    """(F, Cg, KH, KW) -> (G, E4, Fg): ``wt[g, e, f] = weight[g*Fg + f, e]``."""
    g = geo
    E = g.Cg * g.KH * g.KW
    wt = np.zeros((g.G, _pad4(E), g.Fg), g.dtype)
    wt[:, :E, :g.Fg] = weight.reshape(g.G, g.Fg, E).transpose(0, 2, 1)
    return wt


def _gstride(geo):
    if geo.native:
        return geo.Cg * geo.H * geo.W
    return geo.Cg * len(geo.pha) * len(geo.phb) * geo.Hq * geo.N * geo.Wq


def conv2d_prepare(x, weight, stride=1, padding=0, dilation=1, groups=1):
    """Validate and lay out ``x`` once; pass the result as ``prepared`` to :func:`conv2d` and
    :func:`conv2d_backward` (a layer's forward keeps it for its backward)."""
    x, weight, _, stride, pads, dilation, groups = _validate(x, weight, None, stride, padding,
                                                             dilation, groups)
    geo = _geometry(x.shape, weight, stride, pads, dilation, groups)
    return Prepared(geo, _layout(x, geo))


def _resolve(x, weight, stride, pads, dilation, groups, prepared):
    """``(geo, xb or None)`` from ``x`` or from a matching ``prepared``."""
    if prepared is None:
        if x is None:
            raise TypeError("x must be a numpy.ndarray, got NoneType")
        return _geometry(x.shape, weight, stride, pads, dilation, groups), None
    geo = prepared.geo
    shape = x.shape if x is not None else (geo.N, geo.C, geo.H, geo.W)
    if _geometry(shape, weight, stride, pads, dilation, groups).key() != geo.key():
        raise ValueError("prepared was made for other arguments or another input shape")
    return geo, prepared.xb


def _dw_plan(geo):
    """Scratch layout of :mod:`nbconv.kernels.depthwise`: the padded plane split into
    ``sh*sw`` stride phases of ``(Hq, Wq)``, and the flat offset of each tap ``t = i*KW + j``."""
    g = geo
    Hq = -(-(g.H + g.pt + g.pb) // g.sh)
    Wq = -(-(g.W + g.pl + g.pr) // g.sw)
    i = np.repeat(np.arange(g.KH) * g.dh, g.KW)
    j = np.tile(np.arange(g.KW) * g.dw, g.KH)
    offs = (((i % g.sh) * g.sw + j % g.sw) * Hq + i // g.sh) * Wq + j // g.sw
    return Hq, Wq, offs.astype(np.int64)


def _dw_dx_plan(geo):
    """The spread ``dy`` buffer of the depthwise input gradient: ``dy[oh, ow]`` at row
    ``oh*sh + Toff``, column ``ow*sw + Loff`` of ``(Hz, Wz)``, and the offset each tap reads."""
    g = geo
    Toff = max(0, (g.KH - 1) * g.dh - g.pt)
    Loff = max(0, (g.KW - 1) * g.dw - g.pl)
    Hz = max(g.H + g.pt, (g.OH - 1) * g.sh + 1) + Toff
    Wz = max(g.W + g.pl, (g.OW - 1) * g.sw + 1) + Loff
    i = np.repeat(np.arange(g.KH) * g.dh, g.KW)
    j = np.tile(np.arange(g.KW) * g.dw, g.KH)
    offs = (g.pt - i + Toff) * Wz + g.pl - j + Loff
    return Toff, Loff, Hz, Wz, offs.astype(np.int64)


def _depthwise_forward(x, weight, bias, geo):
    g = geo
    y = np.empty((g.N, g.F, g.OH, g.OW), g.dtype)
    Hq, Wq, offs = _dw_plan(g)
    nchunks = min(g.N * g.C, 256)
    _dk.depthwise_forward(x, weight.reshape(g.F, -1), offs, bias, y, g.sh, g.sw, g.pt, g.pl,
                          Hq, Wq, nchunks, g.dtype.type(0))
    return y


def _depthwise_backward(dy, x, weight, geo, need_dx):
    g = geo
    Hq, Wq, offs = _dw_plan(g)
    Toff, Loff, Hz, Wz, offs_dx = _dw_dx_plan(g)
    dx = np.empty((g.N, g.C, g.H, g.W) if need_dx else (0, 0, 0, 0), g.dtype)
    # few channels: split the images too (a fixed split, so sums do not depend on threads)
    nsplit = max(1, min(g.N, -(-8 // g.C)))
    dwp = np.empty((nsplit, g.F, g.KH * g.KW), g.dtype)
    dbp = np.empty((nsplit, g.F), g.dtype)
    _dk.depthwise_backward(x, dy, weight.reshape(g.F, -1), offs, offs_dx, dx, dwp, dbp, g.sh,
                           g.sw, g.pt, g.pl, Hq, Wq, Toff, Loff, Hz, Wz, need_dx,
                           g.dtype.type(0))
    for s in range(1, nsplit):  # fixed order: bitwise reproducible
        dwp[0] += dwp[s]
        dbp[0] += dbp[s]
    return (dx if need_dx else None), dwp[0].reshape(g.F, 1, g.KH, g.KW), dbp[0]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, prepared=None):
    """2-d cross-correlation as ``torch.nn.functional.conv2d``: ``(N, C, H, W) -> (N, F, OH,
    OW)``, ``y[n,f,oh,ow] = bias[f] + sum_{c,i,j} weight[f,c,i,j] * xpad[n, g*C/G + c,
    oh*sh + i*dh, ow*sw + j*dw]``. ``x`` may be None when ``prepared`` (from
    :func:`conv2d_prepare` with the same arguments) is given."""
    x, weight, bias, stride, pads, dilation, groups = _validate(
        x, weight, bias, stride, padding, dilation, groups)
    geo, xb = _resolve(x, weight, stride, pads, dilation, groups, prepared)
    g = geo
    if xb is None:
        xb = _layout(x, g)
    b = bias if bias is not None else np.zeros(g.F, g.dtype)
    if g.depthwise:
        return _depthwise_forward(xb, weight, b, g)
    if g.sub is not None:
        g = g.sub
    y = np.empty((g.N, g.F, g.OH, g.OW), g.dtype)
    off = _offsets(g)
    if g.native:
        R, Wx = _native_rows(g)
        tasks = _tasks([R], g.G, Wx, g.dtype.itemsize, g.Fg, images=g.N)
        yv, xs, Nr = y.reshape(g.N, g.F, R, Wx), g.C * g.H * g.W, 1
    else:
        R, Wx = g.OH * g.N, g.Wq
        tasks = _tasks([R], g.G, Wx, g.dtype.itemsize, g.Fg)
        yv, xs, Nr = y, 0, g.N
    ph_out = np.array([[yv.shape[3], 0, 0, off.size]], np.int64)
    _k.conv_rows(xb, xs, _gstride(g), _fwd_weights(weight, g)[None], off[None], b, yv, tasks,
                 ph_out, Nr, Wx, 1, 1, g.dtype.type(0))
    return y


def _phase_taps(size, s, d, k, p_lo):
    """Per stride phase ``r`` of the input axis: ``(r, Q, taps, rel)``: input positions
    ``r + s*q`` (``q < Q``) get kernel taps ``taps`` reading ``dy[q + rel]``."""
    out = []
    for r in range(min(s, size)):
        taps = [i for i in range(k) if (r + p_lo - i * d) % s == 0]
        rel = [(r + p_lo - i * d) // s for i in taps]
        out.append((r, (size - r + s - 1) // s, taps, rel))
    return out


def _dx_plan(weight, geo):
    """The input gradient as gathers: per phase ``(rh, rw)`` of ``dx`` a stride-1 correlation
    of zero padded ``dy`` (layout ``(F, Hd, N, Wd)`` with ``dy`` at row ``T``, column ``L``)
    with the phase's flipped taps, written to ``dx[:, :, rh::sh, rw::sw]``. Returns the padding
    ``(T, L, Hd, Wd)`` and the kernel arguments ``(w, off, tasks, ph_out, dx_needs_zeros)``."""
    g = geo
    ph_h = _phase_taps(g.H, g.sh, g.dh, g.KH, g.pt)
    ph_w = _phase_taps(g.W, g.sw, g.dw, g.KW, g.pl)
    rels_h = [v for _, _, _, rel in ph_h for v in rel] or [0]
    rels_w = [v for _, _, _, rel in ph_w for v in rel] or [0]
    T, L = max(0, -min(rels_h)), max(0, -min(rels_w))
    Hd = max([T + g.OH] + [Q + T + max(rel) for _, Q, _, rel in ph_h if rel])
    # row length per image: holds dy and the phase's outputs; reads past it land in the next
    # image's left zero padding (L columns)
    Wd = max([L + g.OW] + [Q for _, Q, t, _ in ph_w if t]
             + [Q + max(rel) + 1 for _, Q, _, rel in ph_w if rel])
    phases = [(a, b) for a in ph_h for b in ph_w if a[2] and b[2]]
    E4 = max([4] + [_pad4(g.Fg * len(a[2]) * len(b[2])) for a, b in phases])
    wt = np.zeros((len(phases), g.G, E4, g.Cg), g.dtype)
    off = np.zeros((len(phases), E4), np.int64)
    ph_out = np.zeros((len(phases), 4), np.int64)
    w5 = weight.reshape(g.G, g.Fg, g.Cg, g.KH, g.KW)
    fidx = np.arange(g.Fg)[:, None, None] * (Hd * g.N * Wd)
    for p, ((rh, Qh, ti, ri), (rw, Qw, tj, rj)) in enumerate(phases):
        o = (fidx + (np.array(ri)[None, :, None] + T) * (g.N * Wd)
             + (np.array(rj)[None, None, :] + L)).reshape(-1)
        off[p, :o.size] = o
        wsel = w5[:, :, :, ti][:, :, :, :, tj]                 # (G, Fg, Cg, nI, nJ)
        wt[p, :, :o.size, :g.Cg] = wsel.transpose(0, 1, 3, 4, 2).reshape(g.G, o.size, g.Cg)
        ph_out[p] = (Qw, rh, rw, _pad4(o.size))
    tasks = _tasks([a[1] * g.N for a, _ in phases], g.G, Wd, g.dtype.itemsize, g.Cg)
    missing = len(phases) < len(ph_h) * len(ph_w)
    return (T, L, Hd, Wd), (wt, off, tasks, ph_out, missing)


def _dw_chunks(geo, images, Q):
    """Pixel blocks and chunks of the weight gradient: fixed by the shapes, not the threads."""
    block = max(8, _QBYTES // geo.dtype.itemsize // 8 * 8)
    nb = images * -(-Q // block)
    return block, max(1, min(nb, -(-8 // geo.G)))


def _native_input_grad(dy, weight, geo):
    """dx of a 1x1 stride-1 unpadded convolution: the same kernel on ``dy`` itself with the
    transposed weights ``wt[g, f, c] = weight[g*Fg + f, c]``."""
    g = geo
    dx = np.empty((g.N, g.C, g.H, g.W), g.dtype)
    R, Wx = _native_rows(g)
    wt = np.zeros((1, g.G, _pad4(g.Fg), g.Cg), g.dtype)
    wt[0, :, :g.Fg, :g.Cg] = weight.reshape(g.G, g.Fg, g.Cg)
    off = (np.arange(_pad4(g.Fg), dtype=np.int64) % g.Fg * (g.H * g.W))[None]
    tasks = _tasks([R], g.G, Wx, g.dtype.itemsize, g.Cg, images=g.N)
    ph_out = np.array([[Wx, 0, 0, off.shape[1]]], np.int64)
    _k.conv_rows(dy.reshape(-1), g.F * g.H * g.W, g.Fg * g.H * g.W, wt, off,
                 np.zeros(g.C, g.dtype), dx.reshape(g.N, g.C, R, Wx), tasks, ph_out, 1, Wx,
                 1, 1, g.dtype.type(0))
    return dx


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, need_dx=True,
                    need_bias=True, prepared=None):
    """Gradients of :func:`conv2d`: returns ``(dx (N, C, H, W) or None, dweight (F, C/groups,
    KH, KW), dbias (F,) or None)`` for ``dy (N, F, OH, OW)``. ``need_dx=False`` skips the input
    gradient (about half the work), ``need_bias=False`` the bias gradient. ``x`` may be None when
    ``prepared`` (from :func:`conv2d_prepare`) is given."""
    x, weight, _, stride, pads, dilation, groups = _validate(
        x, weight, None, stride, padding, dilation, groups)
    geo, xb = _resolve(x, weight, stride, pads, dilation, groups, prepared)
    g = geo
    out_shape = (g.N, g.F, g.OH, g.OW)
    dy = check_array(dy, "dy", ndim=4, dtype=weight.dtype)
    if dy.shape != out_shape:
        raise ValueError(f"dy must have the output shape {out_shape}, got {dy.shape}")
    zero = g.dtype.type(0)
    if xb is None:
        xb = _layout(x, g)
    if g.depthwise:
        dx, dw, db = _depthwise_backward(dy, xb, weight, g, need_dx)
        return dx, dw, (db if need_bias else None)
    full = g
    if g.sub is not None:
        g = g.sub
    # dy in the weight gradient's layout (F, OH, N, Wq) and, in the same pass, the input
    # gradient's (F, Hd, N, Wd); a 1x1 stride-1 unpadded convolution uses dy as it is
    if g.native:
        dx = _native_input_grad(dy, weight, g) if need_dx else None
        dyv, xs = dy.reshape(g.N, g.F, g.H * g.W), g.C * g.H * g.W
    elif need_dx:
        dyw = _empty_planes(g.F, 1, 1, g.OH, g.N, g.Wq, g.dtype)
        (T, L, Hd, Wd), (wt, off_dx, tasks, ph_out, missing) = _dx_plan(weight, g)
        dyb = _empty_planes(g.F, 1, 1, Hd, g.N, Wd, g.dtype)
        with _threads_for_copy(dyw.nbytes + dyb.nbytes):
            _k.to_planes(dy, dyw, 1, 1, _P0, _P0, 0, 0, g.OH, g.Wq, dyb, T, L, Hd, Wd, zero)
        dx = (np.zeros if missing else np.empty)((g.N, g.C, g.H, g.W), g.dtype)
        _k.conv_rows(dyb, 0, g.Fg * Hd * g.N * Wd, wt, off_dx, np.zeros(g.C, g.dtype), dx,
                     tasks, ph_out, g.N, Wd, g.sh, g.sw, zero)
    else:
        dyw = _empty_planes(g.F, 1, 1, g.OH, g.N, g.Wq, g.dtype)
        with _threads_for_copy(dyw.nbytes):
            _k.to_planes(dy, dyw, 1, 1, _P0, _P0, 0, 0, g.OH, g.Wq, dyw[:0], 0, 0, 0, 1, zero)
        dx = None
    if not g.native:
        Q = g.OH * g.N * g.Wq
        dyv, xs = dyw[:g.F * Q].reshape(1, g.F, Q), 0
    block, nchunks = _dw_chunks(g, dyv.shape[0], dyv.shape[2])
    off = _offsets(g)
    part = np.empty((nchunks, g.G, off.size, g.Fg + g.Fg % 2), g.dtype)
    pbias = np.empty((nchunks if need_bias else 0, g.G, g.Fg), g.dtype)
    _k.conv_weight_grad(xb, xs, _gstride(g), dyv, off, part, pbias, block, zero)
    for c in range(1, nchunks):   # fixed order: bitwise reproducible
        part[0] += part[c]
        if need_bias:
            pbias[0] += pbias[c]
    E = g.Cg * g.KH * g.KW
    dw = np.ascontiguousarray(part[0, :, :E, :g.Fg].transpose(0, 2, 1)).reshape(
        g.F, g.Cg, g.KH, g.KW)
    db = pbias[0].reshape(g.F).copy() if need_bias else None
    if full.sub is not None and dx is not None:  # back to the strided input's grid
        dx_full = np.zeros((full.N, full.C, full.H, full.W), g.dtype)
        dx_full[:, :, ::full.sh, ::full.sw] = dx
        dx = dx_full
    return dx, dw, db
