"""Pooling layers: MaxPool2d, AvgPool2d, GlobalAvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d,
stateful wrappers around the pool ops of :mod:`nbconv.functional`. Their arguments are validated
and normalised to ``(h, w)`` pairs once, at construction. They take ``(N, C, H, W)`` or
unbatched ``(C, H, W)`` inputs, as PyTorch."""
import numpy as np

from .. import functional as F
from .._checks import check_bool, conv_out_size, pool_args
from .base import Layer


class _Pool2d(Layer):
    """Shared bits of the pooling layers: no parameters; backward checks ``dy``'s dtype against
    the forward input's (the functional backward ops only see ``x``'s shape) and returns
    ``None`` when ``input_grad`` is off."""

    def _load_pool(self, dy):
        dy, *saved = self._load(dy)
        if dy.dtype != saved[-1]:
            raise TypeError(f"dy has dtype {dy.dtype} but the last forward's input had "
                            f"{saved[-1]}; cast it with .astype()")
        return dy, saved

    def macs(self, input_shape):
        return 0   # pooling arithmetic is not counted

    def _window_shape(self, input_shape, dilation=(1, 1)):
        a = self._args
        *lead, h, w = input_shape
        return (*lead, *(conv_out_size(v, a["kernel_size"][i], a["stride"][i], a["padding"][i],
                                       a["padding"][i], dilation[i], a["ceil_mode"])
                         for i, v in enumerate((h, w))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr.items())
        return f"{type(self).__name__}({args})"


class MaxPool2d(_Pool2d):
    """Max pooling ``(N, C, H, W) -> (N, C, OH, OW)``, PyTorch's ``nn.MaxPool2d`` semantics
    (``OH = floor((H + 2*ph - dh*(kh-1) - 1) / sh) + 1``, ceil with ``ceil_mode``; see
    :func:`nbconv.functional.max_pool2d`). Saves only the window offsets of the maxima (uint8
    for kernels up to 16x16) and the input shape."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        k, s, p, d = pool_args(kernel_size, stride, padding, dilation)
        self._args = dict(kernel_size=k, stride=s, padding=p, dilation=d,
                          ceil_mode=check_bool(ceil_mode, "ceil_mode"))
        self._repr = dict(kernel_size=kernel_size,
                          stride=kernel_size if stride is None else stride, padding=padding,
                          dilation=dilation, ceil_mode=ceil_mode)

    def output_shape(self, input_shape):
        return self._window_shape(input_shape, self._args["dilation"])

    def forward(self, x):
        y, idx = F.max_pool2d(x, **self._args, return_indices=True)
        self._save(y.shape, idx, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, (idx, x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return F.max_pool2d_backward(dy, idx, x_shape, **self._args)


class AvgPool2d(_Pool2d):
    """Average pooling ``(N, C, H, W) -> (N, C, OH, OW)``, PyTorch's ``nn.AvgPool2d`` semantics
    (``OH = floor((H + 2*ph - kh) / sh) + 1``, ceil with ``ceil_mode``; divisor rules in
    :func:`nbconv.functional.avg_pool2d`). Saves only the input shape."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        k, s, p, _ = pool_args(kernel_size, stride, padding)
        self._args = dict(kernel_size=k, stride=s, padding=p,
                          ceil_mode=check_bool(ceil_mode, "ceil_mode"),
                          count_include_pad=check_bool(count_include_pad, "count_include_pad"))
        # torch prints only these three
        self._repr = dict(kernel_size=kernel_size,
                          stride=kernel_size if stride is None else stride, padding=padding)

    def output_shape(self, input_shape):
        return self._window_shape(input_shape)

    def forward(self, x):
        y = F.avg_pool2d(x, **self._args)
        self._save(y.shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, (x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return F.avg_pool2d_backward(dy, x_shape, **self._args)


class GlobalAvgPool2d(_Pool2d):
    """Mean over the spatial axes: ``(N, C, H, W) -> (N, C)``. Saves only the input shape."""

    def __init__(self):
        super().__init__()
        self._repr = {}

    def output_shape(self, input_shape):
        return tuple(input_shape[:-2])

    def forward(self, x):
        y = F.global_avg_pool2d(x)
        self._save(y.shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, (x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return F.global_avg_pool2d_backward(dy, x_shape)


class _Adaptive(_Pool2d):
    """Shared bits: ``output_size`` (int, or pair of ints / ``None`` = keep that input size)
    validated at construction."""

    def __init__(self, output_size):
        super().__init__()
        F.adaptive_output_size(output_size, 1, 1)  # raises on a bad output_size
        self.output_size = tuple(output_size) if isinstance(output_size, list) else output_size

    def output_shape(self, input_shape):
        return tuple(input_shape[:-2]) + F.adaptive_output_size(self.output_size,
                                                                *input_shape[-2:])

    def __repr__(self):
        return f"{type(self).__name__}(output_size={self.output_size!r})"


class AdaptiveAvgPool2d(_Adaptive):
    """Adaptive average pooling ``(N, C, H, W) -> (N, C, OH, OW)`` as
    ``torch.nn.AdaptiveAvgPool2d``: output row ``oh`` averages input rows
    ``[floor(oh*H/OH), ceil((oh+1)*H/OH))`` (columns likewise); ``output_size=1`` is a global
    average pool that keeps the spatial axes. Saves only the input shape."""

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, self.output_size)
        self._save(y.shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, (x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return F.adaptive_avg_pool2d_backward(dy, x_shape)


class AdaptiveMaxPool2d(_Adaptive):
    """Adaptive max pooling ``(N, C, H, W) -> (N, C, OH, OW)`` as
    ``torch.nn.AdaptiveMaxPool2d`` (PyTorch's bins, ties and NaN rule; see
    :mod:`nbconv.functional.adaptive`). With ``return_indices`` ``forward`` returns
    ``(y, indices)`` (int64 flat positions ``h*W + w``), as PyTorch. Saves the indices."""

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        if not isinstance(return_indices, (bool, np.bool_)):
            raise TypeError(f"return_indices must be a bool, got {return_indices!r}")
        self.return_indices = bool(return_indices)

    def forward(self, x):
        y, idx = F.adaptive_max_pool2d(x, self.output_size, return_indices=True)
        self._save(y.shape, idx, x.shape, x.dtype)
        return (y, idx.copy()) if self.return_indices else y

    def backward(self, dy):
        dy, (idx, x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return F.adaptive_max_pool2d_backward(dy, idx, x_shape)
