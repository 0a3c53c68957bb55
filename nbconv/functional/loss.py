"""The cross-entropy loss with PyTorch's ``reduction`` and ``label_smoothing``
(``torch.nn.functional.cross_entropy`` on class-index targets), and its gradient.

``logits (N, K)`` float32/float64 and ``labels (N,)`` integers in ``[0, K)`` -> ``(loss,
dlogits (N, K))`` (hence the name: ``torch.nn.functional.cross_entropy`` returns the loss
alone). The plain mean is :func:`nbconv.functional.softmax_cross_entropy`.
"""
import numpy as np

from .._checks import check_array, check_float
from ..kernels import loss as K
from .basic import _check_labels

__all__ = ["cross_entropy_and_grad", "check_reduction"]


def check_reduction(reduction):
    if reduction not in ("mean", "sum"):
        hint = (" (per-sample losses need a backward with a gradient per sample: not "
                "supported)") if reduction == "none" else ""
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}{hint}")
    return reduction


def cross_entropy_and_grad(logits, labels, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy against ``q = (1 - eps) onehot(label) + eps / K`` (``eps =
    label_smoothing`` in ``[0, 1]``), summed over the classes and then averaged
    (``reduction="mean"``) or summed (``"sum"``) over the rows, with log-sum-exp so extreme
    logits stay finite. Returns ``(loss, dlogits)``: ``loss`` a NumPy scalar of the logits'
    dtype, ``dlogits = (softmax(logits) - q) / N`` (mean) or ``softmax(logits) - q`` (sum)."""
    logits = check_array(logits, "logits", ndim=2)
    reduction = check_reduction(reduction)
    eps = check_float(label_smoothing, "label_smoothing", 0.0, 1.0)
    n, k = logits.shape
    labels = _check_labels(labels, n, k)
    losses = np.empty(n, logits.dtype)
    d = np.empty_like(logits)
    K.cross_entropy(logits, labels, eps, 1.0 / n if reduction == "mean" else 1.0, losses, d)
    reduce = losses.mean if reduction == "mean" else losses.sum
    return logits.dtype.type(reduce(dtype=logits.dtype)), d
