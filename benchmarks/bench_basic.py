"""Benchmarks of the basic layers and the optimizer step at the three-layer net's sizes (batch 64):
nbconv vs the NumPy reference (OpenBLAS for the products) vs PyTorch, float32, interleaved.

- Linear forward + backward (dx, dweight, dbias): GFLOP/s of ``3 * 2*N*in*out``, at the
  three-layer net's 8192->100 and 100->10, a classifier's 512->10 and 64->10, and 4096->1000.
- ReLU forward + backward on ``(64, 32, 32, 32)``: GB/s of bytes read + written (x, y; dy, y, dx).
- Adam step on the three-layer net's 832k parameters: GB/s of param, grad, m, v read + p, m, v
  written. The PyTorch row is ``torch.optim.Adam`` (single-tensor path on CPU).
- The other memory-bound ops of a training step (ReLU forward and backward alone, SGD with
  momentum, AdamW, RMSprop, dropout, the softmax cross-entropy loss).

Every memory-bound row also has a ``copy`` column: ``np.copyto`` of an array whose copy moves
the same number of bytes (read + write) as the op, NumPy's single-threaded copy bandwidth. The
ratio against it is the op's fraction of copy bandwidth (the issue's target: >= 0.7).

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


def _copy_of(nbytes):
    """A zero-argument copy moving ``nbytes`` bytes (half read, half written)."""
    src = np.ones(max(int(nbytes) // 8, 1), np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


# (N, in, out): the three-layer net's two layers, ResNet/VGG classifiers, a big one
LINEAR_SHAPES = [
    (64, 8192, 100), (64, 100, 10), (64, 512, 10), (128, 64, 10), (256, 4096, 1000)]


@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=lambda s: "{}x{}x{}".format(*s))
def test_linear(benchmark, shape):
    rng = np.random.default_rng(0)
    n, fin, fout = shape
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
            {"reference": ref, "torch": tt, "copy": _copy_of(5 * x.nbytes)},
            work=5 * x.nbytes, unit="GB/s")


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_relu_alone(benchmark, which):
    x = np.random.default_rng(0).normal(size=(64, 32, 32, 32)).astype(DT)
    y = F.relu(x)
    dy = np.ones_like(x)
    tx = torch.from_numpy(x)
    ty, tdy = torch.from_numpy(y), torch.from_numpy(dy)
    if which == "forward":
        ours, tt, nbytes = (lambda: F.relu(x)), (lambda: torch.relu(tx)), 2 * x.nbytes
    else:   # torch's ReluBackward: threshold_backward(grad, output, 0)
        ours = lambda: F.relu_backward(dy, y)  # noqa: E731
        tt = lambda: torch.ops.aten.threshold_backward(tdy, ty, 0)  # noqa: E731
        nbytes = 3 * x.nbytes
    compare(benchmark, f"relu {which} float32", "(64,32,32,32)", ours,
            {"torch": tt, "copy": _copy_of(nbytes)}, work=nbytes, unit="GB/s")


def test_dropout(benchmark):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 32, 32, 32)).astype(DT)
    mask = F.dropout_mask(x.shape, 0.3, rng, DT)
    nbytes = 2 * x.nbytes + mask.nbytes
    compare(benchmark, "dropout (given mask) float32", "(64,32,32,32) p=0.3",
            lambda: F.dropout(x, mask, 0.3), {"copy": _copy_of(nbytes)}, work=nbytes,
            unit="GB/s")


@pytest.mark.parametrize("shape", [(64, 10), (64, 1000)])
def test_softmax_cross_entropy(benchmark, shape):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape).astype(DT)
    labels = rng.integers(0, shape[1], shape[0])
    tl = torch.from_numpy(logits).requires_grad_()
    tlab = torch.from_numpy(labels)

    def tt():
        tl.grad = None
        torch.nn.functional.cross_entropy(tl, tlab).backward()

    compare(benchmark, "softmax cross-entropy fwd+bwd float32", str(shape),
            lambda: F.softmax_cross_entropy(logits, labels),
            {"torch": tt, "copy": _copy_of(2 * logits.nbytes)}, work=2 * logits.nbytes,
            unit="GB/s")


OPTIMIZERS = {   # name: (nbconv class, torch class, kwargs, arrays moved per parameter element)
    "Adam": (optim.Adam, "Adam", dict(lr=1e-3), 7),           # read p g m v, write p m v
    "AdamW": (optim.AdamW, "AdamW", dict(lr=1e-3), 7),
    "SGD momentum": (optim.SGD, "SGD", dict(lr=1e-2, momentum=0.9), 5),   # p g buf; p buf
    "RMSprop": (optim.RMSprop, "RMSprop", dict(lr=1e-3), 5),  # p g v; p v
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_step(benchmark, name):
    ours_cls, torch_name, kw, arrays = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    shapes = {"0.weight": (32, 3, 7, 7), "0.bias": (32,), "4.weight": (100, 8192),
              "4.bias": (100,), "6.weight": (10, 100), "6.bias": (10,)}
    params = {k: rng.normal(size=s).astype(DT) for k, s in shapes.items()}
    grads = {k: rng.normal(size=s).astype(DT) for k, s in shapes.items()}
    opt = ours_cls(params, grads, **kw)
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in params.values()]
    for t, g in zip(tp, grads.values()):
        t.grad = torch.from_numpy(g.copy())
    topt = getattr(torch.optim, torch_name)(tp, **kw)
    nbytes = arrays * sum(p.nbytes for p in params.values())
    compare(benchmark, f"{name} step float32", "three-layer params (832k)", opt.step,
            {"torch": topt.step, "copy": _copy_of(nbytes)}, work=nbytes, unit="GB/s")
