"""Batch normalisation over the GLOBAL batch of a data-parallel job: the functional half of
:class:`nbconv.layers.SyncBatchNorm2d` (PyTorch's ``nn.SyncBatchNorm``).

``comm`` is a :class:`nbconv.distributed.Communicator`; both functions are collectives (every
rank calls them, in the same order). Shapes: ``x``, ``y``, ``dy``, ``dx`` ``(N, C, H, W)``
(``N`` may differ between ranks), ``weight``/``bias`` ``(C,)``; statistics are float64 ``(C,)``.

Forward: each rank computes per channel its count ``L_r = N_r * H * W``, mean and
``M2_r = sum((x - mean_r)^2)``; one ``Allgather`` of ``(L_r, mean_r, M2_r)`` and every rank
combines them in rank order (Chan et al.'s pairwise formula)::

    mean = sum(L_r * mean_r) / L,   var = sum(M2_r + L_r * (mean_r - mean)^2) / L

so the statistics equal those of one process holding the whole batch (up to float64 rounding)
and are the same on every rank. Backward: one ``Allreduce`` of the per-channel ``sum(dy)`` and
``sum(dy * (x - mean))``, from which ``dx`` is computed with the global count.
"""
import numpy as np

from ..kernels import norm as _kn
from ..kernels import sync_norm as _ks
from .norm import _check_affine, _check_x

__all__ = ["sync_batch_norm2d", "sync_batch_norm2d_backward"]


def sync_batch_norm2d(x, weight, bias, eps, comm):
    """Train-mode batch norm with global statistics: ``(y, mean, rstd, var, count)``, where
    ``var`` is the biased global variance and ``count`` the global number of values per
    channel (the unbiased running variance is ``var * count / (count - 1)``)."""
    x = _check_x(x)
    N, C, H, W = x.shape
    weight = _check_affine(weight, "weight", C, x.dtype, 1)
    bias = _check_affine(bias, "bias", C, x.dtype, 0)
    x3 = x.reshape(N, C, H * W)
    local = np.zeros(2 * C + 1)
    local[0] = N * H * W
    if local[0] > 0:
        _ks.channel_moments(x3, local[1:C + 1], local[C + 1:])
    parts = comm.allgather(local)                    # (P, 2C + 1), rank order
    counts, means, m2s = parts[:, 0], parts[:, 1:C + 1], parts[:, C + 1:]
    count = float(counts.sum())
    if count <= 1:
        raise ValueError(f"expected more than 1 value per channel when training, got "
                         f"{int(count)} over all ranks (x of shape {x.shape} on this rank)")
    mean = np.zeros(C)
    for r in range(len(counts)):                     # fixed order: same on every rank
        mean += counts[r] * means[r]
    mean /= count
    m2 = np.zeros(C)
    for r in range(len(counts)):
        m2 += m2s[r] + counts[r] * (means[r] - mean) ** 2
    var = m2 / count
    rstd = 1.0 / np.sqrt(var + eps)
    y = np.empty_like(x)
    if N > 0:
        _kn.batch_norm_apply(x3, mean, rstd, weight, bias, y.reshape(N, C, H * W))
    return y, mean, rstd, var, count


def sync_batch_norm2d_backward(dy, x, mean, rstd, weight, count, comm, need_dx=True):
    """Gradients of :func:`sync_batch_norm2d`: ``(dx or None, dweight, dbias)``, where
    ``dweight``/``dbias`` are this rank's share (summing them over the ranks, as the gradient
    averaging does, gives the global gradient) and ``dx`` uses the global sums."""
    N, C, H, W = x.shape
    weight = _check_affine(weight, "weight", C, x.dtype, 1)
    x3, dy3 = x.reshape(N, C, H * W), dy.reshape(N, C, H * W)
    sums = np.zeros(2 * C)
    _ks.channel_dsums(dy3, x3, mean, sums[:C], sums[C:])
    dweight, dbias = sums[C:] * rstd, sums[:C].copy()     # this rank's share
    comm.allreduce_sum_(sums)                              # global sums for dx
    if not need_dx:
        return None, dweight, dbias
    dx = np.empty_like(x)
    _ks.batch_norm_dx(dy3, x3, mean, rstd, weight, sums[:C], sums[C:], count,
                      dx.reshape(N, C, H * W))
    return dx, dweight, dbias
