"""The exact engine: the textbook convolution loops (:mod:`nbconv.kernels.textbook`), which skip
every tap outside the input instead of multiplying padding by zero.

Not an engine :func:`nbconv.functional._dispatch.select_engine` picks for speed (it is 10-100x
slower): the dispatcher uses it where the fast engines' zero padding would change a result. The
direct and depthwise kernels multiply zero padding and computed-and-dropped columns too, which is
exact for finite values but turns an inf or NaN met there into a NaN that PyTorch does not have;
so a non-finite weight gradient from them is recomputed here (rare, and slow).
"""
import numpy as np

from ..kernels import textbook as _tb
from ._engine import Engine


class ExactEngine(Engine):
    """The exact engine (see the module docstring): one instance, :data:`EXACT`. Its layout is
    ``x`` itself."""

    name = "exact"

    def forward(self, geom, x, weight, bias):
        y = np.empty(geom.y_shape, geom.dtype)
        _tb.conv2d_forward(x, weight, bias, y, geom.sh, geom.sw, geom.pt, geom.pl, geom.dh,
                           geom.dw)
        return y

    def input_grad(self, geom, dy, weight):
        dx = np.empty(geom.x_shape, geom.dtype)
        _tb.conv2d_backward_input(dy, weight, dx, geom.sh, geom.sw, geom.pt, geom.pl, geom.dh,
                                  geom.dw)
        return dx

    def weight_grad(self, geom, x, dy, need_bias):
        dw = np.empty(geom.w_shape, geom.dtype)
        db = np.empty(geom.n_filters, geom.dtype)
        _tb.conv2d_backward_weight(dy, x, dw, db, geom.sh, geom.sw, geom.pt, geom.pl, geom.dh,
                                   geom.dw)
        return dw, (db if need_bias else None)


EXACT = ExactEngine()
