"""Conv2d: the convolution layer, a stateful wrapper around :func:`nbconv.functional.conv2d`."""
import numpy as np

from .. import functional as F
from .._checks import check_dtype, check_int, to_pair
from ..functional._algorithm import check_algorithm
from ..init import make_rng, uniform_fan_in
from .base import Layer


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
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=np.float32, seed=None, algorithm="auto"):
        super().__init__()
        c = check_int(in_channels, "in_channels", 1)
        f = check_int(out_channels, "out_channels", 1)
        k = to_pair(kernel_size, "kernel_size", 1)
        groups = check_int(groups, "groups", 1)
        if c % groups or f % groups:
            raise ValueError(f"groups={groups} must divide in_channels={c} and "
                             f"out_channels={f}")
        stride = to_pair(stride, "stride", 1)
        dilation = to_pair(dilation, "dilation", 1)
        F.conv2d_padding(padding, k, stride, dilation)  # raises on a bad padding
        check_algorithm(algorithm)
        dtype = check_dtype(dtype)
        rng = make_rng(seed)
        fan_in = c // groups * k[0] * k[1]
        self.params["weight"] = uniform_fan_in((f, c // groups) + k, fan_in, rng, dtype)
        if bias:
            self.params["bias"] = uniform_fan_in((f,), fan_in, rng, dtype)
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self._args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                          algorithm=algorithm)
        self._repr = dict(in_channels=c, out_channels=f, kernel_size=k, stride=stride,
                          padding=padding, dilation=dilation, groups=groups, bias=bool(bias))
        if algorithm != "auto":
            self._repr["algorithm"] = algorithm

    def forward(self, x):
        w, b = self.params["weight"], self.params.get("bias")
        prep = F.conv2d_prepare(x, w, **self._args)
        y = F.conv2d(None, w, b, **self._args, prepared=prep)
        self._save(y.shape, prep)
        return y

    def backward(self, dy):
        dy, prep = self._load(dy)
        dx, dw, db = F.conv2d_backward(dy, None, self.params["weight"], **self._args,
                                       need_dx=self.input_grad,
                                       need_bias="bias" in self.params, prepared=prep)
        self.grads["weight"][...] = dw
        if db is not None:
            self.grads["bias"][...] = db
        return dx

    def __repr__(self):
        return "Conv2d(" + ", ".join(f"{k}={v!r}" for k, v in self._repr.items()) + ")"
