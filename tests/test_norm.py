"""GroupNorm and BatchNorm2d: kernels against nbconv.reference and torch, gradients, running
statistics, numerical stability, errors, thread-count invariance."""
import numpy as np
import pytest
import torch

import nbconv.functional as F
from nbconv import reference as R
from nbconv.layers import BatchNorm2d, GroupNorm
from helpers import (DTYPES, assert_close, assert_same_bits_wherever, non_contiguous,
                     num_threads, numeric_grad, to_numpy, torch_tensor)

# (shape, num_groups): layer norm (G=1), instance norm (G=C), N=1, 1x1 spatial, odd sizes
GN_CASES = [((2, 6, 5, 4), 1), ((2, 6, 5, 4), 2), ((2, 6, 5, 4), 3), ((2, 6, 5, 4), 6),
            ((1, 4, 1, 1), 2), ((3, 8, 7, 3), 4), ((1, 3, 9, 1), 1),
            # >= 32 rows (N*G) or channels: tasks own blocks of several, the last one partial
            ((7, 10, 2, 3), 10), ((8, 16, 3, 2), 4)]
BN_SHAPES = [(2, 3, 5, 4), (4, 5, 1, 1), (1, 2, 3, 7), (3, 8, 6, 6), (2, 70, 2, 3)]


def _data(rng, shape, dtype, scale=2.0, offset=1.0):
    x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(shape[1]).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    return x, dy, w, b


def _torch_run(fn, x, dy, w, b):
    """Torch forward + backward of ``fn(tx, tw, tb)``: returns y, dx, dw, db (None if absent)."""
    tx = torch_tensor(x, True)
    tw = None if w is None else torch_tensor(w, True)
    tb = None if b is None else torch_tensor(b, True)
    ty = fn(tx, tw, tb)
    ty.backward(torch_tensor(dy))
    grad = lambda t: None if t is None else to_numpy(t.grad)  # noqa: E731
    return to_numpy(ty), to_numpy(tx.grad), grad(tw), grad(tb)


# ---- GroupNorm -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape,G", GN_CASES)
def test_group_norm_matches_reference_and_torch(rng, shape, G, affine, dtype):
    x, dy, w, b = _data(rng, shape, dtype)
    if not affine:
        w = b = None
    x0, dy0 = x.copy(), dy.copy()
    y, mean, rstd = F.group_norm(x, G, w, b, return_stats=True)
    dx, dw, db = F.group_norm_backward(dy, x, mean, rstd, G, w)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.dtype(dtype)
    assert mean.shape == rstd.shape == (shape[0], G)

    assert_close(y, R.group_norm(x, G, w, b), scale=5)
    assert_close(y, R.group_norm_naive(x, G, w, b), scale=5)
    rdx, rdw, rdb = R.group_norm_backward(dy, x, G, w)
    assert_close(dx, rdx, scale=5)
    assert_close(dw, rdw, scale=20)
    assert_close(db, rdb, scale=20)

    ty, tdx, tdw, tdb = _torch_run(lambda a, c, d: torch.nn.functional.group_norm(a, G, c, d),
                                   x, dy, w, b)
    assert_close(y, ty, scale=5)
    assert_close(dx, tdx, scale=5)
    if affine:
        assert_close(dw, tdw, scale=20)
        assert_close(db, tdb, scale=20)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_layer_matches_torch_module(rng, dtype):
    shape, G = (3, 6, 4, 5), 3
    x, dy, w, b = _data(rng, shape, dtype)
    layer = GroupNorm(G, 6, dtype=dtype)
    layer.params["weight"][...] = w
    layer.params["bias"][...] = b
    mod = torch.nn.GroupNorm(G, 6).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        mod.weight.copy_(torch_tensor(w))
        mod.bias.copy_(torch_tensor(b))
    for _ in range(2):  # a second step must not depend on the first
        y = layer(x)
        dx = layer.backward(dy)
        tx = torch_tensor(x, True)
        mod.zero_grad()
        ty = mod(tx)
        ty.backward(torch_tensor(dy))
        assert_close(y, to_numpy(ty), scale=5)
        assert_close(dx, to_numpy(tx.grad), scale=5)
        assert_close(layer.grads["weight"], to_numpy(mod.weight.grad), scale=20)
        assert_close(layer.grads["bias"], to_numpy(mod.bias.grad), scale=20)
    layer.eval()  # no effect on GroupNorm
    np.testing.assert_array_equal(layer(x), y)


def test_group_norm_large_offset_float32(rng):
    """1e4 + randn in float32 normalises to float32 precision (a one-pass float32 variance
    would lose it all; torch is off by about 1e-3 here)."""
    shape, G = (8, 8, 8, 8), 4   # 32 rows: blocks of 2 (the pipelined path)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(8).astype(np.float32)
    y, mean, rstd = F.group_norm(x, G, w, None, return_stats=True)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, R.group_norm(x64, G, w.astype(np.float64)), rtol=0, atol=2e-5)
    dx, dw, db = F.group_norm_backward(dy, x, mean, rstd, G, w)
    rdx, rdw, rdb = R.group_norm_backward(dy.astype(np.float64), x64, G, w.astype(np.float64))
    np.testing.assert_allclose(dx, rdx, rtol=0, atol=2e-5)
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(db, rdb, rtol=1e-4, atol=1e-3)


def test_group_norm_finite_differences(rng):
    shape, G = (2, 4, 3, 2), 2
    x, dy, w, b = _data(rng, shape, np.float64)
    layer = GroupNorm(G, 4, dtype=np.float64)
    layer.params["weight"][...] = w
    layer.params["bias"][...] = b
    loss = lambda: float((layer(x) * dy).sum())  # noqa: E731
    layer(x)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    for k in ("weight", "bias"):
        np.testing.assert_allclose(layer.grads[k], numeric_grad(loss, layer.params[k]),
                                   rtol=1e-6, atol=1e-7)


# ---- BatchNorm2d -----------------------------------------------------------------------------

def _torch_bn(dtype, C, **kw):
    return torch.nn.BatchNorm2d(C, **kw).to(torch.float64 if dtype == np.float64 else torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_train_matches_reference_and_torch(rng, shape, affine, dtype):
    x, dy, w, b = _data(rng, shape, dtype)
    if not affine:
        w = b = None
    C = shape[1]
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    x0, dy0 = x.copy(), dy.copy()
    rm_ref, rv_ref = rm.copy(), rv.copy()
    trm, trv = torch_tensor(rm), torch_tensor(rv)
    y, mean, rstd = F.batch_norm2d(x, rm, rv, w, b, True, 0.2, 1e-5, return_stats=True)
    dx, dw, db = F.batch_norm2d_backward(dy, x, mean, rstd, w, True)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)

    assert_close(y, R.batch_norm2d(x, rm_ref, rv_ref, w, b, True, 0.2), scale=5)
    assert_close(rm, rm_ref)
    assert_close(rv, rv_ref)
    rdx, rdw, rdb = R.batch_norm2d_backward(dy, x, w, True)
    assert_close(dx, rdx, scale=5)
    assert_close(dw, rdw, scale=20)
    assert_close(db, rdb, scale=20)

    ty, tdx, tdw, tdb = _torch_run(
        lambda a, c, d: torch.nn.functional.batch_norm(a, trm, trv, c, d, True, 0.2, 1e-5),
        x, dy, w, b)
    assert_close(y, ty, scale=5)
    assert_close(rm, to_numpy(trm))
    assert_close(rv, to_numpy(trv))
    assert_close(dx, tdx, scale=5)
    if affine:
        assert_close(dw, tdw, scale=20)
        assert_close(db, tdb, scale=20)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 4, 1, 1)])
def test_batch_norm_eval_matches_reference_and_torch(rng, shape, dtype):
    """Fixed running statistics: forward and the (simpler) backward; one value per channel is
    fine in eval mode."""
    x, dy, w, b = _data(rng, shape, dtype)
    C = shape[1]
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, rstd = F.batch_norm2d(x, rm, rv, w, b, False, return_stats=True)
    dx, dw, db = F.batch_norm2d_backward(dy, x, mean, rstd, w, False)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert_close(y, R.batch_norm2d(x, rm, rv, w, b, False), scale=5)
    rdx, rdw, rdb = R.batch_norm2d_backward(dy, x, w, False, rm, rv)
    assert_close(dx, rdx, scale=5)
    assert_close(dw, rdw, scale=20)
    assert_close(db, rdb, scale=20)
    trm, trv = torch_tensor(rm), torch_tensor(rv)
    ty, tdx, tdw, tdb = _torch_run(
        lambda a, c, d: torch.nn.functional.batch_norm(a, trm, trv, c, d, False), x, dy, w, b)
    assert_close(y, ty, scale=5)
    assert_close(dx, tdx, scale=5)
    assert_close(dw, tdw, scale=20)
    assert_close(db, tdb, scale=20)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_layer_running_stats_match_torch(rng, momentum, dtype):
    """Several training steps, then eval mode (forward and backward), against nn.BatchNorm2d."""
    C = 5
    layer = BatchNorm2d(C, momentum=momentum, dtype=dtype)
    mod = _torch_bn(dtype, C, momentum=momentum)
    np.testing.assert_array_equal(layer.buffers["running_mean"], np.zeros(C))
    np.testing.assert_array_equal(layer.buffers["running_var"], np.ones(C))
    assert set(layer.buffers) == {"running_mean", "running_var"}
    w = rng.standard_normal(C).astype(dtype)
    layer.params["weight"][...] = w
    with torch.no_grad():
        mod.weight.copy_(torch_tensor(w))

    def step(x, dy):
        y = layer(x)
        dx = layer.backward(dy)
        tx = torch_tensor(x, True)
        mod.zero_grad()
        ty = mod(tx)
        ty.backward(torch_tensor(dy))
        assert_close(y, to_numpy(ty), scale=5)
        assert_close(dx, to_numpy(tx.grad), scale=5)
        assert_close(layer.grads["weight"], to_numpy(mod.weight.grad), scale=20)
        assert_close(layer.grads["bias"], to_numpy(mod.bias.grad), scale=20)

    for i in range(4):
        x, dy, _, _ = _data(rng, (3, C, 4, 3), dtype, scale=1 + i, offset=i - 1)
        step(x, dy)
        assert_close(layer.buffers["running_mean"], to_numpy(mod.running_mean))
        assert_close(layer.buffers["running_var"], to_numpy(mod.running_var))
    assert layer.num_batches_tracked == 4
    layer.eval()
    mod.eval()
    rm = layer.buffers["running_mean"].copy()
    x, dy, _, _ = _data(rng, (2, C, 3, 3), dtype, scale=3)
    step(x, dy)
    np.testing.assert_array_equal(layer.buffers["running_mean"], rm)  # eval: no update
    assert layer.running_mean is layer.buffers["running_mean"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_without_running_stats(rng, dtype):
    """track_running_stats=False: no buffers, batch statistics in train and eval mode."""
    C = 4
    layer = BatchNorm2d(C, affine=False, track_running_stats=False, dtype=dtype)
    assert layer.buffers == {} and layer.running_mean is None and layer.running_var is None
    assert layer.params == {} and layer.grads == {}
    mod = _torch_bn(dtype, C, affine=False, track_running_stats=False)
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        getattr(mod, mode)()
        x, dy, _, _ = _data(rng, (3, C, 2, 5), dtype)
        y = layer(x)
        dx = layer.backward(dy)
        ty, tdx, _, _ = _torch_run(lambda a, c, d: mod(a), x, dy, None, None)
        assert_close(y, ty, scale=5)
        assert_close(dx, tdx, scale=5)


def test_batch_norm_one_value_per_channel_raises(rng):
    x = rng.standard_normal((1, 3, 1, 1)).astype(np.float32)
    layer = BatchNorm2d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(x)
    np.testing.assert_array_equal(layer.buffers["running_var"], np.ones(3))
    assert layer.num_batches_tracked == 0
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(3, track_running_stats=False)(x)
    layer.eval()
    assert layer(x).shape == x.shape


def test_batch_norm_large_offset_float32(rng):
    shape = (4, 40, 8, 8)   # 40 channels: blocks of 2 (the pipelined path)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    rm, rv = np.zeros(40, np.float32), np.ones(40, np.float32)
    y, mean, rstd = F.batch_norm2d(x, rm, rv, None, None, True, 1.0, return_stats=True)
    x64 = x.astype(np.float64)
    rm64, rv64 = np.zeros(40), np.ones(40)
    np.testing.assert_allclose(y, R.batch_norm2d(x64, rm64, rv64, None, None, True, 1.0),
                               rtol=0, atol=2e-5)
    np.testing.assert_allclose(rv, rv64, rtol=1e-5)
    np.testing.assert_allclose(rm, rm64, rtol=1e-6)
    dx, dw, db = F.batch_norm2d_backward(dy, x, mean, rstd, None, True)
    rdx, rdw, rdb = R.batch_norm2d_backward(dy.astype(np.float64), x64, None, True)
    np.testing.assert_allclose(dx, rdx, rtol=0, atol=2e-5)
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_finite_differences(rng, training):
    shape, C = (3, 2, 2, 3), 2
    x, dy, w, b = _data(rng, shape, np.float64)
    layer = BatchNorm2d(C, dtype=np.float64)
    layer.params["weight"][...] = w
    layer.params["bias"][...] = b
    layer.buffers["running_mean"][...] = [0.5, -1]
    layer.buffers["running_var"][...] = [2, 0.7]
    layer.train(training)
    # the loss must not move the running stats between evaluations
    layer.momentum = 0.0
    loss = lambda: float((layer(x) * dy).sum())  # noqa: E731
    layer(x)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    for k in ("weight", "bias"):
        np.testing.assert_allclose(layer.grads[k], numeric_grad(loss, layer.params[k]),
                                   rtol=1e-6, atol=1e-7)


# ---- shared: layouts, errors, determinism --------------------------------------------------

@pytest.mark.parametrize("make", [lambda: GroupNorm(8, 40), lambda: BatchNorm2d(40)])
def test_non_contiguous_and_input_grad(rng, make):
    x, dy, _, _ = _data(rng, (8, 40, 3, 4), np.float32)
    a, b = make(), make()
    y = a(x)
    dx = a.backward(dy)
    np.testing.assert_array_equal(b(non_contiguous(x)), y)
    np.testing.assert_array_equal(b.backward(non_contiguous(dy)), dx)
    c = make()
    c.input_grad = False
    c(x)
    assert c.backward(dy) is None
    for k in a.grads:
        np.testing.assert_array_equal(c.grads[k], a.grads[k])


def test_bad_inputs():
    x = np.zeros((2, 6, 3, 3), np.float32)
    with pytest.raises(ValueError, match="num_groups"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"num_groups \(4\).*\(6\)"):
        F.group_norm(x, 4)
    with pytest.raises(ValueError, match="num_groups"):
        F.group_norm(x, 0)
    with pytest.raises(TypeError, match="num_groups"):
        F.group_norm(x, 2.0)
    for layer in (GroupNorm(2, 4), BatchNorm2d(4)):
        with pytest.raises(ValueError, match=r"4 channels.*\(2, 6, 3, 3\)"):
            layer(x)
        with pytest.raises(TypeError, match="float64.*float32"):
            layer(x[:, :4].astype(np.float64))
        with pytest.raises(TypeError, match="x"):
            layer(x[:, :4].astype(np.int32))
        with pytest.raises(ValueError, match=r"x must be 4-d.*\(4, 3\)"):
            layer(np.zeros((4, 3), np.float32))
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(x[:, :4])
        layer(x[:, :4])
        with pytest.raises(ValueError, match="dy must have the shape"):
            layer.backward(x[:1, :4])
        with pytest.raises(TypeError, match="dy"):
            layer.backward(x[:, :4].astype(np.float64))
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\).*\(4,\)"):
        F.group_norm(x, 2, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="bias has dtype float64"):
        F.batch_norm2d(x, None, None, None, np.zeros(6), True)
    with pytest.raises(ValueError, match=r"running_mean must have shape \(6,\)"):
        F.batch_norm2d(x, np.zeros(5, np.float32), np.ones(5, np.float32))
    with pytest.raises(ValueError, match="required when training=False"):
        F.batch_norm2d(x)
    with pytest.raises(ValueError, match="momentum"):
        F.batch_norm2d(x, training=True, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm2d(6, eps=-1)
    with pytest.raises(ValueError, match="mean must have shape"):
        F.group_norm_backward(x, x, np.zeros((2, 3)), np.ones((2, 2)), 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_invariance(rng, dtype):
    """Bitwise identical results with 1 and 2 threads (and across repeated runs)."""
    x, dy, w, b = _data(rng, (4, 48, 5, 7), dtype, offset=3)
    outs = []
    for t in (1, 2, 2):
        with num_threads(t):
            y, m, r = F.group_norm(x, 16, w, b, return_stats=True)
            g = F.group_norm_backward(dy, x, m, r, 16, w)
            rm, rv = np.zeros(48, dtype), np.ones(48, dtype)
            z, bm, br = F.batch_norm2d(x, rm, rv, w, b, True, return_stats=True)
            h = F.batch_norm2d_backward(dy, x, bm, br, w, True)
            outs.append((y, *g, z, rm, rv, *h))
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_kernels_bitwise_wherever_the_arrays_lie(rng, dtype):
    """The norm kernels' loops store and sum at once (the next row's statistics), so a scalar
    copy of a vectorised loop taken for close addresses would change the sums: every output
    has the same bits wherever the arrays lie (tests/helpers.placements)."""
    from nbconv.kernels import norm as K
    N, C, HW, G = 3, 8, 45, 4
    x, dy, w, b = _data(rng, (N, C, HW), dtype)
    g3 = (N * G, C // G, HW)
    mean, rstd = np.empty(N * G), np.empty(N * G)
    K.group_norm_forward(x.reshape(g3), w, b, 1e-5, np.empty(g3, dtype), mean, rstd)
    bm, br, bv = np.empty(C), np.empty(C), np.empty(C)
    K.batch_norm_train_forward(x, w, b, 1e-5, np.empty_like(x), bm, br, bv)

    def gn_forward(x_, y_):
        K.group_norm_forward(x_, w, b, 1e-5, y_, np.empty(N * G), np.empty(N * G))

    def gn_backward(dy_, x_, dx_, dwb):
        sdy = np.empty((N * G, C // G))
        K.group_norm_backward(dy_, x_, mean, rstd, w, True, dx_, sdy, np.empty_like(sdy),
                              dwb[:C], dwb[C:])

    def bn_forward(x_, y_):
        K.batch_norm_train_forward(x_, w, b, 1e-5, y_, np.empty(C), np.empty(C), np.empty(C))

    def bn_backward(dy_, x_, dx_, dwb):
        K.batch_norm_backward(dy_, x_, bm, br, w, True, True, dx_, dwb[:C], dwb[C:])

    x3, dy3, z2 = x.reshape(g3), dy.reshape(g3), np.zeros(2 * C, dtype)
    assert_same_bits_wherever(gn_forward, [x3, np.empty_like(x3)], [1])
    assert_same_bits_wherever(gn_backward, [dy3, x3, np.empty_like(x3), z2], [2, 3])
    assert_same_bits_wherever(bn_forward, [x, np.empty_like(x)], [1])
    assert_same_bits_wherever(lambda x_, y_: K.batch_norm_apply(x_, bm, br, w, b, y_),
                              [x, np.empty_like(x)], [1])
    assert_same_bits_wherever(bn_backward, [dy, x, np.empty_like(x), z2], [2, 3])
