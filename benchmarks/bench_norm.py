"""GroupNorm and BatchNorm2d (training) forward and backward, float32, 2 threads.

One table, GB/s of the bytes each call must move at least (forward: read x, write y;
backward: read x and dy, write dx). Competitors: ``reference`` (NumPy), ``torch`` (its native
kernels: ``aten.native_group_norm[_backward]``, ``aten.native_batch_norm[_backward]``, so
backward is timed alone), ``textbook`` (the readable loops of :mod:`nbconv.textbook`, full
shapes) and ``copy`` (``np.copyto`` moving the same number of bytes, the bandwidth yardstick of
this run).

    python benchmarks/report.py benchmarks/bench_norm.py

On a busy 2-core machine ``OMP_WAIT_POLICY=PASSIVE`` (set in the environment, before torch or
Numba load their separate libgomp runtimes) can steady the numbers: an idle libgomp worker
spins for milliseconds after each parallel region and may delay the other runtime's threads.
On an otherwise idle machine both settings gave the same ratios.
"""
import numpy as np
import pytest

from _harness import compare
import nbconv.functional as F
from nbconv import reference as R
from nbconv import textbook as T

torch = pytest.importorskip("torch")
aten = torch.ops.aten
torch.set_num_threads(2)

GROUP = "norm float32 (GB/s)"
EPS = 1e-5
# (op, shape, num_groups)
CASES = [("gn8", (64, 64, 32, 32), 8), ("gn32", (64, 64, 32, 32), 32),
         ("bn", (64, 64, 32, 32), None), ("bn", (64, 128, 16, 16), None)]


def _copy(nbytes):
    """``np.copyto`` reading and writing ``nbytes`` in total."""
    src = np.ones(nbytes // 8, np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def _setup(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    C = shape[1]
    w = rng.standard_normal(C, dtype=np.float32)
    b = rng.standard_normal(C, dtype=np.float32)
    return x, dy, w, b


def _row(op, shape, G, direction):
    return f"{op} {direction} {'x'.join(map(str, shape))}"


def _legend(op, shape, G, direction):
    layer = f"GroupNorm, {G} groups" if op.startswith("gn") else "BatchNorm2d (training)"
    N, C, H, W = shape
    return (f"{layer}, {'forward' if direction == 'fwd' else 'backward'}, N {N}, C {C}, "
            f"H {H}, W {W}")


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("op,shape,G", CASES)
def test_norm(benchmark, op, shape, G, direction):
    x, dy, w, b = _setup(shape)
    N, C, H, W = shape
    tx, tdy, tw, tb = (torch.from_numpy(a) for a in (x, dy, w, b))
    nbytes = x.nbytes * (2 if direction == "fwd" else 3)
    if op.startswith("gn"):
        y, mean, rstd = F.group_norm(x, G, w, b, EPS, return_stats=True)
        _, tmean, trstd = aten.native_group_norm(tx, tw, tb, N, C, H * W, G, EPS)
        if direction == "fwd":
            nb = lambda: F.group_norm(x, G, w, b, EPS)  # noqa: E731
            ref = lambda: R.group_norm(x, G, w, b, EPS)  # noqa: E731
            tf = lambda: aten.native_group_norm(tx, tw, tb, N, C, H * W, G, EPS)  # noqa: E731
            tbk = lambda: T.group_norm(x, G, w, b, EPS)  # noqa: E731
        else:
            nb = lambda: F.group_norm_backward(dy, x, mean, rstd, G, w)  # noqa: E731
            ref = lambda: R.group_norm_backward(dy, x, G, w, EPS)  # noqa: E731
            tf = lambda: aten.native_group_norm_backward(  # noqa: E731
                tdy, tx, tmean, trstd, tw, N, C, H * W, G, [True, True, True])
            tbk = lambda: T.group_norm_backward(dy, x, mean, rstd, G, w)  # noqa: E731
    else:
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        trm, trv = torch.zeros(C), torch.ones(C)
        y, mean, rstd = F.batch_norm2d(x, rm, rv, w, b, True, 0.1, EPS, return_stats=True)
        _, tmean, tinv = aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, EPS)
        if direction == "fwd":
            nb = lambda: F.batch_norm2d(x, rm, rv, w, b, True, 0.1, EPS)  # noqa: E731
            ref = lambda: R.batch_norm2d(x, rm, rv, w, b, True, 0.1, EPS)  # noqa: E731
            tf = lambda: aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, EPS)  # noqa: E731
            tbk = lambda: T.batch_norm2d(x, rm, rv, w, b, True, 0.1, EPS)  # noqa: E731
        else:
            nb = lambda: F.batch_norm2d_backward(dy, x, mean, rstd, w, True)  # noqa: E731
            ref = lambda: R.batch_norm2d_backward(dy, x, w, True, eps=EPS)  # noqa: E731
            tf = lambda: aten.native_batch_norm_backward(  # noqa: E731
                tdy, tx, tw, trm, trv, tmean, tinv, True, EPS, [True, True, True])
            tbk = lambda: T.batch_norm2d_backward(dy, x, mean, rstd, w, True)  # noqa: E731
    with torch.no_grad():
        compare(benchmark, GROUP, _row(op, shape, G, direction), nb,
                {"reference": ref, "torch": tf, "textbook": tbk, "copy": _copy(nbytes)}, nbytes,
                unit="GB/s", legend=_legend(op, shape, G, direction))
