"""The depthwise engine: convolutions whose filters each read one input channel (``C/groups ==
1``: depthwise with any channel multiplier ``Fg = n_filters/C``, or a single input channel).
Twin of :mod:`nbconv.kernels.depthwise`.

Such a convolution does ``KH*KW`` multiply-adds per output, so it is bound by memory: the kernels
read ``x`` and ``dy`` straight from NCHW (the layout is ``x`` itself) and copy one image plane
at a time into an L1 scratch buffer. This module plans that scratch (:func:`_scratch_plan`: the
padded plane split into stride phases, the flat offset of each tap), the spread ``dy`` buffer
of the input gradient (:func:`_spread_plan`), and the split of the backward pass into image
ranges fixed by the shapes, whose partial sums
:func:`nbconv.functional._conv_plan.reduce_partials` adds in order. The engine interface of
:mod:`nbconv.functional._dispatch`: ``layout``, ``forward``, ``input_grad``, ``weight_grad``,
``backward``. Its scratch's padding and dropped columns are multiplied (by a zero), so the
dispatcher recomputes a non-finite weight gradient exactly.
"""
import numpy as np

from .._config import DEPTHWISE_MAX_CHUNKS, MIN_TASKS
from ..kernels import depthwise as _dk
from ._conv_plan import reduce_partials
from ._engine import Engine


def _scratch_plan(geom):
    """The scratch layout of :mod:`nbconv.kernels.depthwise`: the padded plane split into
    ``sh*sw`` stride phases of ``(Hq, Wq)``, and ``offs (KH*KW,)`` int64, the flat offset in it
    of each tap ``t = i*KW + j``. Returns ``(Hq, Wq, offs)``."""
    Hq = -(-(geom.H + geom.pt + geom.pb) // geom.sh)
    Wq = -(-(geom.W + geom.pl + geom.pr) // geom.sw)
    i = np.repeat(np.arange(geom.KH) * geom.dh, geom.KW)
    j = np.tile(np.arange(geom.KW) * geom.dw, geom.KH)
    offs = (((i % geom.sh) * geom.sw + j % geom.sw) * Hq + i // geom.sh) * Wq + j // geom.sw
    return Hq, Wq, offs.astype(np.int64)


def _spread_plan(geom):
    """The spread ``dy`` buffer of the input gradient: ``dy[oh, ow]`` at row ``oh*sh + Toff``,
    column ``ow*sw + Loff`` of a zero ``(Hz, Wz)`` plane, and ``offs (KH*KW,)`` int64, the
    offset each tap reads. Returns ``(Toff, Loff, Hz, Wz, offs)``."""
    Toff = max(0, (geom.KH - 1) * geom.dh - geom.pt)
    Loff = max(0, (geom.KW - 1) * geom.dw - geom.pl)
    Hz = max(geom.H + geom.pt, (geom.OH - 1) * geom.sh + 1) + Toff
    Wz = max(geom.W + geom.pl, (geom.OW - 1) * geom.sw + 1) + Loff
    i = np.repeat(np.arange(geom.KH) * geom.dh, geom.KW)
    j = np.tile(np.arange(geom.KW) * geom.dw, geom.KH)
    offs = (geom.pt - i + Toff) * Wz + geom.pl - j + Loff
    return Toff, Loff, Hz, Wz, offs.astype(np.int64)


class DepthwiseEngine(Engine):
    """The depthwise engine (see the module docstring): one instance, :data:`DEPTHWISE`."""

    name = "depthwise"
    multiplies_padding = True

    def weight_grad(self, geom, x, dy, need_bias):
        """``(dweight, dbias or None)``: :meth:`backward` without ``dx``."""
        w0 = np.zeros(geom.w_shape, geom.dtype)   # read only for dx, which is not made
        return self.backward(geom, x, dy, w0, False, need_bias)[1:]

    def forward(self, geom, x, weight, bias):
        """y (N, n_filters, OH, OW) by :func:`nbconv.kernels.depthwise.depthwise_forward`:
        each task takes a fixed range of (image, channel) planes, copies each into its zero
        padded, phase-split scratch and computes every filter ``f`` of the channel as
        ``y[n, f] = bias[f] + sum_t weight[f, 0, t] * S[offs[t] + q]``, one long unit-stride
        loop over the flat pixel index ``q`` per three taps."""
        y = np.empty(geom.y_shape, geom.dtype)
        Hq, Wq, offs = _scratch_plan(geom)
        nchunks = min(geom.N * geom.C, DEPTHWISE_MAX_CHUNKS)
        _dk.depthwise_forward(x, weight.reshape(geom.n_filters, -1), offs, bias, y, geom.sh,
                              geom.sw, geom.pt, geom.pl, Hq, Wq, nchunks, geom.dtype.type(0))
        return y

    def backward(self, geom, x, dy, weight, need_dx, need_bias):
        """``(dx (N, C, H, W) or None, dweight (n_filters, 1, KH, KW), dbias (n_filters,) or
        None)`` by :func:`nbconv.kernels.depthwise.depthwise_backward`: a task takes one
        channel and a fixed range of images; per image it fills the scratch, sums each tap's
        products with ``dy`` (the weight gradient) and ``dy`` itself (the bias gradient) into
        its private partial sums and, with ``need_dx``, gathers ``dx`` from ``dy`` spread on the
        stride grid with the flipped taps (each ``dx`` element written by one task)."""
        Hq, Wq, offs = _scratch_plan(geom)
        Toff, Loff, Hz, Wz, offs_dx = _spread_plan(geom)
        dx = np.empty(geom.x_shape if need_dx else (0, 0, 0, 0), geom.dtype)
        # few channels: split the images too (a fixed split, so sums do not depend on threads)
        nsplit = max(1, min(geom.N, -(-MIN_TASKS // geom.C)))
        dwp = np.empty((nsplit, geom.n_filters, geom.KH * geom.KW), geom.dtype)
        dbp = np.empty((nsplit, geom.n_filters), geom.dtype)
        _dk.depthwise_backward(x, dy, weight.reshape(geom.n_filters, -1), offs, offs_dx, dx,
                               dwp, dbp, geom.sh, geom.sw, geom.pt, geom.pl, Hq, Wq, Toff, Loff,
                               Hz, Wz, need_dx, geom.dtype.type(0))
        dw = reduce_partials(dwp).reshape(geom.w_shape)
        db = reduce_partials(dbp) if need_bias else None
        return (dx if need_dx else None), dw, db

    def input_grad(self, geom, dy, weight):
        """dx (N, C, H, W) alone for ``dy (N, n_filters, OH, OW)``: :meth:`backward` on a zero
        ``x`` (the kernel computes the input gradient in the same pass as the weight gradient,
        so there is no dx-only kernel; the zero input makes the discarded weight gradient cheap
        to read, not to skip: about twice the work of a dx-only pass)."""
        x0 = np.zeros(geom.x_shape, geom.dtype)
        return self.backward(geom, x0, dy, weight, True, False)[0]


DEPTHWISE = DepthwiseEngine()
