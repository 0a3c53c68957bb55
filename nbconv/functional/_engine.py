"""The engine interface of the conv dispatcher (:mod:`nbconv.functional._dispatch`).

An engine runs convolutions whose geometry (a validated
:class:`~nbconv.functional._conv_plan.ConvGeometry`) it can run, on a layout of ``x`` it
makes itself. :class:`Engine` holds the defaults: the layout is ``x`` itself, and ``backward``
is ``input_grad`` then ``weight_grad`` (an engine that can share work between the two
overrides it, as the direct engine does).
"""


class Engine:
    """Base of the conv engines: ``name``; ``multiplies_padding`` (whether its kernels
    multiply zero padding or dropped columns, so that a non-finite weight gradient must be
    recomputed by the exact engine); ``layout(x, geom)`` and ``x_of(xb, geom)`` (``x`` back
    from its layout); ``forward(geom, xb, weight, bias)``, ``input_grad(geom, dy, weight)``
    (no ``x`` needed), ``weight_grad(geom, xb, dy, need_bias) -> (dw, db or None)`` and
    ``backward(geom, xb, dy, weight, need_dx, need_bias) -> (dx or None, dw, db or None)``."""

    name = "engine"
    multiplies_padding = False

    def layout(self, x, geom):
        return x

    def x_of(self, xb, geom):
        return xb

    def forward(self, geom, xb, weight, bias):
        raise NotImplementedError

    def input_grad(self, geom, dy, weight):
        raise NotImplementedError

    def weight_grad(self, geom, xb, dy, need_bias):
        raise NotImplementedError

    def backward(self, geom, xb, dy, weight, need_dx, need_bias):
        dx = self.input_grad(geom, dy, weight) if need_dx else None
        return (dx,) + self.weight_grad(geom, xb, dy, need_bias)

    def __repr__(self):
        return f"<conv engine {self.name!r}>"
