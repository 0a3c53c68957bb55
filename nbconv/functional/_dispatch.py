"""The conv dispatcher: one place decides which engine runs a convolution.

A :class:`ConvSpec` is a convolution's arguments parsed once (kernel size, stride, the padding
as ``(top, bottom, left, right)``, dilation, groups, algorithm): :class:`nbconv.layers.Conv2d`
builds it at construction, the functional ops per call. :func:`geometry` checks it against an
input and a weight shape and returns the sizes (a
:class:`~nbconv.functional._conv_plan.ConvGeometry`), and :func:`select_engine` picks the engine
for the two. Every engine has the same methods, on the layout it makes of ``x``:

==========  =====================================================  =========================
engine      runs                                                   module (functional/)
==========  =====================================================  =========================
direct      any convolution: the planes layout, GEMM-shaped SIMD   ``direct.py``
pointwise   1x1 without padding: NCHW read in place                ``pointwise.py``
depthwise   one input channel per filter: memory-bound loops       ``depthwise.py``
winograd    3x3, stride 1, dilation 1: F(4x4,3x3)                  ``winograd.py``
exact       the textbook loops (padding skipped, not multiplied)   ``exact.py``
==========  =====================================================  =========================

The interface (:class:`~nbconv.functional._engine.Engine`, their base):
``engine.layout(x, geom)``, ``engine.forward(geom, xb, weight, bias)``,
``engine.input_grad(geom, dy, weight)`` (no ``x`` needed), ``engine.weight_grad(geom, xb, dy,
need_bias)`` and ``engine.backward(geom, xb, dy, weight, need_dx, need_bias)`` (both gradients;
the direct engine lays ``dy`` out once for both), ``engine.x_of(xb, geom)`` (``x`` back from
its layout) and ``engine.multiplies_padding``.

The choice (:func:`select_engine`): the algorithm asked for (``spec.algorithm``, or
``NBCONV_CONV_ALGORITHM``; rules and measurements in :mod:`nbconv.functional._algorithm`):
``"direct"`` takes the direct family (:func:`direct_engine`: depthwise, pointwise, direct by
the geometry), ``"winograd"`` Winograd (``ValueError`` where it cannot run), ``"auto"``
Winograd where it measured faster, the direct family elsewhere. Then, per call, what the data
decides (:func:`forward`, :func:`backward`, :func:`input_grad`):

- under ``"auto"``, Winograd runs on an array only if :func:`~nbconv.functional._algorithm.
  winograd_fits` (finite, no overflow): else the direct family runs that call;
- Winograd's weight gradient runs where it measured faster than the direct one
  (:func:`~nbconv.functional._algorithm.prefers_winograd_weight_grad`, or always under an
  explicit ``"winograd"``), else the direct family's;
- a non-finite weight gradient from an engine that multiplies zero padding is recomputed by the
  exact engine (an inf or NaN of ``x`` or ``dy`` met padding there: PyTorch has no NaN there).

A :class:`Prepared` carries one input through a training step: the spec, the geometry, the
engine, and the layouts of ``x`` the engines asked for (each built once, on first use; ``x``
itself is dropped once the direct family's layout holds it).
"""
from dataclasses import dataclass

import numpy as np

from .._checks import check_algorithm, check_int, check_out_size, conv2d_padding, to_pair
from . import _algorithm as _algo
from ._conv_plan import ConvGeometry
from .depthwise import DEPTHWISE
from .direct import DIRECT
from .exact import EXACT
from .pointwise import POINTWISE
from .winograd import WINOGRAD


@dataclass(frozen=True)
class ConvSpec:
    """A convolution's arguments, parsed and checked once: ``kernel_size``, ``stride``,
    ``dilation`` pairs of ints, ``padding`` ``(top, bottom, left, right)``, ``groups``,
    ``algorithm`` (``"auto"``, ``"direct"`` or ``"winograd"``)."""

    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    algorithm: str


def conv_spec(kernel_size, stride=1, padding=0, dilation=1, groups=1, algorithm="auto"):
    """A :class:`ConvSpec` from ``torch.nn.Conv2d``'s arguments (``padding`` an int, a pair,
    ``'valid'``, ``'same'`` or ``'full'``); ``TypeError``/``ValueError`` naming a bad one."""
    k = to_pair(kernel_size, "kernel_size", 1)
    stride = to_pair(stride, "stride", 1)
    dilation = to_pair(dilation, "dilation", 1)
    groups = check_int(groups, "groups", 1)
    pads = conv2d_padding(padding, k, stride, dilation)
    check_algorithm(algorithm)
    return ConvSpec(k, stride, pads, dilation, groups, algorithm)


def geometry(spec, x_shape, w_shape, dtype, x_name="x"):
    """The :class:`~nbconv.functional._conv_plan.ConvGeometry` of ``spec`` on an input of
    ``x_shape`` ``(N, C, H, W)`` with a weight of ``w_shape``; ``ValueError`` naming the shapes
    when the channels, groups or kernel do not fit or the output would be empty."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    n_filters, cg, kh, kw = w_shape
    G = spec.groups
    if (kh, kw) != spec.kernel_size:
        raise ValueError(f"weight of shape {w_shape} does not have the kernel size "
                         f"{spec.kernel_size} of this convolution")
    if n_filters % G:
        raise ValueError(f"groups={G} must divide out_channels: weight has shape {w_shape} "
                         f"({n_filters} filters)")
    C = x_shape[1]
    if C % G:
        raise ValueError(f"groups={G} must divide in_channels: {x_name} has shape {x_shape} "
                         f"({C} channels)")
    if cg * G != C:
        raise ValueError(f"weight of shape {w_shape} with groups={G} expects {cg * G} input "
                         f"channels, but {x_name} has shape {x_shape}")
    geom = ConvGeometry(x_shape, w_shape, spec.stride, spec.padding, spec.dilation, G, dtype)
    check_out_size((geom.OH, geom.OW), (f"{x_name} of shape", x_shape),
                   ("weight of shape", w_shape), ("stride", spec.stride),
                   ("padding (top, bottom, left, right)", spec.padding),
                   ("dilation", spec.dilation))
    return geom


def direct_engine(geom):
    """The direct family's engine for ``geom``: depthwise when each filter reads one input
    channel, pointwise for a 1x1 kernel without padding, else direct."""
    if geom.Cg == 1:
        return DEPTHWISE
    if geom.pointwise:
        return POINTWISE
    return DIRECT


def select_engine(spec, geom):
    """The engine that runs ``spec`` on ``geom`` (see the module docstring). ``ValueError``
    for an explicit ``"winograd"`` that cannot run (not under ``NBCONV_CONV_ALGORITHM``, which
    runs Winograd where it can and the direct family elsewhere)."""
    algorithm, forced = _algo.requested(spec.algorithm)
    if algorithm == _algo.DIRECT:
        return direct_engine(geom)
    if algorithm == _algo.AUTO:
        return WINOGRAD if _algo.prefers_winograd(geom) else direct_engine(geom)
    why = _algo.winograd_reason(geom)
    if why is None:
        return WINOGRAD
    if forced:
        return direct_engine(geom)
    raise ValueError(f"algorithm='winograd' cannot run this convolution: {why}")


class Prepared:
    """One input prepared for a convolution: ``spec``, ``geom``, ``engine`` (the selected one),
    ``auto`` (whether the data may still send a call elsewhere), ``unbatched``, and the
    layouts of ``x`` built so far (:meth:`layout`). Made by
    :func:`nbconv.functional.conv2d_prepare`; a layer keeps it from forward to backward."""

    __slots__ = ("spec", "geom", "engine", "auto", "unbatched", "_x", "_layouts")

    def __init__(self, spec, geom, x, unbatched=False, engine=None):
        self.spec, self.geom, self.unbatched = spec, geom, unbatched
        self.engine = select_engine(spec, geom) if engine is None else engine
        self.auto = _algo.requested(spec.algorithm)[0] == _algo.AUTO
        self._x, self._layouts = x, {}
        if self.engine is not WINOGRAD:   # the forward pass needs the layout: build it now
            self.layout(self.engine)
            self._x = None                # and keep only it

    def layout(self, engine):
        """``x`` in ``engine``'s layout (built on the first call, then kept)."""
        if engine not in self._layouts:
            self._layouts[engine] = engine.layout(self.x, self.geom)
        return self._layouts[engine]

    @property
    def x(self):
        """The input (read back from a layout where only that is kept)."""
        if self._x is not None:
            return self._x
        engine, xb = next(iter(self._layouts.items()))
        self._x = engine.x_of(xb, self.geom)
        return self._x

    def runs_winograd(self, a, weight, channels):
        """Whether Winograd runs on ``a`` (``x``, or ``dy`` for ``dx``) this call: selected,
        and under ``"auto"`` :func:`~nbconv.functional._algorithm.winograd_fits`."""
        return self.engine is WINOGRAD and (not self.auto
                                            or _algo.winograd_fits(a, weight, channels))


def forward(prep, weight, bias):
    """``y (N, n_filters, OH, OW)`` for the prepared input."""
    geom = prep.geom
    engine = prep.engine
    if engine is WINOGRAD and not prep.runs_winograd(prep.x, weight, geom.Cg):
        engine = direct_engine(geom)
    if bias is None:
        bias = np.zeros(geom.n_filters, geom.dtype)
    return engine.forward(geom, prep.layout(engine), weight, bias)


def input_grad(spec, geom, dy, weight):
    """``dx (N, C, H, W)`` alone (no ``x``): the selected engine's, or, under ``"auto"`` with a
    ``dy`` Winograd cannot take, the direct family's."""
    engine = select_engine(spec, geom)
    auto = _algo.requested(spec.algorithm)[0] == _algo.AUTO
    if engine is WINOGRAD and auto and not _algo.winograd_fits(dy, weight, geom.Fg):
        engine = direct_engine(geom)
    return engine.input_grad(geom, dy, weight)


def backward(prep, dy, weight, need_dx, need_bias):
    """``(dx or None, dweight, dbias or None)`` for the prepared input and ``dy``."""
    geom = prep.geom
    if prep.engine is not WINOGRAD:
        engine = prep.engine
        dx, dw, db = engine.backward(geom, prep.layout(engine), dy, weight, need_dx, need_bias)
    else:
        dx = None
        if need_dx:
            dx = (WINOGRAD if prep.runs_winograd(dy, weight, geom.Fg)
                  else direct_engine(geom)).input_grad(geom, dy, weight)
        engine = direct_engine(geom)
        if not prep.auto or (_algo.prefers_winograd_weight_grad(geom)
                             and _algo.winograd_grad_fits(prep.x, dy, geom)):
            engine = WINOGRAD
        dw, db = engine.weight_grad(geom, prep.layout(engine), dy, need_bias)
    if engine.multiplies_padding and not np.isfinite(dw).all():
        # an inf or NaN met zero padding or a dropped column: recompute without multiplying them
        dw = EXACT.weight_grad(geom, prep.x, dy, False)[0]
    return dx, dw, db
