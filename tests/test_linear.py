"""Linear's SIMD kernels (issue 16 item 3): the forward (4 x 3 dot products per micro-kernel
call) and dx / dweight (4 rows x 3 vectors of columns per call) at every vector width, both
dtypes, odd sizes at every edge of the register blocks and reduction chunks, large sizes,
non-contiguous inputs, against the reference and torch; bitwise the same on the serial and the
thread-pool kernels and across thread counts; non-finite values where torch has them."""
import numpy as np
import pytest
import torch

import nbconv.functional as F
import nbconv.functional.basic as FB
from nbconv import reference as R
from nbconv.kernels import simd
from helpers import DTYPES, assert_close, non_contiguous, num_threads

# (N, in, out): N = 1 and in = 1 and out = 1; N % 4, out % 3 and in % lanes at every
# remainder; in over the forward's reduction chunk (1024 float32 / 512 float64 values) with a
# tail; out and N over the backward's chunk (256 float32 rows with AVX2) with row tails (the
# edge kernel adding to sums of an earlier chunk)
SHAPES = [(1, 1, 1), (1, 7, 1), (5, 1, 4), (2, 3, 5), (3, 13, 2), (4, 24, 3), (7, 49, 11),
          (9, 100, 10), (13, 257, 7), (6, 2500, 5), (5, 40, 600), (601, 20, 5),
          (3, 8192, 4), (4, 30, 1000), (9, 1024, 6), (20, 256, 18)]


@pytest.fixture(params=[16, 32, 64], ids=lambda b: f"{b}B")
def width(request, monkeypatch):
    monkeypatch.setattr(simd, "WIDTH", simd.Width(request.param))
    return request.param


@pytest.fixture
def simd_always(monkeypatch):
    """The SIMD forward for every in_features (by default short rows take matmul_nt)."""
    monkeypatch.setattr(FB, "LINEAR_SIMD_MIN_IN", 1)


def make(shape, dtype, seed=0):
    n, fin, fout = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    b = rng.standard_normal(fout).astype(dtype)
    dy = rng.standard_normal((n, fout)).astype(dtype)
    return x, w, b, dy


def run(x, w, b, dy):
    return (F.linear(x, w, b), F.linear(x, w)) + F.linear_backward(dy, x, w)


def both_kernels(monkeypatch, x, w, b, dy):
    """The results of the thread-pool kernels and of the serial ones (must be equal)."""
    monkeypatch.setattr(FB, "PARALLEL_MACS", 0)
    par = run(x, w, b, dy)
    monkeypatch.setattr(FB, "PARALLEL_MACS", 1 << 62)
    ser = run(x, w, b, dy)
    for a, c in zip(par, ser):
        np.testing.assert_array_equal(a, c)
    return par


def check_against_reference(out, x, w, b, dy):
    y, y0, dx, dw, db = out
    n, fin = x.shape
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    assert_close(y, x64 @ w64.T + b, dtype=x.dtype, scale=np.sqrt(fin))
    assert_close(y0, x64 @ w64.T, dtype=x.dtype, scale=np.sqrt(fin))
    assert_close(dx, dy64 @ w64, dtype=x.dtype, scale=np.sqrt(w.shape[0]))
    assert_close(dw, dy64.T @ x64, dtype=x.dtype, scale=np.sqrt(n))
    assert_close(db, dy64.sum(0), dtype=x.dtype, scale=np.sqrt(n))
    for a in out:
        assert a.dtype == x.dtype


@pytest.fixture
def fresh_plans():
    FB._grads_plan.cache_clear()
    yield
    FB._grads_plan.cache_clear()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_width_matches_the_reference(width, simd_always, fresh_plans, monkeypatch, shape,
                                           dtype):
    """Also: the backward's rows of w / x copied into panels or read in place (chosen by shape)
    give the same bits."""
    x, w, b, dy = make(shape, dtype)
    out = both_kernels(monkeypatch, x, w, b, dy)
    check_against_reference(out, x, w, b, dy)
    for copy in (True, False):
        monkeypatch.setattr(FB, "_copy_panels", lambda *args: copy)
        FB._grads_plan.cache_clear()
        for a, c in zip(both_kernels(monkeypatch, x, w, b, dy), out):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 49, 11), (64, 100, 10), (64, 512, 10),
                                   (13, 257, 7), (6, 2500, 5), (5, 40, 600)],
                         ids=lambda s: "x".join(map(str, s)))
def test_machine_width_matches_torch(monkeypatch, shape, dtype):
    """At the machine's width, with the default choice of forward kernel."""
    x, w, b, dy = make(shape, dtype, seed=1)
    y, y0, dx, dw, db = both_kernels(monkeypatch, x, w, b, dy)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.from_numpy(dy))
    n, fin, fout = shape
    assert_close(y, ty.detach().numpy(), scale=np.sqrt(fin))
    assert_close(dx, tx.grad.numpy(), scale=np.sqrt(fout))
    assert_close(dw, tw.grad.numpy(), scale=np.sqrt(n))
    assert_close(db, tb.grad.numpy(), scale=np.sqrt(n))
    check_against_reference((y, y0, dx, dw, db), x, w, b, dy)
    assert_close(y, R.linear_naive(x, w, b), scale=np.sqrt(fin))


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_invariant(width, simd_always, monkeypatch, dtype):
    """Fixed reduction chunks and per-element sums: 1 and 2 threads give the same bits."""
    x, w, b, dy = make((67, 1300, 301), dtype, seed=2)
    monkeypatch.setattr(FB, "PARALLEL_MACS", 0)
    runs = []
    for n in (1, 2, 1):
        with num_threads(n):
            runs.append(run(x, w, b, dy))
    for r in runs[1:]:
        for a, c in zip(r, runs[0]):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(simd_always, dtype):
    x, w, b, dy = make((9, 37, 14), dtype, seed=3)
    expect = run(x, w, b, dy)
    x0, w0, b0, dy0 = x.copy(), w.copy(), b.copy(), dy.copy()
    got = run(non_contiguous(x), np.asfortranarray(w), non_contiguous(b), non_contiguous(dy))
    for a, c in zip(got, expect):
        np.testing.assert_array_equal(a, c)
    for a, c in zip((x, w, b, dy), (x0, w0, b0, dy0)):   # inputs untouched
        np.testing.assert_array_equal(a, c)


def test_need_dx_false_gives_the_same_weight_gradient(simd_always, monkeypatch):
    x, w, b, dy = make((10, 50, 7), np.float32, seed=4)
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(FB, "PARALLEL_MACS", threshold)
        dx, dw, db = F.linear_backward(dy, x, w)
        dx2, dw2, db2 = F.linear_backward(dy, x, w, need_dx=False, need_bias=False)
        assert dx2 is None and db2 is None
        np.testing.assert_array_equal(dw2, dw)


def _same_non_finite(actual, expected, what):
    for kind in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(kind(actual), kind(expected)), f"{what}: {kind.__name__}"
    fin = np.isfinite(expected)
    np.testing.assert_allclose(actual[fin], expected[fin], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", ["x", "w", "dy", "last"])
@pytest.mark.parametrize("shape", [(5, 7, 4), (9, 300, 13)], ids=["small", "simd"])
def test_non_finite_as_torch(monkeypatch, shape, where, dtype):
    """inf, -inf and NaN propagate as in torch (0 * inf is NaN, inf - inf is NaN); the rows and
    columns the register blocks add past the edges (a repeated last row of x or w, zero rows of
    the packed dy) never reach a result: an inf in the last row of x or w only touches the
    outputs that read it."""
    x, w, b, dy = make(shape, dtype, seed=5)
    n, fin, fout = shape
    if where == "x":
        x[1, 2], x[3, 0], x[0, fin - 1] = np.inf, -np.inf, np.nan
    elif where == "w":
        w[0, 1], w[2, 3], w[fout - 1, 0] = np.inf, np.nan, -np.inf
        dy[:, 0] = 0                          # 0 * inf in dx
    elif where == "dy":
        dy[0, 1], dy[n - 1, 0], dy[2, fout - 1] = np.inf, -np.inf, np.nan
        x[:, 0] = 0                           # 0 * inf in dweight
    else:                                     # the last row of x and of w (repeated in blocks)
        x[n - 1, 0], w[fout - 1, 1] = np.inf, np.nan
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.from_numpy(dy))
    expect = (ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(FB, "PARALLEL_MACS", threshold)
        got = (F.linear(x, w, b),) + F.linear_backward(dy, x, w)
        for what, a, e in zip(("y", "dx", "dw", "db"), got, expect):
            _same_non_finite(a, e, f"{where} {what}")
    if where == "last":
        y = got[0]
        assert np.isinf(y[n - 1, :fout - 1]).all() and np.isfinite(y[:n - 1, :fout - 1]).all()
        assert np.isnan(y[:, fout - 1]).all()
