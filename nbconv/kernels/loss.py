"""Loop of the cross-entropy loss with label smoothing (``torch.nn.CrossEntropyLoss``'s
``label_smoothing``); the plain mean loss is :func:`nbconv.kernels.basic.softmax_xent`."""
import numpy as np

from .._config import serial_kernel


@serial_kernel
def cross_entropy(logits, labels, eps, scale, losses, d):
    """Per row ``i`` of ``logits (N, K)``: with ``z = logits[i] - max`` (NaN propagates),
    ``lse = log(sum_j exp z_j)`` and the target ``q = (1 - eps) onehot(labels[i]) + eps / K``,
    ``losses[i] = lse - (1 - eps) z[label] - eps * mean_j z_j`` and
    ``d[i] = (softmax(z) - q) * scale``. One pass per row."""
    n, k = logits.shape
    t = logits.dtype.type
    one = t(1)
    keep = t(1 - eps)
    spread = t(eps / k)
    sc = t(scale)
    for i in range(n):
        row = logits[i]
        di = d[i]
        mx = row[0]
        for j in range(1, k):
            v = row[j]
            if v > mx or v != v:
                mx = v
        s = t(0)
        zsum = t(0)
        for j in range(k):
            z = row[j] - mx
            e = np.exp(z)
            di[j] = e
            s += e
            zsum += z
        lab = labels[i]
        lse = np.log(s)
        losses[i] = lse - keep * (row[lab] - mx) - spread * zsum
        for j in range(k):
            di[j] = (di[j] / s - spread) * sc
        di[lab] -= keep * sc
