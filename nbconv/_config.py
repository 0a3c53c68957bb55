"""The one place that holds Numba's flags for every nbconv kernel.

``kernel`` compiles a parallel loop nest (``prange`` allowed), ``serial_kernel`` a plain one.
Both cache their machine code next to the module (``cache=True``), so a second process loads
the kernels instead of compiling them.

``fastmath`` is the set of LLVM flags *without* ``nnan``/``ninf``: reductions may be
re-associated and vectorised, but NaN and inf still propagate and ``x != x`` still works.
``kernel(exact=True)`` / ``serial_kernel(exact=True)`` compile without it (LLVM neither
contracts ``a * b + c`` into an FMA nor re-associates), for kernels whose results must equal
the NumPy code they replace bit for bit (the fused optimizer updates of
:mod:`nbconv.kernels.optim`), and for elementwise loops with arithmetic (the activations of
:mod:`nbconv.kernels.activation`): LLVM vectorises such a loop and keeps a scalar copy of it
for the last elements and for when a runtime alias check finds an output starting just behind
an input (a fresh allocation right behind another on the heap); with fastmath it may simplify
the two copies differently, so an element's last bit would depend on where the arrays lie.

Compiling is announced: the first time in a process that a kernel's machine code is not in
Numba's disk cache (so Numba compiles it, seconds to a minute for a model), nbconv says so once
on stderr, as a warning on the ``logging`` logger ``"nbconv"`` (Python's default handler
prints it; ``NBCONV_QUIET=1`` or ``logging.getLogger("nbconv").setLevel(logging.ERROR)``
silences it). Code that announces compilation itself (the Trainer's warm-up line,
``python -m nbconv.warmup``) calls :func:`compiling_announced` first: its line is the notice of
that process. See "telling the user that kernels compile" below.

It also holds every tuning constant (block sizes, task counts, thresholds), each with the reason
for its value. None changes a result beyond float rounding order, and the reduction chunks
depend only on shapes, never on the thread count. Kernels read the ``[kernel]`` ones as
compile-time constants: Numba's cache is keyed on the kernel module's file, not this one, so
after changing one delete ``nbconv/kernels/__pycache__`` (or the kernels keep the old value).
"""
import logging
import os
import threading

import numba
import numba.core.event
from numba import njit

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

_EXACT_FLAGS = dict(error_model="numpy", boundscheck=False, cache=True, nogil=True)
_FLAGS = dict(_EXACT_FLAGS, fastmath=set(FASTMATH))


def kernel(fn=None, *, exact=False):
    """Compile ``fn`` as a parallel kernel (``prange`` loops run on Numba's thread pool);
    ``@kernel(exact=True)`` without fastmath (module doc).

    The result is a :class:`Kernel`: called from Python, it launches the compiled loops under
    the thread and fork rules below; its other attributes are the Numba dispatcher's. (Parallel
    kernels are only ever called from Python, never from other jitted code.)"""
    if fn is None:
        return lambda f: kernel(f, exact=exact)
    k = Kernel(njit(parallel=True, **(_EXACT_FLAGS if exact else _FLAGS))(fn))
    _register(k.dispatcher)
    return k


def serial_kernel(fn=None, *, exact=False):
    """Compile ``fn`` as a single-threaded kernel (helpers called from inside kernels);
    ``@serial_kernel(exact=True)`` without fastmath (module doc)."""
    if fn is None:
        return lambda f: serial_kernel(f, exact=exact)
    d = njit(parallel=False, **(_EXACT_FLAGS if exact else _FLAGS))(fn)
    _register(d)
    return d


DISPATCHERS = []  # every kernel's Numba dispatcher (nbconv.warmup counts their compilations)
_DISPATCHER_IDS = set()


def _register(dispatcher):
    DISPATCHERS.append(dispatcher)
    _DISPATCHER_IDS.add(id(dispatcher))


# ---- telling the user that kernels compile ---------------------------------------------------
# Numba compiles a kernel on its first call with new argument types, unless its disk cache
# (``__pycache__`` beside the kernel module, or NUMBA_CACHE_DIR) holds the machine code; it then
# emits a "numba:compile" event (after the cache lookup failed, before compiling). A listener
# turns the first such event for an nbconv kernel into one line on stderr per process.

QUIET_ENV = "NBCONV_QUIET"  # set to anything but "" or "0": no compile notice
LOGGER = logging.getLogger("nbconv")
COMPILE_NOTICE = (
    "nbconv: compiling Numba kernels on their first use (seconds to a minute); the machine "
    "code is cached on disk, so later runs load it in about a second. `python -m "
    "nbconv.warmup` compiles ahead of time; NBCONV_QUIET=1 or "
    "logging.getLogger('nbconv').setLevel(logging.ERROR) silences this line.")
_notice_given = False


def _compile_notice():
    """Say once per process that nbconv compiles (unless silenced or already said)."""
    global _notice_given
    if _notice_given:
        return
    _notice_given = True
    if os.environ.get(QUIET_ENV, "").strip() not in ("", "0"):
        return
    LOGGER.warning(COMPILE_NOTICE)


def compiling_announced():
    """The caller tells the user itself that kernels compile (the Trainer's warm-up line,
    ``python -m nbconv.warmup``): that is this process's notice, so nbconv's own stays
    silent."""
    global _notice_given
    _notice_given = True


class _CompileListener(numba.core.event.Listener):
    """Numba's "numba:compile" events (cache misses) of nbconv's dispatchers -> the notice."""

    def on_start(self, event):
        data = event.data if isinstance(event.data, dict) else {}
        if id(data.get("dispatcher")) in _DISPATCHER_IDS:
            _compile_notice()

    def on_end(self, event):
        pass


numba.core.event.register("numba:compile", _CompileListener())


# ---- threads and processes ------------------------------------------------------------------
# Numba runs prange loops on one of three threading layers (NUMBA_THREADING_LAYER; by default
# the first that loads of tbb, omp, workqueue; with numba's wheels on Linux that is GNU OpenMP,
# "omp", since tbb is a separate package nbconv does not require):
#
# - Several Python threads calling kernels at once (a web server): omp and tbb are thread-safe;
#   workqueue aborts the process on concurrent launches. So while the layer is unknown (before
#   the first launch) or is workqueue, launches are serialised with a lock (_LAUNCH_LOCK); once
#   a thread-safe layer is running, kernels run concurrently without it (kernels release the GIL).
# - fork() after a parallel kernel ran: GNU OpenMP cannot run in the child (Numba prints
#   "Terminating: fork() called from a process already using GNU OpenMP, this is unsafe." and
#   the child kills itself, so a multiprocessing fork pool waits forever). nbconv notices the
#   fork (os.register_at_fork) and a kernel called in such a child raises ForkedProcessError
#   at once, telling the user to use the 'spawn' or 'forkserver' start method. A child forked
#   before any parallel kernel ran, or under tbb/workqueue, works normally.

class ForkedProcessError(RuntimeError):
    """An nbconv kernel was called in a process forked after GNU OpenMP had started."""


_SAFE, _LOCKED, _FORKED = "safe", "locked", "forked"
_mode = _LOCKED  # until the first launch tells which layer runs
_LAUNCH_LOCK = threading.Lock()


def _running_layer():
    """The threading layer Numba has started, or None before the first parallel launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _after_fork_in_child():
    global _mode, _LAUNCH_LOCK
    _LAUNCH_LOCK = threading.Lock()  # another thread may have held it at the fork
    if _running_layer() == "omp":
        _mode = _FORKED


os.register_at_fork(after_in_child=_after_fork_in_child)


class Kernel:
    """A parallel kernel: ``Kernel(dispatcher)(*args)`` runs ``dispatcher(*args)`` under the
    thread and fork rules above."""

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.__name__ = dispatcher.__name__
        self.__qualname__ = getattr(dispatcher, "__qualname__", dispatcher.__name__)
        self.__doc__ = dispatcher.__doc__
        self.__module__ = dispatcher.__module__
        self.__wrapped__ = dispatcher.py_func

    def __call__(self, *args):
        global _mode
        if _mode is _SAFE:
            return self.dispatcher(*args)
        if _mode is _FORKED:
            raise ForkedProcessError(
                f"nbconv kernel {self.__name__} called in a process forked after Numba's GNU "
                "OpenMP threads had started in its parent, which cannot work (OpenMP is not "
                "fork-safe). Start worker processes with multiprocessing.get_context('spawn') "
                "or get_context('forkserver') (or fork before the first nbconv call).")
        with _LAUNCH_LOCK:
            out = self.dispatcher(*args)
            layer = _running_layer()
            if layer is not None and layer != "workqueue":
                _mode = _SAFE
        return out

    def __getattr__(self, name):
        return getattr(self.dispatcher, name)

    def __repr__(self):
        return f"Kernel({self.dispatcher!r})"


# ---- vector width ------------------------------------------------------------------------------
# The SIMD kernels (nbconv.kernels.simd) use the host CPU's vector width: 64 bytes with AVX-512,
# 32 with AVX2 + FMA, 16 otherwise. NBCONV_SIMD_BYTES=32 (or 16) forces a narrower one, read once
# at import: an AVX-512 machine then runs (and its CI tests) the AVX2 code. The width is an
# argument of every SIMD kernel, so it is part of the kernel's signature and of Numba's cache
# key: switching it never loads machine code compiled for another width.
SIMD_BYTES_ENV = "NBCONV_SIMD_BYTES"


# ---- tuning constants ------------------------------------------------------------------------
# Machine-level: an L1 data cache of 32-48 KiB, 256-bit vectors, a few cores.

VEC = 8  # float32 lanes of a 256-bit vector: flat loops are padded to whole vectors
MIN_TASKS = 8  # split work into at least this many tasks when it can: keeps every core busy
#                and evens out unequal tasks on a shared machine

# conv (nbconv.kernels.conv, nbconv.functional._conv_plan)
CONV_BLOCK_BYTES = 2048  # bytes of one row run of the pointwise engine's tasks (NCHW planes)
CONV_DW_BLOCK_BYTES = 4096  # bytes of one run of pixels the weight gradient sums per pass (its
#   4 x 3 vector sums end in horizontal sums: longer runs amortise them; 2048 measured 10% slower
#   on one thread of Zen 3, 8192 the same as 4096)
CONV_TASK_BYTES = 128 << 10  # output values one conv_rows task keeps (all its outputs x its
#   run of pixels): in L2 between the passes over the reduction. 32 KiB gave tasks of 1-3 rows
#   of pixels with 256 filters (short runs, a third of them dropped columns): 0.5x torch
CONV_KC = 128  # [kernel] reduction elements per pass of conv_rows: their x values for 3
#   vectors of pixels (128 x 96 bytes with AVX2) and 4 outputs' weights stay in L1
CONV_FW = 32  # [kernel] filters whose dy rows conv_weight_grad reuses from L2 per pass
SMALL_COPY_BYTES = 1 << 20  # layout copies below this run on the calling thread: waking the
#                             pool costs a fork/join (milliseconds on a busy machine)
DEPTHWISE_MAX_CHUNKS = 256  # (image, channel) planes are split into at most this many tasks:
#                             enough to balance, few enough that each zeroes its scratch rarely

# pool (nbconv.functional.pool, nbconv.kernels.pool)
UNROLL_MAX_AREA = 16  # windows up to this many taps use the kernels unrolled on the window:
#                       beyond it compile time grows and the gain fades
UNROLL_MAX_STRIDE = 4  # strides up to this likewise (one specialisation per column stride)
POOL_MAX_CHUNKS = 64  # planes are handed to threads in at most this many chunks (one scratch
#                       buffer each): enough to balance, little scratch memory

# norm (nbconv.kernels.norm)
NORM_BLOCK = 16  # [kernel] at most this many rows/channels per task: a task's items stay cached
NORM_MIN_TASKS = 16  # [kernel] smaller blocks down to 1 item until there are this many tasks

# basic (nbconv.kernels.basic, nbconv.functional.basic)
MATMUL_CHUNK = 1024  # [kernel] columns per pass of sum_rows (the bias gradient): their
#                      partial sums stay in L1
MATMUL_KC = 1024  # [kernel] reduction chunk of matmul_nt (Linear's forward for short rows): a
#                   4x1024 block of a and of b stay in L1 (512: 0.98 ms, 1024: 0.77 ms, 2048:
#                   0.91 ms for 64x8192x100 on Zen 5)
# Linear on the SIMD micro-kernels (nbconv.kernels.basic.linear_forward / linear_grads; the
# functional layer passes these as arguments, so changing one needs no cache clearing)
LINEAR_SIMD_MIN_IN = 128  # forward: fewer input features run matmul_nt's scalar 4x4 blocks:
#   measured (Zen 3, one thread, N 64/256, out 10/100) as fast or faster there (old time / SIMD
#   time with in = 32: 0.75-0.92, 64: 0.81-1.02, 128: 0.96-1.15, 512: 1.2-1.5)
LINEAR_KC_BYTES = 4096  # forward: reduction chunk per row (1024 float32): 4 rows of x (16 KiB)
#                         stay in L1 while 3-row blocks of the weight stream from L2
LINEAR_JC = 48  # forward: weight rows per slab (a multiple of 3): their chunk (192 KiB) stays
#                 in L2 while all the rows of x pass
LINEAR_NN_KC_BYTES = 24 << 10  # backward: reduction chunk such that its 3-vector-wide block
#   of w (or x), kc x 3 vectors, stays in L1 (256 rows with AVX2)
LINEAR_NN_PANEL_BYTES = 256 << 10  # backward: columns of w (or x) copied per pass (whole blocks
#   of 3 vectors, kc rows): each row's part read as one run, the copy stays in L2
LINEAR_COPY_ROWS = ((16384, 4), (1024, 16))  # backward: the rows of w (or x) are read in
#   place unless their stride in bytes is a multiple of the first number of a pair (rows then
#   share few L1 sets) and the product has more output rows than the second (enough to pay
#   for the copy) ...
LINEAR_INPLACE_MAX_K = 128  # ... or a reduction chunk has more rows than this (in place, a
#   3-vector block of kc rows spans about 2.5 cache lines per row: more than L1 holds).
#   Measured (Zen 3, one thread), in place / copied GFLOP/s: dweight float32 (64, 4096) -> 10:
#   35 / 47, (64, 4000) -> 10: 65 / 48, (64, 512) -> 10: 49 / 42, (64, 512) -> 32: 63 / 69;
#   float64 (64, 512) -> 10: 17 / 14, (128, 1024) -> 10: 24 / 21, (128, 4096) -> 10: 16 / 21,
#   (128, 512) -> 32: 24 / 35; dx float32 (64, 8192) -> 100: 45 / 73, (64, 8000) -> 100:
#   74 / 69, (256, 4000) -> 1000: 64 / 82
LINEAR_MC = 512  # backward: output rows per task at most (a multiple of 4): every task copies
#                  its panels of w (or x) once for all its rows (128 rows: dx + dweight of
#                  (256, 4096) -> 1000 took 57 instead of 52 ms on one Zen 3 core)
LINEAR_NC_BYTES = 2048  # backward: output columns per task in bytes (512 float32): enough
#                         tasks to share between threads, each a few panels wide
FLAT = 16384  # [kernel] elements per task of the elementwise kernels: 64 KiB float32, long
#               enough to amortise a task, short enough to split a 1 MB array 16 ways
PARALLEL_ELEMENTS = 1 << 23  # elementwise ops (ReLU, dropout, optimizer updates) on smaller
#   arrays run on one thread. Measured on Zen 5, 2 quiet cores: a ReLU timed alone in a loop
#   (the pool awake) gains from 2 threads from 128K elements on (2M: 0.12 vs 0.27 ms), but in
#   a training step, between other kernels, it does not: the three-layer step took 18.7-20.0 ms
#   with this threshold and 24.1-25.1 ms with 1 << 17 (deep net: the same within noise). On a
#   machine loaded with other jobs a 2-thread launch waited 7-20 ms for its second worker.
PARALLEL_MACS = 1 << 21  # the same for matrix products, counted in multiply-adds

# winograd (nbconv.functional.winograd; the kernels' own constants stay in
# nbconv.kernels.winograd)
WINOGRAD_V_BYTES = 4 << 20  # the transformed input of one task (36 x channels x tiles): about L2
WINOGRAD_T_MAX = 128  # tiles per task at most (a run of the product's inner loop)
WINOGRAD_T_MIN = 16  # tiles per task at least, when splitting for more tasks
WINOGRAD_MIN_TASKS = 4  # fewer tasks than this: smaller ones (two threads need work to share)
WINOGRAD_FBK = 32  # filters per pass of the product (their 36 x FBK x T products stay in L2)
WINOGRAD_WG_CHUNKS = 8  # the Winograd weight gradient sums its tiles in this many chunks (one
#                         partial sum each, added in order): enough to keep 2-4 cores busy
WINOGRAD_WG_BYTES = 64 << 20  # ... but fewer when their partial sums (36 x Cg x Fo each) would
#                               take more memory than this
# algorithm="auto" (nbconv.functional._algorithm, measured table there): Winograd only with at
# least this many input channels and filters per group (C = 8 and Cg = 8 measured 0.85-0.97x
# direct, 16 1.1-1.6x), output pixels per map (4x4 maps 0.8-0.9x, 8x8 1.0-1.07x) and tiles in a
# tile row over the batch, N * ceil(OW / 4) (N = 1 at 32x32 and 56x56: 0.44-0.79x; Winograd's
# tasks are tile rows, too short to pay for its transforms)
WINOGRAD_MIN_CG = 16
WINOGRAD_MIN_FG = 16
WINOGRAD_MIN_PIXELS = 64
WINOGRAD_MIN_ROW_TILES = 64
# ... and its weight gradient by Winograd too only on maps of at least this many output pixels:
# measured on one thread of AMD EPYC Zen 3 (AVX2), float32, Winograd / direct weight gradient:
# 8x8 maps 0.81, 16x16 0.89, 32x32 1.04, 56x56 1.93 (each sum over tiles ends in horizontal
# sums per 4x3 block of channels and filters, so only long runs of tiles pay)
WINOGRAD_DW_MIN_PIXELS = 1600
