"""Plain NumPy activations (LeakyReLU, GELU, SiLU, Sigmoid, Tanh) and the label-smoothed
cross-entropy, written from the textbook formulas.

Shapes: every activation any shape -> same shape; its backward ``(dy, x)`` -> dx (the formulas
take the input ``x``, also for Sigmoid and Tanh). ``cross_entropy_naive`` ``logits (N, K)``,
``labels (N,)`` -> ``(loss, dlogits)``.
"""
import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def leaky_relu(x, negative_slope=0.01):
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(dy, x, negative_slope=0.01):
    return np.where(x > 0, dy, dy * dy.dtype.type(negative_slope))


def gelu(x, approximate="none"):
    """``x * Phi(x)`` (``Phi`` the standard normal CDF), or the tanh approximation
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; computed in float64."""
    v = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    else:
        y = v * 0.5 * (1 + _erf(v / math.sqrt(2)))
    return y.astype(x.dtype)


def gelu_backward(dy, x, approximate="none"):
    v = x.astype(np.float64)
    if approximate == "tanh":
        b = math.sqrt(2 / math.pi)
        th = np.tanh(b * (v + 0.044715 * v ** 3))
        d = 0.5 * (1 + th) + 0.5 * v * (1 - th ** 2) * b * (1 + 3 * 0.044715 * v ** 2)
    else:
        d = 0.5 * (1 + _erf(v / math.sqrt(2))) + v * np.exp(-v * v / 2) / math.sqrt(2 * math.pi)
    return (dy * d).astype(dy.dtype)


def sigmoid(x):
    return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(x.dtype)


def sigmoid_backward(dy, x):
    s = sigmoid(x).astype(np.float64)
    return (dy * s * (1 - s)).astype(dy.dtype)


def silu(x):
    return (x.astype(np.float64) * sigmoid(x.astype(np.float64))).astype(x.dtype)


def silu_backward(dy, x):
    v = x.astype(np.float64)
    s = sigmoid(v)
    return (dy * (s + v * s * (1 - s))).astype(dy.dtype)


def tanh(x):
    return np.tanh(x)


def tanh_backward(dy, x):
    t = np.tanh(x.astype(np.float64))
    return (dy * (1 - t * t)).astype(dy.dtype)


def cross_entropy_naive(logits, labels, reduction="mean", label_smoothing=0.0):
    """Row by row: ``loss_n = -sum_k q_k log softmax(z_n)_k`` with the target distribution
    ``q = (1 - eps) onehot(label) + eps / K``; the mean or the sum over the rows. Returns
    ``(loss, dlogits)`` with ``dlogits = (softmax - q) / N`` (mean) or ``softmax - q`` (sum)."""
    N, K = logits.shape
    eps = label_smoothing
    total = 0.0
    d = np.empty_like(logits)
    scale = 1.0 / N if reduction == "mean" else 1.0
    for n in range(N):
        z = [float(v) for v in logits[n]]
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        for k in range(K):
            q = (1 - eps) * (k == labels[n]) + eps / K
            total -= q * (z[k] - lse)
            d[n, k] = (math.exp(z[k] - lse) - q) * scale
    return logits.dtype.type(total * scale), d
