"""Plain NumPy ReLU, Linear, dropout and softmax cross-entropy."""
import numpy as np


# ---- basic ----------------------------------------------------------------------------------
# Shapes: relu any; linear x (N, in), weight (out, in), bias (out,) -> y (N, out) = x @ weight.T
# + bias; softmax cross-entropy logits (N, K), labels (N,) ints -> (mean loss, dlogits (N, K)).

def relu(x):
    """``max(x, 0)``, NaN stays NaN (as PyTorch)."""
    return np.where(x <= 0, np.zeros_like(x), x)


def relu_backward(dy, x):
    """``dx = 0`` where ``x <= 0``, else ``dy`` (a NaN ``x`` passes ``dy``, as PyTorch)."""
    return np.where(x <= 0, np.zeros_like(dy), dy)


def linear_naive(x, weight, bias=None):
    N, (O, I) = x.shape[0], weight.shape
    y = np.zeros((N, O), x.dtype)
    for n in range(N):
        for o in range(O):
            s = x.dtype.type(0) if bias is None else bias[o]
            for i in range(I):
                s += x[n, i] * weight[o, i]
            y[n, o] = s
    return y


def linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


def linear_backward(dy, x, weight):
    """Returns ``(dx, dweight, dbias)``."""
    return dy @ weight, dy.T @ x, dy.sum(axis=0)


def dropout(x, mask, p):
    """Inverted dropout with a boolean keep-``mask``: ``x * mask / (1 - p)``."""
    if p == 1:
        return np.zeros_like(x)
    return x * mask.astype(x.dtype) / x.dtype.type(1 - p)


def softmax_cross_entropy_naive(logits, labels):
    """Row by row with the log-sum-exp shift; returns ``(loss, dlogits)``."""
    N, K = logits.shape
    loss = 0.0
    d = np.empty_like(logits)
    for n in range(N):
        m = max(logits[n])
        e = [np.exp(logits[n, k] - m) for k in range(K)]
        s = sum(e)
        loss += np.log(s) - (logits[n, labels[n]] - m)
        for k in range(K):
            d[n, k] = (e[k] / s - (k == labels[n])) / N
    return logits.dtype.type(loss / N), d
