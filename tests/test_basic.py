"""ReLU, Linear, Flatten, Dropout, Sequential and SoftmaxCrossEntropy against torch and
nbconv.reference: forward, every gradient, float32/float64, finite differences, bad inputs."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from nbconv import functional as F, reference as R
from nbconv.layers import (BatchNorm2d, Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d,
                           ReLU, Sequential, SoftmaxCrossEntropy)

from helpers import (DTYPES, assert_close, assert_same_bits_wherever, non_contiguous,
                     num_threads, numeric_grad, torch_tensor, to_numpy)


def run_layer(layer, x, dy):
    """forward + backward, checking that neither modifies its inputs."""
    x0, dy0 = x.copy(), dy.copy()
    y = layer(x)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    return y, dx


def torch_run(module, x, dy):
    tx = torch_tensor(x, requires_grad=True)
    ty = module(tx)
    ty.backward(torch_tensor(dy))
    return to_numpy(ty), to_numpy(tx.grad)


# ---- ReLU -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 4, 5), (1, 1)])
def test_relu_matches_torch_and_reference(shape, dtype, rng):
    x = rng.normal(size=shape).astype(dtype)
    x.flat[::3] = 0  # the kink: no gradient at 0, as torch
    dy = rng.normal(size=shape).astype(dtype)
    y, dx = run_layer(ReLU(), x, dy)
    ty, tdx = torch_run(nn.ReLU(), x, dy)
    assert y.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(dx, tdx)
    np.testing.assert_array_equal(y, R.relu(x))
    np.testing.assert_array_equal(dx, R.relu_backward(dy, x))


def test_relu_non_contiguous_and_nan(rng):
    x = rng.normal(size=(3, 8)).astype(np.float32)
    x[0, 0] = np.nan
    y = ReLU()(non_contiguous(x))
    assert np.isnan(y[0, 0])
    np.testing.assert_array_equal(y[1:], np.maximum(x[1:], 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_gradient_at_nan_passes_dy_like_torch(dtype, rng, monkeypatch):
    """PyTorch's ReLU backward (threshold_backward) zeroes dy where the output is <= 0 and
    passes it elsewhere, NaN included (NaN <= 0 is false): the layer, the functional op (serial
    and thread-pool kernels) and the reference follow it (issue 18; dx was 0 at a NaN)."""
    x = rng.normal(size=(3, 9)).astype(dtype)
    x[0, :6] = [np.nan, 0.0, -0.0, np.inf, -np.inf, -np.nan]
    dy = rng.normal(size=x.shape).astype(dtype)
    ty, tdx = torch_run(nn.ReLU(), x, dy)
    assert np.isnan(tdx[0, 0]) == np.isnan(dy[0, 0]) and tdx[0, 0] == dy[0, 0]
    y, dx = run_layer(ReLU(), x, dy)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(dx, tdx)
    for threshold in (1 << 23, 1):  # the serial kernel, then the thread-pool one
        monkeypatch.setattr(F.basic, "PARALLEL_ELEMENTS", threshold)
        np.testing.assert_array_equal(F.relu(x), ty)
        np.testing.assert_array_equal(F.relu_backward(dy, F.relu(x)), tdx)
    np.testing.assert_array_equal(R.relu(x), ty)
    np.testing.assert_array_equal(R.relu_backward(dy, x), tdx)


# ---- Linear ---------------------------------------------------------------------------------

def torch_linear(layer):
    w = layer.params["weight"]
    m = nn.Linear(w.shape[1], w.shape[0], bias="bias" in layer.params,
                  dtype=torch.float64 if w.dtype == np.float64 else torch.float32)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w))
        if "bias" in layer.params:
            m.bias.copy_(torch.from_numpy(layer.params["bias"]))
    return m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,fin,fout,bias", [(4, 3, 5, True), (1, 7, 1, False), (5, 600, 8, True),
                                             (16, 33, 10, True)])
def test_linear_matches_torch_and_reference(n, fin, fout, bias, dtype, rng):
    layer = Linear(fin, fout, bias=bias, dtype=dtype, seed=3)
    layer.input_grad = True
    x = rng.normal(size=(n, fin)).astype(dtype)
    dy = rng.normal(size=(n, fout)).astype(dtype)
    y, dx = run_layer(layer, x, dy)
    m = torch_linear(layer)
    ty, tdx = torch_run(m, x, dy)
    assert y.dtype == dx.dtype == layer.grads["weight"].dtype == np.dtype(dtype)
    scale = np.sqrt(fin)
    assert_close(y, ty, scale=scale)
    assert_close(dx, tdx, scale=scale)
    assert_close(layer.grads["weight"], to_numpy(m.weight.grad), scale=np.sqrt(n))
    w, b = layer.params["weight"], layer.params.get("bias")
    assert_close(y, R.linear_naive(x, w, b), scale=scale)
    rdx, rdw, rdb = R.linear_backward(dy, x, w)
    assert_close(dx, rdx, scale=scale)
    assert_close(layer.grads["weight"], rdw, scale=np.sqrt(n))
    if bias:
        assert_close(layer.grads["bias"], to_numpy(m.bias.grad), scale=np.sqrt(n))
        assert_close(layer.grads["bias"], rdb, scale=np.sqrt(n))
    else:
        assert set(layer.params) == set(layer.grads) == {"weight"}


def test_linear_finite_differences(rng):
    layer = Linear(4, 3, dtype=np.float64, seed=0)
    x = rng.normal(size=(5, 4))
    c = rng.normal(size=(5, 3))  # loss = sum(y * c)
    f = lambda: float((layer(x) * c).sum())  # noqa: E731
    layer(x)
    dx = layer.backward(c)
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-7, atol=1e-8)
    for name in ("weight", "bias"):
        g = layer.grads[name].copy()
        np.testing.assert_allclose(g, numeric_grad(f, layer.params[name]), rtol=1e-7, atol=1e-8)


def test_linear_init_and_seed():
    a, b, c = Linear(50, 20, seed=7), Linear(50, 20, seed=7), Linear(50, 20, seed=8)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    np.testing.assert_array_equal(a.params["bias"], b.params["bias"])
    assert not np.array_equal(a.params["weight"], c.params["weight"])
    bound = 1 / np.sqrt(50)
    for p in a.params.values():
        assert p.dtype == np.float32 and np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.8 * bound  # uniform over the whole range, not a tiny one
    assert a.params["weight"].shape == (20, 50) and a.params["bias"].shape == (20,)
    assert Linear(3, 2, dtype=np.float64).params["weight"].dtype == np.float64


def test_linear_uses_params_assigned_in_place_and_skips_dx(rng):
    layer = Linear(3, 2, dtype=np.float64)
    layer.params["weight"][...] = np.arange(6.0).reshape(2, 3)
    layer.params["bias"][...] = [1.0, -1.0]
    x = rng.normal(size=(4, 3))
    np.testing.assert_allclose(layer(x), x @ np.arange(6.0).reshape(2, 3).T + [1.0, -1.0])
    layer.input_grad = False
    assert layer.backward(np.ones((4, 2))) is None
    np.testing.assert_allclose(layer.grads["bias"], [4.0, 4.0])
    y = layer(non_contiguous(x))
    np.testing.assert_allclose(y, layer(x))


def test_linear_bad_inputs(rng):
    layer = Linear(3, 2)
    with pytest.raises(TypeError, match="float64.*float32"):
        layer(rng.normal(size=(4, 3)))
    with pytest.raises(TypeError, match="int64"):
        layer(np.ones((4, 3), np.int64))
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        layer(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"in_features=3.*\(4, 1, 5\)|\(4, 1, 5\).*in_features=3"):
        layer(np.ones((4, 1, 5), np.float32))   # (*, in_features) inputs, as torch
    with pytest.raises(ValueError, match="2-d"):
        layer(np.ones((), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        Linear(3, 2).backward(np.ones((4, 2), np.float32))
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        layer.backward(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="float64"):
        layer.backward(np.ones((4, 2)))
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="out_features"):
        Linear(3, 2.0)
    with pytest.raises(TypeError, match="dtype"):
        Linear(3, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="weight"):
        F.linear(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="bias"):
        F.linear(np.ones((2, 3)), np.ones((2, 3)), np.ones(3))


# ---- Flatten --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten(dtype, rng):
    x = rng.normal(size=(3, 2, 4, 5)).astype(dtype)
    dy = rng.normal(size=(3, 40)).astype(dtype)
    y, dx = run_layer(Flatten(), x, dy)
    ty, tdx = torch_run(nn.Flatten(), x, dy)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(dx, tdx)
    layer = Flatten()   # views, as torch's (no pass over the activation); inputs unchanged
    x0, dy0 = x.copy(), dy.copy()
    assert np.shares_memory(layer(x), x) and np.shares_memory(layer.backward(dy), dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    np.testing.assert_array_equal(Flatten()(non_contiguous(x)), ty)
    with pytest.raises(ValueError, match="2 dimensions"):
        Flatten()(np.ones(3, dtype))
    with pytest.raises(TypeError, match="int"):
        Flatten()(np.ones((3, 2), int))


# ---- Dropout --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_train(p, dtype, rng):
    x = rng.uniform(1, 2, size=(40, 50)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    layer = Dropout(p, seed=0)
    y, dx = run_layer(layer, x, dy)
    assert y.dtype == dx.dtype == np.dtype(dtype)
    keep = y != 0
    assert abs(1 - keep.mean() - p) < 0.05            # about p of the entries dropped
    scale = dtype(1 / (1 - p))
    np.testing.assert_allclose(y[keep], x[keep] * scale, rtol=1e-6)
    # torch's gradient of x * mask / (1 - p) with the same mask
    tx = torch_tensor(x, requires_grad=True)
    (tx * torch.from_numpy(keep) / (1 - p)).backward(torch_tensor(dy))
    assert_close(dx, to_numpy(tx.grad))
    assert_close(y, R.dropout(x, keep, p))
    assert np.all(dx[~keep] == 0)


def test_dropout_seed_eval_and_edge_p(rng):
    x = rng.normal(size=(8, 16)).astype(np.float32)
    a, b, c = Dropout(0.5, seed=1), Dropout(0.5, seed=1), Dropout(0.5, seed=2)
    ya, yb = a(x), b(x)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, c(x))
    assert not np.array_equal(a(x), ya)  # a new mask each forward
    a.eval()
    y, dx = run_layer(a, x, x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, x)
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(Dropout(0.0)(x), x)
    y1 = Dropout(1.0)(x)
    assert y1.dtype == np.float32 and not y1.any()
    for bad, err in ((-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                     ("0.5", TypeError)):
        with pytest.raises(err, match="p"):
            Dropout(bad)


# ---- SoftmaxCrossEntropy --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (7, 10, 3.0), (32, 5, 0.1),
                                       (4, 3, 1e4)])
def test_softmax_ce_matches_torch(n, k, scale, dtype, rng):
    logits = (rng.normal(size=(n, k)) * scale).astype(dtype)
    labels = rng.integers(0, k, n)
    l0 = logits.copy()
    loss, d = SoftmaxCrossEntropy()(logits, labels)
    np.testing.assert_array_equal(logits, l0)
    tl = torch_tensor(logits, requires_grad=True)
    tloss = nn.functional.cross_entropy(tl, torch.from_numpy(labels))
    tloss.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert loss.dtype == d.dtype == np.dtype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, tloss.item(), rtol=tol, atol=tol)
    np.testing.assert_allclose(d, to_numpy(tl.grad), rtol=tol, atol=tol)
    rloss, rd = R.softmax_cross_entropy_naive(logits.astype(np.float64), labels)
    np.testing.assert_allclose(loss, rloss, rtol=tol, atol=tol)
    np.testing.assert_allclose(d, rd, rtol=tol, atol=tol)


def test_softmax_ce_extreme_and_fd(rng):
    logits = np.array([[1e4, -1e4, 0.0], [-1e30, 1e30, 5.0]], np.float32)
    loss, d = SoftmaxCrossEntropy()(logits, np.array([1, 1]))
    assert loss == pytest.approx(1e4)   # row 0: 2e4 / 2, row 1: 0
    np.testing.assert_allclose(d, [[0.5, -0.5, 0], [0, 0, 0]], atol=1e-7)
    x = rng.normal(size=(4, 5))
    y = rng.integers(0, 5, 4)
    _, d = SoftmaxCrossEntropy()(x, y)
    num = numeric_grad(lambda: float(SoftmaxCrossEntropy()(x, y)[0]), x)
    np.testing.assert_allclose(d, num, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(d.sum(axis=1), 0, atol=1e-15)


def test_softmax_ce_bad_inputs():
    ce = SoftmaxCrossEntropy()
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"labels.*\[0, 4\)"):
        ce(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="labels"):
        ce(z, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"labels.*\(3,\)"):
        ce(z, np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        ce(z, np.zeros((3, 1), int))
    with pytest.raises(TypeError, match="labels.*integer"):
        ce(z, np.zeros(3))
    with pytest.raises(TypeError, match="labels"):
        ce(z, [0, 1, 2])
    with pytest.raises(ValueError, match="logits"):
        ce(np.zeros(4, np.float32), np.array([0]))
    with pytest.raises(TypeError, match="logits"):
        ce(np.zeros((3, 4), int), np.array([0, 1, 2]))
    assert ce(z, np.array([0, 1, 3], np.uint8))[0] == pytest.approx(np.log(4))


# ---- Sequential -----------------------------------------------------------------------------

def mlp(dtype=np.float32, p=0.0):
    return Sequential(Flatten(), Linear(12, 8, dtype=dtype, seed=0), ReLU(), Dropout(p, seed=1),
                      Linear(8, 3, dtype=dtype, seed=2))


def torch_mlp(model):
    dt = torch.float64 if model.params["1.weight"].dtype == np.float64 else torch.float32
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Dropout(0.0),
                        nn.Linear(8, 3)).to(dt)
    assert set(net.state_dict()) == set(model.params)  # same keys as torch
    with torch.no_grad():
        for k, v in net.state_dict().items():
            v.copy_(torch.from_numpy(model.params[k]))
    return net


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_matches_torch(dtype, rng):
    model = mlp(dtype)
    model.input_grad = True
    x = rng.normal(size=(5, 3, 2, 2)).astype(dtype)
    labels = rng.integers(0, 3, 5)
    y = model(x)
    loss, d = SoftmaxCrossEntropy()(y, labels)
    dx = model.backward(d)
    net = torch_mlp(model)
    tx = torch_tensor(x, requires_grad=True)
    tl = nn.functional.cross_entropy(net(tx), torch.from_numpy(labels))
    tl.backward()
    assert_close(np.asarray(loss), np.asarray(tl.item(), dtype))
    assert_close(dx, to_numpy(tx.grad))
    for k, p in net.named_parameters():
        assert_close(model.grads[k], to_numpy(p.grad), err_msg=k)


def test_sequential_float64_finite_differences(rng):
    model = Sequential(Linear(4, 6, dtype=np.float64, seed=0), ReLU(),
                       Linear(6, 3, dtype=np.float64, seed=1))
    model.input_grad = True
    x = rng.normal(size=(3, 4))
    labels = np.array([0, 2, 1])
    f = lambda: float(SoftmaxCrossEntropy()(model(x), labels)[0])  # noqa: E731
    _, d = SoftmaxCrossEntropy()(model(x), labels)
    dx = model.backward(d)
    grads = {k: g.copy() for k, g in model.grads.items()}
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6, atol=1e-9)
    for k, p in model.params.items():
        np.testing.assert_allclose(grads[k], numeric_grad(f, p), rtol=1e-6, atol=1e-9,
                                   err_msg=k)


class Spy(Layer):
    """Identity layer recording whether backward was asked for dx."""

    def forward(self, x):
        self._save(x.shape)
        return x.copy()

    def backward(self, dy):
        self._load(dy)
        self.asked = self.input_grad
        return dy.copy() if self.input_grad else None


def test_sequential_first_layer_dx_skipped(rng):
    first = Spy()
    model = Sequential(first, Linear(4, 2, seed=0))
    x = rng.normal(size=(3, 4)).astype(np.float32)
    model(x)
    assert model.input_grad is False
    assert model.backward(np.ones((3, 2), np.float32)) is None and first.asked is False
    first.input_grad = True   # overridden by the model's flag
    model(x)
    assert model.backward(np.ones((3, 2), np.float32)) is None and first.asked is False
    model.input_grad = True
    model(x)
    dx = model.backward(np.ones((3, 2), np.float32))
    assert first.asked is True
    np.testing.assert_allclose(dx, np.ones((3, 2), np.float32) @ model[1].params["weight"])
    # a nested Sequential that is not first computes its dx
    inner_first = Spy()
    outer = Sequential(Linear(4, 4, seed=1), Sequential(inner_first, ReLU()))
    outer(x)
    outer.backward(np.ones((3, 4), np.float32))
    assert inner_first.asked is True


def test_sequential_params_shared_and_keys():
    conv = Conv2d(3, 4, 3, padding=1, seed=0)
    bn = BatchNorm2d(4)
    inner = Sequential(Linear(4, 5, seed=1), ReLU(), Linear(5, 2, seed=2))
    model = Sequential(conv, bn, ReLU(), MaxPool2d(2), inner)
    assert list(model.params) == ["0.weight", "0.bias", "1.weight", "1.bias", "4.0.weight",
                                  "4.0.bias", "4.2.weight", "4.2.bias"]
    assert list(model.grads) == list(model.params)
    assert list(model.buffers) == ["1.running_mean", "1.running_var"]
    assert model.params["0.weight"] is conv.params["weight"]
    assert model.grads["0.weight"] is conv.grads["weight"]
    assert model.params["4.2.bias"] is inner[2].params["bias"]
    assert model.buffers["1.running_var"] is bn.buffers["running_var"]
    model.params["4.0.weight"] -= 1.0     # in-place updates reach the layer
    np.testing.assert_array_equal(model.params["4.0.weight"], inner[0].params["weight"])
    assert len(model) == 5 and model[-1] is inner and model[0] is conv
    assert list(model) == [conv, bn, model[2], model[3], inner]
    part = model[1:3]
    assert isinstance(part, Sequential) and len(part) == 2 and part[0] is bn
    assert list(part.params) == ["0.weight", "0.bias"]
    with pytest.raises(IndexError):
        model[5]
    with pytest.raises(TypeError, match="layer 1"):
        Sequential(ReLU(), lambda x: x)
    assert "Linear(in_features=4" in repr(model)


def test_sequential_train_eval_propagates(rng):
    model = Sequential(Linear(4, 4, seed=0), Sequential(Dropout(0.5, seed=0), ReLU()),
                       ReLU())
    assert model.training and model[1][0].training
    assert model.eval() is model
    assert not model.training and not model[0].training and not model[1].training
    assert not model[1][0].training
    x = rng.normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(model(x), model(x))   # no dropout in eval
    model.train()
    assert all(layer.training for layer in (model, model[0], model[1], model[1][0]))
    assert not np.array_equal(model(x), model(x))


def test_sequential_state_dict_roundtrip_and_errors(rng):
    a = Sequential(Conv2d(2, 3, 3, seed=0), BatchNorm2d(3), Flatten(), Linear(12, 2, seed=1))
    a(rng.normal(size=(4, 2, 4, 4)).astype(np.float32))   # moves the running stats
    sd = a.state_dict()
    # issue 9: num_batches_tracked is in the state_dict (a 0-d int64), as PyTorch's
    assert set(sd) == set(a.params) | set(a.buffers) | {"1.num_batches_tracked"}
    assert all(sd[k] is not v and np.array_equal(sd[k], v)
               for k, v in {**a.params, **a.buffers}.items())
    b = Sequential(Conv2d(2, 3, 3, seed=5), BatchNorm2d(3), Flatten(), Linear(12, 2, seed=6))
    w_obj = b.params["0.weight"]
    b.load_state_dict(sd)
    assert b.params["0.weight"] is w_obj   # copied in place
    for k in {**a.params, **a.buffers}:
        np.testing.assert_array_equal({**b.params, **b.buffers}[k], sd[k])
    sd["0.weight"][...] = 0      # a copy: the model is not affected
    assert a.params["0.weight"].any() and b.params["0.weight"].any()

    c = Sequential(Conv2d(2, 3, 3, seed=7), BatchNorm2d(3), Flatten(), Linear(12, 2, seed=8))
    before = c.state_dict()
    good = a.state_dict()
    bad_cases = [
        ({k: v for k, v in good.items() if k != "1.running_var"}, ValueError, "1.running_var"),
        ({**good, "9.weight": np.zeros(1, np.float32)}, ValueError, "9.weight"),
        ({**good, "3.weight": np.zeros((2, 13), np.float32)}, ValueError, "3.weight"),
        ({**good, "3.bias": np.zeros(2, np.int64)}, TypeError, "3.bias"),  # float64: cast
        ({**good, "3.bias": [0.0, 0.0]}, TypeError, "3.bias"),
    ]
    for bad, err, key in bad_cases:
        with pytest.raises(err, match=key.replace(".", r"\.")):
            c.load_state_dict(bad)
        for k, v in before.items():   # all or nothing: nothing was written
            if k.endswith("num_batches_tracked"):
                continue
            np.testing.assert_array_equal({**c.params, **c.buffers}[k], v)


def test_sequential_backward_errors_and_determinism(rng):
    model = mlp()
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones((2, 3), np.float32))
    x = rng.normal(size=(6, 12)).astype(np.float32)
    y = model(x)
    with pytest.raises(ValueError, match="shape"):
        model.backward(np.ones((6, 4), np.float32))
    model.input_grad = True
    x0 = x.copy()
    runs = []
    for threads in (1, 2):
        with num_threads(threads):
            y = model(x)
            dx = model.backward(np.ones_like(y))
            runs.append((y, dx, {k: g.copy() for k, g in model.grads.items()}))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    for k in runs[0][2]:
        np.testing.assert_array_equal(runs[0][2][k], runs[1][2][k])


# ---- the parallel kernels (large shapes) ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_paths_match_serial_torch_and_thread_counts(dtype, rng, monkeypatch):
    import nbconv.functional.basic as FB
    n, fin, fout = 65, 1100, 37       # odd batch, K over the chunk size, 37 = 9*4 + 1 columns
    assert n * fin * fout >= FB.PARALLEL_MACS
    x = rng.normal(size=(n, fin)).astype(dtype)
    w = rng.normal(size=(fout, fin)).astype(dtype)
    b = rng.normal(size=fout).astype(dtype)
    dy = rng.normal(size=(n, fout)).astype(dtype)
    r = rng.normal(size=(3, 32, 33, 45)).astype(dtype)
    monkeypatch.setattr(FB, "PARALLEL_ELEMENTS", 1 << 17)   # the parallel ReLU kernels too
    assert r.size >= FB.PARALLEL_ELEMENTS

    def run():
        y = F.relu(r)
        return [F.linear(x, w, b), *F.linear_backward(dy, x, w), y, F.relu_backward(r, y)]

    results = []
    for threads in (1, 2):
        with num_threads(threads):
            results.append(run())
    monkeypatch.setattr(FB, "PARALLEL_MACS", 1 << 62)
    monkeypatch.setattr(FB, "PARALLEL_ELEMENTS", 1 << 62)
    results.append(run())
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)
    tx = torch_tensor(x, requires_grad=True)
    tw = torch_tensor(w, requires_grad=True)
    tb = torch_tensor(b, requires_grad=True)
    ty = nn.functional.linear(tx, tw, tb)
    ty.backward(torch_tensor(dy))
    y, dx, dw, db, rr, dr = results[0]
    assert_close(y, to_numpy(ty), scale=np.sqrt(fin))
    assert_close(dx, to_numpy(tx.grad), scale=np.sqrt(fout))
    assert_close(dw, to_numpy(tw.grad), scale=np.sqrt(n))
    assert_close(db, to_numpy(tb.grad), scale=np.sqrt(n))
    np.testing.assert_array_equal(rr, np.maximum(r, 0))
    np.testing.assert_array_equal(dr, np.where(r > 0, r, 0))


def test_elementwise_parallel_kernels_equal_serial(rng):
    """The thread-pool variants (used above PARALLEL_ELEMENTS, 32 MB) on a size with a partial
    last task give the serial kernels' results."""
    from nbconv._config import FLAT
    from nbconv.kernels import basic as KB
    n = 3 * FLAT + 5
    x = rng.normal(size=n).astype(np.float32)
    x[:3] = [np.nan, 0.0, -0.0]
    dy = rng.normal(size=n).astype(np.float32)
    mask = rng.random(n) >= 0.3
    outs = []
    for fns in ((KB.relu_forward, KB.relu_backward, KB.dropout),
                (KB.relu_forward_serial, KB.relu_backward_serial, KB.dropout_serial)):
        y, dx, yd = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        fns[0](x, y)
        fns[1](dy, y, dx)
        fns[2](x, mask.view(np.uint8), np.float32(1 / 0.7), yd)
        outs.append((y, dx, yd))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(outs[0][2], np.where(mask, x * np.float32(1 / 0.7), 0))



@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_dropout_kernels_bitwise_wherever_the_arrays_lie(dtype, parallel, rng):
    """ReLU and Dropout give the same bits (signed zeros, NaN) wherever their arrays lie: an
    output right behind an input, misaligned (tests/helpers.placements; the activations'
    backward did not, test_activation)."""
    from nbconv.kernels import basic as KB
    if parallel:
        fwd, bwd, drop = KB.relu_forward, KB.relu_backward, KB.dropout
    else:
        fwd, bwd, drop = KB.relu_forward_serial, KB.relu_backward_serial, KB.dropout_serial
    n = 1003
    x = rng.normal(size=n).astype(dtype)
    x[:6] = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf]
    dy = rng.normal(size=n).astype(dtype)
    mask = (rng.random(n) >= 0.3).view(np.uint8)
    scale = dtype(1 / 0.7)
    assert_same_bits_wherever(lambda a, o: fwd(a, o), [x, np.empty_like(x)], [1])
    assert_same_bits_wherever(lambda d, y, o: bwd(d, y, o), [dy, x, np.empty_like(x)], [2])
    assert_same_bits_wherever(lambda a, o: drop(a, mask, scale, o), [x, np.empty_like(x)], [1])

def test_softmax_ce_nan_logits_give_nan_like_torch():
    logits = np.array([[1.0, np.nan, 2.0], [0.5, 0.1, -1.0]], np.float32)
    labels = np.array([0, 2])
    loss, d = F.softmax_cross_entropy(logits, labels)
    tl = torch.from_numpy(logits).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels))
    tloss.backward()
    assert np.isnan(loss) and np.isnan(tloss.item())
    np.testing.assert_array_equal(np.isnan(d), np.isnan(tl.grad.numpy()))
    np.testing.assert_allclose(d[1], tl.grad.numpy()[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n,fout", [(600, 9), (9, 600), (8, 8)])
def test_linear_grads_in_one_launch_equal_separate_products(n, fout, rng, monkeypatch):
    """dx and dweight in one launch (tasks of both interleaved): either product may have more
    tasks than the other; the results equal those of the serial kernel and of dweight alone."""
    import nbconv.functional.basic as FB
    fin = 2100   # several column blocks per product, a partial one last
    x = rng.normal(size=(n, fin)).astype(np.float32)
    w = rng.normal(size=(fout, fin)).astype(np.float32)
    dy = rng.normal(size=(n, fout)).astype(np.float32)
    monkeypatch.setattr(FB, "PARALLEL_MACS", 0)
    dx, dw, _ = F.linear_backward(dy, x, w)
    _, dw_alone, _ = F.linear_backward(dy, x, w, need_dx=False)
    monkeypatch.setattr(FB, "PARALLEL_MACS", 1 << 62)
    sdx, sdw, _ = F.linear_backward(dy, x, w)
    np.testing.assert_array_equal(dx, sdx)
    np.testing.assert_array_equal(dw, sdw)
    np.testing.assert_array_equal(dw, dw_alone)
    assert_close(dx, dy.astype(np.float64) @ w, scale=np.sqrt(fout))
    assert_close(dw, dy.T.astype(np.float64) @ x, scale=np.sqrt(n))
