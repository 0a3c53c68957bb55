"""Conv2d: kernels vs the NumPy references (naive and im2col) and PyTorch, gradients by finite
differences, argument errors, determinism and the layer protocol."""
import numpy as np
import pytest
import torch

import nbconv.functional as F
import nbconv.functional._conv_plan as PLAN
from nbconv.functional.pointwise import PointwiseEngine as POINTWISE_ENGINE
from nbconv import reference as R
from nbconv import textbook as TB
from nbconv.layers import Conv2d
from helpers import DTYPES, assert_close, non_contiguous, num_threads, numeric_grad, torch_tensor

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

# (N, C, H, W, F, kernel, stride, padding, dilation, groups)
CFGS = [
    (2, 3, 7, 9, 4, 3, 1, 1, 1, 1),                      # odd sizes
    (1, 4, 8, 8, 6, 1, 1, 0, 1, 1),                      # N=1, 1x1
    (2, 5, 6, 7, 3, 1, 2, 1, 1, 1),                      # 1x1 strided and padded
    (2, 4, 9, 8, 4, 2, 3, 0, 1, 1),                      # stride > kernel
    (2, 3, 10, 11, 5, 5, 2, 2, 1, 1),                    # kernel > stride
    (2, 4, 8, 7, 6, (3, 2), (2, 1), (2, 1), (2, 1), 2),  # pairs, dilation, groups
    (2, 6, 7, 7, 6, 3, 1, 1, 1, 6),                      # depthwise
    (2, 4, 7, 7, 8, 3, 2, 1, 1, 4),                      # depthwise, multiplier 2, strided
    (2, 3, 8, 8, 4, 4, 1, "same", 1, 1),                 # even kernel: extra pad bottom/right
    (1, 3, 6, 7, 2, 3, 1, "same", 2, 1),
    (2, 2, 5, 6, 3, 3, 1, "full", 1, 1),
    (2, 2, 6, 6, 3, 2, 1, "valid", 1, 1),
    (1, 2, 5, 5, 3, 3, 1, 4, 1, 1),                      # padding > dilation * (k - 1)
    (2, 5, 9, 9, 7, 3, 3, 1, 2, 1),                      # stride 3 and dilation 2
    (2, 20, 9, 9, 34, 3, 1, 1, 1, 2),                    # > 16 filters per group, odd count
    (3, 9, 12, 5, 5, (1, 3), (1, 2), (0, 1), 1, 1),      # rectangular kernel
    (3, 6, 5, 7, 4, 1, 1, 0, 1, 2),                      # 1x1 unpadded (read as NCHW), groups
    (2, 4, 20, 30, 6, 1, 1, 0, 3, 1),                    # the same with several row blocks
    (1, 2, 1, 4, 3, 1, 3, 2, 1, 1),                      # no input under any tap: dx = 0
    (2, 6, 7, 9, 4, 1, (2, 3), 0, 1, 2),                 # 1x1 strided, unpadded: sub-sampled
    (1, 4, 5, 6, 3, 1, 3, 0, 2, 1),                      # the same, stride 3, dilation 2
    # one input channel per filter (nbconv.kernels.depthwise)
    (2, 1, 7, 8, 5, 3, 1, 1, 1, 1),                      # a single input channel, 5 filters
    (3, 5, 9, 11, 5, (2, 3), 1, "same", (2, 1), 5),      # depthwise, even kernel, dilation
    (2, 3, 8, 9, 3, 2, 3, 0, 1, 3),                      # depthwise, stride > kernel
    (2, 4, 9, 7, 4, 3, 2, 2, 1, 4),                      # stride 2, even left padding, odd W
    (1, 3, 6, 5, 9, 1, (2, 1), (1, 0), 1, 3),            # 1x1 depthwise, multiplier 3
    (2, 2, 10, 10, 4, 5, 3, "full", 2, 2),               # 5x5, stride 3, dilation 2, 'full'
]
IDS = [f"cfg{i}" for i in range(len(CFGS))]


def make(cfg, dtype, seed=0, bias=True):
    N, C, H, W, Fn, k, s, p, d, g = cfg
    kh, kw = k if isinstance(k, tuple) else (k, k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Fn, C // g, kh, kw)).astype(dtype)
    b = rng.standard_normal(Fn).astype(dtype) if bias else None
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


def torch_ref(x, w, b, args, dy=None):
    xt, wt = torch_tensor(x, True), torch_tensor(w, True)
    bt = torch_tensor(b, True) if b is not None else None
    if args["padding"] == "full":  # torch has no 'full': dilation * (k - 1) on each side
        d = args["dilation"] if isinstance(args["dilation"], tuple) else (args["dilation"],) * 2
        args = dict(args, padding=(d[0] * (w.shape[2] - 1), d[1] * (w.shape[3] - 1)))
    y = torch.nn.functional.conv2d(xt, wt, bt, **args)
    if dy is None:
        return y.detach().numpy()
    ins = (xt, wt) + ((bt,) if bt is not None else ())
    grads = torch.autograd.grad(y, ins, torch_tensor(dy))
    return tuple(t.numpy() for t in grads) + ((None,) if bt is None else ())


def check(actual, expected, dtype, what):
    assert actual.dtype == np.dtype(dtype), what
    assert_close(actual, expected.astype(dtype), dtype,
                 scale=max(1.0, float(np.abs(expected).max())), err_msg=what)


# ---- the references themselves --------------------------------------------------------------

@pytest.mark.parametrize("cfg", [c for c in CFGS if c[0] * c[4] * c[2] * c[3] < 3000])
def test_reference_naive_im2col_torch(cfg):
    x, w, b, args = make(cfg, np.float64)
    y = R.conv2d_naive(x, w, b, **args)
    assert_close(R.conv2d_im2col(x, w, b, **args), y)
    assert_close(y, torch_ref(x, w, b, args))
    dy = np.random.default_rng(1).standard_normal(y.shape)
    naive = R.conv2d_backward_naive(dy, x, w, **args)
    k = w.shape[2:]
    cols = R.im2col(x, k, args["stride"], args["padding"], args["dilation"])
    for a, c, e, t in zip(R.conv2d_backward_im2col(dy, x, w, **args),
                          R.conv2d_backward_im2col(dy, x, w, **args, cols=cols), naive,
                          torch_ref(x, w, b, args, dy)):
        assert_close(a, e)
        assert_close(c, e)
        assert_close(e, t)


# ---- forward and every gradient against the references and torch ----------------------------

@pytest.mark.parametrize("padding, stride", [
    (0, 1), (2, 1), ((1, 0), 2), ("valid", 1), ("same", 1),
    ((1, 2, 0, 1), 1),    # a 4-tuple: the reference took it as (top, bottom, left, right)
    ("same", 2),          # the reference padded strided inputs 'same' anyway
    (-1, 1), ((1, -1), 1),  # the reference padded negatively (cropped)
    (1.5, 1), (True, 1),  # the reference truncated floats and bools with int()
])
def test_one_padding_parser_as_torch(padding, stride):
    """The reference, the kernels' wrappers and torch accept the same paddings (the reference
    had its own parser, which had drifted: it accepted every case marked above)."""
    x, w, b, _ = make((1, 2, 6, 7, 3, 3, 1, 0, 1, 1), np.float64)
    args = dict(stride=stride, padding=padding)
    try:
        expect = torch_ref(x, w, b, args)
    except (RuntimeError, TypeError, ValueError) as e:
        err = TypeError if isinstance(e, TypeError) else ValueError
        for fn in (R.conv2d_naive, R.conv2d_im2col, F.conv2d):
            with pytest.raises(err, match="padding"):
                fn(x, w, b, **args)
        return
    for fn in (R.conv2d_naive, R.conv2d_im2col, F.conv2d):
        assert_close(fn(x, w, b, **args), expect, err_msg=fn.__name__)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
def test_forward_backward(cfg, dtype):
    x, w, b, args = make(cfg, dtype)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    y = F.conv2d(x, w, b, **args)
    y_ref = R.conv2d_im2col(x64, w64, b64, **args)
    check(y, y_ref, dtype, "y vs im2col")
    check(y, torch_ref(x64, w64, b64, args), dtype, "y vs torch")
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx, dw, db = F.conv2d_backward(dy, x, w, **args)
    ref = R.conv2d_backward_im2col(dy.astype(np.float64), x64, w64, **args)
    tor = torch_ref(x64, w64, b64, args, dy.astype(np.float64))
    for name, a, r, t in zip(("dx", "dweight", "dbias"), (dx, dw, db), ref, tor):
        check(a, r, dtype, f"{name} vs im2col")
        check(a, t, dtype, f"{name} vs torch")
    if x.size * w.shape[0] < 20000:  # the textbook loops are slow: tiny shapes only
        nv = R.conv2d_backward_naive(dy.astype(np.float64), x64, w64, **args)
        check(y, R.conv2d_naive(x64, w64, b64, **args), dtype, "y vs naive")
        for name, a, r in zip(("dx", "dweight", "dbias"), (dx, dw, db), nv):
            check(a, r, dtype, f"{name} vs naive")


def test_random_configs():
    """A seeded sweep of random small shapes and hyper-parameters against im2col (float64)."""
    rng = np.random.default_rng(2024)
    done = 0
    while done < 60:
        g = int(rng.choice([1, 1, 2, 3]))
        C, Fn = g * int(rng.integers(1, 4)), g * int(rng.integers(1, 4))
        N, H, W = (int(v) for v in rng.integers(1, [4, 11, 11]))
        kh, kw, sh, sw = (int(v) for v in rng.integers(1, [5, 5, 4, 4]))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        p = [int(rng.integers(0, 4)), (int(rng.integers(0, 4)), int(rng.integers(0, 4))),
             "same", "full", "valid"][int(rng.integers(0, 5))]
        if p == "same":
            sh = sw = 1
        pads = R.conv2d_padding(p, (kh, kw), (sh, sw), (dh, dw))
        if (R.conv_out_size(H, kh, sh, pads[0], pads[1], dh) < 1
                or R.conv_out_size(W, kw, sw, pads[2], pads[3], dw) < 1):
            continue
        done += 1
        x, w, b = (rng.standard_normal(s) for s in ((N, C, H, W), (Fn, C // g, kh, kw), (Fn,)))
        args = dict(stride=(sh, sw), padding=p, dilation=(dh, dw), groups=g)
        y = F.conv2d(x, w, b, **args)
        assert_close(y, R.conv2d_im2col(x, w, b, **args), err_msg=str(args))
        dy = rng.standard_normal(y.shape)
        for a, r in zip(F.conv2d_backward(dy, x, w, **args),
                        R.conv2d_backward_im2col(dy, x, w, **args)):
            assert_close(a, r, err_msg=str(args))


@pytest.mark.parametrize("cfg", [CFGS[0], CFGS[5], CFGS[7]])
def test_no_bias_and_skipped_grads(cfg):
    x, w, _, args = make(cfg, np.float32, bias=False)
    y = F.conv2d(x, w, None, **args)
    check(y, R.conv2d_im2col(x, w, None, **args), np.float32, "y")
    dy = np.ones_like(y)
    dx, dw, db = F.conv2d_backward(dy, x, w, **args, need_dx=False, need_bias=False)
    assert dx is None and db is None
    check(dw, R.conv2d_backward_im2col(dy, x, w, **args)[1], np.float32, "dweight")


@pytest.mark.parametrize("cfg", [CFGS[5], CFGS[7], CFGS[19]],
                         ids=["general", "depthwise", "strided-1x1"])
def test_prepared_matches_plain(cfg):
    x, w, b, args = make(cfg, np.float32)
    prep = F.conv2d_prepare(x, w, **args)
    y = F.conv2d(None, w, b, **args, prepared=prep)
    assert np.array_equal(y, F.conv2d(x, w, b, **args))
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    for a, e in zip(F.conv2d_backward(dy, None, w, **args, prepared=prep),
                    F.conv2d_backward(dy, x, w, **args)):
        assert np.array_equal(a, e)
    with pytest.raises(ValueError, match="prepared"):  # another kernel size
        F.conv2d(None, np.zeros(w.shape[:2] + (2, 2), w.dtype), b, **args, prepared=prep)
    with pytest.raises(ValueError, match="prepared"):  # another stride
        F.conv2d(None, w, b, **dict(args, stride=5), prepared=prep)


def test_prepared_geometry_built_once(monkeypatch):
    """A training step (prepare, forward, backward) parses the arguments into a geometry once:
    the prepared input carries it."""
    built = []
    init = PLAN.ConvGeometry.__init__
    monkeypatch.setattr(PLAN.ConvGeometry, "__init__",
                        lambda self, *a, **k: (built.append(a[0]), init(self, *a, **k))[1])
    for cfg in (CFGS[0], CFGS[1], CFGS[7]):  # planes, NCHW, depthwise
        x, w, b, args = make(cfg, np.float32)
        layer = Conv2d(cfg[1], cfg[4], cfg[5], **args)
        built.clear()
        y = layer(x)
        layer.backward(np.ones_like(y))
        assert built == [x.shape], cfg


def test_prepared_other_arguments():
    x, w, b, args = make(CFGS[5], np.float32)
    prep = F.conv2d_prepare(x, w, **args)
    dy = np.zeros(F.conv2d(x, w, b, **args).shape, np.float32)
    for kw, wt, xx in [(dict(args, padding=0), w, None), (dict(args, groups=1), w, None),
                       (dict(args, dilation=1), w, None), (args, w.astype(np.float64), None),
                       (args, w[:4], None), (args, w, x[:1])]:
        with pytest.raises(ValueError, match="prepared"):
            F.conv2d(xx, wt, None, **kw, prepared=prep)
        with pytest.raises(ValueError, match="prepared"):
            F.conv2d_backward(dy.astype(wt.dtype), xx, wt, **kw, prepared=prep)
    with pytest.raises(TypeError, match="prepared"):
        F.conv2d(None, w, b, **args, prepared=prep.geom)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        F.conv2d(None, w, b, **args)
    # the same arguments spelled differently are the same arguments
    same = dict(args, stride=tuple(args["stride"]), padding=[2, 1])
    assert np.array_equal(F.conv2d(None, w, b, **same, prepared=prep), F.conv2d(x, w, b, **args))


def test_seed_example():
    """X (2,3,3) = [[0..8],[1..9]], K (2,2,2) = [[[0,1],[2,3]],[[1,2],[3,4]]]; stacking K, K+1,
    K+2 as three filters."""
    x = np.stack([np.arange(9.0).reshape(3, 3), np.arange(1.0, 10.0).reshape(3, 3)])[None]
    k = np.array([[[0, 1], [2, 3]], [[1, 2], [3, 4]]], dtype=np.float64)
    for dtype in DTYPES:
        y = F.conv2d(x.astype(dtype), k[None].astype(dtype))
        assert np.array_equal(y[0, 0], [[56, 72], [104, 120]])
        y3 = F.conv2d(x.astype(dtype), np.stack([k, k + 1, k + 2]).astype(dtype))
        assert np.array_equal(y3[0], [[[56, 72], [104, 120]], [[76, 100], [148, 172]],
                                      [[96, 128], [192, 224]]])


@pytest.mark.parametrize("cfg", [(1, 2, 5, 4, 3, 3, 2, 1, 1, 1),
                                 (2, 4, 4, 5, 2, 2, 1, "same", 2, 2),
                                 (1, 3, 4, 4, 3, (2, 3), (1, 2), (1, 0), 1, 3),
                                 (2, 3, 5, 6, 3, 3, 2, 1, 1, 3),       # depthwise
                                 (2, 2, 5, 5, 4, 2, 1, 1, (1, 2), 2)])  # depthwise, multiplier
def test_finite_differences(cfg):
    x, w, b, args = make(cfg, np.float64, seed=3)
    y = F.conv2d(x, w, b, **args)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, **args)
    loss = lambda: float((F.conv2d(x, w, b, **args) * dy).sum())  # noqa: E731
    for a, v in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(a, numeric_grad(loss, v), rtol=1e-6, atol=1e-7)


# ---- layouts, inputs untouched, determinism --------------------------------------------------

@pytest.mark.parametrize("cfg", [CFGS[0], CFGS[5], CFGS[7]])
def test_non_contiguous_and_unmodified(cfg):
    x, w, b, args = make(cfg, np.float32)
    y = F.conv2d(x, w, b, **args)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    grads = F.conv2d_backward(dy, x, w, **args)
    xs, ws, bs, dys = (non_contiguous(a) for a in (x, w, b, dy))
    xt = np.asfortranarray(x)
    copies = [a.copy() for a in (xs, ws, bs, dys, xt)]
    assert np.array_equal(F.conv2d(xs, ws, bs, **args), y)
    assert np.array_equal(F.conv2d(xt, ws, bs, **args), y)
    for a, e in zip(F.conv2d_backward(dys, xs, ws, **args), grads):
        assert np.array_equal(a, e)
    for a, c in zip((xs, ws, bs, dys, xt), copies):
        assert np.array_equal(a, c)
    for a, c in zip((x, w, b, dy), copies[:4]):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_invariance(dtype):
    """Bitwise equal with 1 and 2 threads and across repeats (fixed chunks, fixed order)."""
    for cfg in [(3, 6, 11, 13, 10, 3, 1, 1, 1, 1), (2, 8, 12, 10, 8, 3, 2, 1, 1, 8),
                (4, 16, 9, 9, 24, 1, 1, 0, 1, 2),
                (7, 2, 9, 9, 4, 3, 1, 1, 1, 2)]:  # depthwise, images split across tasks
        x, w, b, args = make(cfg, dtype)
        dy = np.random.default_rng(6).standard_normal(
            F.conv2d(x, w, b, **args).shape).astype(dtype)
        runs = []
        for n in (1, 2, 2, 1):
            with num_threads(n):
                runs.append((F.conv2d(x, w, b, **args),) + F.conv2d_backward(dy, x, w, **args))
        for r in runs[1:]:
            for a, e in zip(r, runs[0]):
                assert np.array_equal(a, e)


def test_nan_inf_propagate():
    x, w, b, args = make(CFGS[0], np.float32)
    x[0, 0, 3, 3] = np.nan
    y = F.conv2d(x, w, b, **args)
    assert np.isnan(y[0, :, 2:5, 2:5]).all() and not np.isnan(y[1]).any()


@pytest.mark.parametrize("k", [1, 2, 4])  # taps left over after groups of three: 1, 1, 1 / 2
def test_depthwise_inf_stays_local(k):
    """An inf in x reaches only the outputs whose windows hold it, as in torch (no zero
    weight of a padded tap group multiplies it)."""
    x, w, b, args = make((2, 3, 7, 7, 3, k, 1, k // 2, 1, 3), np.float32)
    x[0, 1, 3, 3] = np.inf
    w = np.abs(w) + 0.1
    y = F.conv2d(x, w, b, **args)
    expect = torch_ref(x, w, b, args)
    assert np.array_equal(np.isinf(y), np.isinf(expect)) and not np.isnan(y).any()


def _same_non_finite(actual, expected, dtype, what):
    """NaN, +inf and -inf at the same places as torch, the finite values close."""
    for kind in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(kind(actual), kind(expected)), f"{what}: {kind.__name__}"
    fin = np.isfinite(expected)
    if fin.any():
        check(actual[fin], expected[fin], dtype, what)


def _all_grads(x, w, b, args, dy):
    y = F.conv2d(x, w, b, **args)
    dx, dw, db = F.conv2d_backward(dy, x, w, **args)
    return (y, dx, dw, db), (torch_ref(x, w, b, args),) + torch_ref(x, w, b, args, dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["padded_inf", "unread_nan", "unread_nan_depthwise",
                                  "pointwise_dy_inf"])
def test_issue11_bug_b_non_finite_as_torch(case, dtype):
    """Issue 11 bug B: zero padding (of the reduction or of the image) and computed-and-dropped
    columns are never multiplied into a result, so inf stays inf and a NaN that no output reads
    does not reach the weight gradient."""
    if case == "padded_inf":          # E = 18 reduction elements, padded to 20 with zeros
        x = np.zeros((1, 2, 4, 4), dtype)
        x[0, 0, 0, 0] = np.inf
        w, args = np.ones((1, 2, 3, 3), dtype), dict(padding=1)
    elif case == "pointwise_dy_inf":  # 1x1: 1 filter padded to 4 in the input gradient
        x, w, args = np.ones((1, 3, 1, 1), dtype), np.ones((1, 3, 1, 1), dtype), {}
    else:                             # column 4 is never read, and yet multiplied by dy = 0
        x = np.ones((1, 2, 2, 5), dtype)
        x[0, 0, 0, 4] = np.nan
        depthwise = case.endswith("depthwise")
        w = np.ones((2 if depthwise else 1, 1 if depthwise else 2, 2, 2), dtype)
        args = dict(stride=2, groups=2 if depthwise else 1)
    args = dict(dict(stride=1, padding=0, dilation=1, groups=1), **args)
    y = F.conv2d(x, w, None, **args)
    dy = np.ones(y.shape, dtype)
    if case == "pointwise_dy_inf":
        dy[0, 0, 0, 0] = np.inf
    b = np.zeros(w.shape[0], dtype)
    for what, a, e in zip("y dx dw db".split(), *_all_grads(x, w, b, args, dy)):
        _same_non_finite(a, e, dtype, f"{case} {what}")
    if case == "padded_inf":
        assert y[0, 0, 1, 1] == np.inf
    if case.startswith("unread_nan"):
        assert np.isfinite(y).all() and (F.conv2d_backward(dy, x, w, **args)[1] == 2).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [CFGS[i] for i in (0, 1, 2, 3, 4, 5, 7, 13, 14, 16, 19, 23,
                                                       26)])
def test_non_finite_sweep(cfg, dtype):
    """Random inf, -inf and NaN in x, then in dy: every output and gradient has its non-finite
    values where the textbook kernels (which skip padding taps) have them, and its finite values
    agree with those of torch. (Torch itself is not consistent here: float32 oneDNN skips the
    padding of a 3x3 conv but multiplies it for a padded 1x1 one, float64 always multiplies it,
    so an inf of dy meeting padding gives NaN there; issue 11 asks that padding is never
    multiplied.)"""
    rng = np.random.default_rng(11)
    for trial in range(4):
        x, w, b, args = make(cfg, dtype, seed=trial)
        dy = rng.standard_normal(F.conv2d(x, w, b, **args).shape).astype(dtype)
        target = x if trial < 2 else dy
        flat = target.reshape(-1)
        for v, pos in zip([np.inf, -np.inf, np.nan][:trial % 2 + 1],
                          rng.choice(flat.size, 2, replace=False)):
            flat[pos] = v
        ours, theirs = _all_grads(x, w, b, args, dy)
        book = (TB.conv2d(x, w, b, **args),) + TB.conv2d_backward(dy, x, w, **args)
        for what, a, e, t in zip("y dx dw db".split(), ours, book, theirs):
            for kind in (np.isnan, np.isposinf, np.isneginf):
                assert np.array_equal(kind(a), kind(e)), f"trial {trial} {what} {kind.__name__}"
            fin = np.isfinite(a) & np.isfinite(t)
            assert np.array_equal(fin, np.isfinite(a)) or what != "y", f"trial {trial} {what}"
            check(a[fin], t[fin], dtype, f"trial {trial} {what}")


# ---- argument errors ------------------------------------------------------------------------

def _x_w(C=4, F_=6, k=3, groups=1, dtype=np.float32):
    return np.zeros((2, C, 8, 8), dtype), np.zeros((F_, C // groups, k, k), dtype)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(1, -1)), ValueError, "stride"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding=(1, 2, 3)), ValueError, "padding"),
    (dict(padding="wide"), ValueError, "padding"),
    (dict(padding="same", stride=2), ValueError, "same"),
    (dict(padding=1.5), TypeError, "padding"),
    (dict(stride=1.0), TypeError, "stride"),
    (dict(groups=0), ValueError, "groups"),
    (dict(groups=True), TypeError, "groups"),
])
def test_bad_hyper_parameters(kwargs, err, match):
    x, w = _x_w()
    with pytest.raises(err, match=match):
        F.conv2d(x, w, **kwargs)
    dy = np.zeros((2, 6, 6, 6), np.float32)
    with pytest.raises(err, match=match):
        F.conv2d_backward(dy, x, w, **kwargs)


def test_bad_arrays():
    x, w = _x_w()
    with pytest.raises(ValueError, match=r"weight.*\(6, 4, 3, 3\).*x.*\(2, 5, 8, 8\)"):
        F.conv2d(np.zeros((2, 5, 8, 8), np.float32), w)
    with pytest.raises(ValueError, match=r"groups=4 must divide out_channels.*\(6, 1, 3, 3\)"):
        F.conv2d(x, np.zeros((6, 1, 3, 3), np.float32), groups=4)
    with pytest.raises(ValueError, match=r"groups=3 must divide in_channels.*\(2, 4, 8, 8\)"):
        F.conv2d(x, np.zeros((6, 1, 3, 3), np.float32), groups=3)
    with pytest.raises(ValueError, match=r"output size.*x of shape \(2, 4, 8, 8\)"):
        F.conv2d(x, np.zeros((6, 4, 9, 9), np.float32))
    with pytest.raises(ValueError, match=r"output size"):
        F.conv2d(x, w, dilation=4)
    with pytest.raises(ValueError, match=r"x must be 4-d.*\(8, 8\)"):
        F.conv2d(x[0, 0], w)
    with pytest.raises(ValueError, match=r"weight must be 4-d"):
        F.conv2d(x, w[0])
    with pytest.raises(ValueError, match=r"x must not be empty.*\(0, 4, 8, 8\)"):
        F.conv2d(x[:0], w)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\).*\(5,\)"):
        F.conv2d(x, w, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match=r"x has dtype float64 but float32"):
        F.conv2d(x.astype(np.float64), w)
    with pytest.raises(TypeError, match=r"bias has dtype float64 but float32"):
        F.conv2d(x, w, np.zeros(6))
    with pytest.raises(TypeError, match=r"weight has dtype int64 but float32 or float64 is expected"):
        F.conv2d(x, w.astype(np.int64))
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray.*list"):
        F.conv2d(x.tolist(), w)
    with pytest.raises(ValueError, match=r"dy must have the output shape \(2, 6, 6, 6\).*"
                                         r"\(2, 6, 5, 6\)"):
        F.conv2d_backward(np.zeros((2, 6, 5, 6), np.float32), x, w)
    with pytest.raises(TypeError, match=r"dy has dtype float64 but float32"):
        F.conv2d_backward(np.zeros((2, 6, 6, 6)), x, w)


# ---- the layer --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_matches_torch(dtype):
    layer = Conv2d(4, 6, (3, 2), stride=(2, 1), padding="full", dilation=(1, 2), groups=2,
                   dtype=dtype, seed=0)
    w, b = layer.params["weight"], layer.params["bias"]
    assert w.shape == (6, 2, 3, 2) and b.shape == (6,) and w.dtype == b.dtype == dtype
    net = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(2, 2), dilation=(1, 2),
                          groups=2).to(torch.float64)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(w.astype(np.float64)))
        net.bias.copy_(torch.from_numpy(b.astype(np.float64)))
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 6)).astype(dtype)
    xt = torch_tensor(x.astype(np.float64), True)
    yt = net(xt)
    y = layer(x)
    check(y, yt.detach().numpy(), dtype, "y")
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    yt.backward(torch_tensor(dy.astype(np.float64)))
    dx = layer.backward(dy)
    check(dx, xt.grad.numpy(), dtype, "dx")
    check(layer.grads["weight"], net.weight.grad.numpy(), dtype, "dweight")
    check(layer.grads["bias"], net.bias.grad.numpy(), dtype, "dbias")


def test_layer_init_and_params_in_place():
    layer = Conv2d(6, 8, 3, groups=2, seed=1)
    w = layer.params["weight"]
    bound = 1 / np.sqrt(3 * 3 * 3)  # fan_in = C/groups * KH * KW
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(layer.params["bias"]).max() <= bound
    assert np.array_equal(w, Conv2d(6, 8, 3, groups=2, seed=1).params["weight"])
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 5)).astype(np.float32)
    new_w = np.random.default_rng(1).standard_normal(w.shape).astype(np.float32)
    layer.params["weight"][...] = new_w
    layer.params["bias"][...] = 0.5
    expect = R.conv2d_im2col(x, new_w, np.full(8, 0.5, np.float32), groups=2)
    check(layer(x), expect, np.float32, "y after in-place assignment")
    nb = Conv2d(6, 8, 3, bias=False)
    assert list(nb.params) == ["weight"] and list(nb.grads) == ["weight"]


def test_layer_protocol_and_skipped_dx(monkeypatch):
    layer = Conv2d(3, 4, 3, padding="same", seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    with pytest.raises(RuntimeError):
        layer.backward(np.zeros((2, 4, 6, 6), np.float32))
    y = layer(x)
    assert y.shape == (2, 4, 6, 6)
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.zeros((2, 4, 5, 6), np.float32))
    dy = np.ones_like(y)
    dx = layer.backward(dy)
    gw = layer.grads["weight"].copy()
    layer.input_grad = False
    layer(x)
    with monkeypatch.context() as m:  # dx is not computed at all
        m.setattr(PLAN, "dx_plan", None)
        m.setattr(POINTWISE_ENGINE, "input_grad", None)
        assert layer.backward(dy) is None
    assert np.array_equal(layer.grads["weight"], gw)
    assert dx.shape == x.shape
    with pytest.raises(TypeError, match="float64"):
        layer(x.astype(np.float64))


@pytest.mark.parametrize("kwargs, err", [
    (dict(padding="same", stride=2), ValueError), (dict(padding="bogus"), ValueError),
    (dict(groups=3), ValueError), (dict(kernel_size=0), ValueError),
    (dict(stride=0), ValueError), (dict(padding=-1), ValueError),
    (dict(dtype=np.int32), TypeError), (dict(kernel_size=2.5), TypeError),
])
def test_layer_bad_arguments(kwargs, err):
    args = dict(in_channels=4, out_channels=6, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(err):
        Conv2d(**args)


@pytest.mark.parametrize("n_filters", [31, 32, 33, 35, 64, 67])
def test_weight_grad_with_more_filters_than_a_slab(n_filters):
    """The weight gradient walks its filters in slabs (CONV_FW) of 3-filter blocks: a slab that
    was not a whole number of blocks wrote past the partial sums' rows (more than 30 filters:
    wrong sums, or a corrupted heap) and made dw differ between thread counts."""
    rng = np.random.default_rng(n_filters)
    x = rng.standard_normal((3, 3, 11, 10))
    w = rng.standard_normal((n_filters, 3, 3, 3))
    dy = rng.standard_normal((3, n_filters, 11, 10))
    expect = R.conv2d_backward_im2col(dy, x, w, padding=1)[1]
    runs = []
    for n in (1, 2):
        with num_threads(n):
            runs.append(F.conv2d_backward(dy, x, w, padding=1, need_dx=False,
                                          algorithm="direct")[1])
    assert_close(runs[0], expect, np.float64, scale=np.abs(expect).max())
    assert np.array_equal(runs[0], runs[1])


@pytest.mark.parametrize("cfg", [
    (2, 40, 7, 9, 36, 3, 1, 1, 1, 1),      # 360 reduction elements: three passes of CONV_KC
    (3, 33, 6, 5, 70, 3, 2, 1, 1, 1),      # strided, 70 filters (many 4-output blocks)
    (2, 150, 5, 6, 9, 1, 1, 0, 1, 1),      # 1x1 read in place, 150 channels (two passes)
    (2, 64, 6, 6, 64, 3, 1, 1, 1, 2),      # groups of 32 channels, 288 elements each
])
def test_long_reductions_and_many_outputs(cfg):
    """Shapes beyond the small grid: reductions longer than one KC pass of conv_rows, more
    outputs than one task's blocks, in float64 against the reference and bitwise across thread
    counts (both algorithms where Winograd applies)."""
    x, w, b, args = make(cfg, np.float64)
    expect_y = R.conv2d_im2col(x, w, b, **args)
    dy = np.random.default_rng(3).standard_normal(expect_y.shape)
    expect = R.conv2d_backward_im2col(dy, x, w, **args)
    algos = ["direct", "winograd"] if cfg[5:9] == (3, 1, 1, 1) else ["direct"]
    for algo in algos:
        runs = []
        for n in (1, 2):
            with num_threads(n):
                runs.append((F.conv2d(x, w, b, **args, algorithm=algo),)
                            + F.conv2d_backward(dy, x, w, **args, algorithm=algo))
        for got, exp, what in zip(runs[0], (expect_y,) + expect, "y dx dw db".split()):
            check(got, exp, np.float64, f"{algo} {what}")
        for a, e in zip(runs[0], runs[1]):
            assert np.array_equal(a, e), algo
