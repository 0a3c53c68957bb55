"""Property-based tests (hypothesis): random shapes and arguments for conv2d, max_pool2d,
avg_pool2d, group_norm and batch_norm2d against PyTorch, forward and every gradient, float32 and
float64.

Budget: the profile loaded in ``tests/conftest.py`` ("ci": a fixed, derandomised number of
examples per test; ``NBCONV_HYPOTHESIS=thorough`` or ``--hypothesis-profile=thorough`` for a
long search). Inputs are finite (standard normal, sometimes rounded to integers to make ties);
PyTorch runs in float64 on the same values, and float32 results are compared with a tolerance
scaled by the size of the sums. Shapes are small: the fast pooling kernels compile once per
window size and stride, so windows and strides stay in 1..3. Every counterexample found is
pinned as a fixed case in ``tests/test_regressions.py``.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from helpers import DTYPES
from nbconv import functional as F

torch = pytest.importorskip("torch")
T = torch.nn.functional


def _t(a, grad=False):
    t = torch.from_numpy(np.array(a, dtype=np.float64, copy=True))
    return t.requires_grad_(grad)


def _np(t):
    return t.detach().numpy()


def _close(actual, expected, dtype, terms=1, what=""):
    """float64: tight; float32: relative to the magnitudes and the number of summed terms."""
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if np.dtype(dtype) == np.float64:
        tol = 1e-9
    else:
        tol = 2e-6 * (4 + np.sqrt(terms))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)
    assert actual.dtype == np.dtype(dtype), what


def _values(rng, shape, dtype, ties):
    a = rng.standard_normal(shape) * 2
    if ties:
        a = np.round(a)
    return a.astype(dtype)


seeds = st.integers(0, 2**32 - 1)
pair = st.tuples(st.integers(1, 3), st.integers(1, 3))


# ---- conv2d --------------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = groups > 1 and draw(st.booleans())
    cin = groups * (1 if depthwise else draw(st.integers(1, 3)))
    f = groups * draw(st.integers(1, 2 if depthwise else 3))
    k = draw(pair)
    s = draw(pair)
    d = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    p = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 8))
    w = draw(st.integers(1, 8))
    assume(h + 2 * p[0] >= d[0] * (k[0] - 1) + 1 and w + 2 * p[1] >= d[1] * (k[1] - 1) + 1)
    bias = draw(st.booleans())
    return dict(x=(n, cin, h, w), w=(f, cin // groups) + k, bias=bias,
                kw=dict(stride=s, padding=p, dilation=d, groups=groups))


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=conv_cases(), seed=seeds)
def test_conv2d_against_torch(dtype, case, seed):
    rng = np.random.default_rng(seed)
    x = _values(rng, case["x"], dtype, False)
    wt = _values(rng, case["w"], dtype, False)
    b = _values(rng, case["w"][:1], dtype, False) if case["bias"] else None
    kw = case["kw"]
    what = str(case)
    y = F.conv2d(x, wt, b, **kw)
    xt, wtt = _t(x, True), _t(wt, True)
    bt = _t(b, True) if b is not None else None
    yt = T.conv2d(xt, wtt, bt, **kw)
    terms = int(np.prod(case["w"][1:]))
    _close(y, _np(yt), dtype, terms, what)
    dy = _values(rng, y.shape, dtype, False)
    yt.backward(_t(dy))
    dx, dw, db = F.conv2d_backward(dy, x, wt, **kw)
    _close(dx, _np(xt.grad), dtype, terms * y.shape[1], what + " dx")
    _close(dw, _np(wtt.grad), dtype, int(np.prod(y.shape)) // y.shape[1], what + " dw")
    if b is not None:
        _close(db, _np(bt.grad), dtype, int(np.prod(y.shape)) // y.shape[1], what + " db")
    np.testing.assert_array_equal(x, _values(np.random.default_rng(seed), case["x"], dtype, False))


# ---- pooling -------------------------------------------------------------------------------

@st.composite
def pool_cases(draw, dilation):
    k = draw(pair)
    s = draw(st.one_of(st.none(), pair))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = draw(st.tuples(st.integers(1, 2), st.integers(1, 2))) if dilation else (1, 1)
    ceil = draw(st.booleans())
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 7)),
             draw(st.integers(1, 7)))
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil)
    if dilation:
        kw["dilation"] = d
    return shape, kw


def _torch_accepts(fn):
    try:
        return fn()
    except RuntimeError:
        return None


def _over_padding_only(shape, kw, out):
    k, p = kw["kernel_size"], kw["padding"]
    s = kw["stride"] or k
    d = kw.get("dilation", (1, 1))
    return any(not any(0 <= o * s[a] - p[a] + i * d[a] < shape[2 + a] for i in range(k[a]))
               for a in range(2) for o in range(out[a]))


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases(dilation=True), seed=seeds, ties=st.booleans())
def test_max_pool2d_against_torch(dtype, case, seed, ties):
    shape, kw = case
    rng = np.random.default_rng(seed)
    x = _values(rng, shape, dtype, ties)
    xt = _t(x, True)
    res = _torch_accepts(lambda: T.max_pool2d(xt, **kw, return_indices=True))
    if res is None:  # torch refuses: so does nbconv, with a ValueError
        with pytest.raises(ValueError, match="too small"):
            F.max_pool2d(x, **kw)
        return
    yt, it = res
    y, idx = F.max_pool2d(x, **kw, return_indices=True)
    what = str(case)
    np.testing.assert_array_equal(y, _np(yt).astype(dtype), err_msg=what)
    dy = _values(rng, y.shape, dtype, False)
    dx = F.max_pool2d_backward(dy, idx, shape, **kw)
    if _over_padding_only(shape, kw, y.shape[2:]):
        return  # torch misplaces the gradient there (bug F); tests/test_pool_sweep.py
    k, p = kw["kernel_size"], kw["padding"]
    s = kw["stride"] or k
    d = kw["dilation"]
    oh = np.arange(y.shape[2])[:, None]
    ow = np.arange(y.shape[3])[None, :]
    i, j = idx.astype(np.int64) // k[1], idx.astype(np.int64) % k[1]
    flat = (oh * s[0] - p[0] + i * d[0]) * shape[3] + ow * s[1] - p[1] + j * d[1]
    np.testing.assert_array_equal(flat, _np(it), err_msg=what + " indices")
    yt.backward(_t(dy))
    _close(dx, _np(xt.grad), dtype, 9, what + " dx")


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases(dilation=False), seed=seeds, count_include_pad=st.booleans())
def test_avg_pool2d_against_torch(dtype, case, seed, count_include_pad):
    shape, kw = case
    kw = dict(kw, count_include_pad=count_include_pad)
    rng = np.random.default_rng(seed)
    x = _values(rng, shape, dtype, False)
    xt = _t(x, True)
    yt = _torch_accepts(lambda: T.avg_pool2d(xt, **kw))
    if yt is None:
        with pytest.raises(ValueError, match="too small"):
            F.avg_pool2d(x, **kw)
        return
    what = str(kw) + str(shape)
    y = F.avg_pool2d(x, **kw)
    _close(y, _np(yt), dtype, 9, what)
    dy = _values(rng, y.shape, dtype, False)
    yt.backward(_t(dy))
    _close(F.avg_pool2d_backward(dy, shape, **kw), _np(xt.grad), dtype, 9, what + " dx")


# ---- normalisation -------------------------------------------------------------------------

@st.composite
def norm_shapes(draw):
    return (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 5)),
            draw(st.integers(1, 5)))


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=norm_shapes(), data=st.data(), seed=seeds, affine=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-3, 0.1]))
def test_group_norm_against_torch(dtype, shape, data, seed, affine, eps):
    c = shape[1]
    g = data.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]), "num_groups")
    # torch refuses N * (C/G) * H * W == 1 ("more than 1 value per channel"), batch norm's rule;
    # nbconv normalises such groups of one value (to the bias)
    assume(shape[0] * (c // g) * shape[2] * shape[3] > 1)
    rng = np.random.default_rng(seed)
    x = _values(rng, shape, dtype, False) + dtype(data.draw(st.sampled_from([0, 3]), "offset"))
    w = _values(rng, (c,), dtype, False) if affine else None
    b = _values(rng, (c,), dtype, False) if affine else None
    y, mean, rstd = F.group_norm(x, g, w, b, eps=eps, return_stats=True)
    xt = _t(x, True)
    wt, bt = (_t(w, True), _t(b, True)) if affine else (None, None)
    yt = T.group_norm(xt, g, wt, bt, eps=eps)
    m = int(np.prod(shape[2:])) * (c // g)
    what = str((shape, g, affine, eps))
    # float32 error grows with rstd (1/sqrt(var + eps)) for near-constant groups
    cond = float(np.max(rstd)) * (1 + float(np.max(np.abs(x))))
    _close(y, _np(yt), dtype, m * cond, what)
    dy = _values(rng, shape, dtype, False)
    yt.backward(_t(dy))
    dx, dw, db = F.group_norm_backward(dy, x, mean, rstd, g, w)
    _close(dx, _np(xt.grad), dtype, m * cond ** 2, what + " dx")
    if affine:
        _close(dw, _np(wt.grad), dtype, shape[0] * m * cond, what + " dw")
        _close(db, _np(bt.grad), dtype, shape[0] * m, what + " db")


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=norm_shapes(), seed=seeds, affine=st.booleans(), training=st.booleans(),
       running=st.booleans(), momentum=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       eps=st.sampled_from([1e-5, 1e-3]))
def test_batch_norm2d_against_torch(dtype, shape, seed, affine, training, running, momentum,
                                    eps):
    n, c, h, w_ = shape
    if training:
        assume(n * h * w_ > 1)
    else:
        running = True
    rng = np.random.default_rng(seed)
    x = _values(rng, shape, dtype, False)
    w = _values(rng, (c,), dtype, False) if affine else None
    b = _values(rng, (c,), dtype, False) if affine else None
    rm = _values(rng, (c,), dtype, False) if running else None
    rv = (rng.random(c) + 0.5).astype(dtype) if running else None
    rmt = _t(rm) if running else None
    rvt = _t(rv) if running else None
    y, mean, rstd = F.batch_norm2d(x, rm, rv, w, b, training=training, momentum=momentum,
                                   eps=eps, return_stats=True)
    xt = _t(x, True)
    wt, bt = (_t(w, True), _t(b, True)) if affine else (None, None)
    yt = T.batch_norm(xt, rmt, rvt, wt, bt, training=training, momentum=momentum, eps=eps)
    L = n * h * w_
    what = str((shape, affine, training, running, momentum, eps))
    cond = float(np.max(rstd)) * (1 + float(np.max(np.abs(x))))
    _close(y, _np(yt), dtype, L * cond, what)
    if running:
        _close(rm, _np(rmt), dtype, L, what + " running_mean")
        _close(rv, _np(rvt), dtype, L, what + " running_var")
    dy = _values(rng, shape, dtype, False)
    yt.backward(_t(dy))
    dx, dw, db = F.batch_norm2d_backward(dy, x, mean, rstd, w, training=training)
    _close(dx, _np(xt.grad), dtype, L * cond ** 2, what + " dx")
    if affine:
        _close(dw, _np(wt.grad), dtype, L * cond, what + " dw")
        _close(db, _np(bt.grad), dtype, L, what + " db")
