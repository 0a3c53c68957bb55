"""Training-step benchmark: forward + backward + Adam step on a batch of 64 CIFAR images (and
ResNet-20 at the batch of 128 its recipe uses: the row "resnet20 b128").

Rows: the CS231n three-layer net with a hidden layer of 500, the deep (VGG-style) net of
:func:`nbconv.models.deep_convnet` and ResNet-20 (He et al.'s CIFAR net, residual blocks; its
torch twin from ``_torch_resnet.py``). The PyTorch twin is the same network with the same initial
parameters copied in, trained with ``torch.optim.Adam``; both use 2 threads. Rates are training
images per second; ratios are medians of per-round ratios (interleaved rounds, one process).

    python benchmarks/report.py benchmarks/bench_train.py
"""
import numba
import numpy as np
import pytest

from _harness import compare
from nbconv import optim
from nbconv.layers import SoftmaxCrossEntropy
from nbconv.models import deep_convnet, resnet20, three_layer_convnet

torch = pytest.importorskip("torch")
nn = torch.nn

BATCH = 64


class _GAP(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


HIDDEN = 500  # the three-layer net's hidden layer in the issue-16 target (the CLI default: 100)


def _torch_three_layer(hidden=HIDDEN):
    return nn.Sequential(nn.Conv2d(3, 32, 7, padding=3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 16 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _torch_deep(widths=(32, 64, 128), blocks=(1, 1, 1)):
    mods, c = [], 3
    for i, (w, b) in enumerate(zip(widths, blocks)):
        for _ in range(b):
            mods += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        if i < len(widths) - 1:
            mods.append(nn.MaxPool2d(2))
    return nn.Sequential(*mods, _GAP(), nn.Linear(c, 10))


def _step_fns(model, net, x, y):
    with torch.no_grad():
        sd = net.state_dict()
        for k, v in model.state_dict().items():
            sd[k].copy_(torch.from_numpy(v))
    opt = optim.Adam(model.params, model.grads, lr=1e-3)
    ce = SoftmaxCrossEntropy()

    def nbconv_step():
        _, d = ce(model(x), y)
        model.backward(d)
        opt.step()

    topt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(tx), ty).backward()
        topt.step()

    return nbconv_step, torch_step


@pytest.mark.parametrize("name, batch", [("three-layer", BATCH), ("deep", BATCH),
                                         ("resnet20", BATCH), ("resnet20", 128)])
def test_train_step(benchmark, name, batch):
    torch.set_num_threads(2)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    if name == "three-layer":
        model, net = three_layer_convnet(hidden=HIDDEN, seed=0), _torch_three_layer()
    elif name == "deep":
        model, net = deep_convnet(seed=0), _torch_deep()
    else:
        from _torch_resnet import build
        model, net = resnet20(seed=0), build("resnet20")
    nb, tt = _step_fns(model, net, x, y)
    row = name if batch == BATCH else f"{name} b{batch}"
    compare(benchmark, "training step (fwd+bwd+Adam) float32", row, nb, {"torch": tt},
            work=batch * 1e9, unit="images/s", legend=f"{name}, batch {batch}")
