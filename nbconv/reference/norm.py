"""Plain NumPy normalisation: group norm (naive and vectorised) and batch norm."""
import numpy as np


# ---- norm -----------------------------------------------------------------------------------
# Shapes: x, y, dy, dx (N, C, H, W); weight, bias, dweight, dbias (C,) (None: 1 and 0).
# Computed in x's dtype (pass float64 copies for accurate values). Statistics are the mean and
# the biased variance over the normalised values; xhat = (x - mean) / sqrt(var + eps), y = xhat *
# weight + bias, and with dxhat = dy * weight the input gradient is the textbook
#     dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps)
# (means over the same values as the statistics), or dxhat / sqrt(var + eps) for fixed statistics.

def _affine(C, weight, bias, dtype):
    w = np.ones(C, dtype) if weight is None else weight
    b = np.zeros(C, dtype) if bias is None else bias
    return w.reshape(1, C, 1, 1), b.reshape(1, C, 1, 1)


def group_norm_naive(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Loop over (sample, group): normalise the group's ``C/G * H * W`` values."""
    N, C = x.shape[:2]
    cg = C // num_groups
    w, b = _affine(C, weight, bias, x.dtype)
    y = np.empty_like(x)
    for n in range(N):
        for g in range(num_groups):
            v = x[n, g * cg:(g + 1) * cg]
            mean = v.sum() / v.size
            var = ((v - mean) ** 2).sum() / v.size
            y[n, g * cg:(g + 1) * cg] = (v - mean) / np.sqrt(var + eps)
    return y * w + b


def _group_view(a, num_groups):
    return a.reshape(a.shape[0], num_groups, -1)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Vectorised over (sample, group): returns ``y``."""
    v = _group_view(x, num_groups)
    mean = v.mean(axis=2, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=2, keepdims=True)
    w, b = _affine(x.shape[1], weight, bias, x.dtype)
    return ((v - mean) / np.sqrt(var + eps)).reshape(x.shape) * w + b


def group_norm_backward(dy, x, num_groups, weight=None, eps=1e-5):
    """Returns ``(dx, dweight, dbias)``, recomputing the statistics from ``x``."""
    v = _group_view(x, num_groups)
    mean = v.mean(axis=2, keepdims=True)
    rstd = 1 / np.sqrt(((v - mean) ** 2).mean(axis=2, keepdims=True) + eps)
    xhat = ((v - mean) * rstd).reshape(x.shape)
    w, _ = _affine(x.shape[1], weight, None, x.dtype)
    dxhat = _group_view(dy * w, num_groups)
    xh = _group_view(xhat, num_groups)
    dx = rstd * (dxhat - dxhat.mean(axis=2, keepdims=True)
                 - xh * (dxhat * xh).mean(axis=2, keepdims=True))
    return dx.reshape(x.shape), (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))


def batch_norm2d(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5):
    """Returns ``y``. ``training``: batch statistics over (N, H, W), and the running ones (if
    given) updated in place with the unbiased variance; else the running statistics."""
    L = x.shape[0] * x.shape[2] * x.shape[3]
    if training:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * L / (L - 1)
    else:
        mean, var = running_mean, running_var
    w, b = _affine(x.shape[1], weight, bias, x.dtype)
    return (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps) * w + b


def batch_norm2d_backward(dy, x, weight=None, training=True, running_mean=None,
                          running_var=None, eps=1e-5):
    """Returns ``(dx, dweight, dbias)``; ``training``: the statistics were the batch's own,
    else the given running ones (fixed)."""
    if training:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))
    else:
        mean, var = running_mean, running_var
    rstd = (1 / np.sqrt(var + eps))[:, None, None]
    xhat = (x - mean[:, None, None]) * rstd
    w, _ = _affine(x.shape[1], weight, None, x.dtype)
    dxhat = dy * w
    if training:
        dx = rstd * (dxhat - dxhat.mean(axis=(0, 2, 3), keepdims=True)
                     - xhat * (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True))
    else:
        dx = rstd * dxhat
    return dx, (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))
