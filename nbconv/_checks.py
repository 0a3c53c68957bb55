"""Argument checks and shape helpers shared by every op.

Everything here runs in Python before a kernel is called, so a bad argument raises a clear
``ValueError`` / ``TypeError`` that names the argument and the shapes instead of crashing a
kernel or returning a wrong answer.
"""
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def conv_out_size(size, kernel, stride=1, pad_lo=0, pad_hi=None, dilation=1, ceil_mode=False):
    """Output length of a sliding window along one axis.

    ``out = floor((size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) / stride) + 1``

    ``pad_hi`` defaults to ``pad_lo``. The result may be < 1 (0 when the window does not fit);
    callers raise on that. ``ceil_mode`` is pooling's rule: see :func:`pool_out_size`.
    """
    if pad_hi is None:
        pad_hi = pad_lo
    if ceil_mode:
        return pool_out_size(size, kernel, stride, pad_lo, pad_hi, dilation, ceil_mode)
    span = size + pad_lo + pad_hi - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    return span // stride + 1


def pool_out_size(size, kernel, stride=1, pad_lo=0, pad_hi=None, dilation=1, ceil_mode=False):
    """Output length of a pooling window along one axis, PyTorch's rule exactly:

    ``out = floor((size + pad_lo + pad_hi - dilation*(kernel - 1) - 1 + (stride - 1 if
    ceil_mode else 0)) / stride) + 1`` (floor division, also of a numerator below zero), and
    with ``ceil_mode`` the last window dropped if it would start in the right padding
    (``(out - 1) * stride >= size + pad_lo``). So a ``ceil_mode`` window may reach past the
    padded input, even when the (dilated) kernel is longer than the padded input. ``pad_hi``
    defaults to ``pad_lo``. The result may be < 1; callers raise on that.
    """
    if pad_hi is None:
        pad_hi = pad_lo
    num = size + pad_lo + pad_hi - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = num // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad_lo:
        out -= 1
    return out


def check_out_size(out_hw, *context):
    """``out_hw`` ``(OH, OW)``, the output size of a sliding-window op, as a tuple; if either is
    below 1, ``ValueError("output size (OH, OW) is too small: <context>")``, ``context`` being
    ``(label, value)`` pairs that name the input and the arguments, e.g. ``("x of shape",
    x.shape), ("stride", stride)`` (formatted only when raising). The one home of this error
    for conv, transposed conv and pool (and their textbook twins)."""
    oh, ow = out_hw
    if oh < 1 or ow < 1:
        what = ", ".join(f"{label} {value}" for label, value in context)
        raise ValueError(f"output size ({oh}, {ow}) is too small: {what}")
    return (oh, ow)


def check_x_shape(x_shape, name="x_shape", unbatched=True):
    """An input shape passed as a tuple or list (to the gradients that take ``x_shape`` instead
    of ``x``): ``(N, C, H, W)``, or with ``unbatched`` also ``(C, H, W)``, of ints >= 1,
    returned as a tuple of Python ints (of the length given); ``ValueError`` / ``TypeError``
    naming ``name`` otherwise."""
    lengths = (3, 4) if unbatched else (4,)
    if not isinstance(x_shape, (tuple, list)) or len(x_shape) not in lengths:
        also = " or a 3-tuple (C, H, W)" if unbatched else ""
        raise ValueError(f"{name} must be a 4-tuple (N, C, H, W){also}, got {x_shape!r}")
    return tuple(check_int(v, name, 1) for v in x_shape)


def _is_int(v):
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int(value, name, minimum=None):
    """``value`` as a Python int; ``TypeError`` if it is not an integer, ``ValueError`` if below
    ``minimum``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def to_pair(value, name, minimum=None):
    """An int or a pair of ints as a ``(h, w)`` tuple of Python ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return (check_int(value[0], name, minimum), check_int(value[1], name, minimum))
    v = check_int(value, name, minimum)
    return (v, v)


def check_float(value, name, minimum=None, maximum=None, min_inclusive=True, max_inclusive=True):
    """``value`` as a finite Python float within the given bounds."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        raise ValueError(f"{name} must be {'>=' if min_inclusive else '>'} {minimum}, got {value}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        raise ValueError(f"{name} must be {'<=' if max_inclusive else '<'} {maximum}, got {value}")
    return value


def check_dtype(dtype, name="dtype"):
    """A float32/float64 ``np.dtype`` from anything ``np.dtype`` accepts."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from e
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def check_array(x, name, ndim=None, dtype=None, allow_empty=False):
    """Validate an input array and return it C-contiguous (a copy only when needed).

    - not an ndarray -> ``TypeError``
    - dtype not float32/float64 -> ``TypeError``; dtype differs from ``dtype`` -> ``TypeError``
      naming both
    - ``ndim`` differs -> ``ValueError`` naming the shape
    - any axis of length 0 (an empty batch) -> ``ValueError`` unless ``allow_empty``

    The caller's array is never modified: kernels only read the returned array.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        want = np.dtype(dtype) if dtype is not None else "float32 or float64"
        raise TypeError(f"{name} has dtype {x.dtype} but {want} is expected; cast it with .astype()")
    if dtype is not None and x.dtype != np.dtype(dtype):
        raise TypeError(f"{name} has dtype {x.dtype} but {np.dtype(dtype)} is expected "
                        f"(the layer's / weight's dtype); cast it with .astype()")
    if ndim is not None and x.ndim != ndim:
        layout = {4: "(N, C, H, W)", 2: "(N, features)", 1: "(C,)"}.get(ndim, f"{ndim}-d")
        raise ValueError(f"{name} must be {ndim}-d {layout}, got shape {x.shape}")
    if not allow_empty and x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return np.ascontiguousarray(x)


def check_bool(value, name):
    """``value`` as a Python bool; ``TypeError`` for anything but ``bool`` / ``numpy.bool_``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_shape(a, name, shape, what):
    """``a`` must be an ndarray of exactly ``shape``: ``TypeError`` / ``ValueError`` saying
    ``{name} must have {what} {shape}``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have {what} {tuple(shape)}, got {a.shape}")
    return a


def check_dy(dy, shape, dtype=None, what="the output shape"):
    """An upstream gradient: :func:`check_array` (``ndim = len(shape)``, ``dtype``) then exactly
    ``shape``; returns it C-contiguous."""
    dy = check_array(dy, "dy", ndim=len(shape), dtype=dtype)
    return check_shape(dy, "dy", shape, what)


def check_groups(num_groups, channels):
    """``num_groups`` as an int >= 1 that divides ``channels`` (GroupNorm's groups)."""
    groups = check_int(num_groups, "num_groups", 1)
    if channels % groups:
        raise ValueError(f"num_groups ({groups}) must divide the number of channels ({channels})")
    return groups


def pool_args(kernel_size, stride=None, padding=0, dilation=1):
    """Pooling hyper-parameters as ``(kernel, stride, padding, dilation)``, each an ``(h, w)``
    pair of ints. ``stride=None`` means ``kernel_size``; ``padding`` must be at most half the
    (undilated) kernel per axis, as PyTorch."""
    k = to_pair(kernel_size, "kernel_size", 1)
    s = k if stride is None else to_pair(stride, "stride", 1)
    p = to_pair(padding, "padding", 0)
    d = to_pair(dilation, "dilation", 1)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding {p} must be at most half of kernel_size {k} "
                         f"(padding <= kernel_size // 2 per axis, as PyTorch)")
    return k, s, p, d


def conv2d_padding(padding, kernel_hw, stride_hw=(1, 1), dilation_hw=(1, 1)):
    """A convolution's ``padding`` as ``(top, bottom, left, right)``, parsed as PyTorch does.

    ``padding`` is an int ``p >= 0``, a pair ``(ph, pw)`` (the same on both sides), ``'valid'``
    (0), ``'same'`` (stride 1 only; total ``dilation * (k - 1)`` per axis, the odd extra
    row/column at the bottom/right as PyTorch) or ``'full'`` (``dilation * (k - 1)`` on each
    side; not in PyTorch). Anything else raises: a 4-tuple, a negative, a float or a bool, as
    ``torch.nn.functional.conv2d`` does. ``kernel_hw``, ``stride_hw`` and ``dilation_hw`` are
    pairs of ints. Shared by :mod:`nbconv.functional.conv` and :mod:`nbconv.reference`.
    """
    (kh, kw), (dh, dw) = kernel_hw, dilation_hw
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "full":
            return (dh * (kh - 1),) * 2 + (dw * (kw - 1),) * 2
        if padding == "same":
            if tuple(stride_hw) != (1, 1):
                raise ValueError(f"padding='same' is not supported for strided convolutions "
                                 f"(stride {tuple(stride_hw)}), as in PyTorch")
            th, tw = dh * (kh - 1), dw * (kw - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair, 'valid', 'same' or 'full', "
                         f"got {padding!r}")
    ph, pw = to_pair(padding, "padding", 0)
    return (ph, ph, pw, pw)


# ---- unbatched (C, H, W) arrays, as PyTorch's conv and pool ops accept ------------------------

def is_unbatched(a):
    """True for a 3-d ndarray: an unbatched ``(C, H, W)`` input (PyTorch's conv and pool ops
    take one and return an unbatched output)."""
    return isinstance(a, np.ndarray) and a.ndim == 3


def is_unbatched_shape(shape):
    """True for a 3-tuple (or list) ``(C, H, W)`` shape."""
    return isinstance(shape, (tuple, list)) and len(shape) == 3


def add_batch(a, name):
    """``a[None]`` for the gradient (or indices) ``a`` that goes with an unbatched input, which
    must then be 3-d too; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(a, np.ndarray) and a.ndim != 3:
        raise ValueError(f"{name} must be 3-d (C, OH, OW) like the unbatched input, got shape "
                         f"{a.shape}")
    return a[None] if isinstance(a, np.ndarray) else a


ALGORITHMS = ("auto", "direct", "winograd")   # convolution algorithms (functional._algorithm)


def check_algorithm(algorithm):
    """A convolution's ``algorithm``: one of :data:`ALGORITHMS` (before the
    ``NBCONV_CONV_ALGORITHM`` override, which :mod:`nbconv.functional._algorithm` applies)."""
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, got "
                         f"{algorithm!r}")
    return algorithm


def check_running_stats(running_mean, running_var, channels, dtype, training):
    """Batch norm's running statistics: both or neither; each a ``(channels,)`` ndarray of
    ``dtype``; both writable when ``training`` (they are updated in place), checked before
    either is written."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    if running_mean is None:
        return
    for a, name in ((running_mean, "running_mean"), (running_var, "running_var")):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but x has {dtype}")
        if a.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) (the channels of x), got "
                             f"{a.shape}")
    for a, name in ((running_mean, "running_mean"), (running_var, "running_var")):
        if training and not a.flags.writeable:
            raise ValueError(f"{name} is read-only, but training=True updates running_mean "
                             f"and running_var in place")


def check_conv_channels(in_channels, out_channels, groups):
    """A conv layer's channel counts and ``groups`` as ints (>= 1), ``groups`` dividing both."""
    c = check_int(in_channels, "in_channels", 1)
    f = check_int(out_channels, "out_channels", 1)
    groups = check_int(groups, "groups", 1)
    if c % groups or f % groups:
        raise ValueError(f"groups={groups} must divide in_channels={c} and out_channels={f}")
    return c, f, groups
