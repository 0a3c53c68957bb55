"""Basic ops: ReLU, Linear (matrix products), dropout and softmax cross-entropy.

ReLU, Linear's products, dropout and the loss run in the Numba loops of
:mod:`nbconv.kernels.basic` (not BLAS: see there why), each one pass over its data.
Elementwise ops run on one thread below ``PARALLEL_ELEMENTS``: one core already moves data at
NumPy's copy speed, and waking the pool costs more than it saves (see ``_config``).

Shapes: ``relu`` any ``(N, ...)``; ``linear`` ``x (N, in_features)``, ``weight (out_features,
in_features)``, ``bias (out_features,)`` -> ``y (N, out_features)``, ``y = x @ weight.T + bias``;
``softmax_cross_entropy`` ``logits (N, K)`` float, ``labels (N,)`` integers in ``[0, K)`` ->
``(loss, dlogits (N, K))`` with the loss averaged over the batch.

Every function validates its arguments first (``TypeError`` / ``ValueError`` naming the argument
and the shapes), computes in the inputs' dtype and returns new arrays; inputs are never
modified.
"""
import numpy as np

from .._checks import check_array, check_float
from .._config import PARALLEL_ELEMENTS, PARALLEL_MACS  # below these: one thread
from ..kernels import basic as K

__all__ = ["relu", "relu_backward", "linear", "linear_backward", "dropout_mask", "dropout",
           "dropout_backward", "softmax_cross_entropy"]


def _any_ndim(x, name):
    return check_array(x, name, allow_empty=False)


def relu(input):
    """``max(input, 0)`` elementwise (NaN stays NaN, as PyTorch); any shape."""
    x = _any_ndim(input, "x")
    y = np.empty_like(x)
    fn = K.relu_forward if x.size >= PARALLEL_ELEMENTS else K.relu_forward_serial
    fn(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, y):
    """``dx = 0`` where ``y <= 0``, else ``dy``, for ``y = relu(x)``: PyTorch's
    ``threshold_backward`` (no gradient at 0; a NaN ``y``, from a NaN ``x``, passes ``dy``)."""
    dy = _any_ndim(dy, "dy")
    y = _any_ndim(y, "y")
    if dy.shape != y.shape:
        raise ValueError(f"dy must have the shape of y {y.shape}, got {dy.shape}")
    if dy.dtype != y.dtype:
        raise TypeError(f"dy has dtype {dy.dtype} but y has {y.dtype}")
    dx = np.empty_like(dy)
    fn = K.relu_backward if dy.size >= PARALLEL_ELEMENTS else K.relu_backward_serial
    fn(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


def _linear_args(x, weight, bias):
    weight = check_array(weight, "weight", ndim=2)
    x = check_array(x, "x", ndim=2, dtype=weight.dtype)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features (shape {x.shape}) but weight "
                         f"{weight.shape} expects in_features={weight.shape[1]}")
    if bias is not None:
        bias = check_array(bias, "bias", ndim=1, dtype=weight.dtype)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},) for weight "
                             f"{weight.shape}, got {bias.shape}")
    return x, weight, bias


def _pick(parallel, serial, macs):
    return parallel if macs >= PARALLEL_MACS else serial


def linear(input, weight, bias=None):
    """``y (N, out) = x (N, in) @ weight.T (in, out) + bias (out,)`` (``x`` is ``input``)."""
    x, weight, bias = _linear_args(input, weight, bias)
    y = np.empty((x.shape[0], weight.shape[0]), x.dtype)
    _pick(K.matmul_nt, K.matmul_nt_serial, x.size * weight.shape[0])(x, weight, y)
    if bias is not None:
        K.add_bias(y, bias)
    return y


def linear_backward(dy, x, weight, need_dx=True, need_bias=True):
    """Gradients of :func:`linear`: ``dx = dy @ weight`` ``(N, in)``, ``dweight = dy.T @ x``
    ``(out, in)``, ``dbias = dy.sum(0)`` ``(out,)``; returns ``(dx, dweight, dbias)`` with
    ``None`` for the ones not asked for."""
    x, weight, _ = _linear_args(x, weight, None)
    dy = check_array(dy, "dy", ndim=2, dtype=weight.dtype)
    if dy.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"dy must have shape {(x.shape[0], weight.shape[0])} for x {x.shape} "
                         f"and weight {weight.shape}, got {dy.shape}")
    dx = db = None
    dw = np.empty_like(weight)
    dyt = np.ascontiguousarray(dy.T)
    macs = x.size * dy.shape[1]   # of each product
    if need_dx:
        dx = np.empty_like(x)
        if macs >= PARALLEL_MACS:   # dx and dweight in one launch
            K.matmul_nn_pair(dy, weight, dx, dyt, x, dw)
        else:
            K.matmul_nn_serial(dy, weight, dx)
            K.matmul_nn_serial(dyt, x, dw)
    else:
        _pick(K.matmul_nn, K.matmul_nn_serial, macs)(dyt, x, dw)
    if need_bias:
        db = np.empty(weight.shape[0], dy.dtype)
        K.sum_rows(dy, db)
    return dx, dw, db


def dropout_mask(shape, p, rng, dtype=np.float32):
    """Boolean keep-mask of ``shape``: each entry kept with probability ``1 - p`` (drawn from the
    ``numpy.random.Generator`` ``rng`` as ``rng.random(shape, dtype) >= p``)."""
    p = check_float(p, "p", 0.0, 1.0)
    return rng.random(shape, dtype=np.dtype(dtype)) >= p


def dropout(input, mask, p):
    """Inverted dropout: ``input * mask / (1 - p)`` (all zeros when ``p == 1``)."""
    x = _any_ndim(input, "x")
    p = check_float(p, "p", 0.0, 1.0)
    _check_mask(mask, x.shape)
    if p == 1.0:
        return np.zeros_like(x)
    y = np.empty_like(x)
    fn = K.dropout if x.size >= PARALLEL_ELEMENTS else K.dropout_serial
    fn(x.reshape(-1), np.ascontiguousarray(mask).reshape(-1).view(np.uint8),
       x.dtype.type(1.0 / (1.0 - p)), y.reshape(-1))   # one pass
    return y


def dropout_backward(dy, mask, p):
    """Gradient of :func:`dropout`: the same mask and scale applied to ``dy``."""
    return dropout(dy, mask, p)


def _check_mask(mask, shape):
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean numpy.ndarray, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != shape:
        raise ValueError(f"mask must have shape {shape}, got {mask.shape}")


def _check_labels(labels, n, k):
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray of integers, got {type(labels).__name__}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per row of logits), "
                         f"got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be in [0, {k}) for logits with {k} classes, got values "
                         f"in [{labels.min()}, {labels.max()}]")
    return labels.astype(np.intp)


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy and its gradient.

    ``loss = mean_i(logsumexp(logits[i]) - logits[i, labels[i]])`` computed from
    ``z = logits - max(logits, axis=1)`` so extreme logits neither overflow nor underflow;
    ``dlogits = (softmax(logits) - onehot(labels)) / N``. Returns ``(loss, dlogits)``: ``loss`` a
    NumPy scalar of the logits' dtype, ``dlogits (N, K)``.
    """
    logits = check_array(logits, "logits", ndim=2)
    n, k = logits.shape
    labels = _check_labels(labels, n, k)
    losses = np.empty(n, logits.dtype)
    d = np.empty_like(logits)
    K.softmax_xent(logits, labels, losses, d)   # one pass per row instead of ~10 NumPy calls
    return logits.dtype.type(losses.mean(dtype=logits.dtype)), d
