"""Residual blocks with torchvision's attribute names: :class:`BasicBlock`, :class:`Bottleneck`,
and :class:`PadShortcut`, the parameter-free shortcut of the CIFAR ResNets (He et al. 2016,
option A).

A block computes ``relu(branch(x) + shortcut(x))`` on ``(N, C, H, W)`` inputs, with
``shortcut = downsample`` (a layer, e.g. ``Sequential(Conv2d 1x1, BatchNorm2d)``) or the
identity when ``downsample`` is None; ``backward`` runs both paths and adds their input
gradients. The branch's output shape must be the shortcut's: a mismatch raises ``ValueError``
naming both shapes, at construction when the shortcut can tell its output shape (identity, the
library's layers) and at the first forward otherwise.

The ``relu`` sub-layer is registered for torchvision's names and repr; as torchvision's, it is
applied at several places, so the block applies it through :func:`nbconv.functional.relu` and
keeps each output with its own saved values (a layer keeps only its last forward's values;
nothing under ``nbconv.no_grad()``).
"""
import numpy as np

from .. import functional as F
from .._checks import check_array, check_int
from .base import Layer
from .basic import ReLU
from .conv import Conv2d
from .norm import BatchNorm2d

__all__ = ["BasicBlock", "Bottleneck", "PadShortcut"]


def _seeds(seed, n):
    """``n`` seeds for the block's convolutions from ``seed`` (None: ``n`` times None)."""
    if seed is None:
        return [None] * n
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


class PadShortcut(Layer):
    """The CIFAR ResNet's option-A shortcut: ``x[:, :, ::stride, ::stride]`` with zero channels
    added, ``(N, in_channels, H, W) -> (N, out_channels, ceil(H/stride), ceil(W/stride))``;
    the input's channels land at ``[pad, pad + in_channels)`` with ``pad = (out_channels -
    in_channels) // 2`` (zeros on both sides, as the common PyTorch CIFAR ResNets pad
    ``planes // 4`` each side). No parameters; ``backward`` takes the gradient of the kept
    entries."""

    def __init__(self, in_channels, out_channels, stride=2):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.out_channels = check_int(out_channels, "out_channels", self.in_channels)
        self.stride = check_int(stride, "stride", 1)
        self.pad = (self.out_channels - self.in_channels) // 2

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"PadShortcut takes (N, {self.in_channels}, H, W) inputs, got "
                             f"shape {shape}")
        s = self.stride
        return (shape[0], self.out_channels, -(-shape[2] // s), -(-shape[3] // s))

    def macs(self, input_shape):
        return 0

    def forward(self, x):
        x = check_array(x, "x", ndim=4)
        shape = self.output_shape(x.shape)
        y = np.zeros(shape, x.dtype)
        s, p = self.stride, self.pad
        y[:, p:p + self.in_channels] = x[:, :, ::s, ::s]
        self._save(shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, x_shape, dtype = self._load(dy)
        dy = check_array(dy, "dy", dtype=dtype)
        if not self.input_grad:
            return None
        dx = np.zeros(x_shape, dtype)
        s, p = self.stride, self.pad
        dx[:, :, ::s, ::s] = dy[:, p:p + self.in_channels]
        return dx

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class _Residual(Layer):
    """Shared bits: the shortcut, the shape checks, ``forward``/``backward`` around the
    subclass's ``_branch``/``_branch_backward``."""

    expansion = 1

    def _setup_shortcut(self, downsample):
        if downsample is not None and not isinstance(downsample, Layer):
            raise TypeError(f"downsample must be an nbconv Layer or None, got "
                            f"{type(downsample).__name__}")
        self.downsample = downsample   # None: a plain attribute, as torchvision's
        s = self.stride
        probe = (1, self.inplanes, 8 * s, 8 * s)   # any size the strides divide
        branch = self._branch_shape(probe)
        if downsample is None:
            short = probe
        else:
            try:
                short = tuple(downsample.output_shape(probe))
            except NotImplementedError:
                return   # a user's layer: checked at the first forward
            except ValueError as e:
                raise ValueError(f"{type(self).__name__}: the downsample cannot take the "
                                 f"block's input {probe}: {e}") from e
        if short != branch:
            self._mismatch(probe, branch, short)

    def _mismatch(self, x_shape, branch, short):
        what = "identity shortcut" if self.downsample is None else "downsample shortcut"
        raise ValueError(f"{type(self).__name__}(inplanes={self.inplanes}, planes="
                         f"{self.planes}, stride={self.stride}): for an input {tuple(x_shape)} "
                         f"the residual branch gives {tuple(branch)} but the {what} gives "
                         f"{tuple(short)}; pass a downsample that maps the input to the "
                         f"branch's shape")

    def _branch_shape(self, shape):
        for conv in self._convs():
            shape = conv.output_shape(shape)
        return tuple(shape)

    def output_shape(self, input_shape):
        branch = self._branch_shape(input_shape)
        short = (tuple(input_shape) if self.downsample is None
                 else tuple(self.downsample.output_shape(input_shape)))
        if branch != short:
            self._mismatch(input_shape, branch, short)
        return branch

    def macs(self, input_shape):
        total, shape = 0, tuple(input_shape)
        for conv in self._convs():
            total += conv.macs(shape)
            shape = conv.output_shape(shape)
        if self.downsample is not None:
            m = self.downsample.macs(input_shape)
            total = None if m is None else total + m
        return total

    def forward(self, x):
        self._convs()[0].input_grad = self.input_grad
        if self.downsample is not None:
            self.downsample.input_grad = self.input_grad
        out, hidden = self._branch(x)
        short = x if self.downsample is None else self.downsample(x)
        if not isinstance(short, np.ndarray) or short.shape != out.shape:
            self._mismatch(np.shape(x), out.shape, np.shape(short))
        if out.dtype == short.dtype:
            out += short   # in place: out is the last BatchNorm's new output, kept by no layer
        else:
            out = out + short
        del short
        y = F.relu(out)
        self._save(y.shape, y, hidden)
        return y

    def backward(self, dy):
        dy, y, hidden = self._load(dy)
        d = F.relu_backward(dy, y)
        dx = self._branch_backward(d, hidden)
        dshort = d if self.downsample is None else self.downsample.backward(d)
        if not self.input_grad:
            return None
        return dx + dshort   # the gradients of both paths


class BasicBlock(_Residual):
    """torchvision's ``BasicBlock``: ``conv1`` (3x3, ``stride``) -> ``bn1`` -> relu ->
    ``conv2`` (3x3) -> ``bn2``, plus the shortcut, then relu;
    ``(N, inplanes, H, W) -> (N, planes, H', W')`` with ``H' = ceil(H / stride)``. Convs have
    no bias. ``downsample``: the shortcut layer (None: identity, which needs ``stride == 1``
    and ``inplanes == planes``). ``seed`` makes the convs' initialisation reproducible."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dtype=np.float32,
                 seed=None):
        super().__init__()
        self.inplanes = check_int(inplanes, "inplanes", 1)
        self.planes = check_int(planes, "planes", 1)
        self.stride = check_int(stride, "stride", 1)
        s = _seeds(seed, 2)
        self.conv1 = Conv2d(inplanes, planes, 3, self.stride, 1, bias=False, dtype=dtype,
                            seed=s[0])
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False, dtype=dtype, seed=s[1])
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self._setup_shortcut(downsample)

    def _convs(self):
        return (self.conv1, self.conv2)

    def _branch(self, x):
        """``(branch output, the inner ReLU outputs backward needs)``."""
        h = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(h)), (h,)

    def _branch_backward(self, d, hidden):
        (h,) = hidden
        d = F.relu_backward(self.conv2.backward(self.bn2.backward(d)), h)
        return self.conv1.backward(self.bn1.backward(d))


class Bottleneck(_Residual):
    """torchvision's ``Bottleneck`` (ResNet v1.5, the stride on the 3x3): ``conv1`` (1x1,
    ``planes``) -> ``bn1`` -> relu -> ``conv2`` (3x3, ``stride``) -> ``bn2`` -> relu ->
    ``conv3`` (1x1, ``planes * 4``) -> ``bn3``, plus the shortcut, then relu;
    ``(N, inplanes, H, W) -> (N, 4 * planes, ceil(H / stride), ceil(W / stride))``."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dtype=np.float32,
                 seed=None):
        super().__init__()
        self.inplanes = check_int(inplanes, "inplanes", 1)
        self.planes = check_int(planes, "planes", 1)
        self.stride = check_int(stride, "stride", 1)
        out = planes * self.expansion
        s = _seeds(seed, 3)
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False, dtype=dtype, seed=s[0])
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.conv2 = Conv2d(planes, planes, 3, self.stride, 1, bias=False, dtype=dtype,
                            seed=s[1])
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.conv3 = Conv2d(planes, out, 1, bias=False, dtype=dtype, seed=s[2])
        self.bn3 = BatchNorm2d(out, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self._setup_shortcut(downsample)

    def _convs(self):
        return (self.conv1, self.conv2, self.conv3)

    def _branch(self, x):
        h1 = F.relu(self.bn1(self.conv1(x)))
        h2 = F.relu(self.bn2(self.conv2(h1)))
        return self.bn3(self.conv3(h2)), (h1, h2)

    def _branch_backward(self, d, hidden):
        h1, h2 = hidden
        d = F.relu_backward(self.conv3.backward(self.bn3.backward(d)), h2)
        d = F.relu_backward(self.conv2.backward(self.bn2.backward(d)), h1)
        return self.conv1.backward(self.bn1.backward(d))
