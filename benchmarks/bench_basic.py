"""Benchmarks of the basic layers and the optimizer step at the three-layer net's sizes (batch 64):
nbconv vs the NumPy reference (OpenBLAS for the products) vs PyTorch, float32, interleaved.

- Linear 8192->100 forward + backward (dx, dweight, dbias): GFLOP/s of ``3 * 2*N*in*out``.
- ReLU forward + backward on ``(64, 32, 32, 32)``: GB/s of bytes read + written (x, y; dy, y, dx).
- Adam step on the three-layer net's 832k parameters: GB/s of param, grad, m, v read + p, m, v
  written. The PyTorch row is ``torch.optim.Adam`` (single-tensor path on CPU).

Run: ``python benchmarks/report.py benchmarks/bench_basic.py``.
"""
import numba
import numpy as np
import pytest
import torch

import nbconv.functional as F
from nbconv import optim
from nbconv import reference as R
from _harness import compare

torch.set_num_threads(2)
numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
DT = np.float32


def test_linear(benchmark):
    rng = np.random.default_rng(0)
    n, fin, fout = 64, 8192, 100
    x = rng.normal(size=(n, fin)).astype(DT)
    w = rng.normal(size=(fout, fin)).astype(DT) * 0.01
    b = np.zeros(fout, DT)
    dy = rng.normal(size=(n, fout)).astype(DT)
    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    tdy = torch.from_numpy(dy)

    def ours():
        F.linear(x, w, b)
        F.linear_backward(dy, x, w)

    def ref():
        R.linear(x, w, b)
        R.linear_backward(dy, x, w)

    def tt():
        tx.grad = tw.grad = tb.grad = None
        torch.nn.functional.linear(tx, tw, tb).backward(tdy)

    compare(benchmark, "linear fwd+bwd float32", f"({n},{fin})->{fout}", ours,
            {"reference": ref, "torch": tt}, work=3 * 2.0 * n * fin * fout)


def test_relu(benchmark):
    x = np.random.default_rng(0).normal(size=(64, 32, 32, 32)).astype(DT)
    dy = np.ones_like(x)
    tx = torch.from_numpy(x).requires_grad_()
    tdy = torch.from_numpy(dy)

    def ours():
        F.relu_backward(dy, F.relu(x))

    def ref():
        R.relu_backward(dy, R.relu(x))

    def tt():
        tx.grad = None
        torch.relu(tx).backward(tdy)

    compare(benchmark, "relu fwd+bwd float32", "(64,32,32,32)", ours,
            {"reference": ref, "torch": tt}, work=5 * x.nbytes, unit="GB/s")


def test_adam_step(benchmark):
    rng = np.random.default_rng(0)
    shapes = {"0.weight": (32, 3, 7, 7), "0.bias": (32,), "4.weight": (100, 8192),
              "4.bias": (100,), "6.weight": (10, 100), "6.bias": (10,)}
    params = {k: rng.normal(size=s).astype(DT) for k, s in shapes.items()}
    grads = {k: rng.normal(size=s).astype(DT) for k, s in shapes.items()}
    opt = optim.Adam(params, grads, lr=1e-3)
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in params.values()]
    for t, g in zip(tp, grads.values()):
        t.grad = torch.from_numpy(g.copy())
    topt = torch.optim.Adam(tp, lr=1e-3)
    nbytes = 7 * sum(p.nbytes for p in params.values())
    compare(benchmark, "Adam step float32", "three-layer params (832k)", opt.step,
            {"torch": topt.step}, work=nbytes, unit="GB/s")
