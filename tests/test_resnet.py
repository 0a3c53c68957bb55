"""Residual networks: BasicBlock, Bottleneck, PadShortcut and the ResNets of nbconv.models against
PyTorch twins with torchvision's module names (torchvision itself does not import with the CPU
torch used here): logits and every parameter gradient (float64 <= 1e-10 relative, float32 <=
1e-4), train/eval and running statistics, state_dicts both ways (a torch file loaded with
strict=True), parameter and multiply-add counts, and shapes that do not fit.

Shapes are kept few and small (ResNet-20 at 32x32 and ResNet-18 at 32x32 and 64x64, batch 2;
one ResNet-18 forward at 224x224, batch 1): each new shape and dtype compiles kernel
specialisations. ResNet-18's train-mode gradients are compared at 64x64: at 32x32 with batch 2
the BatchNorms of layer4 see 2 values per channel (1x1 maps), where their input gradient is
zero in exact arithmetic and what both libraries compute is rounding noise (measured: 6e-10
relative in float64, 5e-4 in float32); at 32x32 the comparison runs in eval mode."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from torch import nn

import nbconv
from nbconv import models
from nbconv.layers import Layer
from nbconv.layers import BasicBlock as NBBasicBlock
from nbconv.layers import Bottleneck as NBBottleneck
from nbconv.layers import PadShortcut as NBPadShortcut


# ---- the PyTorch twins: the benchmarks' (torchvision's code written out: same names, same
# forward), so the nets the benchmarks time are the ones checked here ------------------------

def _load_twins():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "_torch_resnet.py")
    spec = importlib.util.spec_from_file_location("_torch_resnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_twins = _load_twins()
PadShortcut, BasicBlock, Bottleneck, ResNet = (_twins.PadShortcut, _twins.BasicBlock,
                                               _twins.Bottleneck, _twins.ResNet)


def torch_resnet20(shortcut):
    return _twins.build("resnet20", shortcut)


def torch_resnet18():
    return _twins.build("resnet18")


# ---- helpers --------------------------------------------------------------------------------

def rel(a, b):
    """Largest absolute difference relative to the largest magnitude of ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


TOL = {np.float64: 1e-10, np.float32: 1e-4}


def to_torch(model, net, dtype):
    """``net`` in ``dtype`` with ``model``'s state (cast first: loading casts to the net's)."""
    net.to(torch.float64 if dtype == np.float64 else torch.float32)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()},
                        strict=True)
    return net


def vary_bn(model, seed=0):
    """Non-trivial BatchNorm weights, biases and running statistics (a fresh net has 1, 0)."""
    g = np.random.default_rng(seed)
    for name, m in model.named_modules():
        if isinstance(m, nbconv.BatchNorm2d):
            m.params["weight"][...] = g.uniform(0.5, 1.5, m.num_features)
            m.params["bias"][...] = g.uniform(-0.2, 0.2, m.num_features)
            m.buffers["running_mean"][...] = g.uniform(-0.3, 0.3, m.num_features)
            m.buffers["running_var"][...] = g.uniform(0.5, 2.0, m.num_features)


def check_parity(model, net, x, dtype, labels, train=True):
    """Logits, loss gradient for every parameter and the input, running statistics (updated in
    train mode), in train (batch statistics) or eval mode; then eval-mode logits."""
    tol = TOL[dtype]
    model.train(train)
    net.train(train)
    model.input_grad = True
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tlogits = net(tx)
    tloss = nn.functional.cross_entropy(tlogits, torch.from_numpy(labels))
    tloss.backward()
    logits = model(x)
    assert logits.dtype == dtype
    loss, d = nbconv.SoftmaxCrossEntropy()(logits, labels)
    dx = model.backward(d)
    assert rel(logits, tlogits.detach().numpy()) <= tol
    assert rel(loss, tloss.item()) <= tol
    assert rel(dx, tx.grad.numpy()) <= tol
    tparams = dict(net.named_parameters())
    assert list(model.params) == list(tparams)
    for k, p in tparams.items():
        assert rel(model.grads[k], p.grad.numpy()) <= tol, k
    tstate = net.state_dict()
    for k, v in model.state_dict().items():
        assert rel(v, tstate[k].numpy()) <= tol or v.ndim == 0, k
        if v.ndim == 0:
            assert v == tstate[k].item(), k
    model.eval()
    net.eval()
    with torch.no_grad():
        assert rel(model(x), net(torch.from_numpy(x)).numpy()) <= tol


# ---- whole networks ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_matches_torch_twin(shortcut, dtype):
    model = models.resnet20(shortcut=shortcut, seed=1, dtype=dtype)
    vary_bn(model)
    net = to_torch(model, torch_resnet20(shortcut), dtype)
    assert repr(model) == repr(net)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(dtype)
    check_parity(model, net, x, dtype, np.array([3, 7]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("size, train", [(32, False), (64, True)])
def test_resnet18_matches_torch_twin(size, train, dtype):
    model = models.resnet18(seed=3, dtype=dtype)
    vary_bn(model, 1)
    net = to_torch(model, torch_resnet18(), dtype)
    assert repr(model) == repr(net)
    x = np.random.default_rng(4).standard_normal((2, 3, size, size)).astype(dtype)
    check_parity(model, net, x, dtype, np.array([5, 999]), train)


def test_resnet18_loads_a_torch_file_strict_and_matches_at_224(tmp_path):
    torch.manual_seed(0)
    net = torch_resnet18()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    sd = net.state_dict()
    assert len(sd) == 122 and sum(p.numel() for p in net.parameters()) == 11_689_512
    torch.save(sd, tmp_path / "resnet18.pth")
    model = models.resnet18()
    res = model.load_state_dict(nbconv.load_torch(tmp_path / "resnet18.pth"), strict=True)
    assert res.missing_keys == [] and res.unexpected_keys == []
    model.eval()
    net.eval()
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    ours = model(x)
    assert ours.shape == (1, 1000) and rel(ours, theirs) <= 1e-4
    assert np.argmax(ours) == np.argmax(theirs)


def test_model_structure_counts_and_summary():
    r20 = models.resnet20(seed=0)
    assert sum(p.size for p in r20.parameters()) == 269_722 and round(269_722 / 1e6, 2) == 0.27
    n56 = sum(p.size for p in models.resnet56(seed=0).parameters())
    assert n56 == 853_018 and round(n56 / 1e6, 2) == 0.85
    assert sum(p.size for p in models.resnet20(shortcut="B").parameters()) == 272_474
    s = nbconv.summary(r20, (1, 3, 32, 32))
    assert s.totals["params"] == 269_722 and s.totals["macs_unknown"] == []
    convs = (32 * 32 * 16 * 27 + 6 * 32 * 32 * 16 * 144      # conv1, layer1
             + 16 * 16 * 32 * 144 + 5 * 16 * 16 * 32 * 288   # layer2
             + 8 * 8 * 64 * 288 + 5 * 8 * 8 * 64 * 576)      # layer3
    assert s.totals["macs"] == convs + 64 * 10 == 40_551_040
    assert [r["index"] for r in s.rows][:4] == ["conv1", "bn1", "relu", "layer1.0.conv1"]
    assert s.rows[-1]["output_shape"] == (1, 10)
    r18 = models.resnet18()
    sd = r18.state_dict()
    assert list(sd) == list(torch_resnet18().state_dict())   # torchvision's 122 keys, in order
    assert [n for n, _ in r18.named_modules()] == [n for n, _ in torch_resnet18().named_modules()]
    s = nbconv.summary(r18, (1, 3, 224, 224))
    assert s.totals["params"] == 11_689_512
    assert s.totals["macs"] == 1_814_073_344 and round(s.totals["macs"] / 1e9, 2) == 1.81
    assert s.rows[-1]["output_shape"] == (1, 1000)
    assert r18.output_shape((2, 3, 224, 224)) == (2, 1000)
    assert r18.macs((1, 3, 224, 224)) == 1_814_073_344
    assert sum(p.size for p in models.resnet34().parameters()) == 21_797_672
    r50 = models.resnet50()
    assert sum(p.size for p in r50.parameters()) == 25_557_032
    assert list(r50.state_dict()) == list(ResNet(Bottleneck, (3, 4, 6, 3)).state_dict())


def test_seed_reproduces_and_kaiming_fan_out():
    a, b = models.resnet20(seed=7), models.resnet20(seed=7)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert not np.array_equal(a.params["conv1.weight"], models.resnet20(seed=8).params[
        "conv1.weight"])
    w = models.resnet18(seed=0).params["layer4.1.conv2.weight"]   # fan_out = 512 * 9
    np.testing.assert_allclose(w.std(), np.sqrt(2 / (512 * 9)), rtol=0.01)
    z = models.resnet18(zero_init_residual=True)
    assert np.all(z.params["layer1.0.bn2.weight"] == 0)
    with pytest.raises(ValueError, match="6n"):
        models.cifar_resnet(21)
    with pytest.raises(ValueError, match="shortcut"):
        models.resnet20(shortcut="C")


# ---- blocks -------------------------------------------------------------------------------

def test_bottleneck_matches_torch_twin():
    dtype = np.float64
    down = nbconv.Sequential(nbconv.Conv2d(8, 16, 1, 2, bias=False, dtype=dtype, seed=0),
                             nbconv.BatchNorm2d(16, dtype=dtype))
    block = NBBottleneck(8, 4, stride=2, downsample=down, dtype=dtype, seed=1)
    vary_bn(block)
    net = Bottleneck(8, 4, 2, nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False),
                                            nn.BatchNorm2d(16)))
    to_torch(block, net, dtype)
    assert repr(block) == repr(net)
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    y = block(x)
    ty = net(tx)
    assert rel(y, ty.detach().numpy()) <= 1e-10
    dy = np.random.default_rng(1).standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    assert rel(block.backward(dy), tx.grad.numpy()) <= 1e-10   # both paths' gradients
    for k, p in net.named_parameters():
        assert rel(block.grads[k], p.grad.numpy()) <= 1e-10, k
    assert block.output_shape((2, 8, 6, 6)) == y.shape == (2, 16, 3, 3)


def test_pad_shortcut_and_identity_block_finite_differences():
    sc = NBPadShortcut(2, 6, 2)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    y = sc(x)
    assert y.shape == (1, 6, 3, 3) and np.all(y[:, :2] == 0) and np.all(y[:, 4:] == 0)
    np.testing.assert_array_equal(y[:, 2:4], x[:, :, ::2, ::2])
    assert repr(sc) == repr(PadShortcut(2, 6, 2)) and sc.state_dict() == {}
    dx = sc.backward(np.ones_like(y))
    assert dx.sum() == 2 * 9 and np.all(dx[:, :, 1::2] == 0)
    block = NBBasicBlock(3, 3, dtype=np.float64, seed=0)
    block.eval()   # running statistics: the block is a smooth function of x
    vary_bn(block)
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4))
    w = np.random.default_rng(2).standard_normal((1, 3, 4, 4))
    block(x)
    dx = block.backward(w)
    from helpers import numeric_grad
    np.testing.assert_allclose(dx, numeric_grad(lambda: float(np.sum(block(x) * w)), x),
                               rtol=1e-5, atol=1e-8)
    block.input_grad = False
    block(x)
    assert block.backward(w) is None


def test_mismatched_blocks_raise_naming_both_shapes():
    with pytest.raises(ValueError, match=r"branch gives \(1, 32, 8, 8\).*identity shortcut "
                                         r"gives \(1, 16, 16, 16\)"):
        NBBasicBlock(16, 32, stride=2)
    bad = nbconv.Sequential(nbconv.Conv2d(16, 32, 1, bias=False), nbconv.BatchNorm2d(32))
    with pytest.raises(ValueError, match=r"branch gives \(1, 32, 8, 8\).*downsample shortcut "
                                         r"gives \(1, 32, 16, 16\)"):
        NBBasicBlock(16, 32, stride=2, downsample=bad)
    with pytest.raises(ValueError, match="downsample cannot take"):
        NBBasicBlock(16, 32, stride=2, downsample=nbconv.Conv2d(8, 32, 1, 2))
    with pytest.raises(ValueError, match="out_channels must be >= 16"):
        NBPadShortcut(16, 8)
    with pytest.raises(TypeError, match="downsample"):
        NBBasicBlock(4, 4, downsample=lambda x: x)

    class Halve(Layer):   # a user's shortcut without output_shape: checked at forward
        def forward(self, x):
            return x[:, :, ::2, ::2]

    block = NBBasicBlock(4, 4, stride=1, downsample=Halve())
    with pytest.raises(ValueError, match=r"branch gives \(2, 4, 6, 6\).*shortcut gives "
                                         r"\(2, 4, 3, 3\)"):
        block(np.zeros((2, 4, 6, 6), np.float32))
    with pytest.raises(ValueError, match="channels"):
        NBBasicBlock(4, 4)(np.zeros((2, 3, 6, 6), np.float32))


def test_trainer_trains_and_resumes_a_resnet(tmp_path):
    g = np.random.default_rng(0)
    data = {"x_train": g.standard_normal((16, 3, 32, 32)).astype(np.float32),
            "y_train": g.integers(0, 10, 16),
            "x_val": g.standard_normal((8, 3, 32, 32)).astype(np.float32),
            "y_val": g.integers(0, 10, 8)}

    def trainer():
        model = models.resnet20(seed=0)
        opt = nbconv.optim.SGD(model.params, model.grads, lr=0.1, momentum=0.9,
                               weight_decay=1e-4)
        return nbconv.Trainer(model, opt, batch_size=8, progress=False, warmup=False)

    a = trainer()
    a.fit(data, 1, checkpoint=tmp_path / "ckpt.npz")
    assert a.model.buffers["layer1.0.bn1.running_var"].std() > 0   # statistics were tracked
    b = trainer()
    b.load(tmp_path / "ckpt.npz")
    for k, v in a.model.state_dict().items():
        np.testing.assert_array_equal(b.model.state_dict()[k], v, err_msg=k)
    a.fit(data, 2)
    b.fit(data, 2)
    for k, v in a.model.state_dict().items():   # the resumed run continues bitwise
        np.testing.assert_array_equal(b.model.state_dict()[k], v, err_msg=k)
