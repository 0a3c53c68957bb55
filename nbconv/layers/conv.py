"""Convolution layers: Conv2d and ConvTranspose2d, stateful wrappers around
:func:`nbconv.functional.conv2d` and :func:`nbconv.functional.conv_transpose2d`."""
import numpy as np

from .. import functional as F
from .._checks import (check_conv_channels, check_dtype,
                       conv_out_size, to_pair)
from ..init import make_rng, uniform_fan_in
from .base import Layer


def _check_input_shape(layer, shape, channels):
    """``shape`` as a tuple after checking it is ``(N, C, H, W)`` or ``(C, H, W)`` with the
    layer's ``channels`` (the summary's shape walk; forward's checks are the op's)."""
    shape = tuple(shape)
    if len(shape) not in (3, 4) or shape[-3] != channels:
        raise ValueError(f"{type(layer).__name__} takes (N, {channels}, H, W) or "
                         f"({channels}, H, W) inputs, got shape {shape}")
    return shape


class Conv2d(Layer):
    """2-d convolution ``(N, C, H, W) -> (N, F, OH, OW)`` as ``torch.nn.Conv2d``, with
    ``OH = floor((H + pad_top + pad_bottom - dilation*(KH-1) - 1) / stride) + 1`` (OW likewise).

    ``padding``: int, pair, ``'valid'``, ``'same'`` (stride 1; extra row/column at the
    bottom/right) or ``'full'`` (``dilation*(k-1)`` each side). Params ``weight (F, C/groups,
    KH, KW)`` and ``bias (F,)`` (if ``bias``), initialised ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    with ``fan_in = C/groups * KH * KW`` as PyTorch. ``algorithm``: ``"auto"`` (default),
    ``"direct"`` or ``"winograd"`` as in :func:`nbconv.functional.conv2d` (checked here; an
    impossible ``"winograd"`` raises at the first forward pass, which knows the input size;
    ``NBCONV_CONV_ALGORITHM`` overrides it). ``forward`` keeps only the kernel-ready layout of
    ``x`` (a padded copy; ``x`` itself for a 1x1 stride-1 unpadded convolution, when each
    filter reads one input channel, as in depthwise layers, and when Winograd ran, whose weight
    gradient lays ``x`` out at backward time; so do not modify ``x`` in place before
    ``backward``); ``backward`` skips dx (returns ``None``) when ``input_grad`` is False.
    An unbatched ``(C, H, W)`` input gives ``(F, OH, OW)`` (and takes such a ``dy``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=np.float32, seed=None, algorithm="auto"):
        super().__init__()
        c, f, groups = check_conv_channels(in_channels, out_channels, groups)
        # the arguments parsed once, for every call (a bad one raises here)
        self.spec = F.conv_spec(kernel_size, stride, padding, dilation, groups, algorithm)
        k, stride, dilation = self.spec.kernel_size, self.spec.stride, self.spec.dilation
        dtype = check_dtype(dtype)
        rng = make_rng(seed)
        fan_in = c // groups * k[0] * k[1]
        self.params["weight"] = uniform_fan_in((f, c // groups) + k, fan_in, rng, dtype)
        if bias:
            self.params["bias"] = uniform_fan_in((f,), fan_in, rng, dtype)
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self._repr = dict(in_channels=c, out_channels=f, kernel_size=k, stride=stride,
                          padding=padding, dilation=dilation, groups=groups, bias=bool(bias))
        if algorithm != "auto":
            self._repr["algorithm"] = algorithm

    def forward(self, x):
        w, b = self.params["weight"], self.params.get("bias")
        prep = F.conv2d_prepare(x, w, spec=self.spec)
        y = F.conv2d(None, w, b, prepared=prep, spec=self.spec)
        self._save(y.shape, prep)
        return y

    def backward(self, dy):
        dy, prep = self._load(dy)
        dx, dw, db = F.conv2d_backward(dy, None, self.params["weight"], need_dx=self.input_grad,
                                       need_bias="bias" in self.params, prepared=prep,
                                       spec=self.spec)
        self._store_grads(dw, db)
        return dx

    def output_shape(self, input_shape):
        """``(N, F, OH, OW)`` (``(F, OH, OW)`` for ``(C, H, W)``), the class doc's formula."""
        *lead, _, h, w = _check_input_shape(self, input_shape, self._repr["in_channels"])
        k = self.params["weight"].shape[2:]
        s, d = self.spec.stride, self.spec.dilation
        pt, pb, pl, pr = self.spec.padding
        return (*lead, self.params["weight"].shape[0], conv_out_size(h, k[0], s[0], pt, pb, d[0]),
                conv_out_size(w, k[1], s[1], pl, pr, d[1]))

    def macs(self, input_shape):
        """``N * F * OH * OW * (C/groups * KH * KW)``."""
        out = self.output_shape(input_shape)
        n = 1 if len(out) == 3 else out[0]
        return n * int(np.prod(out[-3:])) * int(np.prod(self.params["weight"].shape[1:]))

    def __repr__(self):
        r = self._repr
        s = (f"Conv2d({r['in_channels']}, {r['out_channels']}, kernel_size={r['kernel_size']}, "
             f"stride={r['stride']}")
        pad = r["padding"] if isinstance(r["padding"], str) else to_pair(r["padding"], "padding")
        if pad != (0, 0):
            s += f", padding={pad}"   # torch prints a string padding unquoted
        if r["dilation"] != (1, 1):
            s += f", dilation={r['dilation']}"
        if r["groups"] != 1:
            s += f", groups={r['groups']}"
        if not r["bias"]:
            s += ", bias=False"
        if "algorithm" in r:     # not in torch: shown only when not the default "auto"
            s += f", algorithm={r['algorithm']!r}"
        return s + ")"


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
        c, f, groups = check_conv_channels(in_channels, out_channels, groups)
        k = to_pair(kernel_size, "kernel_size", 1)
        dtype = check_dtype(dtype)
        rng = make_rng(seed)
        fan_in = f // groups * k[0] * k[1]
        self.params["weight"] = uniform_fan_in((c, f // groups) + k, fan_in, rng, dtype)
        if bias:
            self.params["bias"] = uniform_fan_in((f,), fan_in, rng, dtype)
        # validates stride, padding, output_padding and dilation (and their rule)
        F.conv_transpose2d_args(self.params["weight"], None, stride, padding, output_padding,
                                dilation, groups)
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.in_channels, self.out_channels, self.kernel_size = c, f, k
        self.stride, self.padding = to_pair(stride, "stride"), to_pair(padding, "padding")
        self.output_padding = to_pair(output_padding, "output_padding")
        self.dilation, self.groups = to_pair(dilation, "dilation"), groups
        self._args = dict(stride=self.stride, padding=self.padding,
                          output_padding=self.output_padding, groups=groups,
                          dilation=self.dilation)

    def forward(self, x):
        y = F.conv_transpose2d(x, self.params["weight"], self.params.get("bias"), **self._args)
        self._save(y.shape, x)
        return y

    def backward(self, dy):
        dy, x = self._load(dy)
        dx, dw, db = F.conv_transpose2d_backward(dy, x, self.params["weight"], **self._args,
                                                   need_dx=self.input_grad,
                                                   need_bias="bias" in self.params)
        self._store_grads(dw, db)
        return dx

    def output_shape(self, input_shape):
        """``(N, C_out, OH, OW)`` (unbatched likewise), the class doc's formula."""
        *lead, _, h, w = _check_input_shape(self, input_shape, self.in_channels)
        size = [F.conv_transpose2d_out_size(v, self.kernel_size[a], self.stride[a],
                                            self.padding[a], self.output_padding[a],
                                            self.dilation[a]) for a, v in enumerate((h, w))]
        return (*lead, self.out_channels, *size)

    def macs(self, input_shape):
        """``N * C_in * H * W * (C_out/groups * KH * KW)``: each input element times each weight
        tap it meets (taps that land in the cropped padding included, as torchinfo)."""
        n = 1 if len(input_shape) == 3 else input_shape[0]
        return n * int(np.prod(input_shape[-3:])) * int(np.prod(self.params["weight"].shape[1:]))

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
