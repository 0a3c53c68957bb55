"""Pooling benchmarks: nbconv vs the vectorised NumPy reference vs PyTorch vs the textbook loops
(:mod:`nbconv.textbook`, full shapes) vs a NumPy copy of the same number of bytes, float32 (the
dtype can be changed with NBCONV_BENCH_DTYPE=float64).

Rates are GB/s of bytes read + written by the kernel (input, output, and the uint8 argmax
offsets for max pooling), the same byte count for every competitor. ``copy`` is
``np.copyto`` of an array holding half those bytes (it reads and writes them): the
memory-bandwidth yardstick. Run: ``python benchmarks/report.py benchmarks/bench_pool.py``.

``NBCONV_BENCH_THREADS`` (default 2) sets the Numba and torch thread counts. On a machine where
another process keeps a core busy, every 2-thread parallel call (nbconv's and torch's alike)
waits for its second thread to be scheduled, while the single-threaded copy does not: compare
with ``NBCONV_BENCH_THREADS=1`` to see the kernels' own speed.
"""
import os

import numba
import numpy as np
import pytest
import torch

import nbconv.functional as F
from nbconv import reference as R
from nbconv import textbook as T
from _harness import compare

DTYPE = np.dtype(os.environ.get("NBCONV_BENCH_DTYPE", "float32"))
THREADS = int(os.environ.get("NBCONV_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)
numba.set_num_threads(THREADS)
A = torch.ops.aten

# (row name, op, shape, kernel, stride, padding)
CASES = [
    ("max 2x2/2 (64,32,32,32)", "max", (64, 32, 32, 32), 2, 2, 0),
    ("max 2x2/2 (64,64,16,16)", "max", (64, 64, 16, 16), 2, 2, 0),
    ("max 3x3/2 p1 (64,32,32,32)", "max", (64, 32, 32, 32), 3, 2, 1),
    ("avg 2x2/2 (64,32,32,32)", "avg", (64, 32, 32, 32), 2, 2, 0),
    ("avg 2x2/2 (64,64,16,16)", "avg", (64, 64, 16, 16), 2, 2, 0),
    ("global avg (64,256,8,8)", "global", (64, 256, 8, 8), None, None, None),
]


def copy_of(nbytes):
    """A zero-argument ``np.copyto`` that reads and writes ``nbytes`` in total."""
    src = np.ones(max(nbytes // 2 // DTYPE.itemsize, 1), DTYPE)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def setup(op, shape, k, s, p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(DTYPE)
    xt = torch.from_numpy(x)
    if op == "max":
        y, idx = F.max_pool2d(x, k, s, p, return_indices=True)
        _, tidx = torch.nn.functional.max_pool2d(xt, k, s, p, return_indices=True)
        _, ridx = R.max_pool2d(x, k, s, p)
        _, bidx = T.max_pool2d(x, k, s, p, return_indices=True)
    elif op == "avg":
        y, idx = F.avg_pool2d(x, k, s, p), None
    else:
        y, idx = F.global_avg_pool2d(x), None
    dy = rng.standard_normal(y.shape).astype(DTYPE)
    dyt = torch.from_numpy(dy)
    extra = 0 if idx is None else idx.nbytes
    nbytes = x.nbytes + y.nbytes + extra
    fwd = {
        "max": (lambda: F.max_pool2d(x, k, s, p, return_indices=True),
                lambda: R.max_pool2d(x, k, s, p),
                lambda: torch.nn.functional.max_pool2d(xt, k, s, p, return_indices=True),
                lambda: T.max_pool2d(x, k, s, p, return_indices=True)),
        "avg": (lambda: F.avg_pool2d(x, k, s, p),
                lambda: R.avg_pool2d(x, k, s, p),
                lambda: torch.nn.functional.avg_pool2d(xt, k, s, p),
                lambda: T.avg_pool2d(x, k, s, p)),
        "global": (lambda: F.global_avg_pool2d(x),
                    lambda: R.global_avg_pool2d(x),
                    lambda: xt.mean(dim=(2, 3)),
                    lambda: T.global_avg_pool2d(x)),
    }[op]
    bwd = {
        "max": (lambda: F.max_pool2d_backward(dy, idx, shape, k, s, p),
                lambda: R.max_pool2d_backward(dy, ridx, shape, k, s, p),
                lambda: A.max_pool2d_with_indices_backward(dyt, xt, [k, k], [s, s], [p, p],
                                                           [1, 1], False, tidx),
                lambda: T.max_pool2d_backward(dy, bidx, shape)),
        "avg": (lambda: F.avg_pool2d_backward(dy, shape, k, s, p),
                lambda: R.avg_pool2d_backward(dy, shape, k, s, p),
                lambda: A.avg_pool2d_backward(dyt, xt, [k, k], [s, s], [p, p], False, True,
                                              None),
                lambda: T.avg_pool2d_backward(dy, shape, k, s, p)),
        "global": (lambda: F.global_avg_pool2d_backward(dy, shape),
                   lambda: R.global_avg_pool2d_backward(dy, shape),
                   lambda: dyt[:, :, None, None].expand(shape) / (shape[2] * shape[3]),
                   lambda: T.global_avg_pool2d_backward(dy, shape)),
    }[op]
    return nbytes, fwd, bwd


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pool(benchmark, case, direction):
    row, op, shape, k, s, p = case
    nbytes, fwd, bwd = setup(op, shape, k, s, p)
    nb, ref, tch, tb = fwd if direction == "forward" else bwd
    group = f"{'global avg pool' if op == 'global' else op + 'pool'} {direction} {DTYPE.name}"
    if THREADS != 2:
        group += f" ({THREADS} thread{'s' if THREADS > 1 else ''})"
    compare(benchmark, group, row, nb, {"reference": ref, "torch": tch, "textbook": tb,
                                        "copy": copy_of(nbytes)}, nbytes, unit="GB/s")
