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
rules and the ``"auto"`` rule's measurements.

Each op checks its arrays here, once per call, parses its arguments into a
:class:`~nbconv.functional._dispatch.ConvSpec` (or takes the one a layer parsed at
construction, ``spec=``) and hands both to the dispatcher, :mod:`nbconv.functional._dispatch`,
which picks the engine (direct, pointwise, depthwise, Winograd; the exact one where padding
would change a non-finite result) and runs it. :func:`conv2d_prepare` builds the geometry and
the engine's layout of ``x`` once; :func:`conv2d` and :func:`conv2d_backward` given its result
reuse both.
"""
from .._checks import add_batch, check_array, check_x_shape, conv2d_padding, is_unbatched
from . import _dispatch as _d

__all__ = ["conv2d", "conv2d_backward", "conv2d_input_grad", "conv2d_prepare", "conv2d_padding",
           "conv_spec", "ConvSpec", "Prepared"]

ConvSpec, Prepared = _d.ConvSpec, _d.Prepared
_DEFAULTS = (1, 0, 1, 1, "auto")   # stride, padding, dilation, groups, algorithm


def conv_spec(kernel_size, stride=1, padding=0, dilation=1, groups=1, algorithm="auto"):
    """A convolution's arguments parsed and checked once, as ``torch.nn.Conv2d`` takes them
    (:class:`~nbconv.functional._dispatch.ConvSpec`): pass it as ``spec=`` to the ops below
    instead of the separate arguments (``Conv2d`` does, so it parses its padding once)."""
    return _d.conv_spec(kernel_size, stride, padding, dilation, groups, algorithm)


def _spec(weight, spec, args):
    """``spec``, or one parsed from the separate ``args`` (stride, padding, dilation, groups,
    algorithm) with ``weight``'s kernel size; not both."""
    if spec is None:
        return _d.conv_spec(weight.shape[2:], *args)
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec must be a ConvSpec (nbconv.functional.conv_spec), got "
                        f"{type(spec).__name__}")
    if tuple(args) != _DEFAULTS:
        raise TypeError("pass either spec= or stride/padding/dilation/groups/algorithm, "
                        "not both")
    return spec


def _arrays(x, weight, bias):
    """``(x, weight, bias)`` checked and C-contiguous (``x``, ``bias`` may be None)."""
    weight = check_array(weight, "weight", ndim=4)
    if x is not None:
        x = check_array(x, "x", ndim=4, dtype=weight.dtype)
    if bias is not None:
        bias = check_array(bias, "bias", ndim=1, dtype=weight.dtype)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) for weight of shape "
                             f"{weight.shape}, got {bias.shape}")
    return x, weight, bias


def _prepared(x, weight, spec, prepared):
    """``prepared`` if it was made for this spec, weight and input shape (checked, not
    rebuilt), else one built from ``x``."""
    if prepared is None:
        if x is None:
            raise TypeError("x must be a numpy.ndarray, got NoneType")
        return Prepared(spec, _d.geometry(spec, x.shape, weight.shape, weight.dtype), x)
    if not isinstance(prepared, Prepared):
        raise TypeError(f"prepared must be the result of conv2d_prepare, got "
                        f"{type(prepared).__name__}")
    geom = prepared.geom
    made = dict(vars(prepared.spec), **{"weight shape": geom.w_shape, "dtype": geom.dtype,
                                        "x shape": geom.x_shape})
    call = dict(vars(spec), **{"weight shape": weight.shape, "dtype": weight.dtype,
                               "x shape": geom.x_shape if x is None else x.shape})
    diff = "; ".join(f"{n.replace('_', ' ')} {made[n]} vs {call[n]}" for n in made
                     if made[n] != call[n])
    if diff:
        raise ValueError(f"prepared was made for other arguments or another input shape "
                         f"(prepared vs this call: {diff})")
    return prepared


def _unbatched_call(x, prepared):
    """Whether this call is unbatched (a 3-d ``x``, or a ``prepared`` made from one), and ``x``
    with a batch axis."""
    if is_unbatched(x):
        return True, x[None]
    return (x is None and isinstance(prepared, Prepared) and prepared.unbatched), x


def conv2d_prepare(input, weight, stride=1, padding=0, dilation=1, groups=1, algorithm="auto",
                   spec=None):
    """Validate ``input (N, C, H, W)`` (or ``(C, H, W)``) with ``weight (n_filters, C/groups,
    KH, KW)``, choose the engine and lay ``input`` out once; pass the result as ``prepared``
    to :func:`conv2d` and :func:`conv2d_backward` with the same arguments (a layer's forward
    keeps it for its backward). Keeps a reference to ``input`` itself where the engine reads it
    as it is (Winograd, depthwise, a 1x1 convolution), so do not modify it in place before the
    backward pass."""
    unbatched = is_unbatched(input)
    x, weight, _ = _arrays(input[None] if unbatched else input, weight, None)
    spec = _spec(weight, spec, (stride, padding, dilation, groups, algorithm))
    prep = _prepared(x, weight, spec, None)
    prep.unbatched = unbatched
    return prep


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, prepared=None,
           algorithm="auto", spec=None):
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
    ``NBCONV_CONV_ALGORITHM`` overrides it; see :mod:`nbconv.functional._algorithm`.
    ``spec``: the arguments parsed once (:func:`conv_spec`), instead of the separate ones."""
    unbatched, x = _unbatched_call(input, prepared)
    x, weight, bias = _arrays(x, weight, bias)
    spec = _spec(weight, spec, (stride, padding, dilation, groups, algorithm))
    y = _d.forward(_prepared(x, weight, spec, prepared), weight, bias)
    return y[0] if unbatched else y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, need_dx=True,
                    need_bias=True, prepared=None, algorithm="auto", spec=None):
    """Gradients of :func:`conv2d`: returns ``(dx (N, C, H, W) or None, dweight (n_filters,
    C/groups, KH, KW), dbias (n_filters,) or None)`` for ``dy (N, n_filters, OH, OW)``.
    ``need_dx=False`` skips the input gradient (about half the work), ``need_bias=False`` the
    bias gradient. ``x`` may be None when ``prepared`` (from :func:`conv2d_prepare`, made with
    the same arguments) is given. ``algorithm`` as in :func:`conv2d`: where Winograd ran the
    forward pass it computes ``dx`` (``"auto"``: unless ``dy`` or ``weight`` holds a NaN or inf,
    or fails the overflow bound of :func:`conv2d` with ``max|dy|`` and ``n_filters/groups``
    channels) and, on maps of at least 1600 output pixels (``"auto"``; always with
    ``"winograd"``), the weight gradient too; the bias gradient is ``dy``'s sum. An unbatched
    ``x`` (or ``prepared``) takes an unbatched ``dy (n_filters, OH, OW)`` and gives an
    unbatched ``dx``."""
    unbatched, x = _unbatched_call(x, prepared)
    if unbatched:
        dy = add_batch(dy, "dy")
    x, weight, _ = _arrays(x, weight, None)
    spec = _spec(weight, spec, (stride, padding, dilation, groups, algorithm))
    prep = _prepared(x, weight, spec, prepared)
    geom = prep.geom
    dy = check_array(dy, "dy", ndim=4, dtype=weight.dtype)
    if dy.shape != geom.y_shape:
        raise ValueError(f"dy must have the output shape {geom.y_shape[unbatched:]}, got "
                         f"{dy.shape[unbatched:]}")
    dx, dw, db = _d.backward(prep, dy, weight, bool(need_dx), bool(need_bias))
    return (dx[0] if unbatched and dx is not None else dx), dw, db


def conv2d_input_grad(dy, weight, x_shape, stride=1, padding=0, dilation=1, groups=1,
                      algorithm="auto", spec=None):
    """The input gradient of :func:`conv2d` alone, without ``x`` (as
    ``torch.nn.grad.conv2d_input``): ``dx`` of shape ``x_shape`` ``(N, C, H, W)`` for ``dy (N,
    n_filters, OH, OW)`` and ``weight (n_filters, C/groups, KH, KW)``, where ``OH, OW`` are the
    output sizes of ``x_shape`` (module doc). A 3-tuple ``x_shape`` ``(C, H, W)`` takes an
    unbatched ``dy``. This is also the forward of the transposed convolution
    (:func:`nbconv.functional.conv_transpose2d`)."""
    _, weight, _ = _arrays(None, weight, None)
    spec = _spec(weight, spec, (stride, padding, dilation, groups, algorithm))
    x_shape = check_x_shape(x_shape)
    unbatched = len(x_shape) == 3
    if unbatched:
        dy = add_batch(dy, "dy")
        x_shape = (1,) + x_shape
    geom = _d.geometry(spec, x_shape, weight.shape, weight.dtype, "x_shape")
    dy = check_array(dy, "dy", ndim=4, dtype=weight.dtype)
    if dy.shape != geom.y_shape:
        raise ValueError(f"dy must have the output shape {geom.y_shape[unbatched:]} of x_shape "
                         f"{x_shape[unbatched:]}, got {dy.shape[unbatched:]}")
    dx = _d.input_grad(spec, geom, dy, weight)
    return dx[0] if unbatched else dx
