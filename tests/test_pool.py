"""MaxPool2d, AvgPool2d, GlobalAvgPool2d: kernels vs the NumPy references and PyTorch."""
import itertools

import numpy as np
import pytest
import torch

import nbconv.functional as F
from nbconv import reference as R
from nbconv.layers import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from helpers import DTYPES, assert_close, non_contiguous, num_threads, numeric_grad, torch_tensor

T = torch.nn.functional

# (kernel_size, stride, padding, dilation, ceil_mode): overlapping windows, odd sizes, ceil_mode
# overhang, asymmetric pairs, dilation, padding at its maximum kernel // 2.
MAX_CFGS = [
    (2, None, 0, 1, False),
    (2, None, 0, 1, True),
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (3, 1, 1, 1, False),
    (3, 2, 0, 2, True),
    (3, 3, 1, 2, True),
    ((3, 2), (2, 1), (1, 1), (1, 2), False),
    ((2, 4), (3, 2), (1, 2), 1, True),
    (5, 2, 2, 1, True),
    (1, 2, 0, 1, False),
    # unpadded windows inside the input (read in place): overlapping, rectangular
    (3, 2, 0, 1, False),
    ((2, 3), (1, 2), 0, 1, True),
]
# (kernel_size, stride, padding, ceil_mode, count_include_pad)
AVG_CFGS = [c + (cip,) for c in [
    (2, None, 0, False), (2, None, 0, True), (3, 2, 1, False), (3, 2, 1, True), (3, 1, 1, False),
    ((3, 2), (2, 1), (1, 1), True), ((2, 4), (3, 2), (1, 2), True), (5, 3, 2, True),
    (4, 3, 2, True), (3, 3, 0, True),
    # unpadded windows inside the input: tiles with rows/columns left over, overlapping
    (3, 3, 0, False), ((2, 3), None, 0, False), (3, 2, 0, True),
] for cip in (True, False)]
SHAPES = [(2, 3, 9, 11), (1, 2, 8, 7)]


def max_kw(cfg):
    k, s, p, d, ceil = cfg
    return dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


def avg_kw(cfg):
    k, s, p, ceil, cip = cfg
    return dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip)


def pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def torch_flat_index(idx, x_shape, kw):
    """Window offsets -> PyTorch's flat input index ``ih * W + iw``."""
    k, s, p, d = (pair(kw[n]) for n in ("kernel_size", "stride", "padding", "dilation"))
    s = k if kw["stride"] is None else s
    oh = np.arange(idx.shape[2])[:, None]
    ow = np.arange(idx.shape[3])[None, :]
    i, j = idx // k[1], idx % k[1]
    return (oh * s[0] - p[0] + i * d[0]) * x_shape[3] + (ow * s[1] - p[1] + j * d[1])


def make_x(shape, dtype, rng, kind):
    if kind == "ties":      # small integers: many equal maxima per window
        return rng.integers(-2, 3, shape).astype(dtype)
    if kind == "nan":       # ties plus NaNs (some windows with several NaNs)
        x = rng.integers(-2, 3, shape).astype(dtype)
        x[rng.random(shape) < 0.15] = np.nan
        return x
    return rng.standard_normal(shape).astype(dtype)


def torch_max(x, dy, kw):
    xt = torch_tensor(x, requires_grad=True)
    yt, it = T.max_pool2d(xt, **kw, return_indices=True)
    yt.backward(torch_tensor(dy))
    return yt.detach().numpy(), it.numpy(), xt.grad.numpy()


# ---- max pooling ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
@pytest.mark.parametrize("cfg", MAX_CFGS, ids=str)
def test_max_pool_matches_reference_and_torch(cfg, kind, dtype, rng):
    kw = max_kw(cfg)
    for shape in SHAPES:
        x = make_x(shape, dtype, rng, kind)
        y, idx = F.max_pool2d(x, **kw, return_indices=True)
        assert y.dtype == dtype and idx.dtype == np.uint8
        ry, ridx = R.max_pool2d(x, **kw)
        np.testing.assert_array_equal(y, ry)            # NaN == NaN here
        np.testing.assert_array_equal(idx, ridx)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = F.max_pool2d_backward(dy, idx, x.shape, **kw)
        assert dx.dtype == dtype and dx.shape == x.shape
        assert_close(dx, R.max_pool2d_backward(dy, ridx, x.shape, **kw), scale=4)
        ty, tidx, tdx = torch_max(x, dy, kw)
        np.testing.assert_array_equal(y, ty)
        np.testing.assert_array_equal(torch_flat_index(idx.astype(np.int64), x.shape, kw), tidx)
        assert_close(dx, tdx, scale=4)
    if kind == "nan":
        assert np.isnan(y).any()


@pytest.mark.parametrize("cfg", MAX_CFGS[:4] + MAX_CFGS[6:9], ids=str)
def test_max_pool_vectorised_reference_matches_naive(cfg, rng):
    kw = max_kw(cfg)
    x = make_x((1, 2, 7, 8), np.float64, rng, "nan")
    y, idx = R.max_pool2d(x, **kw)
    ny, nidx = R.max_pool2d_naive(x, **kw)
    np.testing.assert_array_equal(y, ny)
    np.testing.assert_array_equal(idx, nidx)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(R.max_pool2d_backward(dy, idx, x.shape, **kw),
                               R.max_pool2d_backward_naive(dy, nidx, x.shape, **kw), rtol=1e-12)


def test_max_pool_tie_and_nan_rules():
    x = np.array([[[[3, 3, 1, 3]]]], np.float32)
    _, idx = F.max_pool2d(x, (1, 4), return_indices=True)
    assert idx[0, 0, 0, 0] == 0                     # first maximum
    x = np.array([[[[1, np.nan, 5, np.nan, 2]]]], np.float32)
    y, idx = F.max_pool2d(x, (1, 5), return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 3   # last NaN, as torch's CPU kernel
    x = np.full((1, 1, 2, 2), -np.inf, np.float64)  # all -inf: the first real element, not padding
    y, idx = F.max_pool2d(x, 2, padding=1, return_indices=True)
    np.testing.assert_array_equal(idx[0, 0], [[3, 2], [1, 0]])
    assert np.all(y == -np.inf)


def test_max_pool_large_window_uses_uint16(rng):
    x = rng.standard_normal((1, 2, 3, 301)).astype(np.float32)
    kw = dict(kernel_size=(1, 300), stride=1, padding=0, dilation=1, ceil_mode=False)
    y, idx = F.max_pool2d(x, **kw, return_indices=True)
    assert idx.dtype == np.uint16
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty, tidx, tdx = torch_max(x, dy, kw)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(torch_flat_index(idx.astype(np.int64), x.shape, kw), tidx)
    assert_close(F.max_pool2d_backward(dy, idx, x.shape, **kw), tdx)


@pytest.mark.parametrize("cfg", [MAX_CFGS[2], MAX_CFGS[5], MAX_CFGS[7]], ids=str)
def test_max_pool_finite_differences(cfg, rng):
    kw = max_kw(cfg)
    shape = (1, 2, 6, 7)
    # distinct values, far apart relative to eps: no ties, the argmax is stable
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.01
    w = rng.standard_normal(F.max_pool2d(x, **kw).shape)
    _, idx = F.max_pool2d(x, **kw, return_indices=True)
    dx = F.max_pool2d_backward(w, idx, x.shape, **kw)
    num = numeric_grad(lambda: float((F.max_pool2d(x, **kw) * w).sum()), x)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


# ---- average pooling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", AVG_CFGS, ids=str)
def test_avg_pool_matches_reference_and_torch(cfg, dtype, rng):
    kw = avg_kw(cfg)
    for shape in SHAPES:
        x = make_x(shape, dtype, rng, "normal")
        y = F.avg_pool2d(x, **kw)
        assert y.dtype == dtype
        assert_close(y, R.avg_pool2d(x, **kw))
        xt = torch_tensor(x, requires_grad=True)
        yt = T.avg_pool2d(xt, **kw)
        assert_close(y, yt.detach().numpy())
        dy = rng.standard_normal(y.shape).astype(dtype)
        yt.backward(torch_tensor(dy))
        dx = F.avg_pool2d_backward(dy, x.shape, **kw)
        assert dx.dtype == dtype and dx.shape == x.shape
        assert_close(dx, R.avg_pool2d_backward(dy, x.shape, **kw))
        assert_close(dx, xt.grad.numpy())


@pytest.mark.parametrize("cfg", AVG_CFGS[:8] + AVG_CFGS[10:16], ids=str)
def test_avg_pool_vectorised_reference_matches_naive(cfg, rng):
    kw = avg_kw(cfg)
    x = rng.standard_normal((1, 2, 7, 8))
    y = R.avg_pool2d(x, **kw)
    np.testing.assert_allclose(y, R.avg_pool2d_naive(x, **kw), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(R.avg_pool2d_backward(dy, x.shape, **kw),
                               R.avg_pool2d_backward_naive(dy, x.shape, **kw), rtol=1e-12)


@pytest.mark.parametrize("cfg", [AVG_CFGS[3], AVG_CFGS[7], AVG_CFGS[10], AVG_CFGS[13]], ids=str)
def test_avg_pool_finite_differences(cfg, rng):
    kw = avg_kw(cfg)
    x = rng.standard_normal((1, 2, 6, 7))
    w = rng.standard_normal(F.avg_pool2d(x, **kw).shape)
    dx = F.avg_pool2d_backward(w, x.shape, **kw)
    num = numeric_grad(lambda: float((F.avg_pool2d(x, **kw) * w).sum()), x)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


# ---- global average pooling -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (3, 1, 1, 1), (1, 4, 16, 17)])
def test_global_avg_pool_matches_reference_and_torch(shape, dtype, rng):
    x = make_x(shape, dtype, rng, "normal")
    y = F.global_avg_pool2d(x)
    assert y.shape == shape[:2] and y.dtype == dtype
    assert_close(y, R.global_avg_pool2d(x))
    xt = torch_tensor(x, requires_grad=True)
    yt = xt.mean(dim=(2, 3))
    assert_close(y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch_tensor(dy))
    dx = F.global_avg_pool2d_backward(dy, shape)
    assert_close(dx, R.global_avg_pool2d_backward(dy, shape))
    assert_close(dx, xt.grad.numpy())


def test_global_avg_pool_finite_differences(rng):
    x = rng.standard_normal((2, 2, 3, 4))
    w = rng.standard_normal((2, 2))
    num = numeric_grad(lambda: float((F.global_avg_pool2d(x) * w).sum()), x)
    np.testing.assert_allclose(F.global_avg_pool2d_backward(w, x.shape), num, rtol=1e-6,
                               atol=1e-8)


# ---- layers -----------------------------------------------------------------------------------

LAYER_CASES = [
    (lambda: MaxPool2d(3, 2, 1, ceil_mode=True),
     lambda: torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
    (lambda: MaxPool2d((2, 3), stride=(1, 2), dilation=(2, 1)),
     lambda: torch.nn.MaxPool2d((2, 3), stride=(1, 2), dilation=(2, 1))),
    (lambda: AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     lambda: torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
    (lambda: AvgPool2d(2), lambda: torch.nn.AvgPool2d(2)),
    (lambda: GlobalAvgPool2d(),
     lambda: torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(LAYER_CASES)))
def test_layer_matches_torch(case, dtype, rng):
    layer, tlayer = LAYER_CASES[case][0](), LAYER_CASES[case][1]()
    assert layer.params == {} and layer.grads == {}
    x = make_x((2, 3, 9, 10), dtype, rng, "ties")
    x0 = x.copy()
    y = layer(x)
    xt = torch_tensor(x, requires_grad=True)
    yt = tlayer(xt)
    assert_close(y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy0 = dy.copy()
    dx = layer.backward(dy)
    yt.backward(torch_tensor(dy))
    assert_close(dx, xt.grad.numpy(), scale=4)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    # only the small state is kept: never the input itself
    for s in layer._saved:
        assert not (isinstance(s, np.ndarray) and s.dtype == x.dtype)
    layer.input_grad = False
    assert layer.backward(dy) is None
    assert repr(layer).startswith(type(layer).__name__)


def test_max_pool_layer_saves_uint8_offsets(rng):
    layer = MaxPool2d(2)
    layer(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    assert layer._saved[0].dtype == np.uint8 and layer._saved[0].shape == (2, 3, 4, 4)


@pytest.mark.parametrize("make", [lambda: MaxPool2d(2), lambda: AvgPool2d(2), GlobalAvgPool2d])
def test_layer_backward_errors(make, rng):
    layer = make()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((1, 1, 2, 2), np.float32))
    y = layer(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.ones(y.shape + (1,), np.float32))
    with pytest.raises(TypeError, match="dy"):
        layer.backward(np.ones(y.shape, np.float64))
    with pytest.raises(TypeError, match="dy"):
        layer.backward(np.ones(y.shape, np.int32))


# ---- contract: errors, inputs unmodified, layouts, threads ------------------------------------

@pytest.mark.parametrize("call, exc, match", [
    (lambda x: F.max_pool2d(x, 0), ValueError, "kernel_size"),
    (lambda x: F.max_pool2d(x, 2, stride=0), ValueError, "stride"),
    (lambda x: F.max_pool2d(x, 2, padding=-1), ValueError, "padding"),
    (lambda x: F.max_pool2d(x, 3, dilation=0), ValueError, "dilation"),
    (lambda x: F.max_pool2d(x, 3, padding=2), ValueError, "padding"),
    (lambda x: F.max_pool2d(x, 3, padding=2, dilation=2), ValueError, "padding"),  # torch: k//2
    (lambda x: F.max_pool2d(x, (3, 2), padding=(1, 2)), ValueError, "padding"),
    (lambda x: F.max_pool2d(x, 7), ValueError, r"output size.*\(2, 3, 5, 6\)"),
    (lambda x: F.max_pool2d(x, 2.0), TypeError, "kernel_size"),
    (lambda x: F.max_pool2d(x, (2, 2, 2)), ValueError, "kernel_size"),
    (lambda x: F.max_pool2d(x, 2, ceil_mode=1), TypeError, "ceil_mode"),
    (lambda x: F.max_pool2d(x[0, 0], 2), ValueError, r"x must be 4-d.*\(5, 6\)"),
    (lambda x: F.max_pool2d(x.astype(np.int64), 2), TypeError, "x"),
    (lambda x: F.max_pool2d(x.astype(np.float16), 2), TypeError, "x"),
    (lambda x: F.max_pool2d(x.tolist(), 2), TypeError, "x"),
    (lambda x: F.max_pool2d(x[:0], 2), ValueError, "x"),
    (lambda x: F.avg_pool2d(x, 3, padding=2), ValueError, "padding"),
    (lambda x: F.avg_pool2d(x, 2, count_include_pad=None), TypeError, "count_include_pad"),
    (lambda x: F.avg_pool2d(x, 6, stride=1), ValueError, "output size"),
    (lambda x: F.global_avg_pool2d(x[0, 0]), ValueError, "x"),
    (lambda x: F.global_avg_pool2d(x.astype(np.int32)), TypeError, "x"),
    (lambda x: F.max_pool2d_backward(np.ones((2, 3, 2, 3), np.float32),
                                     np.zeros((2, 3, 2, 3), np.uint8), x.shape, 3), ValueError,
     r"dy must have the output shape \(2, 3, 1, 2\)"),
    (lambda x: F.max_pool2d_backward(np.ones((2, 3, 2, 3), np.float32),
                                     np.zeros((2, 3, 2, 2), np.uint8), x.shape, 2), ValueError,
     "indices"),
    (lambda x: F.max_pool2d_backward(np.ones((2, 3, 2, 3), np.float32),
                                     np.full((2, 3, 2, 3), 4, np.uint8), x.shape, 2), ValueError,
     r"indices.*\[0, 4\)"),
    (lambda x: F.max_pool2d_backward(np.ones((2, 3, 2, 3), np.float32),
                                     np.zeros((2, 3, 2, 3), np.float32), x.shape, 2), TypeError,
     "indices"),
    (lambda x: F.max_pool2d_backward(np.ones((2, 3, 2, 3), np.float32),
                                     np.zeros((2, 3, 2, 3), np.uint8), (2, 3, 5, 6, 1), 2),
     ValueError,
     "x_shape"),
    (lambda x: F.avg_pool2d_backward(np.ones((2, 3, 2, 2), np.float32), x.shape, 2), ValueError,
     r"dy must have the output shape \(2, 3, 2, 3\)"),
    (lambda x: F.avg_pool2d_backward(np.ones((2, 3, 2, 3), np.int64), x.shape, 2), TypeError,
     "dy"),
    (lambda x: F.global_avg_pool2d_backward(np.ones((2, 4), np.float32), x.shape), ValueError,
     r"dy must have the output shape \(2, 3\)"),
    (lambda x: MaxPool2d(3, padding=2), ValueError, "padding"),
    (lambda x: AvgPool2d(2, stride=-1), ValueError, "stride"),
])
def test_bad_arguments_raise(call, exc, match):
    x = np.zeros((2, 3, 5, 6), np.float32)
    with pytest.raises(exc, match=match):
        call(x)


def test_inputs_unmodified_and_non_contiguous(rng):
    x = make_x((2, 3, 9, 10), np.float32, rng, "nan")
    xn = non_contiguous(x)
    kw = max_kw(MAX_CFGS[3])
    y, idx = F.max_pool2d(x, **kw, return_indices=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    idx_nc = non_contiguous(idx)
    args = [(x, dy, idx), (xn, non_contiguous(dy), idx_nc)]
    saved = [tuple(a.copy() for a in t) for t in args]
    akw = avg_kw(AVG_CFGS[7])
    ya = F.avg_pool2d(x, **akw)
    dya = rng.standard_normal(ya.shape).astype(np.float32)
    results = []
    for (xx, dd, ii) in args:
        results.append((F.max_pool2d(xx, **kw), F.max_pool2d_backward(dd, ii, x.shape, **kw),
                        F.avg_pool2d(xx, **akw), F.global_avg_pool2d(xx)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2], results[1][2])
    np.testing.assert_array_equal(results[0][3], results[1][3])
    for t, t0 in zip(args, saved):
        for a, a0 in zip(t, t0):
            np.testing.assert_array_equal(a, a0)
    dya0 = dya.copy()
    dxa = F.avg_pool2d_backward(non_contiguous(dya), x.shape, **akw)
    np.testing.assert_array_equal(dxa, F.avg_pool2d_backward(dya, x.shape, **akw))
    np.testing.assert_array_equal(dya, dya0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_invariance(dtype, rng):
    x = make_x((4, 5, 13, 12), dtype, rng, "ties")
    mkw, akw = max_kw(MAX_CFGS[4]), avg_kw(AVG_CFGS[5])

    def run():
        y, idx = F.max_pool2d(x, **mkw, return_indices=True)
        dy = np.linspace(-1, 1, y.size, dtype=dtype).reshape(y.shape)
        ya = F.avg_pool2d(x, **akw)
        dya = np.linspace(-1, 1, ya.size, dtype=dtype).reshape(ya.shape)
        g = F.global_avg_pool2d(x)
        return (y, idx, F.max_pool2d_backward(dy, idx, x.shape, **mkw), ya,
                F.avg_pool2d_backward(dya, x.shape, **akw), g,
                F.global_avg_pool2d_backward(g, x.shape))

    with num_threads(1):
        one = run()
    with num_threads(2):
        two = run()
        again = run()
    for a, b, c in zip(one, two, again):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_grid_covers_ceil_mode_overhang():
    """The grids include windows that hang past the padded input (ceil_mode), so the divisor
    and clipping rules are really exercised."""
    hits = 0
    for cfg, shape in itertools.product(AVG_CFGS, SHAPES):
        k, s, p, ceil, _ = cfg
        k, p = pair(k), pair(p)
        s = k if s is None else pair(s)
        oh = F.conv_out_size(shape[2], k[0], s[0], p[0], ceil_mode=ceil)
        hits += (oh - 1) * s[0] - p[0] + k[0] > shape[2] + p[0]
    assert hits > 0


def test_random_shapes_and_padding(rng):
    """A seeded sweep of sizes, padding and ceil_mode for a few window shapes (each window
    shape and stride compiles its own kernel, so they are few): every path of the fast kernels
    (in place, phase-split scratch with its edges, tiles) against the reference and torch."""
    windows = [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 3), (1, 2)), ((3, 2), (3, 4))]
    done = 0
    while done < 60:
        k, s = windows[done % len(windows)]
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        ceil = bool(rng.integers(0, 2))
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)),
                 int(rng.integers(1, 12)), int(rng.integers(1, 12)))
        try:
            F.max_pool2d(np.zeros(shape, np.float32), k, s, p, ceil_mode=ceil)
        except ValueError:  # output below 1
            continue
        done += 1
        kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil)
        x = make_x(shape, np.float64, rng, ["normal", "ties", "nan"][done % 3])
        y, idx = F.max_pool2d(x, **kw, return_indices=True)
        dy = rng.standard_normal(y.shape)
        ty, tidx, tdx = torch_max(x, dy, kw)
        np.testing.assert_array_equal(y, ty, err_msg=str((kw, shape)))
        np.testing.assert_array_equal(torch_flat_index(idx.astype(np.int64), x.shape,
                                                       dict(kw, dilation=1)), tidx)
        assert_close(F.max_pool2d_backward(dy, idx, x.shape, **kw), tdx, scale=4)
        for cip in (True, False):
            kwa = dict(kw, count_include_pad=cip)
            xt = torch_tensor(x, requires_grad=True)
            yt = T.avg_pool2d(xt, **kwa)
            yt.backward(torch_tensor(dy))
            assert_close(F.avg_pool2d(x, **kwa), yt.detach().numpy(), err_msg=str((kwa, shape)))
            assert_close(F.avg_pool2d_backward(dy, x.shape, **kwa), xt.grad.numpy())
