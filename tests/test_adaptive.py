"""Adaptive average / max pooling: kernels vs the NumPy references and PyTorch."""
import numpy as np
import pytest
import torch

import nbconv.functional.adaptive as A
from nbconv import reference as R
from helpers import DTYPES, assert_close, non_contiguous, num_threads, numeric_grad, torch_tensor

T = torch.nn.functional

SHAPES = [(2, 3, 9, 11), (1, 2, 8, 7), (1, 1, 3, 5)]
# output sizes: divisible, non-divisible (overlapping bins), identity, global (1x1), larger
# than the input (repeated rows), None entries, an int
OUT_SIZES = [(3, 4), (4, 4), (1, 1), 1, (5, 3), (13, 17), (2, None), (None, 6), 5, (9, 11)]


def make_x(shape, dtype, rng, kind="normal"):
    if kind == "ties":
        return rng.integers(-2, 3, shape).astype(dtype)
    if kind == "nan":
        x = rng.integers(-2, 3, shape).astype(dtype)
        x[rng.random(shape) < 0.15] = np.nan
        return x
    return rng.standard_normal(shape).astype(dtype)


def resolved(shape, out):
    return A.adaptive_output_size(out, shape[2], shape[3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out", OUT_SIZES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_avg_against_reference_and_torch(shape, out, dtype, rng):
    x = make_x(shape, dtype, rng)
    y = A.adaptive_avg_pool2d(x, out)
    oh, ow = resolved(shape, out)
    assert y.shape == shape[:2] + (oh, ow) and y.dtype == dtype
    assert_close(y, R.adaptive_avg_pool2d_naive(x, (oh, ow)))
    xt = torch_tensor(x, requires_grad=True)
    yt = T.adaptive_avg_pool2d(xt, out)
    assert_close(y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    dx = A.adaptive_avg_pool2d_backward(dy, shape)
    assert dx.shape == shape and dx.dtype == dtype
    assert_close(dx, xt.grad.numpy())
    assert_close(dx, R.adaptive_avg_pool2d_backward_naive(dy, shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
@pytest.mark.parametrize("out", OUT_SIZES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_max_against_reference_and_torch(shape, out, kind, dtype, rng):
    x = make_x(shape, dtype, rng, kind)
    y, idx = A.adaptive_max_pool2d(x, out, return_indices=True)
    oh, ow = resolved(shape, out)
    assert y.shape == idx.shape == shape[:2] + (oh, ow) and idx.dtype == np.int64
    ry, ridx = R.adaptive_max_pool2d_naive(x, (oh, ow))
    np.testing.assert_array_equal(y, ry)      # a max is exact; NaNs compare equal here
    np.testing.assert_array_equal(idx, ridx)
    xt = torch_tensor(x, requires_grad=True)
    yt, it = T.adaptive_max_pool2d(xt, out, return_indices=True)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    assert np.array_equal(A.adaptive_max_pool2d(x, out), y, equal_nan=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    dx = A.adaptive_max_pool2d_backward(dy, idx, shape)
    assert dx.dtype == dtype
    assert_close(dx, xt.grad.numpy())
    assert_close(dx, R.adaptive_max_pool2d_backward_naive(dy, idx, shape))


def test_nan_rule_matches_torch():
    """The last NaN of a bin wins; a number after a NaN does not replace it; -inf bins keep
    their first element."""
    rows = [[1, np.nan, 3, np.nan, 2], [np.nan, 5, 4, 1, 0], [-np.inf] * 5, [2, 2, 1, 2, 0]]
    x = np.array(rows, np.float32)[None, None]
    for out in [(1, 1), (4, 2), (2, 3), (4, 1)]:
        y, idx = A.adaptive_max_pool2d(x, out, return_indices=True)
        yt, it = T.adaptive_max_pool2d(torch.from_numpy(x), out, return_indices=True)
        np.testing.assert_array_equal(y, yt.numpy())
        np.testing.assert_array_equal(idx, it.numpy())
    # averages propagate inf / NaN as torch does
    x = np.array([[1, np.inf, 3, -np.inf], [np.nan, 1, 1, 1]], np.float64)[None, None]
    np.testing.assert_array_equal(A.adaptive_avg_pool2d(x, (2, 2)),
                                  T.adaptive_avg_pool2d(torch.from_numpy(x), (2, 2)).numpy())


@pytest.mark.parametrize("out", [(2, 3), (4, 4), (1, 1), (5, 2)], ids=str)
def test_finite_differences(out, rng):
    x = rng.standard_normal((1, 2, 4, 3))
    dy = rng.standard_normal((1, 2) + out)
    num = numeric_grad(lambda: float((A.adaptive_avg_pool2d(x, out) * dy).sum()), x)
    np.testing.assert_allclose(A.adaptive_avg_pool2d_backward(dy, x.shape), num, atol=1e-8)
    _, idx = A.adaptive_max_pool2d(x, out, return_indices=True)
    num = numeric_grad(lambda: float((A.adaptive_max_pool2d(x, out) * dy).sum()), x)
    np.testing.assert_allclose(A.adaptive_max_pool2d_backward(dy, idx, x.shape), num,
                               atol=1e-8)


@pytest.mark.parametrize("op", ["avg", "max"])
def test_unbatched_input(op, rng):
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    if op == "avg":
        y = A.adaptive_avg_pool2d(x, (2, 3))
        want = R.adaptive_avg_pool2d_naive(x[None], (2, 3))[0]
        assert_close(y, want)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = A.adaptive_avg_pool2d_backward(dy, x.shape)
        assert_close(dx, A.adaptive_avg_pool2d_backward(dy[None], (1,) + x.shape)[0])
    else:
        y, idx = A.adaptive_max_pool2d(x, (2, 3), return_indices=True)
        yt, it = T.adaptive_max_pool2d(torch.from_numpy(x), (2, 3), return_indices=True)
        np.testing.assert_array_equal(y, yt.numpy())
        np.testing.assert_array_equal(idx, it.numpy())
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = A.adaptive_max_pool2d_backward(dy, idx, x.shape)
        assert dx.shape == x.shape
        assert_close(dx, A.adaptive_max_pool2d_backward(dy[None], idx[None], (1,) + x.shape)[0])


def test_bitwise_across_thread_counts_and_layouts(rng):
    x = rng.standard_normal((3, 5, 17, 13)).astype(np.float32)
    dy = rng.standard_normal((3, 5, 6, 4)).astype(np.float32)
    outs = []
    for n in (1, 2):
        with num_threads(n):
            y = A.adaptive_avg_pool2d(x, (6, 4))
            dx = A.adaptive_avg_pool2d_backward(dy, x.shape)
            m, idx = A.adaptive_max_pool2d(x, (6, 4), return_indices=True)
            dm = A.adaptive_max_pool2d_backward(dy, idx, x.shape)
            outs.append([a.tobytes() for a in (y, dx, m, idx, dm)])
    assert outs[0] == outs[1]
    # a non-contiguous input gives the same bits and is not modified
    xn = non_contiguous(x)
    before = xn.copy()
    assert A.adaptive_avg_pool2d(xn, (6, 4)).tobytes() == outs[0][0]
    assert A.adaptive_max_pool2d(xn, (6, 4)).tobytes() == outs[0][2]
    np.testing.assert_array_equal(xn, before)


def test_errors():
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"4-d \(N, C, H, W\) or 3-d"):
        A.adaptive_avg_pool2d(np.zeros((5, 5), np.float32), 2)
    with pytest.raises(ValueError, match=r"4-d \(N, C, H, W\) or 3-d"):
        A.adaptive_max_pool2d(np.zeros((1, 2, 3, 5, 5), np.float32), 2)
    with pytest.raises(TypeError, match="dtype"):
        A.adaptive_avg_pool2d(x.astype(np.int32), 2)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        A.adaptive_avg_pool2d([[1.0]], 2)
    for bad, err in [(0, ValueError), ((2, 0), ValueError), (-1, ValueError),
                     ((2, 3, 4), ValueError), (2.0, TypeError), (True, TypeError),
                     ((None, 1.5), TypeError)]:
        with pytest.raises(err, match="output_size"):
            A.adaptive_avg_pool2d(x, bad)
        with pytest.raises(err, match="output_size"):
            A.adaptive_max_pool2d(x, bad)
    with pytest.raises(ValueError, match="empty"):
        A.adaptive_avg_pool2d(np.zeros((0, 3, 5, 5), np.float32), 2)
    with pytest.raises(TypeError, match="return_indices"):
        A.adaptive_max_pool2d(x, 2, return_indices=1)
    dy = np.zeros((2, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="x_shape"):
        A.adaptive_avg_pool2d_backward(dy, (2, 3, 5))
    with pytest.raises(ValueError, match="does not match x_shape"):
        A.adaptive_avg_pool2d_backward(dy, (2, 4, 5, 5))
    idx = np.zeros((2, 3, 2, 2), np.int64)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 25\)"):
        A.adaptive_max_pool2d_backward(dy, idx + 25, x.shape)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 25\)"):
        A.adaptive_max_pool2d_backward(dy, idx - 1, x.shape)
    with pytest.raises(ValueError, match="indices must have the shape of dy"):
        A.adaptive_max_pool2d_backward(dy, idx[:, :, :1], x.shape)
    with pytest.raises(TypeError, match="integer"):
        A.adaptive_max_pool2d_backward(dy, idx.astype(np.float32), x.shape)


@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
def test_both_max_kernels_agree(kind, rng, monkeypatch):
    """The small-bin and the two-pass large-bin kernels give the same bits (NaN payloads and
    signed zeros included) on every output size of the grid."""
    x = make_x((2, 3, 9, 11), np.float32, rng, kind)
    x[0, 0, 0, :3] = [-0.0, 0.0, -0.0]
    for out in OUT_SIZES:
        got = []
        for large in (1, 10 ** 9):
            monkeypatch.setattr(A, "LARGE_BIN", large)
            y, idx = A.adaptive_max_pool2d(x, out, return_indices=True)
            got.append((y.tobytes(), idx.tobytes()))
        assert got[0] == got[1], out
