"""Data-parallel training over MPI (``pip install -e ".[mpi]"``: mpi4py and MPICH wheels).

Every process (rank) holds the whole model, takes its contiguous slice of each global batch,
and the gradients are averaged with ONE ``Allreduce`` per step over a flat, preallocated buffer
(ChainerMN's multi-node optimizer, Horovod's ``DistributedOptimizer``)::

    from nbconv import distributed as dist
    world = dist.init()                          # MPI up, threads per rank, abort on error
    model = nbconv.three_layer_convnet(seed=0)
    dist.broadcast_parameters(model, world)      # every rank starts from rank 0's weights
    opt = dist.DistributedOptimizer(nbconv.optim.Adam(model.params, model.grads), world)
    ...                                          # forward/backward on the local shard, then
    opt.step()                                   # average the gradients, then step

or simply ``Trainer(model, opt, comm=world)`` with the plain optimizer (the trainer shards the
batches, averages the gradients, reduces the metrics and writes files on rank 0 only).
Launch with ``mpiexec -n P python script.py``.

mpi4py is imported only when :func:`init` (or :func:`world`) is called: ``import nbconv``
never imports it, and nbconv trains without it.

Threads: :func:`init` sets Numba's thread count to ``cores // ranks on this node`` (at least
1) so P local ranks never oversubscribe the machine; ``init(threads=k)`` or the environment
variable ``NBCONV_THREADS_PER_RANK=k`` override it.

Failure: :func:`init` wraps ``sys.excepthook`` so a rank that raises prints its traceback and
calls ``MPI_Abort``: the whole job ends (non-zero exit) within a second instead of leaving the
other ranks blocked in a collective. :func:`run_main` does the same for ``SystemExit`` with a
non-zero code (which ``sys.excepthook`` never sees).
"""
import json
import os
import sys
import traceback

import numpy as np

__all__ = ["Communicator", "init", "world", "is_initialized", "rank", "size",
           "broadcast_parameters", "broadcast_buffers", "GradientAverager",
           "DistributedOptimizer", "DataParallel", "shard_bounds", "threads_per_rank",
           "run_main", "allgather_json", "broadcast_text"]

THREADS_ENV = "NBCONV_THREADS_PER_RANK"
_WORLD = None


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("nbconv.distributed needs mpi4py and an MPI library: "
                          "pip install -e \".[mpi]\" (mpi4py and mpich wheels)") from e
    return MPI


class Communicator:
    """The few collectives nbconv needs, over an mpi4py communicator (``COMM_WORLD`` by
    default). Buffer methods work in place on contiguous NumPy arrays (no pickling)."""

    def __init__(self, comm=None):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def allreduce_sum_(self, buf):
        """Sum ``buf`` over the ranks, in place (``MPI_Allreduce`` with ``MPI_IN_PLACE``)."""
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def allgather(self, arr):
        """``(size, *arr.shape)``: every rank's ``arr`` in rank order."""
        arr = np.ascontiguousarray(arr)
        out = np.empty((self.size,) + arr.shape, arr.dtype)
        if self.size > 1:
            self.comm.Allgather(arr, out)
        else:
            out[0] = arr
        return out

    def bcast_(self, buf, root=0):
        """Overwrite ``buf`` with rank ``root``'s, in place."""
        if self.size > 1:
            self.comm.Bcast(buf, root=root)
        return buf

    def barrier(self):
        self.comm.Barrier()

    def local_size(self):
        """Number of ranks on this machine (shared-memory split of the communicator)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def abort(self, code=1):
        self.comm.Abort(code)

    def __repr__(self):
        return f"Communicator(rank={self.rank}, size={self.size})"


def threads_per_rank(local_ranks, cores=None):
    """This rank's share of the cores: ``max(1, cores // local_ranks)`` (``cores``: the CPUs
    this process may run on)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    return max(1, cores // max(1, local_ranks))


def _set_threads(n):
    import numba
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def _install_abort_hook(comm):
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        try:
            # the one-line error first: MPI_Abort may cut the forwarding of a long traceback
            sys.stderr.write(f"[rank {comm.rank}/{comm.size}] {exc_type.__name__}: {exc}\n")
            sys.stderr.flush()
            previous(exc_type, exc, tb)
            sys.stderr.flush()
        finally:
            if comm.size > 1:
                comm.abort(1)

    hook.nbconv_abort = True
    if not getattr(previous, "nbconv_abort", False):
        sys.excepthook = hook


def init(threads=None, abort_on_error=True):
    """Start MPI (idempotent) and return the world :class:`Communicator`.

    ``threads``: Numba threads of this rank (default: ``$NBCONV_THREADS_PER_RANK``, else
    :func:`threads_per_rank` of the ranks on this node); the count set is ``world.threads``.
    ``abort_on_error``: a rank whose exception reaches the top calls ``MPI_Abort``."""
    global _WORLD
    if _WORLD is None:
        _WORLD = Communicator()
    w = _WORLD
    if threads is None and os.environ.get(THREADS_ENV):
        threads = os.environ[THREADS_ENV]
    if threads is not None:
        try:
            threads = int(threads)
        except ValueError:
            raise ValueError(f"threads (or ${THREADS_ENV}) must be an integer >= 1, "
                             f"got {threads!r}") from None
        if threads < 1:
            raise ValueError(f"threads (or ${THREADS_ENV}) must be >= 1, got {threads}")
    else:
        threads = threads_per_rank(w.local_size())
    w.threads = _set_threads(threads)
    if abort_on_error:
        _install_abort_hook(w)
    return w


def is_initialized():
    return _WORLD is not None


def world():
    """The world :class:`Communicator` (calls :func:`init` on first use)."""
    return _WORLD if _WORLD is not None else init()


def rank():
    return world().rank


def size():
    return world().size


def run_main(main, *args, **kwargs):
    """Call ``main(*args, **kwargs)``; if MPI was started with :func:`init` and it ends with an
    exception or a non-zero ``SystemExit``, print it and abort the whole job (a lone rank that
    exits would leave the others waiting in a collective)."""
    try:
        return main(*args, **kwargs)
    except SystemExit as e:
        if _WORLD is None or _WORLD.size == 1 or e.code in (None, 0):
            raise
        msg = e.code if isinstance(e.code, str) else f"exit status {e.code}"
        sys.stderr.write(f"[rank {_WORLD.rank}/{_WORLD.size}] {msg}\n")
        sys.stderr.flush()
        _WORLD.abort(e.code if isinstance(e.code, int) else 1)
    except BaseException:
        if _WORLD is None or _WORLD.size == 1:
            raise
        sys.stderr.write(f"[rank {_WORLD.rank}/{_WORLD.size}] ")
        traceback.print_exc()
        sys.stderr.flush()
        _WORLD.abort(1)


# ---- launch checks: what every rank must agree on ------------------------------------------------

def allgather_json(comm, obj):
    """Every rank's ``obj`` (JSON-able), in rank order: a list of ``comm.size`` decoded copies.
    Collective (every rank calls it); sent as UTF-8 bytes over two ``Allgather`` calls, no
    pickling. Used at launch to check that the ranks run the same job."""
    raw = json.dumps(obj, sort_keys=True).encode()
    lengths = comm.allgather(np.array([len(raw)], np.int64))[:, 0]
    buf = np.zeros(int(lengths.max()), np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    every = comm.allgather(buf)
    return [json.loads(bytes(every[r, :n]).decode()) for r, n in enumerate(lengths.tolist())]


def broadcast_text(comm, text, root=0):
    """Rank ``root``'s ``text`` on every rank (e.g. the run folder rank 0 created)."""
    raw = text.encode() if comm.rank == root else b""
    n = comm.bcast_(np.array([len(raw)], np.int64), root)
    buf = np.zeros(int(n[0]), np.uint8)
    if comm.rank == root:
        buf[:] = np.frombuffer(raw, np.uint8)
    return bytes(comm.bcast_(buf, root)).decode()


# ---- flat buffers ------------------------------------------------------------------------------

class _Flat:
    """A preallocated flat buffer for a dict of arrays (one dtype: the arrays' common one)."""

    def __init__(self, arrays):
        self.arrays = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
        dtype = np.result_type(*self.arrays) if self.arrays else np.float64
        self.offsets = np.cumsum([0] + [a.size for a in self.arrays])
        self.buf = np.empty(int(self.offsets[-1]), dtype)

    def pack(self, scale=None):
        for a, o0, o1 in zip(self.arrays, self.offsets[:-1], self.offsets[1:]):
            seg = self.buf[o0:o1]
            seg[...] = a.reshape(-1)
        if scale is not None:
            self.buf *= self.buf.dtype.type(scale)
        return self.buf

    def unpack(self):
        for a, o0, o1 in zip(self.arrays, self.offsets[:-1], self.offsets[1:]):
            a[...] = self.buf[o0:o1].reshape(a.shape)

    @property
    def nbytes(self):
        return self.buf.nbytes


def broadcast_parameters(model, comm, root=0):
    """Overwrite every rank's parameters and buffers with rank ``root``'s (one ``Bcast`` per
    dtype group; in place, so optimizers keep their references)."""
    arrays = dict(model.params)
    arrays.update({f"buffer/{k}": v for k, v in (getattr(model, "buffers", None) or {}).items()})
    _bcast_arrays(arrays, comm, root)


def broadcast_buffers(model, comm, root=0):
    """Overwrite every rank's buffers (e.g. BatchNorm running statistics) with rank
    ``root``'s."""
    _bcast_arrays(dict(getattr(model, "buffers", None) or {}), comm, root)


def _bcast_arrays(arrays, comm, root):
    if comm.size == 1 or not arrays:
        return
    groups = {}
    for k, a in arrays.items():
        groups.setdefault(a.dtype, []).append(a)
    for dtype in sorted(groups, key=str):   # the same order on every rank
        flat = _Flat(groups[dtype])
        flat.pack()
        comm.bcast_(flat.buf, root)
        flat.unpack()


class GradientAverager:
    """Averages a dict of gradient arrays over the ranks with one ``Allreduce`` per call, over
    a flat buffer allocated once: ``pack`` (copy the gradients in), ``Allreduce`` in place,
    scale by ``1 / size``, ``unpack`` (copy back into the same arrays)."""

    def __init__(self, grads, comm):
        self.comm = comm
        self._flat = _Flat(grads)
        self.nbytes = self._flat.nbytes
        self.calls = 0

    def average(self):
        if self.comm.size == 1:
            return
        buf = self._flat.pack()
        self.comm.allreduce_sum_(buf)
        buf *= buf.dtype.type(1.0 / self.comm.size)
        self._flat.unpack()
        self.calls += 1


class DistributedOptimizer:
    """Wrap any nbconv optimizer: :meth:`step` averages the gradients over the ranks (one
    ``Allreduce``), then steps the wrapped optimizer. Everything else (``lr``, ``state_dict``,
    ``load_state_dict``, ``zero_grad``, schedulers) is the wrapped optimizer's, so its state
    and checkpoints are those of a 1-process run."""

    averages_gradients = True

    def __init__(self, optimizer, comm=None):
        self.__dict__["optimizer"] = optimizer
        self.__dict__["comm"] = world() if comm is None else comm
        self.__dict__["averager"] = GradientAverager(optimizer.grads, self.comm)

    def step(self):
        self.averager.average()
        return self.optimizer.step()

    def __getattr__(self, name):
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name, value):   # lr set by a scheduler goes to the optimizer
        setattr(self.optimizer, name, value)

    def __repr__(self):
        return f"DistributedOptimizer({self.optimizer!r}, size={self.comm.size})"


# ---- what the Trainer needs ------------------------------------------------------------------

def shard_bounds(n, rank, size):
    """``(start, stop)`` of ``rank``'s contiguous slice of ``n`` items: sizes differ by at
    most one, the first ``n % size`` ranks take one more."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


class DataParallel:
    """The data-parallel side of :class:`nbconv.train.Trainer` (``Trainer(..., comm=world)``).

    - :meth:`shard`: this rank's contiguous slice of a global batch, and the factor
      ``local * size / global`` that rescales the (mean) loss gradient so that averaging the
      gradients over the ranks gives the gradient of the mean loss over the global batch.
    - :meth:`average_gradients`: one ``Allreduce`` over a flat buffer.
    - :meth:`reduce_sums`: sums of a few numbers over the ranks (loss, correct, seen).
    - :meth:`evaluate`: accuracy over a split, each rank predicting its contiguous slice.
    - :meth:`sync_buffers`: rank 0's buffers (BatchNorm running statistics) everywhere.
    """

    def __init__(self, comm, model):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.model = model
        self.averager = GradientAverager(model.grads, comm)

    def shard(self, xb, yb):
        """``(x_local, y_local, scale)``, or ``None`` when the batch is smaller than the number
        of ranks (some rank would get no image: the batch is skipped on every rank)."""
        n = len(yb)
        if n < self.size:
            return None
        a, b = shard_bounds(n, self.rank, self.size)
        return xb[a:b], yb[a:b], (b - a) * self.size / n

    def average_gradients(self):
        self.averager.average()

    def reduce_sums(self, *values):
        buf = np.array(values, dtype=np.float64)
        self.comm.allreduce_sum_(buf)
        return tuple(buf.tolist())

    def evaluate(self, predict, x, y):
        a, b = shard_bounds(len(x), self.rank, self.size)
        correct = 0
        if b > a:
            correct = int(np.sum(np.argmax(predict(x[a:b]), axis=1) == y[a:b]))
        correct, = self.reduce_sums(correct)
        return correct / len(x)

    def sync_buffers(self):
        broadcast_buffers(self.model, self.comm)
