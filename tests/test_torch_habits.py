"""What a PyTorch user types without thinking: reprs, .to()/.double()/.float(), unbatched
(C, H, W) inputs, ``input=``, conv2d_input_grad, nbconv.save/load, nbconv.summary."""
import numpy as np
import pytest
import torch

import nbconv
from nbconv import functional as F
from nbconv.layers import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm2d, Conv2d,
                           ConvTranspose2d, Dropout, Flatten, GlobalAvgPool2d, GroupNorm, Linear,
                           MaxPool2d, ReLU, Sequential)
from helpers import assert_close, torch_tensor


# ---- repr ----------------------------------------------------------------------------------

REPR_PAIRS = [
    (lambda m: m.Conv2d(3, 32, 7, padding=3)),
    (lambda m: m.Conv2d(4, 6, (3, 2), stride=2, padding=(1, 0), dilation=2, groups=2,
                        bias=False)),
    (lambda m: m.Conv2d(4, 4, 3, padding="same")),
    (lambda m: m.MaxPool2d(2)),
    (lambda m: m.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)),
    (lambda m: m.AvgPool2d(2)),
    (lambda m: m.AvgPool2d(3, 1, 1)),
    (lambda m: m.ReLU()),
    (lambda m: m.Flatten()),
    (lambda m: m.Linear(8, 3)),
    (lambda m: m.Dropout(0.25)),
    (lambda m: m.BatchNorm2d(8)),
    (lambda m: m.GroupNorm(2, 8)),
    (lambda m: m.AdaptiveAvgPool2d(1)),
    (lambda m: m.AdaptiveMaxPool2d((2, 3))),
    (lambda m: m.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)),
]


@pytest.mark.parametrize("make", REPR_PAIRS)
def test_layer_repr_is_torchs(make):
    assert repr(make(nbconv)) == repr(make(torch.nn))


def test_sequential_repr_is_torchs():
    ours = nbconv.three_layer_convnet(seed=0)
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 7, padding=3), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(8192, 100), torch.nn.ReLU(),
                                 torch.nn.Linear(100, 10))
    assert repr(ours) == repr(theirs)
    nested = Sequential(Sequential(ReLU()), Flatten())
    assert repr(nested) == repr(torch.nn.Sequential(torch.nn.Sequential(torch.nn.ReLU()),
                                                    torch.nn.Flatten()))


# ---- dtype casts ---------------------------------------------------------------------------

def test_to_double_float_cast_params_grads_buffers_and_the_flat_dicts():
    model = Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4), ReLU(), Flatten(),
                       Linear(4 * 4 * 4, 2, seed=1))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    assert model.double() is model
    for d in (model.params, model.grads, model.buffers):
        assert all(v.dtype == np.float64 for v in d.values())
    # the container's dicts hold the layers' new arrays (the same objects)
    assert model.params["0.weight"] is model.layers[0].params["weight"]
    assert model.buffers["1.running_var"] is model.layers[1].buffers["running_var"]
    assert model.layers[1].dtype == np.float64 and model.layers[4].dtype == np.float64
    sd = model.state_dict()
    assert sd["1.num_batches_tracked"].dtype == np.int64
    for k, v in before.items():
        assert np.array_equal(sd[k], v)   # float32 -> float64 is exact
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    y = model(x)
    assert y.dtype == np.float64
    model.backward(np.ones_like(y))
    assert model.grads["0.weight"].dtype == np.float64
    model.to(np.float32)
    assert model.params["4.bias"].dtype == np.float32 and model.layers[1].dtype == np.float32
    assert model(x.astype(np.float32)).dtype == np.float32
    with pytest.raises(TypeError, match="dtype"):
        model.to(np.int32)


def test_to_is_a_noop_for_the_same_dtype_so_optimizers_keep_their_arrays():
    model = Sequential(Linear(3, 2, seed=0))
    w = model.params["0.weight"]
    model.float()
    assert model.params["0.weight"] is w
    model.double()
    assert model.params["0.weight"] is not w    # build optimizers after .to(), as torch says


# ---- unbatched (C, H, W) -------------------------------------------------------------------

UNBATCHED = [
    lambda: Conv2d(3, 4, 3, padding=1, seed=0),
    lambda: Conv2d(3, 3, 3, stride=2, groups=3, seed=0),        # depthwise path
    lambda: Conv2d(3, 4, 1, stride=2, seed=0),                  # subsampled path
    lambda: ConvTranspose2d(3, 2, 3, stride=2, seed=0),
    lambda: MaxPool2d(2),
    lambda: AvgPool2d(3, 2, 1),
    lambda: AdaptiveAvgPool2d(2),
    lambda: AdaptiveMaxPool2d((3, 2)),
    lambda: GlobalAvgPool2d(),
]


@pytest.mark.parametrize("make", UNBATCHED)
def test_unbatched_input_gives_the_batched_results_without_the_batch_axis(make, rng):
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    a, b = make(), make()
    y = a(x)
    yb = b(x[None])
    assert y.shape == yb.shape[1:]
    assert np.array_equal(y, yb[0])
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dxb = a.backward(dy), b.backward(dy[None])
    assert dx.shape == x.shape and np.array_equal(dx, dxb[0])
    for k in a.grads:
        assert np.array_equal(a.grads[k], b.grads[k])
    with pytest.raises(ValueError):
        a.backward(dy[None])    # a batched dy for an unbatched input


def test_unbatched_functional_ops_match_torch(rng):
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    xt, wt = torch_tensor(x), torch_tensor(w)
    assert_close(F.conv2d(x, w, padding=1), torch.nn.functional.conv2d(xt, wt, padding=1),
                 np.float32)
    assert_close(F.max_pool2d(x, 2), torch.nn.functional.max_pool2d(xt, 2), np.float32)
    assert_close(F.avg_pool2d(x, 3, 2, 1), torch.nn.functional.avg_pool2d(xt, 3, 2, 1),
                 np.float32)
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape, 2)
    assert dx.shape == x.shape and dx.sum() == y.size
    dy = np.ones((4, 7, 6), np.float32)
    dx, dw, db = F.conv2d_backward(dy, x, w, padding=1)
    assert dx.shape == x.shape and dw.shape == w.shape
    with pytest.raises(ValueError, match="dy must be 3-d"):
        F.avg_pool2d_backward(dy[None], x.shape, 3, 2, 1)


def test_norm_layers_refuse_unbatched_input_as_torch():
    with pytest.raises(ValueError, match="4-d"):
        BatchNorm2d(3)(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError):
        torch.nn.BatchNorm2d(3)(torch.zeros(3, 4, 4))


# ---- input= ----------------------------------------------------------------------------------

def test_functional_ops_take_input_as_keyword(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    assert np.array_equal(F.conv2d(input=x, weight=w), F.conv2d(x, w))
    assert np.array_equal(F.max_pool2d(input=x, kernel_size=2), F.max_pool2d(x, 2))
    assert np.array_equal(F.avg_pool2d(input=x, kernel_size=2), F.avg_pool2d(x, 2))
    assert np.array_equal(F.relu(input=x), F.relu(x))
    assert np.array_equal(F.adaptive_avg_pool2d(input=x, output_size=2),
                          F.adaptive_avg_pool2d(x, 2))
    assert np.array_equal(F.group_norm(input=x, num_groups=3), F.group_norm(x, 3))
    assert np.array_equal(F.linear(input=x[:, :, 0, 0], weight=w[:, :, 0, 0]),
                          F.linear(x[:, :, 0, 0], w[:, :, 0, 0]))


# ---- conv2d_input_grad: the conv's dx-only entry point -----------------------------------------

INPUT_GRAD = [
    dict(C=4, F_=6, k=3, stride=1, padding=1, dilation=1, groups=1),
    dict(C=4, F_=6, k=3, stride=2, padding=0, dilation=2, groups=2),
    dict(C=4, F_=4, k=3, stride=2, padding=1, dilation=1, groups=4),     # depthwise
    dict(C=1, F_=3, k=2, stride=3, padding=0, dilation=1, groups=1),     # single channel
    dict(C=4, F_=6, k=1, stride=1, padding=0, dilation=1, groups=1),     # nchw
    dict(C=4, F_=6, k=1, stride=2, padding=0, dilation=1, groups=2),     # subsampled
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a", INPUT_GRAD, ids=str)
def test_conv2d_input_grad_vs_torch_and_conv2d_backward(a, dtype, rng):
    x_shape = (2, a["C"], 9, 8)
    w = rng.standard_normal((a["F_"], a["C"] // a["groups"], a["k"], a["k"])).astype(dtype)
    args = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                groups=a["groups"])
    x = rng.standard_normal(x_shape).astype(dtype)
    y = F.conv2d(x, w, **args)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.conv2d_input_grad(dy, w, x_shape, **args)
    assert dx.dtype == dtype and dx.shape == x_shape
    assert np.array_equal(dx, F.conv2d_backward(dy, x, w, **args)[0])
    ref = torch.nn.grad.conv2d_input(x_shape, torch_tensor(w), torch_tensor(dy), **args)
    assert_close(dx, ref, dtype)
    dx1 = F.conv2d_input_grad(dy[0], w, x_shape[1:], **args)
    assert np.array_equal(dx1, F.conv2d_input_grad(dy[:1], w, (1,) + x_shape[1:], **args)[0])


def test_conv2d_input_grad_bad_arguments():
    w = np.zeros((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="x_shape"):
        F.conv2d_input_grad(np.zeros((1, 4, 3, 3), np.float32), w, (1, 2, 5, 5, 1))
    with pytest.raises(ValueError, match=r"dy must have the output shape \(1, 4, 3, 3\)"):
        F.conv2d_input_grad(np.zeros((1, 4, 2, 3), np.float32), w, (1, 2, 5, 5))
    with pytest.raises(ValueError, match="channels"):
        F.conv2d_input_grad(np.zeros((1, 4, 3, 3), np.float32), w, (1, 3, 5, 5))
    with pytest.raises(TypeError, match="dy has dtype float64"):
        F.conv2d_input_grad(np.zeros((1, 4, 3, 3)), w, (1, 2, 5, 5))


# ---- nbconv.save / nbconv.load -------------------------------------------------------------

def test_save_load_round_trip_and_torch_files(tmp_path):
    model = Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4), ReLU())
    model.layers[1].num_batches_tracked = 7
    nbconv.save(model.state_dict(), tmp_path / "m.safetensors")
    twin = Sequential(Conv2d(3, 4, 3, seed=1), BatchNorm2d(4), ReLU())
    twin.load_state_dict(nbconv.load(tmp_path / "m.safetensors"))
    for k, v in model.state_dict().items():
        assert np.array_equal(twin.state_dict()[k], v)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    torch.save(tm.state_dict(), tmp_path / "m.pt")
    twin.load_state_dict(nbconv.load(tmp_path / "m.pt"))
    assert np.array_equal(twin.params["0.weight"], tm[0].weight.detach().numpy())


# ---- nbconv.summary --------------------------------------------------------------------------

def test_summary_of_the_three_layer_net_by_hand():
    s = nbconv.summary(nbconv.three_layer_convnet(seed=0), (1, 3, 32, 32))
    conv_out = 32 * 32 * 32
    expect = [  # (layer, output shape, params, mult-adds)
        ("Conv2d", (1, 32, 32, 32), 32 * 3 * 7 * 7 + 32, conv_out * 3 * 7 * 7),
        ("ReLU", (1, 32, 32, 32), 0, 0),
        ("MaxPool2d", (1, 32, 16, 16), 0, 0),
        ("Flatten", (1, 8192), 0, 0),
        ("Linear", (1, 100), 8192 * 100 + 100, 8192 * 100),
        ("ReLU", (1, 100), 0, 0),
        ("Linear", (1, 10), 100 * 10 + 10, 100 * 10),
    ]
    got = [(r["layer"], r["output_shape"], r["params"], r["macs"]) for r in s.rows]
    assert got == expect
    assert [r["index"] for r in s.rows] == [str(i) for i in range(7)]
    assert [r["activation_bytes"] for r in s.rows] == [4 * int(np.prod(e[1])) for e in expect]
    assert s.totals["params"] == 4736 + 819300 + 1010 == 825046
    assert s.totals["macs"] == 4816896 + 819200 + 1000 == 5637096
    assert s.totals["activation_bytes"] == 328520
    assert s.totals["input_bytes"] == 3 * 32 * 32 * 4
    text = str(s)
    assert "825,046" in text and "5,637,096" in text and "Conv2d (0)" in text
    # a batch of 8 scales the mult-adds and activations, not the parameters
    s8 = nbconv.summary(nbconv.three_layer_convnet(seed=0), (8, 3, 32, 32))
    assert s8.totals["macs"] == 8 * s.totals["macs"] and s8.totals["params"] == 825046


def test_summary_shapes_agree_with_forward_and_fall_back_to_running(rng):
    class Twice(nbconv.Layer):   # no output_shape: the summary runs it on zeros
        def forward(self, x):
            return np.concatenate([x, x], axis=1)

    model = Sequential(Conv2d(3, 4, 3, stride=2, padding=1, seed=0),
                       BatchNorm2d(4), Twice(), AdaptiveAvgPool2d((2, 3)),
                       ConvTranspose2d(8, 2, 3, stride=2, output_padding=1, seed=0),
                       GroupNorm(1, 2), GlobalAvgPool2d(), Dropout(0.5), Linear(2, 5, seed=0))
    s = nbconv.summary(model, (2, 3, 11, 9))
    x = rng.standard_normal((2, 3, 11, 9)).astype(np.float32)
    shapes = []
    for layer in model.layers:
        layer.eval()
        x = layer(x)
        shapes.append(x.shape)
    assert [r["output_shape"] for r in s.rows] == shapes
    assert s.rows[4]["macs"] == 2 * 8 * 2 * 3 * (2 * 3 * 3)
    with pytest.raises(ValueError, match="input_shape"):
        nbconv.summary(model, (2, 3, 0, 9))


def test_summary_never_counts_an_unknown_layer_as_zero():
    class Scale(nbconv.Layer):   # a user's leaf: no macs(), so its count is unknown
        def forward(self, x):
            return 2 * x

    model = Sequential(Conv2d(3, 4, 3, seed=0), Scale(), Flatten(), Linear(4 * 4 * 4, 2, seed=0))
    s = nbconv.summary(model, (1, 3, 6, 6))
    assert [r["macs"] for r in s.rows] == [4 * 4 * 4 * 27, None, 0, 128]
    assert s.totals["macs"] == 4 * 4 * 4 * 27 + 128 and s.totals["macs_unknown"] == ["1"]
    text = str(s)
    assert "Scale (1)" in text and " ?" in text and "unknown (?) count of 1" in text


def test_summary_of_a_layer_with_sub_layers_sums_them_and_changes_nothing(rng):
    class Residual(nbconv.Layer):   # a user's block: traced, its sub-layers get rows
        def __init__(self):
            super().__init__()
            self.conv = Conv2d(4, 4, 3, padding=1, seed=1)
            self.bn = BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) + x

    model = Sequential(Conv2d(3, 4, 3, padding=1, seed=0), Residual(), GlobalAvgPool2d())
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    model(x)
    saved = model[1].conv._saved
    model[1].eval()
    before = model.state_dict()
    s = nbconv.summary(model, (2, 3, 5, 5))
    assert [r["index"] for r in s.rows] == ["0", "1.conv", "1.bn", "2"]
    assert s.rows[1]["macs"] == 2 * 4 * 5 * 5 * 36 and s.totals["macs_unknown"] == []
    assert s.totals["macs"] == 2 * 4 * 25 * 27 + 2 * 4 * 25 * 36
    assert s.rows[-1]["output_shape"] == (2, 4)
    assert model[1].conv._saved is saved and "forward" not in vars(model[1].conv)
    assert model.training and model[0].training and not model[1].training   # modes kept
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)   # no statistics changed


def test_summary_input_shape_without_the_batch_axis():
    # a fully convolutional net takes unbatched (C, H, W) as PyTorch does: shapes without N
    conv = Sequential(Conv2d(3, 4, 3, seed=0), ReLU(), MaxPool2d(2))
    assert nbconv.summary(conv, (3, 8, 8)).rows[-1]["output_shape"] == (4, 3, 3)
    # Flatten then Linear cannot take what an unbatched input gives: a clear error
    with pytest.raises(ValueError, match=r"layer 4 \(Linear\) cannot take input shape "
                                         r"\(32, 256\).*no batch axis.*\(1, 3, 32, 32\)"):
        nbconv.summary(nbconv.three_layer_convnet(seed=0), (3, 32, 32))
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm2d\).*\(N, 4, H, W\)"):
        nbconv.summary(Sequential(Conv2d(3, 4, 3), BatchNorm2d(4)), (3, 8, 8))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*\(N, 3, H, W\)"):
        nbconv.summary(Sequential(Conv2d(3, 4, 3)), (1, 4, 8, 8))
