"""The pointwise engine: 1x1 convolutions without padding, on the direct kernels
(:mod:`nbconv.kernels.conv`) reading NCHW as it is.

- stride 1: the layout is ``x`` itself; each image plane is viewed as ``(H/k, k*W)`` rows of
  about ``CONV_BLOCK_BYTES`` (:func:`nbconv.functional._conv_plan.nchw_rows`), one image per
  task, every channel one reduction element; the input gradient is the same kernel on ``dy``
  with the transposed weights; the weight gradient reads ``dy`` as it is;
- a stride: the stride-1 convolution of ``x[:, :, ::sh, ::sw]`` (the only pixels a strided
  1x1 kernel reads, copied once per forward pass), its ``dx`` put back on the strided grid.

No padding and no dropped columns are multiplied, so its weight gradient is exact for
non-finite values too (:attr:`PointwiseEngine.multiplies_padding` is False).
"""
import numpy as np

from ..kernels import conv as _k
from ..kernels import simd
from . import _conv_plan as plan
from ._engine import Engine
from .direct import weight_sums


def _stride1(geom):
    """The stride-1 geometry the kernels run: ``geom`` itself, or that of the sub-sampled
    input."""
    if (geom.sh, geom.sw) == (1, 1):
        return geom
    return plan.ConvGeometry((geom.N, geom.C, geom.OH, geom.OW), geom.w_shape, (1, 1),
                             (0, 0, 0, 0), (1, 1), geom.G, geom.dtype)


class PointwiseEngine(Engine):
    """The pointwise engine (see the module docstring): one instance, :data:`POINTWISE`."""

    name = "pointwise"

    def layout(self, x, geom):
        """``x`` itself (flat) at stride 1, else the copy ``x[:, :, ::sh, ::sw]``."""
        if (geom.sh, geom.sw) == (1, 1):
            return x.reshape(-1)
        return np.ascontiguousarray(x[:, :, ::geom.sh, ::geom.sw]).reshape(-1)

    def x_of(self, xb, geom):
        """``x`` itself at stride 1 (the layout is ``x``); the sub-sampled copy lacks the
        rest, and no caller needs it (no padding is multiplied, nothing is recomputed)."""
        if (geom.sh, geom.sw) != (1, 1):
            raise ValueError("the strided pointwise layout holds x[:, :, ::sh, ::sw] only")
        return xb.reshape(geom.x_shape)

    def forward(self, geom, xb, weight, bias):
        g1 = _stride1(geom)
        y = np.empty(g1.y_shape, g1.dtype)
        R, Wx = plan.nchw_rows(g1)
        table = plan.tasks([R], g1.G, Wx, g1.dtype.itemsize, g1.Fg, images=g1.N)
        ph_out = np.array([[Wx, 0, 0, g1.Cg]], np.int64)
        _k.conv_rows(xb, g1.C * g1.H * g1.W, g1.Cg * g1.H * g1.W,
                     plan.fwd_weights(weight, g1)[None], _offsets(g1, g1.Cg)[None], bias,
                     y.reshape(g1.N, g1.n_filters, R, Wx), table, ph_out, 1, Wx, 1, 1,
                     simd.WIDTH)
        return y

    def input_grad(self, geom, dy, weight):
        """``dx[n, g*Cg + c] = sum_f weight[g*Fg + f, c] * dy[n, g*Fg + f]`` per pixel by
        :func:`nbconv.kernels.conv.conv_rows` on ``dy`` itself, then (strided) put back on the
        strided input's grid: zero but at rows ``::sh`` and columns ``::sw``."""
        g1 = _stride1(geom)
        dx = np.empty(g1.x_shape, g1.dtype)
        R, Wx = plan.nchw_rows(g1)
        wt = np.zeros((1, g1.G, plan.pad4(g1.Fg), plan.pad4(g1.Cg)), g1.dtype)
        wt[0, :, :g1.Fg, :g1.Cg] = weight.reshape(g1.G, g1.Fg, g1.Cg)
        table = plan.tasks([R], g1.G, Wx, g1.dtype.itemsize, g1.Cg, images=g1.N)
        ph_out = np.array([[Wx, 0, 0, g1.Fg]], np.int64)
        _k.conv_rows(dy.reshape(-1), g1.n_filters * g1.H * g1.W, g1.Fg * g1.H * g1.W,
                     plan.blocks_of_4(wt), _offsets(g1, g1.Fg)[None],
                     np.zeros(g1.C, g1.dtype), dx.reshape(g1.N, g1.C, R, Wx), table, ph_out, 1,
                     Wx, 1, 1, simd.WIDTH)
        if g1 is geom:
            return dx
        full = np.zeros(geom.x_shape, geom.dtype)
        full[:, :, ::geom.sh, ::geom.sw] = dx
        return full

    def weight_grad(self, geom, xb, dy, need_bias):
        g1 = _stride1(geom)
        dyv = dy.reshape(g1.N, g1.n_filters, g1.H * g1.W)
        return weight_sums(g1, xb, g1.C * g1.H * g1.W, g1.Cg * g1.H * g1.W,
                           _offsets(g1, g1.Cg), dyv, need_bias)


def _offsets(geom, n):
    """Offsets of ``n`` channels' planes in an NCHW image (zero padded to a multiple of 4 with
    valid offsets, whose results are dropped)."""
    return np.arange(plan.pad4(n), dtype=np.int64) % n * (geom.H * geom.W)


POINTWISE = PointwiseEngine()
