"""PyTorch twins of nbconv's ResNets (torchvision's module names and forward, written out:
torchvision's wheel does not import with the CPU build of torch used here), for the
benchmarks that run the same network in both libraries (resnet_cifar.py,
inference_memory.py, bench_train.py) and for tests/test_resnet.py, which checks them against
nbconv's nets (logits, every gradient, reprs, state_dict keys). Weights come from the nbconv
model: :func:`twin` builds the net and loads ``model.state_dict()`` with ``strict=True``."""
import torch
from torch import nn


class PadShortcut(nn.Module):
    """He et al.'s option A: stride-2 subsampling, zero channels on both sides."""

    def __init__(self, in_channels, out_channels, stride=2):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.pad = (out_channels - in_channels) // 2

    def forward(self, x):
        s, p = self.stride, self.pad
        return nn.functional.pad(x[:, :, ::s, ::s],
                                 (0, 0, 0, 0, p, self.out_channels - self.in_channels - p))

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):   # torchvision's, in-place adds and ReLUs included
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, widths=(64, 128, 256, 512),
                 stem="imagenet", shortcut="B"):
        super().__init__()
        width = 64 if stem == "imagenet" else widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.stem = stem
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for i, (planes, n) in enumerate(zip(widths, layers)):
            stride, out = (1 if i == 0 else 2), planes * block.expansion
            down = None
            if stride != 1 or inplanes != out:
                down = (PadShortcut(inplanes, out, stride) if shortcut == "A" else
                        nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out)))
            blocks = [block(inplanes, planes, stride, down)]
            blocks += [block(out, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = self.maxpool(x)
        for name, m in self.named_children():
            if name.startswith("layer"):
                x = m(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(name, shortcut="A", num_classes=None):
    """The twin of ``nbconv.models.<name>`` (resnet20/32/44/56/110 or resnet18/34/50)."""
    cifar = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
    if name in cifar:
        n = cifar[name]
        return ResNet(BasicBlock, (n, n, n), num_classes or 10, (16, 32, 64), "cifar", shortcut)
    block, layers = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
                     "resnet50": (Bottleneck, (3, 4, 6, 3))}[name]
    return ResNet(block, layers, num_classes or 1000)


def twin(model, name, shortcut="A"):
    """The PyTorch twin of the nbconv ``model`` (float32), with its state loaded strictly."""
    net = build(name, shortcut, model.fc.out_features)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()},
                        strict=True)
    return net
