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
import functools

import numpy as np

from .._checks import check_array, check_float
from .._config import PARALLEL_ELEMENTS, PARALLEL_MACS  # below these: one thread
from .._config import (LINEAR_COPY_ROWS, LINEAR_INPLACE_MAX_K, LINEAR_JC, LINEAR_KC_BYTES,
                       LINEAR_MC, LINEAR_NC_BYTES, LINEAR_NN_KC_BYTES, LINEAR_NN_PANEL_BYTES,
                       LINEAR_SIMD_MIN_IN, MIN_TASKS)  # Linear's blocking (see _config)
from ..kernels import basic as K
from ..kernels import simd

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


def _split(n, parts):
    """``[0, n)`` in ``parts`` nearly equal consecutive ranges (bounds)."""
    return [n * p // parts for p in range(parts + 1)]


@functools.lru_cache(maxsize=256)
def _forward_plan(N, Kin, F, itemsize, nbytes, parallel):
    """Task table, ``kc`` and ``jc`` of :func:`nbconv.kernels.basic.linear_forward`: tasks are
    weight slabs (``LINEAR_JC`` rows) x parts of the batch, at least ``MIN_TASKS`` of them when
    ``parallel`` and the blocks allow; one task otherwise."""
    L = nbytes // itemsize
    kc = max(L, LINEAR_KC_BYTES // itemsize // L * L)
    nrb, ncb = (N + 3) // 4, (F + 2) // 3
    if not parallel:
        return np.array([[0, 4 * nrb, 0, 3 * ncb]], np.int64), kc, LINEAR_JC
    cols = _split(ncb, max(1, min(ncb, (ncb * 3 + LINEAR_JC - 1) // LINEAR_JC)))
    rows = _split(nrb, min(nrb, max(1, -(-MIN_TASKS // (len(cols) - 1)))))
    tasks = [(4 * rows[a], 4 * rows[a + 1], 3 * cols[b], 3 * cols[b + 1])
             for a in range(len(rows) - 1) for b in range(len(cols) - 1)]
    return np.array(tasks, np.int64), kc, LINEAR_JC


def _nn_tasks(which, M, Nc, L, itemsize, parallel):
    """Blocks ``(which, r0, r1, q0, q1)`` of an (M, Nc) product: ``LINEAR_MC`` rows x
    ``LINEAR_NC_BYTES`` of columns (whole 3-vector blocks), narrower when ``parallel`` needs
    ``MIN_TASKS`` of them."""
    blk = 3 * L
    nqb = (Nc + blk - 1) // blk
    rows = list(range(0, M, LINEAR_MC)) + [(M + 3) // 4 * 4]
    per = max(1, LINEAR_NC_BYTES // itemsize // blk)
    parts = (nqb + per - 1) // per
    if parallel:
        parts = min(nqb, max(parts, -(-MIN_TASKS // (len(rows) - 1))))
    cols = [min(Nc, blk * c) for c in _split(nqb, parts)]
    return [(which, rows[a], rows[a + 1], cols[b], cols[b + 1])
            for a in range(len(rows) - 1) for b in range(len(cols) - 1)]


@functools.lru_cache(maxsize=256)
def _grads_plan(N, Kin, F, need_dx, itemsize, nbytes, parallel):
    """Task table, ``kc``, panel width and ``(copy for dx, copy for dweight)`` of
    :func:`nbconv.kernels.basic.linear_grads`: the blocks of ``dx`` (if wanted) and of
    ``dweight``, interleaved (each thread's share gets both)."""
    L = nbytes // itemsize
    kc = max(4, LINEAR_NN_KC_BYTES // (3 * nbytes))
    tw = _nn_tasks(1, F, Kin, L, itemsize, parallel)
    tx = _nn_tasks(0, N, Kin, L, itemsize, parallel) if need_dx else []
    tasks = [t for pair in zip(tx, tw) for t in pair] + tx[len(tw):] + tw[len(tx):]
    kp = min(kc, max(N, F))
    pw = max(1, LINEAR_NN_PANEL_BYTES // (kp * 3 * nbytes))
    copy = (_copy_panels(N, F, Kin * itemsize, kc), _copy_panels(F, N, Kin * itemsize, kc))
    return np.array(tasks, np.int64), kc, pw, copy


def _copy_panels(M, Kred, stride, kc):
    """Whether a product with ``M`` output rows and ``Kred`` reduction rows of ``stride`` bytes
    copies its blocks of rows into contiguous panels (``LINEAR_COPY_ROWS``,
    ``LINEAR_INPLACE_MAX_K``)."""
    for multiple, rows in LINEAR_COPY_ROWS:
        if stride % multiple == 0:
            return M > rows
    return min(Kred, kc) > LINEAR_INPLACE_MAX_K


_NO_BIAS = {np.dtype(t): np.zeros(0, t) for t in (np.float32, np.float64)}


def linear(input, weight, bias=None):
    """``y (N, out) = x (N, in) @ weight.T (in, out) + bias (out,)`` (``x`` is ``input``).

    Dot products of the rows of ``x`` and ``weight`` on the SIMD micro-kernel
    (:func:`nbconv.kernels.basic.linear_forward`); below ``LINEAR_SIMD_MIN_IN`` input features
    the scalar 4x4 blocks of :func:`nbconv.kernels.basic.matmul_nt`, which were measured as
    fast or faster there (short dot products: the micro-kernel's per-block lane sums weigh
    more). Reference: :func:`nbconv.reference.linear`."""
    x, weight, bias = _linear_args(input, weight, bias)
    N, Kin = x.shape
    F = weight.shape[0]
    y = np.empty((N, F), x.dtype)
    parallel = N * Kin * F >= PARALLEL_MACS
    if Kin < LINEAR_SIMD_MIN_IN:
        (K.matmul_nt if parallel else K.matmul_nt_serial)(x, weight, y)
        if bias is not None:
            K.add_bias(y, bias)
        return y
    V = simd.WIDTH
    tasks, kc, jc = _forward_plan(N, Kin, F, x.dtype.itemsize, V.nbytes, parallel)
    fn = K.linear_forward if parallel else K.linear_forward_serial
    fn(x, weight, bias if bias is not None else _NO_BIAS[x.dtype], bias is not None, y, tasks,
       kc, jc, V)
    return y


def linear_backward(dy, x, weight, need_dx=True, need_bias=True):
    """Gradients of :func:`linear`: ``dx = dy @ weight`` ``(N, in)``, ``dweight = dy.T @ x``
    ``(out, in)``, ``dbias = dy.sum(0)`` ``(out,)``; returns ``(dx, dweight, dbias)`` with
    ``None`` for the ones not asked for.

    ``dx`` and ``dweight`` in one launch of :func:`nbconv.kernels.basic.linear_grads` (4 output
    rows x 3 vectors of columns per micro-kernel call); reference:
    :func:`nbconv.reference.linear_backward`."""
    x, weight, _ = _linear_args(x, weight, None)
    dy = check_array(dy, "dy", ndim=2, dtype=weight.dtype)
    if dy.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"dy must have shape {(x.shape[0], weight.shape[0])} for x {x.shape} "
                         f"and weight {weight.shape}, got {dy.shape}")
    N, Kin = x.shape
    F = weight.shape[0]
    V = simd.WIDTH
    parallel = N * Kin * F >= PARALLEL_MACS   # of each product
    tasks, kc, pw, (copyx, copyw) = _grads_plan(N, Kin, F, bool(need_dx), x.dtype.itemsize,
                                                V.nbytes, parallel)
    dw = np.empty_like(weight)
    dx = np.empty_like(x) if need_dx else np.empty((0, Kin), x.dtype)
    fn = K.linear_grads if parallel else K.linear_grads_serial
    fn(dy, weight, x, dx, dw, tasks, kc, pw, copyx, copyw, V)
    db = None
    if need_bias:
        db = np.empty(F, dy.dtype)
        K.sum_rows(dy, db)
    return (dx if need_dx else None), dw, db


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
