"""SyncBatchNorm2d: BatchNorm2d whose training statistics are those of the GLOBAL batch, the
union of every rank's slice under data parallelism (PyTorch's ``nn.SyncBatchNorm``)."""
import numpy as np

from .. import functional as F
from .._checks import check_dy
from .norm import BatchNorm2d

__all__ = ["SyncBatchNorm2d", "convert_sync_batchnorm"]


class SyncBatchNorm2d(BatchNorm2d):
    """:class:`BatchNorm2d` ``(N, C, H, W) -> (N, C, H, W)`` whose train-mode statistics are
    reduced over the ranks of ``comm`` (a :class:`nbconv.distributed.Communicator`).

    Forward (train mode): each rank computes per channel its count ``L_r = N_r * H * W``, mean
    and ``M2_r = sum((x - mean_r)^2)``; one ``Allgather`` of ``(L_r, mean_r, M2_r)`` and every
    rank combines them in rank order (Chan et al.'s pairwise formula)::

        mean = sum(L_r * mean_r) / L,   var = sum(M2_r + L_r * (mean_r - mean)^2) / L

    so the mean, biased variance and running statistics equal those of one process holding
    the whole batch (up to float64 rounding) and are the same on every rank. Backward: one
    ``Allreduce`` of the per-channel ``sum(dy)`` and ``sum(dy * (x - mean))``, from which
    ``dx`` is computed with the global count; ``grads["weight"]``/``grads["bias"]`` hold this
    rank's share (the gradient averaging of the optimizer sums them).

    ``comm=None`` or a single rank, eval mode with running statistics: exactly
    :class:`BatchNorm2d` (no communication). Every rank must call forward and backward the
    same number of times (they are collectives). State dict: BatchNorm2d's."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, comm=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)
        self.comm = comm

    @classmethod
    def from_batchnorm(cls, bn, comm):
        """A SyncBatchNorm2d sharing ``bn``'s parameter, gradient and buffer arrays."""
        if not isinstance(bn, BatchNorm2d):
            raise TypeError(f"expected a BatchNorm2d, got {type(bn).__name__}")
        new = cls.__new__(cls)
        new.__dict__.update(bn.__dict__)
        new.comm = comm
        return new

    def _synced(self):
        return self.training and self.comm is not None and self.comm.size > 1

    def forward(self, x):
        if not self._synced():
            self._sync = False
            return super().forward(x)
        x = self._check_input(x)
        w, b = self._affine_args()
        y, mean, rstd, var, L = F.sync_batch_norm2d(x, w, b, self.eps, self.comm)
        if self.track_running_stats:
            momentum = self.momentum
            if momentum is None:
                momentum = 1.0 / (self.num_batches_tracked + 1)
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm[...] = (1 - momentum) * rm + momentum * mean
            rv[...] = (1 - momentum) * rv + momentum * (var * (L / (L - 1)))
            self.num_batches_tracked += 1
        self._sync = True
        self._global_count = L
        self._save(y.shape, x, mean, rstd, True)
        return y

    def backward(self, dy):
        if not getattr(self, "_sync", False):
            return super().backward(dy)
        dy, x, mean, rstd, _ = self._load(dy)
        dy = check_dy(dy, x.shape, x.dtype, "the shape of x")
        w, _ = self._affine_args()
        dx, dweight, dbias = F.sync_batch_norm2d_backward(dy, x, mean, rstd, w, self._global_count,
                                                          self.comm, self.input_grad)
        self._store_grads(dweight, dbias)                 # this rank's share
        return dx

    def __repr__(self):
        size = None if self.comm is None else self.comm.size
        return (f"SyncBatchNorm2d({self.num_channels}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"ranks={size})")


def convert_sync_batchnorm(model, comm):
    """Replace every :class:`BatchNorm2d` of ``model`` (itself, or a sub-layer at any depth)
    by a :class:`SyncBatchNorm2d` that shares its arrays (so ``model.params``/``grads``/
    ``buffers``, optimizers and checkpoints are unchanged). Returns the model (a new layer if
    ``model`` itself is a BatchNorm2d)."""
    if isinstance(model, BatchNorm2d):
        return SyncBatchNorm2d.from_batchnorm(model, comm)
    for name, child in list(model.named_children()):
        model._modules[name] = convert_sync_batchnorm(child, comm)   # same name and place
    return model
