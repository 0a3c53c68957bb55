"""Pooling at the edges of its geometry, against PyTorch: the output-size rule (bug G: ceil_mode
windows longer than the padded input, numerators below zero) and windows that cover only
padding (bug F), over an exhaustive sweep of small configurations."""
import itertools

import numpy as np
import pytest

from helpers import torch_tensor
from nbconv import functional as F
from nbconv import reference as R
from nbconv._checks import conv_out_size, pool_out_size

torch = pytest.importorskip("torch")
T = torch.nn.functional


def _torch_raises(fn):
    try:
        fn()
    except RuntimeError:
        return True
    return False


# ---- the output-size rule, one axis --------------------------------------------------------

def test_pool_out_size_matches_torch_per_axis():
    """Every axis configuration (size 1..5, kernel 1..4, stride 1..4, padding 0..k//2, dilation
    1..3, ceil_mode both): nbconv's size equals torch's, and is < 1 exactly where torch
    raises."""
    x = {n: torch.zeros(1, 1, 1, n) for n in range(1, 6)}
    checked = refused = 0
    for n, k, s, d, ceil in itertools.product(range(1, 6), range(1, 5), range(1, 5), range(1, 4),
                                              (False, True)):
        for p in range(k // 2 + 1):
            out = pool_out_size(n, k, s, p, p, d, ceil)
            fn = lambda: T.max_pool2d(x[n], (1, k), (1, s), (0, p), (1, d), ceil_mode=ceil)  # noqa: E731,B023
            if _torch_raises(fn):
                assert out < 1, (n, k, s, p, d, ceil, out)
                refused += 1
            else:
                assert out == fn().shape[3], (n, k, s, p, d, ceil, out)
                checked += 1
    assert checked > 500 and refused > 300


def test_conv_out_size_unchanged():
    # conv keeps its rule: a window that does not fit gives 0, ceil_mode is pooling's
    assert conv_out_size(1, 2) == 0
    assert conv_out_size(5, 3, 2, 1) == 3
    assert conv_out_size(1, 2, 2, 0, 0, 1, True) == 1 == pool_out_size(1, 2, 2, 0, 0, 1, True)


# ---- bug G: accepted as torch does ---------------------------------------------------------

def test_ceil_mode_window_longer_than_input():
    x = np.full((1, 1, 1, 1), 5.0, np.float32)
    y, idx = F.max_pool2d(x, (1, 2), ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(y, [[[[5.0]]]])
    dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape, (1, 2), ceil_mode=True)
    np.testing.assert_array_equal(dx, [[[[1.0]]]])
    for cip in (True, False):
        np.testing.assert_array_equal(F.avg_pool2d(x, (1, 2), ceil_mode=True,
                                                   count_include_pad=cip), [[[[5.0]]]])
        np.testing.assert_array_equal(
            F.avg_pool2d_backward(np.ones_like(y), x.shape, (1, 2), ceil_mode=True,
                                  count_include_pad=cip), [[[[1.0]]]])
    with pytest.raises(ValueError, match="too small"):
        F.max_pool2d(x, (1, 2))  # without ceil_mode torch refuses too


# ---- bug F: a window over padding only ----------------------------------------------------

def test_max_pool_window_over_padding_only_passes_no_gradient():
    x = np.array([1.0, 2.0]).reshape(1, 1, 2, 1)
    kw = dict(kernel_size=(1, 2), padding=(0, 1), dilation=(1, 2))
    y, idx = F.max_pool2d(x, **kw, return_indices=True)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 1), -np.inf))
    dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape, **kw)
    # y does not depend on x: the gradient is 0 (torch 2.x's CPU kernel gives [0, 1] here: its
    # flat index of the padding tap lands on the next row)
    np.testing.assert_array_equal(dx, np.zeros_like(x))
    ry, ridx = R.max_pool2d_naive(x, **kw)
    np.testing.assert_array_equal(ridx, idx)
    np.testing.assert_array_equal(R.max_pool2d_backward_naive(np.ones_like(y), idx, x.shape, **kw),
                                  dx)
    np.testing.assert_array_equal(R.max_pool2d_backward(np.ones_like(y), idx, x.shape, **kw), dx)


def _padding_only_windows(shape, k, s, p, d, out):
    """Whether some window has no tap inside the input along an axis."""
    for a in range(2):
        for o in range(out[a]):
            start = o * s[a] - p[a]
            if not any(0 <= start + i * d[a] < shape[2 + a] for i in range(k[a])):
                return True
    return False


# ---- the sweep -----------------------------------------------------------------------------

# (kernel, padding) with padding <= kernel // 2; the same hyper-parameters on both axes keep
# the number of compiled window shapes small, sizes vary per axis
_KP = [(k, p) for k in (1, 2, 3) for p in range(k // 2 + 1)]
SWEEP = [(k, p, s, d) for (k, p) in _KP for s in (1, 2, 3) for d in (1, 2)]


@pytest.mark.parametrize("k,p,s,d", SWEEP, ids=[f"k{k}p{p}s{s}d{d}" for k, p, s, d in SWEEP])
def test_sweep_small_pools_against_torch(k, p, s, d):
    """H, W in 1..4 and ceil_mode both ways: where torch accepts the configuration nbconv
    matches it (max: values, indices, gradient; avg: values and gradient with
    count_include_pad both ways), and nbconv raises ValueError exactly where torch raises."""
    rng = np.random.default_rng(k * 1000 + p * 100 + s * 10 + d)
    compared = refused = 0
    for h, w, ceil in itertools.product(range(1, 5), range(1, 5), (False, True)):
        shape = (1, 2, h, w)
        x = rng.standard_normal(shape)
        x[0, 1] = np.round(x[0, 1])  # ties
        kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        xt = torch_tensor(x, requires_grad=True)
        try:
            yt, it = T.max_pool2d(xt, **kw, return_indices=True)
        except RuntimeError:
            with pytest.raises(ValueError, match="too small"):
                F.max_pool2d(x, **kw)
            with pytest.raises(ValueError, match="too small"):
                F.max_pool2d_backward(np.zeros((1, 2, 1, 1)), np.zeros((1, 2, 1, 1), np.uint8),
                                      shape, **kw)
            refused += 1
            continue
        compared += 1
        msg = str((shape, kw))
        y, idx = F.max_pool2d(x, **kw, return_indices=True)
        np.testing.assert_array_equal(y, yt.detach().numpy(), err_msg=msg)
        ry, ridx = R.max_pool2d(x, **kw)
        np.testing.assert_array_equal(y, ry, err_msg=msg)
        np.testing.assert_array_equal(idx, ridx, err_msg=msg)
        dy = rng.standard_normal(y.shape)
        dx = F.max_pool2d_backward(dy, idx, shape, **kw)
        np.testing.assert_allclose(dx, R.max_pool2d_backward(dy, ridx, shape, **kw),
                                   rtol=1e-12, atol=1e-12, err_msg=msg)
        if not _padding_only_windows(shape, (k, k), (s, s), (p, p), (d, d), y.shape[2:]):
            # torch misplaces the gradient of a window over padding only (bug F)
            yt.backward(torch_tensor(dy))
            np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=msg)
        if d != 1:
            continue
        for cip in (True, False):
            akw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip)
            xt = torch_tensor(x, requires_grad=True)
            yt = T.avg_pool2d(xt, **akw)
            yt.backward(torch_tensor(dy))
            np.testing.assert_allclose(F.avg_pool2d(x, **akw), yt.detach().numpy(),
                                       rtol=1e-12, atol=1e-12, err_msg=str((shape, akw)))
            np.testing.assert_allclose(F.avg_pool2d_backward(dy, shape, **akw), xt.grad.numpy(),
                                       rtol=1e-12, atol=1e-12, err_msg=str((shape, akw)))
            np.testing.assert_allclose(R.avg_pool2d(x, **akw), yt.detach().numpy(),
                                       rtol=1e-12, atol=1e-12, err_msg=str((shape, akw)))
    assert compared + refused == 32
