"""The one place that holds Numba's flags for every nbconv kernel.

``kernel`` compiles a parallel loop nest (``prange`` allowed), ``serial_kernel`` a plain one.
Both cache their machine code next to the module (``cache=True``), so a second process loads
the kernels instead of compiling them.

``fastmath`` is the set of LLVM flags *without* ``nnan``/``ninf``: reductions may be
re-associated and vectorised, but NaN and inf still propagate and ``x != x`` still works.
"""
from numba import njit

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

_FLAGS = dict(fastmath=set(FASTMATH), error_model="numpy", boundscheck=False, cache=True,
              nogil=True)


def kernel(fn):
    """Compile ``fn`` as a parallel kernel (``prange`` loops run on Numba's thread pool)."""
    return njit(parallel=True, **_FLAGS)(fn)


def serial_kernel(fn):
    """Compile ``fn`` as a single-threaded kernel (helpers called from inside kernels)."""
    return njit(parallel=False, **_FLAGS)(fn)
