"""The textbook kernels (nbconv.textbook / nbconv.kernels.textbook) against nbconv.reference and
PyTorch: forward and every gradient, float32 and float64, over a small grid (odd sizes, N=1,
1x1, stride > kernel, padding, dilation, groups, ceil_mode, count_include_pad), plus finite
differences, non-finite values, thread-count invariance and argument errors. Shapes are tiny:
the textbook loops are slow by design."""
import numpy as np
import pytest
import torch

from nbconv import reference as R
from nbconv import textbook as T
from helpers import DTYPES, assert_close, num_threads, numeric_grad, to_numpy, torch_tensor

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")
TF = torch.nn.functional

# ---- conv -----------------------------------------------------------------------------------
# (N, C, H, W, F, kernel, stride, padding, dilation, groups)
CONV_CFGS = [
    (2, 3, 7, 9, 4, 3, 1, 1, 1, 1),                      # odd sizes, padding
    (1, 4, 5, 5, 6, 1, 1, 0, 1, 1),                      # N=1, 1x1
    (2, 4, 9, 8, 3, 2, 3, 0, 1, 1),                      # stride > kernel
    (2, 2, 6, 7, 3, 1, 2, 1, 1, 1),                      # 1x1 strided and padded
    (2, 4, 8, 7, 6, (3, 2), (2, 1), (2, 1), (2, 1), 2),  # pairs, dilation, groups
    (2, 4, 7, 6, 8, 3, 2, 1, 1, 4),                      # depthwise, multiplier 2
    (1, 3, 6, 7, 2, 4, 1, "same", 1, 1),                 # even kernel: extra pad bottom/right
    (2, 2, 5, 4, 3, 3, 1, "full", 2, 1),                 # 'full' with dilation
    (1, 2, 5, 5, 3, 3, 3, 4, 1, 1),                      # padding > kernel: dead border outputs
    (1, 2, 1, 4, 3, 1, 3, 2, 1, 1),                      # no input under any tap: dx = 0
]
CONV_IDS = [f"cfg{i}" for i in range(len(CONV_CFGS))]


def conv_data(cfg, dtype, seed=0):
    N, C, H, W, Fn, k, s, p, d, g = cfg
    kh, kw = k if isinstance(k, tuple) else (k, k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Fn, C // g, kh, kw)).astype(dtype)
    b = rng.standard_normal(Fn).astype(dtype)
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


def torch_conv(x, w, b, args, dy):
    """torch's y, dx, dweight, dbias (float64 inputs)."""
    if args["padding"] == "full":  # torch has no 'full': dilation * (k - 1) on each side
        d = args["dilation"] if isinstance(args["dilation"], tuple) else (args["dilation"],) * 2
        args = dict(args, padding=(d[0] * (w.shape[2] - 1), d[1] * (w.shape[3] - 1)))
    xt, wt, bt = (torch_tensor(a, True) for a in (x, w, b))
    y = TF.conv2d(xt, wt, bt, **args)
    grads = torch.autograd.grad(y, (xt, wt, bt), torch_tensor(dy))
    return (to_numpy(y),) + tuple(t.numpy() for t in grads)


def check(actual, expected, dtype, what):
    assert actual.dtype == np.dtype(dtype), what
    assert_close(actual, expected.astype(dtype), dtype,
                 scale=max(1.0, float(np.abs(expected).max())), err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONV_CFGS, ids=CONV_IDS)
def test_conv_matches_reference_and_torch(cfg, dtype):
    x, w, b, args = conv_data(cfg, dtype)
    x0, w0, b0 = x.copy(), w.copy(), b.copy()
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    y = T.conv2d(x, w, b, **args)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx, dw, db = T.conv2d_backward(dy, x, w, **args)
    for a, a0 in ((x, x0), (w, w0), (b, b0)):
        np.testing.assert_array_equal(a, a0)   # the caller's arrays are never written

    dy64 = dy.astype(np.float64)
    check(y, R.conv2d_naive(x64, w64, b64, **args), dtype, "y vs naive")
    naive = R.conv2d_backward_naive(dy64, x64, w64, **args)
    tor = torch_conv(x64, w64, b64, args, dy64)
    check(y, tor[0], dtype, "y vs torch")
    for name, a, r, t in zip(("dx", "dweight", "dbias"), (dx, dw, db), naive, tor[1:]):
        check(a, r, dtype, f"{name} vs naive")
        check(a, t, dtype, f"{name} vs torch")


def test_conv_without_bias_and_same_results_as_functional():
    """bias=None is a zero bias; and the textbook twin agrees with the fast op (float64)."""
    import nbconv.functional as F
    x, w, b, args = conv_data(CONV_CFGS[4], np.float64)
    y = T.conv2d(x, w, None, **args)
    assert_close(y, F.conv2d(x, w, None, **args))
    assert_close(T.conv2d(x, w, b, **args), y + b[None, :, None, None])
    dy = np.random.default_rng(3).standard_normal(y.shape)
    for a, e in zip(T.conv2d_backward(dy, x, w, **args), F.conv2d_backward(dy, x, w, **args)):
        assert_close(a, e)


def test_conv_finite_differences():
    x, w, b, args = conv_data((1, 2, 5, 4, 2, 3, 2, 1, 1, 1), np.float64)
    dy = np.random.default_rng(2).standard_normal(T.conv2d(x, w, b, **args).shape)
    loss = lambda: float((T.conv2d(x, w, b, **args) * dy).sum())  # noqa: E731
    dx, dw, db = T.conv2d_backward(dy, x, w, **args)
    for a, v in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(a, numeric_grad(loss, v), rtol=1e-6, atol=1e-7)


def test_conv_inf_in_unread_pixel_does_not_leak():
    """Column 5 of a width-6 input is read by no output of a 3-wide, stride-2 window: an inf
    there must leave y, dx (elsewhere) and dweight finite, as in torch."""
    x, w, b, args = conv_data((1, 2, 5, 6, 3, 3, 2, 0, 1, 1), np.float64)
    x[0, 1, 2, 5] = np.inf
    y = T.conv2d(x, w, b, **args)
    assert y.shape[3] == 2 and np.isfinite(y).all()
    dy = np.ones_like(y)
    dx, dw, db = T.conv2d_backward(dy, x, w, **args)
    assert np.isfinite(dw).all() and np.isfinite(dx).all()
    tor = torch_conv(x, w, b, args, dy)
    for a, t in zip((y, dx, dw, db), tor):
        assert_close(a, t, scale=10)
    # and one that is read does reach the output, as in torch
    x[0, 1, 2, 5] = 0
    x[0, 1, 2, 4] = np.inf
    assert not np.isfinite(T.conv2d(x, w, b, **args)).all()


# ---- pool -----------------------------------------------------------------------------------
# (kernel_size, stride, padding, dilation, ceil_mode)
MAX_CFGS = [
    (2, None, 0, 1, False),
    (3, 2, 1, 1, True),                     # padding, ceil_mode overhang
    (3, 1, 1, 1, False),                    # overlap
    (3, 3, 1, 2, True),                     # dilation
    ((3, 2), (2, 1), (1, 1), (1, 2), False),
    (1, 2, 0, 1, False),                    # 1x1, stride > kernel
    (2, 3, 1, 1, True),                     # stride > kernel, padded
]
# (kernel_size, stride, padding, ceil_mode), each with count_include_pad True and False
AVG_CFGS = [(2, None, 0, False), (3, 2, 1, True), (3, 1, 1, False), ((3, 2), (2, 1), (1, 1), True),
            ((2, 4), (3, 2), (1, 2), True), (1, 2, 0, False), (2, 3, 1, True)]
POOL_SHAPES = [(2, 3, 9, 11), (1, 2, 8, 7)]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("cfg", MAX_CFGS)
def test_max_pool_matches_reference_and_torch(cfg, shape, dtype):
    k, s, p, d, ceil = cfg
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 1, :] = x[0, 0, 0, :]            # ties: the first maximum wins
    y, idx = T.max_pool2d(x, **kw, return_indices=True)
    ry, _ = R.max_pool2d_naive(x, **kw)
    np.testing.assert_array_equal(y, ry)
    xt = torch_tensor(x, True)
    ty, tidx = TF.max_pool2d(xt, **kw, return_indices=True)
    np.testing.assert_array_equal(y, to_numpy(ty))
    np.testing.assert_array_equal(idx, tidx.numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = T.max_pool2d_backward(dy, idx, shape)
    (tdx,) = torch.autograd.grad(ty, xt, torch_tensor(dy))
    assert_close(dx, tdx.numpy())
    rdx = R.max_pool2d_backward_naive(dy, R.max_pool2d_naive(x, **kw)[1], shape, **kw)
    assert_close(dx, rdx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_nan_and_inf_as_torch(dtype):
    x = np.random.default_rng(4).standard_normal((1, 2, 6, 6)).astype(dtype)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 1, 2] = np.nan
    x[0, 1, 3, 3] = np.inf
    x[0, 1, 0, 0] = -np.inf
    y, idx = T.max_pool2d(x, 3, 2, 1, return_indices=True)
    ty, tidx = TF.max_pool2d(torch_tensor(x), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("cip", [True, False])
@pytest.mark.parametrize("cfg", AVG_CFGS)
def test_avg_pool_matches_reference_and_torch(cfg, cip, shape, dtype):
    k, s, p, ceil = cfg
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    y = T.avg_pool2d(x, **kw)
    assert_close(y, R.avg_pool2d_naive(x, **kw))
    xt = torch_tensor(x, True)
    ty = TF.avg_pool2d(xt, **kw)
    assert_close(y, to_numpy(ty))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = T.avg_pool2d_backward(dy, shape, **kw)
    assert_close(dx, R.avg_pool2d_backward_naive(dy, shape, **kw))
    (tdx,) = torch.autograd.grad(ty, xt, torch_tensor(dy))
    assert_close(dx, tdx.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    y = T.global_avg_pool2d(x)
    assert_close(y, R.global_avg_pool2d(x))
    assert_close(y, x.astype(np.float64).mean(axis=(2, 3)).astype(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(T.global_avg_pool2d_backward(dy, x.shape),
                 R.global_avg_pool2d_backward(dy, x.shape))


def test_pool_finite_differences():
    x = np.random.default_rng(5).standard_normal((1, 2, 5, 6))
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    dy = np.random.default_rng(6).standard_normal(T.avg_pool2d(x, **kw).shape)
    loss = lambda: float((T.avg_pool2d(x, **kw) * dy).sum())  # noqa: E731
    np.testing.assert_allclose(T.avg_pool2d_backward(dy, x.shape, **kw), numeric_grad(loss, x),
                               rtol=1e-6, atol=1e-8)
    y, idx = T.max_pool2d(x, 3, 2, 1, return_indices=True)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    loss = lambda: float((T.max_pool2d(x, 3, 2, 1) * dy).sum())  # noqa: E731
    np.testing.assert_allclose(T.max_pool2d_backward(dy, idx, x.shape), numeric_grad(loss, x),
                               rtol=1e-6, atol=1e-8)


# ---- norm -----------------------------------------------------------------------------------
# (shape, num_groups): layer norm (G=1), instance norm (G=C), N=1, 1x1 spatial, odd sizes
GN_CASES = [((2, 6, 5, 4), 1), ((2, 6, 5, 4), 3), ((2, 6, 5, 4), 6), ((1, 4, 1, 1), 2),
            ((3, 5, 3, 7), 5)]
BN_SHAPES = [(2, 3, 5, 4), (4, 5, 1, 1), (1, 2, 3, 7)]


def norm_data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(shape[1]).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    return x, dy, w, b


def torch_run(fn, x, dy, w, b):
    tx, tw, tb = (torch_tensor(a, True) for a in (x, w, b))
    ty = fn(tx, tw, tb)
    ty.backward(torch_tensor(dy))
    return to_numpy(ty), to_numpy(tx.grad), to_numpy(tw.grad), to_numpy(tb.grad)


def check_norm(got, ref, tor):
    for name, a, r, t, sc in zip(("y", "dx", "dweight", "dbias"), got, ref, tor, (5, 5, 20, 20)):
        assert_close(a, r, scale=sc, err_msg=f"{name} vs reference")
        assert_close(a, t, scale=sc, err_msg=f"{name} vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G", GN_CASES)
def test_group_norm_matches_reference_and_torch(shape, G, dtype):
    x, dy, w, b = norm_data(shape, dtype)
    y, mean, rstd = T.group_norm(x, G, w, b, return_stats=True)
    assert mean.shape == rstd.shape == (shape[0], G) and mean.dtype == np.float64
    grads = T.group_norm_backward(dy, x, mean, rstd, G, w)
    assert all(a.dtype == np.dtype(dtype) for a in (y,) + grads)
    ref = (R.group_norm_naive(x, G, w, b),) + R.group_norm_backward(dy, x, G, w)
    tor = torch_run(lambda a, c, d: TF.group_norm(a, G, c, d), x, dy, w, b)
    check_norm((y,) + grads, ref, tor)
    assert_close(T.group_norm(x, G), R.group_norm(x, G), scale=5)   # no affine


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_train_matches_reference_and_torch(shape, dtype):
    x, dy, w, b = norm_data(shape, dtype)
    C = shape[1]
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    y, mean, rstd = T.batch_norm2d(x, rm, rv, w, b, True, 0.2, return_stats=True)
    grads = T.batch_norm2d_backward(dy, x, mean, rstd, w, True)
    rrm, rrv = np.zeros(C, dtype), np.ones(C, dtype)
    ref = (R.batch_norm2d(x, rrm, rrv, w, b, True, 0.2),) + R.batch_norm2d_backward(dy, x, w)
    trm, trv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    tor = torch_run(lambda a, c, d: TF.batch_norm(a.double(), trm, trv, c.double(), d.double(),
                                                  True, 0.2).to(a.dtype), x, dy, w, b)
    check_norm((y,) + grads, ref, tor)
    assert_close(rm, rrm, scale=5)
    assert_close(rv, rrv, scale=5)
    assert_close(rm, trm.numpy().astype(dtype), scale=5)
    assert_close(rv, trv.numpy().astype(dtype), scale=5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_eval_matches_reference_and_torch(shape, dtype):
    x, dy, w, b = norm_data(shape, dtype)
    C = shape[1]
    rng = np.random.default_rng(9)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    y, mean, rstd = T.batch_norm2d(x, rm, rv, w, b, False, return_stats=True)
    grads = T.batch_norm2d_backward(dy, x, mean, rstd, w, False)
    ref = (R.batch_norm2d(x, rm, rv, w, b, False),) + R.batch_norm2d_backward(dy, x, w, False,
                                                                               rm, rv)
    trm, trv = torch_tensor(rm), torch_tensor(rv)
    tor = torch_run(lambda a, c, d: TF.batch_norm(a, trm, trv, c, d, False), x, dy, w, b)
    check_norm((y,) + grads, ref, tor)


@pytest.mark.parametrize("op", ["group", "batch"])
def test_norm_finite_differences(op):
    x, dy, w, b = norm_data((2, 4, 3, 2), np.float64)
    if op == "group":
        fwd = lambda: T.group_norm(x, 2, w, b)  # noqa: E731
        _, m, r = T.group_norm(x, 2, w, b, return_stats=True)
        grads = T.group_norm_backward(dy, x, m, r, 2, w)
    else:
        fwd = lambda: T.batch_norm2d(x, None, None, w, b, True)  # noqa: E731
        _, m, r = T.batch_norm2d(x, None, None, w, b, True, return_stats=True)
        grads = T.batch_norm2d_backward(dy, x, m, r, w, True)
    loss = lambda: float((fwd() * dy).sum())  # noqa: E731
    for a, v in zip(grads, (x, w, b)):
        np.testing.assert_allclose(a, numeric_grad(loss, v), rtol=1e-6, atol=1e-7)


# ---- every op: bitwise the same for 1 and 2 threads; argument errors -------------------------

def _all_ops(x, w, b, dtype):
    args = dict(stride=2, padding=1, dilation=1, groups=2)
    y = T.conv2d(x, w, b, **args)
    dy = np.random.default_rng(8).standard_normal(y.shape).astype(dtype)
    out = [y, *T.conv2d_backward(dy, x, w, **args)]
    y, idx = T.max_pool2d(x, 3, 2, 1, return_indices=True)
    out += [y, idx, T.max_pool2d_backward(y, idx, x.shape)]
    y = T.avg_pool2d(x, 3, 2, 1, True, False)
    out += [y, T.avg_pool2d_backward(y, x.shape, 3, 2, 1, True, False)]
    y, m, r = T.group_norm(x, 2, return_stats=True)
    out += [y, m, r, *T.group_norm_backward(x, x, m, r, 2)]
    y, m, r = T.batch_norm2d(x, training=True, return_stats=True)
    out += [y, m, r, *T.batch_norm2d_backward(x, x, m, r)]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_invariance(dtype):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 4, 9, 7)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    with num_threads(1):
        one = _all_ops(x, w, b, dtype)
    with num_threads(2):
        two = _all_ops(x, w, b, dtype)
    for a, c in zip(one, two):
        np.testing.assert_array_equal(a, c)


def test_bad_arguments():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((4, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match="x has dtype float64"):
        T.conv2d(x.astype(np.float64), w)
    with pytest.raises(ValueError, match="expects 4 input channels"):
        T.conv2d(x, w, groups=2)
    with pytest.raises(ValueError, match="padding='same'"):
        T.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be >= 0"):
        T.conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="too small"):
        T.conv2d(x, np.zeros((4, 2, 7, 7), np.float32))
    with pytest.raises(ValueError, match="bias must have shape"):
        T.conv2d(x, w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="dy must have shape"):
        T.conv2d_backward(np.zeros((1, 4, 2, 2), np.float32), x, w)
    with pytest.raises(ValueError, match="at most half"):
        T.max_pool2d(x, 2, padding=2)
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        T.avg_pool2d(x, 2, ceil_mode=1)
    with pytest.raises(ValueError, match="indices must lie in"):
        T.max_pool2d_backward(np.zeros((1, 2, 2, 2), np.float32),
                              np.full((1, 2, 2, 2), 25), x.shape)
    with pytest.raises(ValueError, match="num_groups"):
        T.group_norm(x, 3)
    with pytest.raises(ValueError, match="more than 1 value"):
        T.batch_norm2d(np.zeros((1, 2, 1, 1)), training=True)
    with pytest.raises(ValueError, match="required when training=False"):
        T.batch_norm2d(x)


def test_batch_norm_checks_both_running_stats_before_writing():
    """A writable running_mean with a read-only running_var: the textbook twin refuses before
    updating either (as nbconv.functional.batch_norm2d; it used to update the mean first)."""
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    rm, rv = np.zeros(3), np.ones(3)
    rv.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        T.batch_norm2d(x, rm, rv, training=True)
    assert np.array_equal(rm, np.zeros(3))
