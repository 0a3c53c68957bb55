"""ConvTranspose2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d layers vs their torch.nn twins."""
import math

import numpy as np
import pytest
import torch

from nbconv.layers import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, Conv2d, ConvTranspose2d, Flatten,
                           Linear, ReLU, Sequential)
from helpers import DTYPES, assert_close, torch_tensor

CT_ARGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1,
         groups=2, bias=False, dilation=2),
    dict(in_channels=3, out_channels=2, kernel_size=(3, 2), stride=(2, 1), padding=(0, 1)),
    dict(in_channels=4, out_channels=4, kernel_size=4, stride=2, padding=1, groups=4),
]


def torch_ct(args, layer, dtype):
    t = torch.nn.ConvTranspose2d(**args, dtype=torch.float64 if dtype == np.float64
                                 else torch.float32)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(layer.params["weight"]))
        if t.bias is not None:
            t.bias.copy_(torch.from_numpy(layer.params["bias"]))
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args", CT_ARGS, ids=str)
def test_conv_transpose_layer_vs_torch(args, dtype, rng):
    layer = ConvTranspose2d(**args, dtype=dtype, seed=1)
    t = torch_ct(args, layer, dtype)
    assert repr(layer) == repr(t)
    assert layer.params["weight"].shape == tuple(t.weight.shape)
    x = rng.standard_normal((2, args["in_channels"], 5, 7)).astype(dtype)
    y = layer(x)
    xt = torch_tensor(x, True)
    yt = t(xt)
    assert_close(y, yt.detach().numpy(), scale=10)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    dx = layer.backward(dy)
    assert_close(dx, xt.grad.numpy(), scale=10)
    assert_close(layer.grads["weight"], t.weight.grad.numpy(), scale=10)
    if "bias" in layer.params:
        assert_close(layer.grads["bias"], t.bias.grad.numpy(), scale=10)
    layer.input_grad = False
    layer(x)
    assert layer.backward(dy) is None
    # unbatched (C, H, W) as torch
    assert_close(layer(x[0]), t(torch.from_numpy(x[0])).detach().numpy(), scale=10)


def test_conv_transpose_init_matches_torch_fan_in():
    for args in CT_ARGS:
        layer = ConvTranspose2d(**args, dtype=np.float64, seed=0)
        t = torch.nn.ConvTranspose2d(**args)
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(t.weight)
        bound = 1 / math.sqrt(fan_in)
        w = layer.params["weight"]
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
        if "bias" in layer.params:
            assert np.abs(layer.params["bias"]).max() <= bound
    a = ConvTranspose2d(3, 5, 3, seed=7).params["weight"]
    assert a.tobytes() == ConvTranspose2d(3, 5, 3, seed=7).params["weight"].tobytes()
    assert a.dtype == np.float32


def test_conv_transpose_layer_errors():
    with pytest.raises(ValueError, match="groups=2 must divide"):
        ConvTranspose2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="output_padding"):
        ConvTranspose2d(3, 4, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        ConvTranspose2d(3, 4, 0)
    layer = ConvTranspose2d(3, 4, 3)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 4, 7, 7), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        layer(np.zeros((1, 3, 5, 5)))
    layer(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="shape of the last forward's output"):
        layer.backward(np.zeros((1, 4, 6, 7), np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out", [1, (3, 2), (None, 4), (7, 9)], ids=str)
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_layers_vs_torch(kind, out, dtype, rng):
    layer = AdaptiveAvgPool2d(out) if kind == "avg" else AdaptiveMaxPool2d(out)
    t = torch.nn.AdaptiveAvgPool2d(out) if kind == "avg" else torch.nn.AdaptiveMaxPool2d(out)
    assert repr(layer) == repr(t)
    x = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    xt = torch_tensor(x, True)
    yt = t(xt)
    y = layer(x)
    assert_close(y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(layer.backward(dy), xt.grad.numpy())
    with pytest.raises(TypeError, match="dtype"):
        layer.backward(dy.astype(np.float32 if dtype == np.float64 else np.float64))
    layer.input_grad = False
    assert layer.backward(dy) is None
    # unbatched
    assert_close(layer(x[0]), t(torch.from_numpy(x[0])).detach().numpy())


def test_adaptive_max_return_indices_and_errors(rng):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    y, idx = AdaptiveMaxPool2d((2, 3), return_indices=True)(x)
    ty, tidx = torch.nn.AdaptiveMaxPool2d((2, 3), return_indices=True)(torch.from_numpy(x))
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    for bad, err in [(0, ValueError), ((1, 2, 3), ValueError), (1.5, TypeError)]:
        with pytest.raises(err, match="output_size"):
            AdaptiveAvgPool2d(bad)
        with pytest.raises(err, match="output_size"):
            AdaptiveMaxPool2d(bad)
    with pytest.raises(TypeError, match="return_indices"):
        AdaptiveMaxPool2d(2, return_indices="yes")
    with pytest.raises(RuntimeError, match="before forward"):
        AdaptiveAvgPool2d(2).backward(np.zeros((1, 1, 2, 2), np.float32))


def test_classifier_head_in_sequential(rng):
    """Conv -> ReLU -> AdaptiveAvgPool2d(1) -> Flatten -> Linear, as torch, any input size."""
    net = Sequential(Conv2d(3, 8, 3, padding=1, seed=0), ReLU(), AdaptiveAvgPool2d(1),
                     Flatten(), Linear(8, 4, seed=0))
    tnet = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 4))
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    for hw in [(9, 9), (7, 12)]:
        x = rng.standard_normal((2, 3) + hw).astype(np.float32)
        net.input_grad = True
        y = net(x)
        xt = torch_tensor(x, True)
        yt = tnet(xt)
        assert_close(y, yt.detach().numpy())
        dy = rng.standard_normal(y.shape).astype(np.float32)
        yt.backward(torch.from_numpy(dy))
        assert_close(net.backward(dy), xt.grad.numpy())
