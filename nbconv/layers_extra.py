"""Layers of issue 12: ``ConvTranspose2d``, ``AdaptiveAvgPool2d``, ``AdaptiveMaxPool2d``.

They follow the protocol of :mod:`nbconv.layers` (``params``/``grads``/``buffers``,
``forward``/``backward``, ``input_grad``) and take batched ``(N, C, H, W)`` or unbatched
``(C, H, W)`` input, as PyTorch. (Kept in their own module while the layers are being split
into a package; they belong next to ``Conv2d`` and the pooling layers.)
"""
import numpy as np

from ._checks import check_dtype, check_int, to_pair
from .functional import adaptive as _A
from .functional import conv_transpose as _CT
from .init import make_rng, uniform_fan_in
from .layers import Layer

__all__ = ["ConvTranspose2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"]


class ConvTranspose2d(Layer):
    """Transposed convolution ``(N, C_in, H, W) -> (N, C_out, OH, OW)`` as
    ``torch.nn.ConvTranspose2d`` (same argument order), with
    ``OH = (H - 1)*stride - 2*padding + dilation*(KH - 1) + output_padding + 1`` (OW likewise;
    ``output_padding`` smaller than the stride or the dilation of its axis).

    Params ``weight (C_in, C_out/groups, KH, KW)`` (PyTorch's layout) and ``bias (C_out,)`` (if
    ``bias``), initialised ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with PyTorch's
    ``fan_in = weight.shape[1] * KH * KW = C_out/groups * KH * KW``, reproducible from ``seed``.
    See :mod:`nbconv.functional.conv_transpose` for how it runs on the conv kernels. ``forward``
    keeps the input (do not modify it in place before ``backward``); ``backward`` skips dx
    (returns ``None``) when ``input_grad`` is False.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=np.float32, seed=None):
        super().__init__()
        c = check_int(in_channels, "in_channels", 1)
        f = check_int(out_channels, "out_channels", 1)
        k = to_pair(kernel_size, "kernel_size", 1)
        groups = check_int(groups, "groups", 1)
        if c % groups or f % groups:
            raise ValueError(f"groups={groups} must divide in_channels={c} and "
                             f"out_channels={f}")
        dtype = check_dtype(dtype)
        rng = make_rng(seed)
        fan_in = f // groups * k[0] * k[1]
        self.params["weight"] = uniform_fan_in((c, f // groups) + k, fan_in, rng, dtype)
        if bias:
            self.params["bias"] = uniform_fan_in((f,), fan_in, rng, dtype)
        # validates stride, padding, output_padding and dilation (and their rule)
        _CT._args(self.params["weight"], None, stride, padding, output_padding, dilation, groups)
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.in_channels, self.out_channels, self.kernel_size = c, f, k
        self.stride, self.padding = to_pair(stride, "stride"), to_pair(padding, "padding")
        self.output_padding = to_pair(output_padding, "output_padding")
        self.dilation, self.groups = to_pair(dilation, "dilation"), groups
        self._args = dict(stride=self.stride, padding=self.padding,
                          output_padding=self.output_padding, groups=groups,
                          dilation=self.dilation)

    def forward(self, x):
        y = _CT.conv_transpose2d(x, self.params["weight"], self.params.get("bias"), **self._args)
        self._save(y.shape, x)
        return y

    def backward(self, dy):
        dy, x = self._load(dy)
        dx, dw, db = _CT.conv_transpose2d_backward(dy, x, self.params["weight"], **self._args,
                                                   need_dx=self.input_grad,
                                                   need_bias="bias" in self.params)
        self.grads["weight"][...] = dw
        if db is not None:
            self.grads["bias"][...] = db
        return dx

    def __repr__(self):
        s = (f"ConvTranspose2d({self.in_channels}, {self.out_channels}, "
             f"kernel_size={self.kernel_size}, stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if "bias" not in self.params:
            s += ", bias=False"
        return s + ")"


class _Adaptive(Layer):
    """Shared bits: ``output_size`` (int, or pair of ints / ``None`` = keep that input size)
    validated at construction; backward checks ``dy``'s dtype against the forward input's."""

    def __init__(self, output_size):
        super().__init__()
        _A.adaptive_output_size(output_size, 1, 1)  # raises on a bad output_size
        self.output_size = tuple(output_size) if isinstance(output_size, list) else output_size

    def _load_pool(self, dy):
        dy, *saved = self._load(dy)
        if dy.dtype != saved[-1]:
            raise TypeError(f"dy has dtype {dy.dtype} but the last forward's input had "
                            f"{saved[-1]}; cast it with .astype()")
        return dy, saved

    def __repr__(self):
        return f"{type(self).__name__}(output_size={self.output_size!r})"


class AdaptiveAvgPool2d(_Adaptive):
    """Adaptive average pooling ``(N, C, H, W) -> (N, C, OH, OW)`` as
    ``torch.nn.AdaptiveAvgPool2d``: output row ``oh`` averages input rows
    ``[floor(oh*H/OH), ceil((oh+1)*H/OH))`` (columns likewise); ``output_size=1`` is a global
    average pool that keeps the spatial axes. Saves only the input shape."""

    def forward(self, x):
        y = _A.adaptive_avg_pool2d(x, self.output_size)
        self._save(y.shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, (x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return _A.adaptive_avg_pool2d_backward(dy, x_shape)


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
        y, idx = _A.adaptive_max_pool2d(x, self.output_size, return_indices=True)
        self._save(y.shape, idx, x.shape, x.dtype)
        return (y, idx.copy()) if self.return_indices else y

    def backward(self, dy):
        dy, (idx, x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return _A.adaptive_max_pool2d_backward(dy, idx, x_shape)
