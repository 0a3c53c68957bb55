"""Named sub-layers (the Layer protocol as torch.nn.Module's) and the torch habits of issue 19:
registration order and dotted names, the flat params/grads/buffers dicts, state_dict both ways
with a torch twin, named_modules/children/buffers, train/eval, to()/half()/cpu, repr, extra
state, Sequential(OrderedDict)/append, ModuleList, Linear on 1-d inputs, ``nbconv.nn``."""
import copy
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

import nbconv
import nbconv.nn as nn
from nbconv.layers import (BatchNorm2d, Conv2d, Dropout, Flatten, Identity, Layer, Linear,
                           ModuleList, ReLU, Sequential, SyncBatchNorm2d)
from helpers import torch_tensor


class Block(Layer):
    """A user's residual block written CS231n style: forward and backward by hand."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = Conv2d(c, c, 3, padding=1, bias=False, seed=0)
        self.bn1 = BatchNorm2d(c)
        self.relu = ReLU()
        self.conv2 = Conv2d(c, c, 3, padding=1, bias=False, seed=1)
        self.bn2 = BatchNorm2d(c)
        self.drop = Dropout(0.0, seed=2)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        s = out + x
        self._mask = s > 0
        return self.drop(np.where(self._mask, s, 0).astype(s.dtype))

    def backward(self, dy):
        ds = np.where(self._mask, self.drop.backward(dy), 0).astype(dy.dtype)
        dx = self.conv1.backward(self.bn1.backward(self.relu.backward(
            self.conv2.backward(self.bn2.backward(ds)))))
        return dx + ds   # both paths


class TorchBlock(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)
        self.drop = torch.nn.Dropout(0.0)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.drop(torch.relu(out + x))


def _net():
    return Sequential(Conv2d(3, 4, 3, padding=1, seed=3), Block(4), Flatten(),
                      Linear(4 * 5 * 5, 3, seed=4))


def _torch_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), TorchBlock(4),
                               torch.nn.Flatten(), torch.nn.Linear(100, 3)).double()


def test_sub_layers_register_in_order_under_torchs_names():
    block = Block(4)
    t = TorchBlock(4)
    assert [n for n, _ in block.named_children()] == [n for n, _ in t.named_children()]
    assert list(block.state_dict()) == list(t.state_dict())
    assert [n for n, _ in block.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert [n for n, _ in block.named_modules()] == [n for n, _ in t.named_modules()]
    assert [n for n, _ in block.named_buffers()] == [
        n for n, _ in t.named_buffers() if not n.endswith("num_batches_tracked")]
    assert list(block.children()) == [block.conv1, block.bn1, block.relu, block.conv2,
                                      block.bn2, block.drop]
    assert list(block.modules())[0] is block and len(list(block.modules())) == 7
    net, tnet = _net(), _torch_net()
    assert list(net.state_dict()) == list(tnet.state_dict())
    assert [n for n, _ in net.named_modules()] == [n for n, _ in tnet.named_modules()]
    assert net.get_submodule("1.bn2") is net[1].bn2
    assert repr(net) == repr(tnet).replace("TorchBlock", "Block")


def test_flat_dicts_hold_the_same_live_arrays():
    net = _net()
    assert net.params["1.conv1.weight"] is net[1].conv1.params["weight"]
    assert net.grads["1.bn2.bias"] is net[1].bn2.grads["bias"]
    assert net.buffers["1.bn1.running_var"] is net[1].bn1.buffers["running_var"]
    assert list(net.grads) == list(net.params)
    assert [id(p) for p in net.parameters()] == [id(p) for p in net.params.values()]
    assert net[1].conv1.weight is net[1].conv1.params["weight"]   # torch's attribute access
    with pytest.raises(TypeError, match="in place"):   # would silently detach the array
        net[1].conv1.weight = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(TypeError, match="in place"):
        net[1].bn1.running_var = np.ones(4, np.float32)
    opt = nbconv.optim.SGD(net.params, net.grads, lr=0.1)
    net[1].conv1.grads["weight"][...] = 1.0
    before = net[1].conv1.params["weight"].copy()
    opt.step()
    np.testing.assert_allclose(net[1].conv1.params["weight"], before - 0.1)
    # a copy or a pickle of the flat dict is a plain dict
    assert type(copy.copy(net.params)) is dict
    assert type(pickle.loads(pickle.dumps(net.params))) is dict


def test_own_parameters_of_a_layer_with_sub_layers():
    class Scaled(Layer):
        def __init__(self):
            super().__init__()
            self.lin = Linear(3, 2, seed=0)
            self.params["scale"] = np.ones(2, np.float32)   # written through to its own dict
            self.grads["scale"] = np.zeros(2, np.float32)

        def forward(self, x):
            self._y = self.lin(x)
            return self._y * self.params["scale"]

        def backward(self, dy):
            self.grads["scale"][...] = (dy * self._y).sum(0)
            return self.lin.backward(dy * self.params["scale"])

    m = Scaled()
    assert list(m.params) == ["scale", "lin.weight", "lin.bias"]
    assert list(m.state_dict()) == ["scale", "lin.weight", "lin.bias"]
    m.params["scale"] *= 2            # in-place arithmetic on an entry is fine
    assert np.all(m._params["scale"] == 2)
    with pytest.raises(TypeError, match="sub-layer's entry"):
        m.params["lin.weight"] = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="view of the tree"):
        m.params.pop("scale")
    m.register_parameter("shift", np.zeros(2, np.float32))
    assert "shift" in m.params and m.grads["shift"].shape == (2,)
    m.register_buffer("count", np.zeros(1))
    assert list(m.buffers) == ["count"]
    with pytest.raises(ValueError, match="without '.'"):
        m.register_parameter("a.b", np.zeros(1))
    x = np.ones((4, 3), np.float32)
    y = m(x)
    m.backward(np.ones_like(y))
    np.testing.assert_allclose(m.grads["scale"], m._y.sum(0))
    s = nbconv.summary(m, (4, 3))    # own parameters: a row of unknown mult-adds
    assert [(r["index"], r["macs"]) for r in s.rows] == [("-", None), ("lin", 4 * 3 * 2)]
    assert s.totals["params"] == 2 + 2 + 8 and s.totals["macs_unknown"] == ["-"]
    assert "?" in str(s) and "unknown" in str(s)


def test_state_dict_round_trips_with_a_torch_twin_and_same_outputs(rng):
    torch.manual_seed(0)
    tnet = _torch_net()
    with torch.no_grad():   # non-trivial running statistics
        for m in tnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    net = _net().double()
    net.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})
    x = rng.standard_normal((2, 3, 5, 5))
    for train in (False, True):
        net.train(train)
        tnet.train(train)
        assert all(m.training == train for m in net.modules())
        tx = torch_tensor(x, requires_grad=True)
        ty = tnet(tx)
        y = net(x)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch_tensor(dy))
    net.input_grad = True
    dx = net.backward(dy)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    for k, p in tnet.named_parameters():
        np.testing.assert_allclose(net.grads[k], p.grad.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=k)
    for k, v in tnet.state_dict().items():   # running statistics updated alike
        np.testing.assert_allclose(net.state_dict()[k], v.numpy(), rtol=1e-12, err_msg=k)
    back = _torch_net()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    # all or nothing: a mis-shaped nested key changes nothing
    sd = net.state_dict()
    bad = dict(sd, **{"1.conv2.weight": np.zeros((4, 4, 1, 1))})
    with pytest.raises(ValueError, match=r"1\.conv2\.weight"):
        net.load_state_dict(bad)
    for k, v in sd.items():
        np.testing.assert_array_equal(net.state_dict()[k], v)


def test_train_eval_to_zero_grad_reach_every_sub_layer():
    net = _net()
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    assert net.to(np.float64) is net
    assert all(v.dtype == np.float64 for d in (net.params, net.grads, net.buffers)
               for v in d.values())
    assert net[1].conv1.params["weight"].dtype == np.float64
    assert net.params["1.conv1.weight"] is net[1].conv1.params["weight"]
    for g in net.grads.values():
        g[...] = 1
    net.zero_grad()
    assert all(np.all(g == 0) for g in net.grads.values())
    assert net.to("cpu") is net and net.cpu() is net
    net.to("cpu", np.float32)
    assert net[1].bn1.params["weight"].dtype == np.float32
    net.to(device="cpu", dtype=np.float64)
    assert net[3].params["bias"].dtype == np.float64
    with pytest.raises(TypeError, match="float16 is not a compute dtype"):
        net.half()
    with pytest.raises(ValueError, match="CPU only.*cuda"):
        net.to("cuda")
    with pytest.raises(ValueError, match="CPU only"):
        net.to("cuda:0", np.float32)
    with pytest.raises(ValueError, match="CPU only"):
        net.cuda()
    with pytest.raises(TypeError, match="dtype"):
        net.to(np.int32)
    assert net[1].conv1.params["weight"].dtype == np.float64   # the refusals changed nothing


def test_extra_state_of_nested_layers_round_trips():
    a = Sequential(Linear(3, 3, seed=0), Block(4))
    b = Sequential(Linear(3, 3, seed=0), Block(4))
    a[1].drop.rng.random(5)
    state = a.get_extra_state()
    assert list(state) == ["1"] and list(state["1"]) == ["drop"]
    b.set_extra_state(state)
    assert b[1].drop.rng.random() == a[1].drop.rng.random()
    with pytest.raises(ValueError, match=r"extra state.*\['drop'\]"):
        b[1].set_extra_state({})
    c = copy.deepcopy(a)     # deep copies keep the tree
    assert list(c.state_dict()) == list(a.state_dict()) and c[1].conv1 is not a[1].conv1
    d = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(d.params["1.conv1.weight"], a.params["1.conv1.weight"])


def test_attribute_rules():
    class Early(Layer):
        def __init__(self):
            self.conv = Conv2d(1, 1, 1)
            super().__init__()

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Early()

    class NoInit(Layer):
        def __init__(self):
            pass

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        NoInit().params
    m = Block(4)
    with pytest.raises(TypeError, match="sub-layer 'conv1'"):
        m.conv1 = 3
    m.downsample = None                     # a plain attribute, as in torch
    assert "downsample" not in dict(m.named_children()) and m.downsample is None
    m.conv1 = None                          # a registered name set to None stays listed
    assert "conv1" not in dict(m.named_children()) and "(conv1): None" in repr(m)
    m.conv1 = Conv2d(4, 4, 3, padding=1)
    assert [n for n, _ in m.named_children()][0] == "conv1"   # its place is kept
    del m.drop
    assert "drop" not in dict(m.named_children())
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope
    inner = Linear(2, 2)
    inner.input_grad = False
    m.head = inner                          # the parent needs its dx
    assert inner.input_grad is True


def test_sequential_ordered_dict_append_and_module_list():
    od = OrderedDict([("conv", Conv2d(3, 4, 3)), ("act", nn.GELU()), ("pool", Identity())])
    seq = Sequential(od)
    tseq = torch.nn.Sequential(OrderedDict([("conv", torch.nn.Conv2d(3, 4, 3)),
                                            ("act", torch.nn.GELU()),
                                            ("pool", torch.nn.Identity())]))
    assert list(seq.state_dict()) == list(tseq.state_dict()) == ["conv.weight", "conv.bias"]
    assert repr(seq) == repr(tseq) and seq.conv is od["conv"] and seq[0] is od["conv"]
    assert list(seq[1:].named_children())[0][0] == "act"   # named layers keep their names
    seq.append(Flatten())
    tseq.append(torch.nn.Flatten())
    assert repr(seq) == repr(tseq)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    assert seq(x).shape == (2, 4 * 3 * 3)
    with pytest.raises(TypeError, match="Sequential.append takes an nbconv Layer"):
        seq.append(lambda v: v)
    with pytest.raises(ValueError, match="without '.'"):
        Sequential(OrderedDict([("a.b", ReLU())]))
    ml = ModuleList([Linear(2, 2, seed=i) for i in range(3)])
    tml = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    assert repr(ml) == repr(tml) and list(ml.state_dict()) == list(tml.state_dict())
    assert len(ml) == 3 and ml[-1] is list(ml)[2]
    assert ml.extend([ReLU()]) is ml and list(ml.state_dict())[-1] == "2.bias" and len(ml) == 4
    with pytest.raises(TypeError, match="ModuleList.append takes an nbconv Layer, got int"):
        ml.append(3)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5), (1, 5)])
def test_linear_takes_any_leading_axes_as_torch(shape, rng):
    layer = Linear(5, 4, dtype=np.float64, seed=0)
    tl = torch.nn.Linear(5, 4).double()
    tl.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x = rng.standard_normal(shape)
    y = layer(x)
    tx = torch_tensor(x, requires_grad=True)
    ty = tl(tx)
    assert y.shape == tuple(ty.shape) == shape[:-1] + (4,)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch_tensor(dy))
    dx = layer.backward(dy)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], tl.weight.grad.numpy(), rtol=1e-12)
    assert layer.output_shape(shape) == y.shape
    with pytest.raises(ValueError, match="in_features=5"):
        layer(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(\*, 5\)"):
        layer.output_shape((2, 4))


def test_identity_and_convert_sync_batchnorm_in_a_tree(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    ident = Identity(3, anything=True)
    assert ident(x) is x and ident.backward(x) is x
    net = _net()
    w = net.params["1.bn1.weight"]
    nbconv.layers.convert_sync_batchnorm(net, comm=None)
    assert isinstance(net[1].bn1, SyncBatchNorm2d) and net.params["1.bn1.weight"] is w
    assert [n for n, _ in net[1].named_children()][1] == "bn1"


def test_nn_namespace_runs_torch_style_model_code(rng):
    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, 32),
                                            nn.LeakyReLU(0.1), nn.Linear(32, num_classes))
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            return self.classifier(self.features(x))

        def backward(self, dy):           # the one thing torch writes for you
            return self.features.backward(self.classifier.backward(dy))

    model = Net()
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = nbconv.optim.SGD(model.params, model.grads, lr=0.05, momentum=0.9)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    labels = np.arange(8) % 10
    losses = []
    model.train()
    for _ in range(5):
        loss = crit(model(x), labels)
        model.backward(crit.backward())
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert nn.Module is nbconv.Layer and nn.functional is nbconv.functional
    assert list(model.state_dict())[:3] == ["features.0.weight", "features.0.bias",
                                            "features.1.weight"]
    s = nbconv.summary(model, (1, 3, 8, 8))
    assert s.totals["params"] == sum(p.size for p in model.parameters())
    assert [r["index"] for r in s.rows][:2] == ["features.0", "features.1"]


def test_kaiming_normal_statistics_and_errors():
    w = np.zeros((64, 32, 3, 3), np.float32)
    nbconv.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=0)
    np.testing.assert_allclose(w.std(), np.sqrt(2 / (64 * 9)), rtol=0.02)
    w2 = np.zeros_like(w)
    nbconv.init.kaiming_normal_(w2, mode="fan_out", nonlinearity="relu", generator=0)
    np.testing.assert_array_equal(w, w2)
    with pytest.raises(ValueError, match="mode"):
        nbconv.init.kaiming_normal_(w, mode="fan")
    with pytest.raises(ValueError, match="2 dimensions"):
        nbconv.init.kaiming_normal_(np.zeros(3))
    with pytest.raises(TypeError, match="float"):
        nbconv.init.zeros_(np.zeros(3, np.int64))
