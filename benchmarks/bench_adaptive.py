"""Adaptive pooling benchmarks: nbconv vs the NumPy reference vs PyTorch vs a NumPy copy of the
same number of bytes, float32 (``NBCONV_BENCH_DTYPE=float64`` for the other dtype).

Rates are GB/s of bytes read + written (input, output, and the int64 indices for max pooling),
the same byte count for every competitor; ``copy`` is the memory-bandwidth yardstick, as in
``bench_pool.py``. Run: ``python benchmarks/report.py benchmarks/bench_adaptive.py``.
``NBCONV_BENCH_THREADS`` (default 2) sets the Numba and torch thread counts.
"""
import os

import numba
import numpy as np
import pytest
import torch

import nbconv.functional.adaptive as F
from nbconv import reference as R
from _harness import compare

DTYPE = np.dtype(os.environ.get("NBCONV_BENCH_DTYPE", "float32"))
THREADS = int(os.environ.get("NBCONV_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)
numba.set_num_threads(THREADS)
AT = torch.ops.aten

# (row name, op, input shape, output size): a classifier head (global), the ResNet-style
# 7x7 head, a non-divisible downsampling (overlapping bins) and an upsampling
CASES = [
    ("avg ->1x1 (64,256,8,8)", "avg", (64, 256, 8, 8), (1, 1)),
    ("avg ->7x7 (32,64,14,14)", "avg", (32, 64, 14, 14), (7, 7)),
    ("avg ->5x5 (64,32,17,17)", "avg", (64, 32, 17, 17), (5, 5)),
    ("avg ->12x12 (32,32,8,8)", "avg", (32, 32, 8, 8), (12, 12)),
    ("max ->1x1 (64,256,8,8)", "max", (64, 256, 8, 8), (1, 1)),
    ("max ->7x7 (32,64,14,14)", "max", (32, 64, 14, 14), (7, 7)),
    ("max ->5x5 (64,32,17,17)", "max", (64, 32, 17, 17), (5, 5)),
]


def copy_of(nbytes):
    src = np.ones(max(nbytes // 2 // DTYPE.itemsize, 1), DTYPE)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def setup(op, shape, out):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(DTYPE)
    xt = torch.from_numpy(x)
    if op == "max":
        y, idx = F.adaptive_max_pool2d(x, out, return_indices=True)
        _, tidx = torch.nn.functional.adaptive_max_pool2d(xt, out, return_indices=True)
        fwd = (lambda: F.adaptive_max_pool2d(x, out, return_indices=True),
               lambda: R.adaptive_max_pool2d_naive(x, out),
               lambda: torch.nn.functional.adaptive_max_pool2d(xt, out, return_indices=True))
    else:
        y, idx = F.adaptive_avg_pool2d(x, out), None
        fwd = (lambda: F.adaptive_avg_pool2d(x, out),
               lambda: R.adaptive_avg_pool2d_naive(x, out),
               lambda: torch.nn.functional.adaptive_avg_pool2d(xt, out))
    dy = rng.standard_normal(y.shape).astype(DTYPE)
    dyt = torch.from_numpy(dy)
    if op == "max":
        bwd = (lambda: F.adaptive_max_pool2d_backward(dy, idx, shape),
               lambda: R.adaptive_max_pool2d_backward_naive(dy, idx, shape),
               lambda: AT.adaptive_max_pool2d_backward(dyt, xt, tidx))
    else:
        bwd = (lambda: F.adaptive_avg_pool2d_backward(dy, shape),
               lambda: R.adaptive_avg_pool2d_backward_naive(dy, shape),
               lambda: AT._adaptive_avg_pool2d_backward(dyt, xt))
    nbytes = x.nbytes + y.nbytes + (0 if idx is None else idx.nbytes)
    return nbytes, fwd, bwd


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_adaptive_pool(benchmark, case, direction):
    row, op, shape, out = case
    nbytes, fwd, bwd = setup(op, shape, out)
    nb, ref, tch = fwd if direction == "forward" else bwd
    group = f"adaptive {op}pool {direction} {DTYPE.name}"
    if THREADS != 2:
        group += f" ({THREADS} thread{'s' if THREADS > 1 else ''})"
    compare(benchmark, group, row, nb, {"reference": ref, "torch": tch, "copy": copy_of(nbytes)},
            nbytes, unit="GB/s")
