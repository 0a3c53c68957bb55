"""nbconv.models: structure, init, torch equivalence of forward and every gradient, a float64
gradient check of the whole networks, overfitting 100 real images, thread-count invariance, and
exact resume with the real layers, Adam and a schedule."""
import numpy as np
import pytest

from helpers import DTYPES, num_threads, numeric_grad, to_numpy, torch_tensor
from nbconv import data as D
from nbconv import optim
from nbconv.layers import (BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU,
                           Sequential, SoftmaxCrossEntropy)
from nbconv.models import deep_convnet, three_layer_convnet
from nbconv.train import Trainer

torch = pytest.importorskip("torch")
nn = torch.nn


def adam(model, lr=1e-3, **kw):
    return optim.Adam(model.params, model.grads, lr=lr, **kw)


# ---- torch twins -------------------------------------------------------------------------------

class _GAP(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def torch_three_layer(hidden, num_filters=32, filter_size=7, in_channels=3, hw=32):
    return nn.Sequential(nn.Conv2d(in_channels, num_filters, filter_size, padding=filter_size // 2),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(num_filters * (hw // 2) ** 2, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def torch_deep(widths, blocks, norm, groups):
    mods, c = [], 3
    for i, (w, b) in enumerate(zip(widths, blocks)):
        for _ in range(b):
            mods += [nn.Conv2d(c, w, 3, padding=1, bias=False),
                     nn.GroupNorm(min(groups, w), w) if norm == "group" else nn.BatchNorm2d(w),
                     nn.ReLU()]
            c = w
        if i < len(widths) - 1:
            mods.append(nn.MaxPool2d(2))
    return nn.Sequential(*mods, _GAP(), nn.Linear(c, 10))


def copy_to_torch(model, net):
    """Copy nbconv ``model``'s params and buffers into the same-structured torch ``net``."""
    dt = torch.float64 if model.params["0.weight"].dtype == np.float64 else torch.float32
    net = net.to(dt)
    sd = net.state_dict()
    mine = dict(model.params)
    mine.update(getattr(model, "buffers", {}) or {})
    assert set(mine) == {k for k in sd if not k.endswith("num_batches_tracked")}
    with torch.no_grad():
        for k, v in mine.items():
            sd[k].copy_(torch.from_numpy(np.array(v)))
    return net


def _check_against_torch(model, net, x, y, dtype):
    net = copy_to_torch(model, net)
    logits = model(x)
    loss, dlogits = SoftmaxCrossEntropy()(logits, y)
    model.backward(dlogits)
    tl = net(torch_tensor(x))
    tloss = nn.functional.cross_entropy(tl, torch.from_numpy(y))
    tloss.backward()
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(logits, to_numpy(tl), **tol)
    np.testing.assert_allclose(loss, tloss.item(), **tol)
    for k, b in net.named_buffers():  # BatchNorm2d running statistics after one train step
        if k in model.buffers:
            np.testing.assert_allclose(model.buffers[k], b.numpy(), err_msg=k, **tol)
    tgrads = {k: p.grad.numpy() for k, p in net.named_parameters()}
    assert set(tgrads) == set(model.grads)
    for k, g in model.grads.items():
        scale = np.abs(tgrads[k]).max() + 1e-12
        np.testing.assert_allclose(g / scale, tgrads[k] / scale, err_msg=k, **tol)
        assert g.dtype == dtype


# ---- the three-layer net -------------------------------------------------------------------------

def test_three_layer_structure_and_init():
    m = three_layer_convnet(seed=0)
    shapes = {k: v.shape for k, v in m.params.items()}
    assert shapes == {"0.weight": (32, 3, 7, 7), "0.bias": (32,), "4.weight": (100, 8192),
                      "4.bias": (100,), "6.weight": (10, 100), "6.bias": (10,)}
    assert all(v.dtype == np.float32 for v in m.params.values())
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    assert m(x).shape == (2, 10)
    # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
    for k, fan_in in (("0.weight", 147), ("4.weight", 8192), ("6.weight", 100)):
        b = 1 / np.sqrt(fan_in)
        assert np.abs(m.params[k]).max() <= b and np.abs(m.params[k]).max() > 0.9 * b
    same = three_layer_convnet(seed=0)
    other = three_layer_convnet(seed=1)
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], same.params[k])
        assert not np.array_equal(m.params[k], other.params[k])
    s = three_layer_convnet(hidden=7, weight_scale=1e-2, seed=3, dtype=np.float64)
    assert s.params["4.weight"].shape == (7, 8192) and s.params["4.weight"].dtype == np.float64
    assert abs(s.params["4.weight"].std() - 1e-2) < 1e-3 and not s.params["0.bias"].any()
    with pytest.raises(ValueError, match="weight_scale"):
        three_layer_convnet(weight_scale=-1.0)
    with pytest.raises(ValueError, match="hidden"):
        three_layer_convnet(hidden=0)
    with pytest.raises(TypeError, match="dtype"):
        three_layer_convnet(dtype=np.int32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_layer_matches_torch(dtype, rng):
    m = three_layer_convnet(hidden=20, seed=1, dtype=dtype)
    x = rng.normal(size=(4, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, 4)
    _check_against_torch(m, torch_three_layer(20), x, y, dtype)


def test_three_layer_gradient_check_float64(rng):
    m = three_layer_convnet(hidden=6, num_filters=3, filter_size=3, input_shape=(2, 6, 6),
                            weight_scale=0.3, seed=2, dtype=np.float64)
    for k in m.params:  # non-zero biases so that their gradients are exercised too
        if k.endswith("bias"):
            m.params[k][...] = rng.normal(0, 0.1, m.params[k].shape)
    x = rng.normal(size=(3, 2, 6, 6))
    y = np.array([1, 7, 3])
    ce = SoftmaxCrossEntropy()

    def f():
        return ce(m(x), y)[0]
    loss, d = ce(m(x), y)
    m.backward(d)
    for k, p in m.params.items():
        num = numeric_grad(f, p)
        np.testing.assert_allclose(m.grads[k], num, rtol=1e-5, atol=1e-8, err_msg=k)


def test_overfit_100_images():
    raw = D.load_cifar10()
    x = D.normalize(raw["x_train"][:100], *D.channel_stats(raw["x_train"][:100]))
    y = raw["y_train"][:100]
    m = three_layer_convnet(seed=0)
    tr = Trainer(m, adam(m, 1e-3), batch_size=25, seed=0, progress=False)
    tr.fit({"x_train": x, "y_train": y}, 15)
    assert tr.evaluate(x, y) >= 0.95
    assert tr.history[-1]["loss"] < 0.3 * tr.history[0]["loss"]


def test_training_step_thread_invariant(rng):
    x = rng.normal(size=(8, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    out = []
    for n in (1, 2):
        with num_threads(n):
            m = deep_convnet(widths=(8, 16), blocks=(1, 1), groups=4, seed=0)
            o = adam(m)
            for _ in range(2):
                m.backward(SoftmaxCrossEntropy()(m(x), y)[1])
                o.step()
            out.append({k: v.copy() for k, v in m.params.items()})
    for k in out[0]:
        np.testing.assert_array_equal(out[0][k], out[1][k], err_msg=k)


# ---- the deep net ----------------------------------------------------------------------------------

def test_deep_structure():
    m = deep_convnet(seed=0)
    x = np.zeros((2, 3, 32, 32), np.float32)
    assert m(x).shape == (2, 10)
    convs = [v.shape for k, v in m.params.items() if v.ndim == 4]
    assert convs == [(32, 3, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3)]
    assert m.params["12.weight"].shape == (10, 128) and m.params["12.bias"].shape == (10,)
    assert "1.running_mean" in m.buffers and "1.weight" in m.params  # BatchNorm2d by default
    gn = deep_convnet(widths=(8, 16), blocks=(2, 1), norm="group", groups=4, seed=0)
    assert not gn.buffers and gn.layers[1].num_groups == 4 and len(gn.layers) == 12
    assert gn(x).shape == (2, 10)
    with pytest.raises(ValueError, match="norm"):
        deep_convnet(norm="layer")


@pytest.mark.parametrize("norm", ["group", "batch"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_deep_matches_torch(norm, dtype, rng):
    m = deep_convnet(widths=(4, 8), blocks=(1, 2), norm=norm, groups=2, seed=3, dtype=dtype)
    x = rng.normal(size=(4, 3, 8, 8)).astype(dtype)
    y = rng.integers(0, 10, 4)
    _check_against_torch(m, torch_deep((4, 8), (1, 2), norm, 2), x, y, dtype)


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_deep_gradient_check_float64(norm, rng):
    m = deep_convnet(widths=(3, 4), blocks=(1, 1), norm=norm, groups=1, seed=4, dtype=np.float64)
    for k, p in m.params.items():  # non-trivial affine norm parameters
        if p.ndim == 1:
            p[...] = rng.normal(1 if k.endswith("weight") else 0, 0.3, p.shape)
    x = rng.normal(size=(3, 3, 4, 4))
    y = np.array([0, 4, 9])
    ce = SoftmaxCrossEntropy()

    def f():
        return ce(m(x), y)[0]
    m.backward(ce(m(x), y)[1])
    for k, p in m.params.items():
        np.testing.assert_allclose(m.grads[k], numeric_grad(f, p), rtol=1e-5, atol=1e-8, err_msg=k)


# ---- exact resume with the real layers ---------------------------------------------------------------

def test_resume_exact_real_layers(tmp_path):
    raw = D.load_cifar10()
    x = D.normalize(raw["x_train"][:48], *D.channel_stats(raw["x_train"][:48]))
    data = {"x_train": x[:32], "y_train": raw["y_train"][:32], "x_val": x[32:],
            "y_val": raw["y_train"][32:48]}

    def make(seed):
        m = Sequential(Conv2d(3, 4, 3, padding=1, seed=seed), BatchNorm2d(4), ReLU(),
                       MaxPool2d(4), Flatten(), Dropout(0.3, seed=seed + 1),
                       Linear(4 * 8 * 8, 10, seed=seed + 2))
        o = adam(m, 1e-2, weight_decay=1e-3)
        return Trainer(m, o, optim.CosineAnnealingLR(o, T_max=3), batch_size=8, crop=2, flip=True,
                       seed=11, progress=False)

    straight = make(0)
    straight.fit(data, 3)
    part = make(0)
    part.fit(data, 1, checkpoint=tmp_path / "ck.npz")
    resumed = make(100)
    resumed.load(tmp_path / "ck.npz")
    resumed.fit(data, 3)
    for k in straight.model.params:
        np.testing.assert_array_equal(straight.model.params[k], resumed.model.params[k], err_msg=k)
    for k in straight.model.buffers:
        np.testing.assert_array_equal(straight.model.buffers[k], resumed.model.buffers[k], err_msg=k)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
