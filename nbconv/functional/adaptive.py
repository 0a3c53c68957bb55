"""Adaptive pooling: validating wrappers around :mod:`nbconv.kernels.adaptive`.

Shapes: ``input`` ``(N, C, H, W)`` or unbatched ``(C, H, W)`` (as PyTorch; the output then has
no batch axis either) -> ``(N, C, OH, OW)``. ``output_size`` is an int (square), or a pair
whose entries are ints or ``None`` (``None`` keeps that input size), each at least 1; an
output may be larger than the input. Output row ``oh`` pools the input rows

    [floor(oh * H / OH), ceil((oh + 1) * H / OH))

(PyTorch's bins; columns likewise), so bins of a size that does not divide evenly overlap by a
row. Average pooling divides by the bin's area; max pooling returns, with
``return_indices=True``, the flat ``h * W + w`` position of each maximum in its input plane
(int64, PyTorch's convention), first maximum on ties, NaN propagating as in PyTorch.
``output_size=1`` is a global pool.
"""
import numpy as np

from .._checks import check_array, check_bool, check_int, check_x_shape
from ..kernels import adaptive as _k

__all__ = ["adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d",
           "adaptive_max_pool2d_backward", "adaptive_output_size"]


# max pooling bins of at least this many elements use the two-pass kernel (same results)
LARGE_BIN = 16


def _check_input(x, name="input"):
    """``x`` as C-contiguous ``(N, C, H, W)`` and whether it came unbatched ``(C, H, W)``."""
    if isinstance(x, np.ndarray) and x.ndim not in (3, 4):
        raise ValueError(f"{name} must be 4-d (N, C, H, W) or 3-d (C, H, W), got shape "
                         f"{x.shape}")
    x = check_array(x, name)
    return (x[None], True) if x.ndim == 3 else (x, False)


def _size_entry(v, name):
    return None if v is None else check_int(v, name, 1)


def adaptive_output_size(output_size, H, W):
    """``output_size`` (int, or pair of ints / ``None``) resolved against an ``H x W`` input as
    ``(OH, OW)``; ``TypeError`` / ``ValueError`` naming ``output_size`` otherwise."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair, got {output_size!r}")
        oh, ow = (_size_entry(v, "output_size") for v in output_size)
    else:
        oh = ow = check_int(output_size, "output_size", 1)
    return (H if oh is None else oh, W if ow is None else ow)


def _bins(size, out):
    """Start and end (int64, length ``out``) of each bin over ``size`` inputs."""
    i = np.arange(out, dtype=np.int64)
    return i * size // out, -(-(i + 1) * size // out)


def _cover(size, starts, ends):
    """For each input position ``h < size``: the bins ``[lo[h], hi[h])`` containing it."""
    h = np.arange(size, dtype=np.int64)
    return (np.searchsorted(ends, h, side="right").astype(np.int64),
            np.searchsorted(starts, h, side="right").astype(np.int64))


def _div(hs, he, ws, we, dtype):
    return ((he - hs)[:, None] * (we - ws)[None, :]).astype(dtype)


def _check_x_shape(x_shape):
    shape = check_x_shape(x_shape)
    return ((1,) + shape, True) if len(shape) == 3 else (shape, False)


def _check_dy(dy, x_shape):
    """``dy`` as ``(N, C, OH, OW)`` for an input of ``x_shape`` (batched like it)."""
    shape, unbatched = _check_x_shape(x_shape)
    if isinstance(dy, np.ndarray) and dy.ndim != len(x_shape):
        raise ValueError(f"dy must be {len(x_shape)}-d like x_shape {tuple(x_shape)}, got "
                         f"shape {dy.shape}")
    dy = check_array(dy, "dy")
    if dy.shape[:-2] != tuple(x_shape[:-2]):
        raise ValueError(f"dy of shape {dy.shape} does not match x_shape {tuple(x_shape)} "
                         f"(the same leading (N, C) / (C,) axes are expected)")
    return (dy[None] if unbatched else dy), shape, unbatched


def adaptive_avg_pool2d(input, output_size):
    """Adaptive average pooling as ``torch.nn.functional.adaptive_avg_pool2d``:
    ``(N, C, H, W) -> (N, C, OH, OW)`` (or ``(C, H, W) -> (C, OH, OW)``), each output the mean
    of its bin (see the module doc)."""
    x, unbatched = _check_input(input)
    n, c, h, w = x.shape
    oh, ow = adaptive_output_size(output_size, h, w)
    hs, he = _bins(h, oh)
    ws, we = _bins(w, ow)
    y = np.empty((n, c, oh, ow), x.dtype)
    _k.adaptive_avg_pool2d_forward(x.reshape(n * c, h, w), x.reshape(n * c, h * w),
                                   y.reshape(n * c, oh, ow), hs, he,
                                   ws, we, _div(hs, he, ws, we, x.dtype), x.dtype.type(0))
    return y[0] if unbatched else y


def adaptive_avg_pool2d_backward(dy, x_shape):
    """Gradient of :func:`adaptive_avg_pool2d` w.r.t. its input of shape ``x_shape``, for
    ``dy`` of the output's shape (which fixes ``output_size``): ``(N, C, H, W)``."""
    dy, (n, c, h, w), unbatched = _check_dy(dy, x_shape)
    oh, ow = dy.shape[2:]
    hs, he = _bins(h, oh)
    ws, we = _bins(w, ow)
    dx = np.empty((n, c, h, w), dy.dtype)
    g = np.empty((n * c, oh, ow), dy.dtype)
    _k.adaptive_avg_pool2d_backward(dy.reshape(n * c, oh, ow), dx.reshape(n * c, h, w), g,
                                    *_cover(h, hs, he), *_cover(w, ws, we),
                                    _div(hs, he, ws, we, dy.dtype), dy.dtype.type(0))
    return dx[0] if unbatched else dx


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Adaptive max pooling as ``torch.nn.functional.adaptive_max_pool2d``:
    ``(N, C, H, W) -> (N, C, OH, OW)`` (or unbatched), the maximum of each bin; with
    ``return_indices`` also the int64 flat positions ``h * W + w`` of the maxima in their
    input planes (the ``indices`` that :func:`adaptive_max_pool2d_backward` takes)."""
    return_indices = check_bool(return_indices, "return_indices")
    x, unbatched = _check_input(input)
    n, c, h, w = x.shape
    oh, ow = adaptive_output_size(output_size, h, w)
    hs, he = _bins(h, oh)
    ws, we = _bins(w, ow)
    y = np.empty((n, c, oh, ow), x.dtype)
    idx = np.empty((n, c, oh, ow), np.int64)
    arrays = (x.reshape(n * c, h, w), y.reshape(n * c, oh, ow), idx.reshape(n * c, oh, ow),
              hs, he, ws, we, x.dtype.type(-np.inf))
    if (he - hs).max() * (we - ws).max() >= LARGE_BIN:
        _k.adaptive_max_pool2d_forward_large(*arrays)
    else:
        _k.adaptive_max_pool2d_forward(*arrays)
    if unbatched:
        y, idx = y[0], idx[0]
    return (y, idx) if return_indices else y


def adaptive_max_pool2d_backward(dy, indices, x_shape):
    """Gradient of :func:`adaptive_max_pool2d` w.r.t. its input of shape ``x_shape``: each
    ``dy`` added at its maximum's flat position ``indices`` (from the forward with
    ``return_indices=True``; the same shape as ``dy``, values in ``[0, H*W)``)."""
    dy, (n, c, h, w), unbatched = _check_dy(dy, x_shape)
    if not isinstance(indices, np.ndarray) or not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"indices must be an integer numpy.ndarray, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    idx = np.ascontiguousarray(indices, dtype=np.int64).reshape(
        (1,) + indices.shape if unbatched else indices.shape)
    if idx.shape != dy.shape:
        raise ValueError(f"indices must have the shape of dy {dy.shape[unbatched:]}, got "
                         f"{indices.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= h * w):
        raise ValueError(f"indices must lie in [0, {h * w}) (flat positions in an {h} x {w} "
                         f"plane), got values in [{idx.min()}, {idx.max()}]")
    oh, ow = dy.shape[2:]
    dx = np.empty((n, c, h, w), dy.dtype)
    _k.adaptive_max_pool2d_backward(dy.reshape(n * c, oh * ow), idx.reshape(n * c, oh * ow),
                                    dx.reshape(n * c, h * w))
    return dx[0] if unbatched else dx
