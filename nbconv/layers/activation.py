"""Elementwise activation layers: LeakyReLU, GELU, SiLU, Sigmoid, Tanh, stateful wrappers
around :mod:`nbconv.functional.activation` (any shape -> the same shape, float32 or float64).

LeakyReLU, GELU and SiLU save their input for ``backward`` (do not modify it in place before
``backward``), Sigmoid and Tanh their output. ``inplace`` is accepted where torch has it, for
its signature and repr; nbconv always computes out of place (no layer writes to its input).
"""
from .. import functional as F
from .._checks import check_bool, check_float
from .base import Layer

__all__ = ["LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh"]


class _Elementwise(Layer):
    """Shared bits: ``forward`` applies ``_fn``, saves the input (``_saves = "x"``) or the
    output (``"y"``); ``backward`` applies ``_grad(dy, saved)``, or returns ``None`` when
    ``input_grad`` is False."""

    _saves = "x"

    def forward(self, x):
        y = self._fn(x)
        self._save(y.shape, x if self._saves == "x" else y)
        return y

    def backward(self, dy):
        dy, saved = self._load(dy)
        return self._grad(dy, saved) if self.input_grad else None

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def macs(self, input_shape):
        return 0   # elementwise arithmetic is not counted

    def _fn(self, x):
        raise NotImplementedError

    def _grad(self, dy, saved):
        raise NotImplementedError


def _inplace(inplace):
    return check_bool(inplace, "inplace")


class LeakyReLU(_Elementwise):
    """``x`` where ``x > 0``, else ``negative_slope * x``, as ``torch.nn.LeakyReLU``; the
    gradient at 0 is ``negative_slope``, as PyTorch's."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = check_float(negative_slope, "negative_slope")
        self.inplace = _inplace(inplace)

    def _fn(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def _grad(self, dy, x):
        return F.leaky_relu_backward(dy, x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace
                                                          else "")


class GELU(_Elementwise):
    """``x * Phi(x)`` with the exact erf CDF (``approximate="none"``, PyTorch's default) or
    the tanh approximation (``approximate="tanh"``), as ``torch.nn.GELU``."""

    def __init__(self, approximate="none"):
        super().__init__()
        F.check_approximate(approximate)
        self.approximate = approximate

    def _fn(self, x):
        return F.gelu(x, self.approximate)

    def _grad(self, dy, x):
        return F.gelu_backward(dy, x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(_Elementwise):
    """``x * sigmoid(x)``, as ``torch.nn.SiLU``."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = _inplace(inplace)

    def _fn(self, x):
        return F.silu(x)

    def _grad(self, dy, x):
        return F.silu_backward(dy, x)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Sigmoid(_Elementwise):
    """``1 / (1 + exp(-x))``, as ``torch.nn.Sigmoid``."""

    _saves = "y"

    def _fn(self, x):
        return F.sigmoid(x)

    def _grad(self, dy, y):
        return F.sigmoid_backward(dy, y)


class Tanh(_Elementwise):
    """``tanh(x)``, as ``torch.nn.Tanh``."""

    _saves = "y"

    def _fn(self, x):
        return F.tanh(x)

    def _grad(self, dy, y):
        return F.tanh_backward(dy, y)
