"""The direct engine: any convolution, on the planes layout of :mod:`nbconv.functional._conv_plan`
and the kernels of :mod:`nbconv.kernels.conv` (the GEMM-shaped loops with the register-blocked
micro-kernels of :mod:`nbconv.kernels.gemm`).

- layout: ``x`` zero padded, split into stride phases and batch-interleaved, once per forward
  pass (:func:`nbconv.kernels.conv.to_planes`);
- forward: :func:`nbconv.kernels.conv.conv_rows`, ``y[n, g*Fg + f, oh, ow] = bias + sum_e
  wt[g, e, f] * xb[off[e] + q]`` over the reduction elements ``e = (c, i, j)`` and the flat
  pixel index ``q`` of ``(oh, n, ow)``;
- input gradient: the same kernel on zero padded ``dy`` with the flipped, channel-swapped taps,
  once per stride phase of ``dx`` (:func:`nbconv.functional._conv_plan.dx_plan`);
- weight gradient: :func:`nbconv.kernels.conv.conv_weight_grad`'s fixed chunks of pixels,
  added in order by :func:`nbconv.functional._conv_plan.reduce_partials`;
- backward: both gradients from one pass that lays ``dy`` out for each.

The kernels also multiply zero padding and computed-and-dropped columns (by a zero): exact for
finite values, but an inf or NaN there would make a NaN that PyTorch does not have; the
dispatcher recomputes such a weight gradient with the exact engine
(:mod:`nbconv.functional.exact`), so :attr:`DirectEngine.multiplies_padding` is True.
"""
import numpy as np

from ..kernels import conv as _k
from ..kernels import simd
from . import _conv_plan as plan
from ._engine import Engine


class DirectEngine(Engine):
    """The direct engine (see the module docstring). Stateless: one instance, :data:`DIRECT`."""

    name = "direct"
    multiplies_padding = True

    def layout(self, x, geom):
        """x (N, C, H, W) C-contiguous -> :func:`nbconv.kernels.conv.to_planes`'s zero padded,
        stride-phase split, batch-interleaved planes ``(C, len(pha), len(phb), Hq, N, Wq)``
        with a zero tail (flat)."""
        xb = plan.empty_planes(geom.C, len(geom.pha), len(geom.phb), geom.Hq, geom.N,
                               geom.Wq, geom.dtype)
        with plan.threads_for_copy(xb.nbytes):
            _k.to_planes(x, xb, geom.sh, geom.sw, geom.pha, geom.phb, geom.pt, geom.pl,
                         geom.Hq, geom.Wq, xb[:0], 0, 0, 0, 1, geom.dtype.type(0))
        return xb

    def x_of(self, xb, geom):
        """``x`` read back from its layout (for the exact engine's recomputation)."""
        return plan.planes_to_x(xb, geom)

    def forward(self, geom, xb, weight, bias):
        """y (N, n_filters, OH, OW) from the planes ``xb``, ``weight`` and ``bias``."""
        y = np.empty(geom.y_shape, geom.dtype)
        table = plan.tasks([geom.OH * geom.N], geom.G, geom.Wq, geom.dtype.itemsize, geom.Fg)
        ph_out = np.array([[geom.OW, 0, 0, geom.Cg * geom.KH * geom.KW]], np.int64)
        _k.conv_rows(xb, 0, geom.group_stride, plan.fwd_weights(weight, geom)[None],
                     geom.offsets[None], bias, y, table, ph_out, geom.N, geom.Wq, 1, 1,
                     simd.WIDTH)
        return y

    def input_grad(self, geom, dy, weight):
        """dx (N, C, H, W) alone for ``dy (N, n_filters, OH, OW)`` (no ``x`` needed)."""
        pads, dxp = plan.dx_plan(weight, geom)
        T, L, Hd, Wd = pads
        dyb = plan.empty_planes(geom.n_filters, 1, 1, Hd, geom.N, Wd, geom.dtype)
        with plan.threads_for_copy(dyb.nbytes):
            _k.to_planes(dy, dyb, 1, 1, plan.P0, plan.P0, T, L, Hd, Wd, dyb[:0], 0, 0, 0, 1,
                         geom.dtype.type(0))
        return _gather_input_grad(dyb, geom, pads, dxp)

    def weight_grad(self, geom, xb, dy, need_bias):
        """``(dweight (n_filters, Cg, KH, KW), dbias (n_filters,) or None)``."""
        return self.backward(geom, xb, dy, None, False, need_bias)[1:]

    def backward(self, geom, xb, dy, weight, need_dx, need_bias):
        """``(dx or None, dweight, dbias or None)``: ``dy`` laid out once by
        :func:`nbconv.kernels.conv.to_planes` as ``(n_filters, OH, N, Wq)`` rows for the
        weight gradient and, in the same parallel loop, as the zero padded ``(n_filters, Hd,
        N, Wd)`` planes of the input gradient."""
        nf, Q = geom.n_filters, geom.OH * geom.N * geom.Wq
        zero = geom.dtype.type(0)
        dyw = plan.empty_planes(nf, 1, 1, geom.OH, geom.N, geom.Wq, geom.dtype)
        dx = None
        if need_dx:
            pads, dxp = plan.dx_plan(weight, geom)
            T, L, Hd, Wd = pads
            dyb = plan.empty_planes(nf, 1, 1, Hd, geom.N, Wd, geom.dtype)
            with plan.threads_for_copy(dyw.nbytes + dyb.nbytes):
                _k.to_planes(dy, dyw, 1, 1, plan.P0, plan.P0, 0, 0, geom.OH, geom.Wq, dyb, T,
                             L, Hd, Wd, zero)
            dx = _gather_input_grad(dyb, geom, pads, dxp)
        else:
            with plan.threads_for_copy(dyw.nbytes):
                _k.to_planes(dy, dyw, 1, 1, plan.P0, plan.P0, 0, 0, geom.OH, geom.Wq, dyw[:0],
                             0, 0, 0, 1, zero)
        dw, db = weight_sums(geom, xb, 0, geom.group_stride, geom.offsets,
                             dyw[:nf * Q].reshape(1, nf, Q), need_bias)
        return dx, dw, db


def _gather_input_grad(dyb, geom, pads, dxp):
    """dx (N, C, H, W) from ``dyb``, dy laid out as the zero padded ``(n_filters, Hd, N, Wd)``
    planes of :func:`nbconv.functional._conv_plan.dx_plan`, by
    :func:`nbconv.kernels.conv.conv_rows` with the plan's flipped, channel-swapped taps, once
    per stride phase of ``dx``."""
    (_, _, Hd, Wd), (wt, off_dx, table, ph_out, missing) = pads, dxp
    dx = (np.zeros if missing else np.empty)(geom.x_shape, geom.dtype)
    _k.conv_rows(dyb, 0, geom.Fg * Hd * geom.N * Wd, wt, off_dx, np.zeros(geom.C, geom.dtype),
                 dx, table, ph_out, geom.N, Wd, geom.sh, geom.sw, simd.WIDTH)
    return dx


def weight_sums(geom, xb, xs, gstride, off, dyv, need_bias):
    """``(dweight, dbias or None)`` by :func:`nbconv.kernels.conv.conv_weight_grad`:
    ``sum_q xb[off[e] + q] * dyv[i, g*Fg + f, q]`` over fixed chunks of pixels (image ``i`` of
    ``dyv (images, n_filters, Q)`` at ``xs * i`` in ``xb``), the chunks' partial sums added in
    order by :func:`nbconv.functional._conv_plan.reduce_partials`."""
    block, nchunks = plan.dweight_chunks(geom, dyv.shape[0], dyv.shape[2])
    part = np.empty((nchunks, geom.G, off.size, -(-geom.Fg // 3) * 3), geom.dtype)
    pbias = np.empty((nchunks if need_bias else 0, geom.G, geom.Fg), geom.dtype)
    _k.conv_weight_grad(xb, xs, gstride, dyv, off, part, pbias, block, simd.WIDTH)
    E = geom.Cg * geom.KH * geom.KW
    dw = np.ascontiguousarray(plan.reduce_partials(part)[:, :E, :geom.Fg].transpose(0, 2, 1))
    db = plan.reduce_partials(pbias).reshape(geom.n_filters).copy() if need_bias else None
    return dw.reshape(geom.w_shape), db


DIRECT = DirectEngine()
