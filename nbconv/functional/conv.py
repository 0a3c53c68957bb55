"""conv ops: the public convolution and its gradients, and their argument checks.

Shapes: ``input`` (called ``x`` below and in the gradients) ``(N, C, H, W)``, or unbatched
``(C, H, W)`` as PyTorch accepts (the output, ``dy`` and ``dx`` are then unbatched too),
``weight`` ``(n_filters, C/groups, KH, KW)``, ``bias``
``(n_filters,)``, ``y`` and ``dy`` ``(N, n_filters, OH, OW)`` with, per axis,

    OH = floor((H + pad_top + pad_bottom - dilation_h * (KH - 1) - 1) / stride_h) + 1

``padding`` is an int, a pair ``(ph, pw)`` (the same on both sides), ``'valid'`` (0),
``'same'`` (stride 1 only; total ``dilation * (k - 1)``, the odd extra row/column at the
bottom/right as PyTorch) or ``'full'`` (``dilation * (k - 1)`` on each side), parsed by
:func:`conv2d_padding`. Group ``g`` maps input channels ``[g*C/G, (g+1)*C/G)`` to filters
``[g*n_filters/G, (g+1)*n_filters/G)``.

``algorithm`` is ``"auto"`` (default), ``"direct"`` or ``"winograd"``; the environment
variable ``NBCONV_CONV_ALGORITHM`` overrides it. :mod:`nbconv.functional._algorithm` holds the
rules, the ``"auto"`` rule's measurements and the non-finite fallback.

Each op checks its arguments here, once per call, then hands a
:class:`~nbconv.functional._conv_plan.ConvGeometry` to the engine of its path (:func:`_engine`):
:mod:`nbconv.functional._conv_plan` plans and runs the general kernels of
:mod:`nbconv.kernels.conv`, :mod:`nbconv.functional.depthwise` those of
:mod:`nbconv.kernels.depthwise`; where the algorithm is Winograd,
:mod:`nbconv.functional.winograd` runs the forward pass and ``dx`` on ``x`` / ``dy`` as they
are (NCHW) and the direct engine the weight gradient. :func:`conv2d_prepare` builds the
geometry once; the direct engine's layout of ``x`` is built on first use (at once for a direct
forward pass, at backward time after a Winograd one, never for Winograd inference) and kept;
:func:`conv2d` and :func:`conv2d_backward` given its result reuse both.
"""
import numpy as np

from .._checks import (add_batch, check_array, check_int, check_out_size, check_x_shape,
                       conv2d_padding, is_unbatched, to_pair)
from . import _algorithm as _algo
from . import _conv_plan as _plan
from . import depthwise as _depthwise
from . import winograd as _winograd

__all__ = ["conv2d", "conv2d_backward", "conv2d_input_grad", "conv2d_prepare", "conv2d_padding"]

# path -> the module that runs it (layout, forward, backward); see _conv_plan.choose_path
_ENGINES = {_plan.PLANES: _plan, _plan.NCHW: _plan, _plan.SUBSAMPLED: _plan,
            _plan.DEPTHWISE: _depthwise}


def _engine(geom):
    """The module that runs ``geom``'s path: the single dispatch point of every op."""
    return _ENGINES[geom.path]


class Prepared:
    """What :func:`conv2d_prepare` returns: ``geom`` (the
    :class:`~nbconv.functional._conv_plan.ConvGeometry`), ``args`` (the normalised ``(stride,
    pads, dilation, groups)`` it was made for), ``algorithm`` (the one asked for, after
    ``NBCONV_CONV_ALGORITHM``), ``winograd`` (whether Winograd runs where the data is finite)
    and ``xb``, ``x`` laid out for the direct kernels (built on first use). Pass it as
    ``prepared`` to :func:`conv2d` and :func:`conv2d_backward`."""

    __slots__ = ("geom", "args", "algorithm", "winograd", "x", "_xb", "unbatched")

    def __init__(self, geom, x, args, algorithm, winograd, unbatched=False):
        self.geom, self.args, self.algorithm, self.winograd = geom, args, algorithm, winograd
        self.x, self._xb, self.unbatched = x, None, unbatched
        if not winograd:  # the direct forward pass needs the layout: build it now, drop x
            self._xb, self.x = _engine(geom).layout(x, geom), None

    @property
    def xb(self):
        """``x`` in the direct engine's layout (built on the first call, then kept)."""
        if self._xb is None:
            self._xb = _engine(self.geom).layout(self.x, self.geom)
        return self._xb

    def use_winograd(self, a, weight, channels):
        """Whether this call runs Winograd on ``a`` (``x`` or ``dy``): chosen, and for
        ``"auto"`` :func:`~nbconv.functional._algorithm.winograd_fits` (finite, no overflow
        with ``channels`` channels summed per output)."""
        return self.winograd and (self.algorithm != _algo.AUTO
                                  or _algo.winograd_fits(a, weight, channels))


def _check_args(x, weight, bias, stride, padding, dilation, groups):
    """``(x, weight, bias, args)`` checked and C-contiguous, ``args = (stride, pads, dilation,
    groups)`` normalised (pairs of ints, ``pads = (top, bottom, left, right)``); ``x`` may be
    None. Raises on a bad one."""
    weight = check_array(weight, "weight", ndim=4)
    if x is not None:
        x = check_array(x, "x", ndim=4, dtype=weight.dtype)
    groups = check_int(groups, "groups", 1)
    stride = to_pair(stride, "stride", 1)
    dilation = to_pair(dilation, "dilation", 1)
    n_filters, _, KH, KW = weight.shape
    if n_filters % groups:
        raise ValueError(f"groups={groups} must divide out_channels: weight has shape "
                         f"{weight.shape} ({n_filters} filters)")
    pads = conv2d_padding(padding, (KH, KW), stride, dilation)
    if bias is not None:
        bias = check_array(bias, "bias", ndim=1, dtype=weight.dtype)
        if bias.shape != (n_filters,):
            raise ValueError(f"bias must have shape ({n_filters},) for weight of shape "
                             f"{weight.shape}, got {bias.shape}")
    return x, weight, bias, (stride, pads, dilation, groups)


def _geometry(x_shape, weight, args, x_name="x"):
    """The :class:`~nbconv.functional._conv_plan.ConvGeometry` of ``x_shape`` with ``weight``
    and ``args``; raises when the channels do not fit or the output would be empty."""
    stride, pads, dilation, groups = args
    C = x_shape[1]
    if C % groups:
        raise ValueError(f"groups={groups} must divide in_channels: {x_name} has shape "
                         f"{tuple(x_shape)} ({C} channels)")
    if weight.shape[1] * groups != C:
        raise ValueError(f"weight of shape {weight.shape} with groups={groups} expects "
                         f"{weight.shape[1] * groups} input channels, but {x_name} has shape "
                         f"{tuple(x_shape)}")
    geom = _plan.ConvGeometry(x_shape, weight.shape, stride, pads, dilation, groups,
                              weight.dtype)
    check_out_size((geom.OH, geom.OW), (f"{x_name} of shape", tuple(x_shape)),
                   ("weight of shape", weight.shape), ("stride", stride),
                   ("padding (top, bottom, left, right)", pads), ("dilation", dilation))
    return geom


def _resolve(x, weight, args, algorithm, prepared):
    """A :class:`Prepared`: ``prepared`` if it was made for these arguments (checked, not
    rebuilt), else one built from ``x``."""
    if prepared is None:
        if x is None:
            raise TypeError("x must be a numpy.ndarray, got NoneType")
        geom = _geometry(x.shape, weight, args)
        return Prepared(geom, x, args, *_algo.resolve(geom, algorithm))
    if not isinstance(prepared, Prepared):
        raise TypeError(f"prepared must be the result of conv2d_prepare, got "
                        f"{type(prepared).__name__}")
    geom = prepared.geom
    made = (prepared.args, geom.w_shape, geom.dtype, geom.x_shape, prepared.algorithm)
    call = (args, weight.shape, weight.dtype, geom.x_shape if x is None else x.shape,
            _algo.requested(algorithm)[0])
    if made != call:
        names = ("(stride, padding, dilation, groups)", "weight shape", "dtype", "x shape",
                 "algorithm")
        diff = "; ".join(f"{n} {m} vs {c}" for n, m, c in zip(names, made, call) if m != c)
        raise ValueError(f"prepared was made for other arguments or another input shape "
                         f"(prepared vs this call: {diff})")
    return prepared


def conv2d_prepare(input, weight, stride=1, padding=0, dilation=1, groups=1, algorithm="auto"):
    """Validate ``input (N, C, H, W)`` (or ``(C, H, W)``) with ``weight (n_filters, C/groups,
    KH, KW)``, choose the algorithm and lay ``input`` out once; pass the result as ``prepared``
    to :func:`conv2d` and :func:`conv2d_backward` with the same arguments (a layer's forward
    keeps it for its backward). Keeps a reference to ``input`` itself where the algorithm reads
    it as it is (Winograd), so do not modify it in place before the backward pass."""
    unbatched = is_unbatched(input)
    x = input[None] if unbatched else input
    x, weight, _, args = _check_args(x, weight, None, stride, padding, dilation, groups)
    prep = _resolve(x, weight, args, algorithm, None)
    prep.unbatched = unbatched
    return prep


def _unbatched_call(x, prepared):
    """Whether this call is unbatched (a 3-d ``x``, or a ``prepared`` made from one), and ``x``
    with a batch axis."""
    if is_unbatched(x):
        return True, x[None]
    return (x is None and isinstance(prepared, Prepared) and prepared.unbatched), x


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, prepared=None,
           algorithm="auto"):
    """2-d cross-correlation as ``torch.nn.functional.conv2d``: ``(N, C, H, W) -> (N,
    n_filters, OH, OW)``, ``y[n,f,oh,ow] = bias[f] + sum_{c,i,j} weight[f,c,i,j] *
    xpad[n, g*C/G + c, oh*sh + i*dh, ow*sw + j*dw]`` (``g`` the group of filter ``f``). ``x``
    may be None when ``prepared`` (from :func:`conv2d_prepare` with the same arguments) is
    given. Unbatched ``(C, H, W)`` gives ``(n_filters, OH, OW)``.

    ``algorithm``: ``"auto"`` (Winograd F(4x4,3x3) for 3x3, stride-1, dilation-1 convolutions
    with at least 16 input channels and filters per group, 64 output pixels per map and
    ``N * ceil(OW / 4) >= 64``, where it measured faster, unless ``x`` or ``weight`` holds a NaN
    or inf or values large enough that a Winograd intermediate could overflow (``36100 *
    C/groups * max|x| * max|weight|`` or ``100 * max|x|`` above half the dtype's largest value:
    finite inputs never give a non-finite output that direct would not); direct otherwise),
    ``"direct"`` or ``"winograd"`` (``ValueError`` with the reason where it cannot run; a NaN or
    inf spreads over its 4x4 output tiles, and values beyond that bound may overflow).
    ``NBCONV_CONV_ALGORITHM`` overrides it; see :mod:`nbconv.functional._algorithm`."""
    unbatched, x = _unbatched_call(input, prepared)
    x, weight, bias, args = _check_args(x, weight, bias, stride, padding, dilation, groups)
    prep = _resolve(x, weight, args, algorithm, prepared)
    geom = prep.geom
    if prep.winograd:
        xw = prep.x if x is None else x
        if prep.use_winograd(xw, weight, geom.Cg):
            y = _winograd.winograd_conv2d(xw, weight, bias, (geom.pt, geom.pl), geom.G)
            return y[0] if unbatched else y
    if bias is None:
        bias = np.zeros(geom.n_filters, geom.dtype)
    y = _engine(geom).forward(geom, prep.xb, weight, bias)
    return y[0] if unbatched else y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, need_dx=True,
                    need_bias=True, prepared=None, algorithm="auto"):
    """Gradients of :func:`conv2d`: returns ``(dx (N, C, H, W) or None, dweight (n_filters,
    C/groups, KH, KW), dbias (n_filters,) or None)`` for ``dy (N, n_filters, OH, OW)``.
    ``need_dx=False`` skips the input gradient (about half the work), ``need_bias=False`` the
    bias gradient. ``x`` may be None when ``prepared`` (from :func:`conv2d_prepare`, made with
    the same ``algorithm``) is given. ``algorithm`` as in :func:`conv2d`: Winograd computes
    ``dx`` (``"auto"``: unless ``dy`` or ``weight`` holds a NaN or inf, or fails the overflow
    bound of :func:`conv2d` with ``max|dy|`` and ``n_filters/groups`` channels), the direct
    kernels the weight and bias gradients. An unbatched ``x`` (or ``prepared``) takes an
    unbatched ``dy (n_filters, OH, OW)`` and gives an unbatched ``dx``."""
    unbatched, x = _unbatched_call(x, prepared)
    if unbatched:
        dy = add_batch(dy, "dy")
    x, weight, _, args = _check_args(x, weight, None, stride, padding, dilation, groups)
    prep = _resolve(x, weight, args, algorithm, prepared)
    geom = prep.geom
    dy = check_array(dy, "dy", ndim=4, dtype=weight.dtype)
    if dy.shape != geom.y_shape:
        raise ValueError(f"dy must have the output shape {geom.y_shape[unbatched:]}, got "
                         f"{dy.shape[unbatched:]}")
    need_dx, need_bias = bool(need_dx), bool(need_bias)
    if need_dx and prep.use_winograd(dy, weight, geom.Fg):
        dx = _winograd.winograd_conv2d_input_grad(dy, weight, (geom.pt, geom.pl),
                                                  geom.x_shape, geom.G)
        _, dw, db = _engine(geom).backward(geom, prep.xb, dy, weight, False, need_bias)
    else:
        dx, dw, db = _engine(geom).backward(geom, prep.xb, dy, weight, need_dx, need_bias)
    return (dx[0] if unbatched and dx is not None else dx), dw, db


def conv2d_input_grad(dy, weight, x_shape, stride=1, padding=0, dilation=1, groups=1):
    """The input gradient of :func:`conv2d` alone, without ``x`` (as
    ``torch.nn.grad.conv2d_input``): ``dx`` of shape ``x_shape`` ``(N, C, H, W)`` for ``dy (N,
    n_filters, OH, OW)`` and ``weight (n_filters, C/groups, KH, KW)``, where ``OH, OW`` are the
    output sizes of ``x_shape`` (module doc). A 3-tuple ``x_shape`` ``(C, H, W)`` takes an
    unbatched ``dy``. This is also the forward of the transposed convolution
    (:func:`nbconv.functional.conv_transpose2d`)."""
    _, weight, _, args = _check_args(None, weight, None, stride, padding, dilation, groups)
    x_shape = check_x_shape(x_shape)
    unbatched = len(x_shape) == 3
    if unbatched:
        dy = add_batch(dy, "dy")
        x_shape = (1,) + x_shape
    geom = _geometry(x_shape, weight, args, "x_shape")
    dy = check_array(dy, "dy", ndim=4, dtype=weight.dtype)
    if dy.shape != geom.y_shape:
        raise ValueError(f"dy must have the output shape {geom.y_shape[unbatched:]} of x_shape "
                         f"{x_shape[unbatched:]}, got {dy.shape[unbatched:]}")
    dx = _engine(geom).input_grad(geom, dy, weight)
    return dx[0] if unbatched else dx
