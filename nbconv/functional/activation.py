"""Elementwise activations and their backward: LeakyReLU, GELU (exact erf form, or
``approximate="tanh"``), SiLU, Sigmoid, Tanh, as ``torch.nn.functional``'s.

Any shape -> the same shape, float32 or float64, computed in the input's dtype by the loops of
:mod:`nbconv.kernels.activation` (PyTorch's formulas, so NaN and inf give PyTorch's results).
The backward functions take what the layer saves: the input ``x`` (``leaky_relu_backward``,
``gelu_backward``, ``silu_backward``) or the output ``y`` (``sigmoid_backward``,
``tanh_backward``). One thread below ``PARALLEL_ELEMENTS`` elements. Inputs are never modified.
"""
import numpy as np

from .._checks import check_array, check_float
from .._config import PARALLEL_ELEMENTS
from ..kernels import activation as K

__all__ = ["leaky_relu", "leaky_relu_backward", "gelu", "gelu_backward", "silu",
           "silu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
           "check_approximate"]


def check_approximate(approximate):
    """GELU's ``approximate``: ``"none"`` (erf) or ``"tanh"``; returns the kernel's op code."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return K.GELU if approximate == "none" else K.GELU_TANH


def _forward(input, op, alpha=0.0):
    x = check_array(input, "x", allow_empty=False)
    y = np.empty_like(x)
    fn = K.forward if x.size >= PARALLEL_ELEMENTS else K.forward_serial
    fn(x.reshape(-1), y.reshape(-1), op, float(alpha))
    return y


def _backward(dy, saved, name, op, alpha=0.0):
    dy = check_array(dy, "dy", allow_empty=False)
    s = check_array(saved, name, allow_empty=False)
    if dy.shape != s.shape:
        raise ValueError(f"dy must have the shape of {name} {s.shape}, got {dy.shape}")
    if dy.dtype != s.dtype:
        raise TypeError(f"dy has dtype {dy.dtype} but {name} has {s.dtype}")
    dx = np.empty_like(dy)
    fn = K.backward if dy.size >= PARALLEL_ELEMENTS else K.backward_serial
    fn(dy.reshape(-1), s.reshape(-1), dx.reshape(-1), op, float(alpha))
    return dx


def _slope(negative_slope):
    return check_float(negative_slope, "negative_slope")


def leaky_relu(input, negative_slope=0.01):
    """``x`` where ``x > 0``, else ``negative_slope * x``."""
    return _forward(input, K.LEAKY_RELU, _slope(negative_slope))


def leaky_relu_backward(dy, x, negative_slope=0.01):
    """``dy`` where ``x > 0``, else ``negative_slope * dy`` (PyTorch's: the slope at 0)."""
    return _backward(dy, x, "x", K.LEAKY_RELU, _slope(negative_slope))


def gelu(input, approximate="none"):
    """``x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))``, or with ``approximate="tanh"``
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return _forward(input, check_approximate(approximate))


def gelu_backward(dy, x, approximate="none"):
    """``dy * (Phi(x) + x phi(x))`` (or the tanh form's derivative)."""
    return _backward(dy, x, "x", check_approximate(approximate))


def silu(input):
    """``x * sigmoid(x) = x / (1 + exp(-x))`` (also called swish)."""
    return _forward(input, K.SILU)


def silu_backward(dy, x):
    """``dy * s (1 + x (1 - s))`` with ``s = sigmoid(x)``."""
    return _backward(dy, x, "x", K.SILU)


def sigmoid(input):
    """``1 / (1 + exp(-x))``."""
    return _forward(input, K.SIGMOID)


def sigmoid_backward(dy, y):
    """``dy * y (1 - y)`` from the output ``y = sigmoid(x)``."""
    return _backward(dy, y, "y", K.SIGMOID)


def tanh(input):
    """``tanh(x)``."""
    return _forward(input, K.TANH)


def tanh_backward(dy, y):
    """``dy * (1 - y^2)`` from the output ``y = tanh(x)``."""
    return _backward(dy, y, "y", K.TANH)
