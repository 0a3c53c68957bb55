"""Ready-made networks built from :mod:`nbconv.layers` (logits out; train them with
:class:`nbconv.layers.SoftmaxCrossEntropy` or :class:`nbconv.layers.CrossEntropyLoss`).

CIFAR-10 (inputs ``(N, 3, 32, 32)``, outputs ``(N, 10)``):

- :func:`three_layer_convnet`: the CS231n three-layer net ``conv 7x7 (32 filters, pad 3) -> ReLU
  -> 2x2 max pool -> Linear(32*16*16, hidden) -> ReLU -> Linear(hidden, 10)``.
- :func:`deep_convnet`: stages of ``conv 3x3 (pad 1) -> GroupNorm/BatchNorm2d -> ReLU`` blocks,
  each stage but the last followed by a 2x2 max pool, then ``GlobalAvgPool2d -> Linear``.
- :func:`resnet20`, :func:`resnet32`, :func:`resnet44`, :func:`resnet56`, :func:`resnet110`:
  He et al. 2016's CIFAR ResNets (section 4.2), shortcut option A or B.

ImageNet (torchvision's ResNets, module names and state_dict keys included, so a torchvision
state_dict loads with ``strict=True``; any input size of at least 32x32): :func:`resnet18`,
:func:`resnet34`, :func:`resnet50`.

The first two are :class:`nbconv.layers.Sequential` models, the ResNets :class:`ResNet`; all
are reproducible from ``seed``.
"""
import math

import numpy as np

from . import init
from ._checks import check_dtype, check_float, check_int
from .layers import (AdaptiveAvgPool2d, BasicBlock, BatchNorm2d, Bottleneck, Conv2d, Flatten,
                     GlobalAvgPool2d, GroupNorm, Layer, Linear, MaxPool2d, PadShortcut, ReLU,
                     Sequential)

__all__ = ["three_layer_convnet", "deep_convnet", "MODELS", "ResNet", "cifar_resnet",
           "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "resnet34",
           "resnet50"]


def _seeds(seed, n):
    """``n`` independent integer seeds from ``seed`` (``None`` -> ``n`` times ``None``)."""
    if seed is None:
        return [None] * n
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


def three_layer_convnet(hidden=100, weight_scale=None, num_classes=10, input_shape=(3, 32, 32),
                        num_filters=32, filter_size=7, seed=None, dtype=np.float32):
    """The CS231n three-layer convnet for ``(N, C, H, W)`` inputs (``input_shape = (C, H, W)``,
    H and W even):

    ``Conv2d(C, F, k, padding=k//2) -> ReLU -> MaxPool2d(2) -> Flatten -> Linear(F*H/2*W/2,
    hidden) -> ReLU -> Linear(hidden, num_classes)``; output ``(N, num_classes)``.

    ``weight_scale=None`` keeps PyTorch's default initialisation (``U(+-1/sqrt(fan_in))`` for
    weights and biases); a float draws every weight from ``normal(0, weight_scale)`` and sets
    the biases to zero, as CS231n does.
    """
    dtype = check_dtype(dtype)
    hidden = check_int(hidden, "hidden", 1)
    c, h, w = (check_int(v, "input_shape", 1) for v in input_shape)
    if h % 2 or w % 2:
        raise ValueError(f"input_shape H and W must be even (2x2 pooling), got {input_shape}")
    if filter_size % 2 != 1:
        raise ValueError(f"filter_size must be odd (padding filter_size//2 keeps H, W), got {filter_size}")
    s = _seeds(seed, 4)
    model = Sequential(
        Conv2d(c, num_filters, filter_size, padding=filter_size // 2, dtype=dtype, seed=s[0]),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(num_filters * (h // 2) * (w // 2), hidden, dtype=dtype, seed=s[1]),
        ReLU(),
        Linear(hidden, num_classes, dtype=dtype, seed=s[2]),
    )
    if weight_scale is not None:
        weight_scale = check_float(weight_scale, "weight_scale", 0.0, min_inclusive=False)
        rng = np.random.default_rng(s[3])
        for name, p in model.params.items():
            if name.endswith("weight"):
                p[...] = rng.normal(0.0, weight_scale, p.shape)
            else:
                p[...] = 0
    return model


def _norm(kind, channels, groups, dtype):
    if kind == "group":
        return GroupNorm(min(groups, channels), channels, dtype=dtype)
    if kind == "batch":
        return BatchNorm2d(channels, dtype=dtype)
    raise ValueError(f"norm must be 'group' or 'batch', got {kind!r}")


def deep_convnet(widths=(32, 64, 128), blocks=(1, 1, 1), norm="batch", groups=8,
                 num_classes=10, in_channels=3, seed=None, dtype=np.float32):
    """A deeper CIFAR net for ``(N, in_channels, H, W)`` inputs.

    Stage ``i`` has ``blocks[i]`` blocks ``Conv2d(3x3, widths[i], padding=1, bias=False) ->
    norm -> ReLU``; every stage but the last ends with ``MaxPool2d(2)`` (so H and W shrink by
    ``2**(len(widths)-1)``), then ``GlobalAvgPool2d -> Linear(widths[-1], num_classes)``;
    output ``(N, num_classes)``. ``norm``: ``'batch'`` (``BatchNorm2d``) or ``'group'``
    (``GroupNorm(min(groups, C), C)``, independent of the batch).

    The defaults (three stages of one block, 32/64/128 channels, BatchNorm2d) cost about twice
    the three-layer net's multiply-adds; trained 20 epochs with AdamW and random flips on the
    5,438-image CIFAR-10 subset they beat the three-layer net (see ``scripts/train_cifar.py``).
    BatchNorm2d trained clearly better than GroupNorm(8) there.
    """
    dtype = check_dtype(dtype)
    if len(widths) != len(blocks) or not widths:
        raise ValueError(f"widths and blocks must have the same non-zero length, got {widths}, {blocks}")
    s = iter(_seeds(seed, sum(blocks) + 1))
    layers, c = [], check_int(in_channels, "in_channels", 1)
    for i, (w, b) in enumerate(zip(widths, blocks)):
        for _ in range(check_int(b, "blocks", 1)):
            layers += [Conv2d(c, w, 3, padding=1, bias=False, dtype=dtype, seed=next(s)),
                       _norm(norm, w, groups, dtype), ReLU()]
            c = w
        if i < len(widths) - 1:
            layers.append(MaxPool2d(2))
    layers += [GlobalAvgPool2d(), Linear(c, num_classes, dtype=dtype, seed=next(s))]
    return Sequential(*layers)


# ---- residual networks ---------------------------------------------------------------------

class ResNet(Layer):
    """A residual network with torchvision's module names: ``conv1 -> bn1 -> relu ->
    [maxpool] -> layer1 ... layerK -> avgpool -> (flatten) -> fc``, ``(N, 3, H, W) ->
    (N, num_classes)``.

    ``block``: :class:`~nbconv.layers.BasicBlock` or :class:`~nbconv.layers.Bottleneck`;
    ``layers``: blocks per stage; ``widths``: the stages' ``planes`` (the first stage has
    stride 1, the others 2). ``stem="imagenet"``: ``conv1`` 7x7 stride 2 (64 channels) and a
    3x3 stride-2 ``maxpool``, as torchvision; ``"cifar"``: ``conv1`` 3x3 stride 1 with
    ``widths[0]`` channels, no max pool (He et al. 2016, section 4.2). A stage that changes
    the shape gets a shortcut: ``shortcut="B"`` a ``downsample = Sequential(Conv2d 1x1 with
    the stride, BatchNorm2d)`` (torchvision's), ``"A"`` a parameter-free
    :class:`~nbconv.layers.PadShortcut`.

    Initialisation as torchvision's, from ``seed``: every conv ``kaiming_normal_(mode=
    "fan_out", nonlinearity="relu")``, BatchNorm weight 1 and bias 0 (the last BatchNorm of
    each block 0 with ``zero_init_residual``), ``fc`` PyTorch's default uniform. As a
    :class:`~nbconv.layers.Sequential`, the model skips its input's gradient unless
    ``input_grad`` is set.
    """

    def __init__(self, block, layers, num_classes=1000, widths=(64, 128, 256, 512),
                 stem="imagenet", shortcut="B", zero_init_residual=False, seed=None,
                 dtype=np.float32):
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise TypeError(f"block must be BasicBlock or Bottleneck, got {block!r}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (parameter-free) or 'B' (1x1 projection), "
                             f"got {shortcut!r}")
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers and widths must have the same non-zero length, got "
                             f"{layers} and {widths}")
        dtype = check_dtype(dtype)
        num_classes = check_int(num_classes, "num_classes", 1)
        widths = [check_int(w, "widths", 1) for w in widths]
        stem_width = 64 if stem == "imagenet" else widths[0]
        if stem == "imagenet":
            self.conv1 = Conv2d(3, 64, 7, 2, 3, bias=False, dtype=dtype, seed=0)
        else:
            self.conv1 = Conv2d(3, stem_width, 3, 1, 1, bias=False, dtype=dtype, seed=0)
        self.bn1 = BatchNorm2d(stem_width, dtype=dtype)
        self.relu = ReLU(inplace=True)
        if stem == "imagenet":
            self.maxpool = MaxPool2d(3, 2, 1)
        inplanes = stem_width
        for i, (planes, n) in enumerate(zip(widths, layers)):
            stage, inplanes = _stage(block, inplanes, planes, check_int(n, "layers", 1),
                                     1 if i == 0 else 2, shortcut, dtype)
            setattr(self, f"layer{i + 1}", stage)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(inplanes, num_classes, dtype=dtype, seed=0)
        self._init(seed, zero_init_residual)
        self.input_grad = False

    def _init(self, seed, zero_init_residual):
        rng = np.random.default_rng(seed)
        for m in self.modules():
            if isinstance(m, Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu",
                                     generator=rng)
            elif isinstance(m, Linear):   # PyTorch's default, U(+-1/sqrt(fan_in))
                bound = 1.0 / math.sqrt(m.in_features)
                init.uniform_(m.weight, -bound, bound, generator=rng)
                init.uniform_(m.bias, -bound, bound, generator=rng)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                    init.zeros_(last.weight)

    def _stages(self):
        return [m for name, m in self.named_children() if name.startswith("layer")]

    def _stem(self):
        return [self.conv1, self.bn1, self.relu] + ([self.maxpool] if "maxpool" in
                                                    self._modules else [])

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for m in self._stem() + self._stages() + [self.avgpool]:
            shape = m.output_shape(shape)
        return self.fc.output_shape((shape[0], int(np.prod(shape[1:]))))

    def macs(self, input_shape):
        total, shape = 0, tuple(input_shape)
        for m in self._stem() + self._stages() + [self.avgpool]:
            total += m.macs(shape)
            shape = m.output_shape(shape)
        return total + self.fc.macs((shape[0], int(np.prod(shape[1:]))))

    def forward(self, x):
        self.conv1.input_grad = self.input_grad
        for m in self._stem() + self._stages():
            x = m(x)
        x = self.avgpool(x)                       # (N, C, 1, 1)
        y = self.fc(x.reshape(x.shape[0], -1))    # torch.flatten(x, 1)
        self._save(y.shape, x.shape)
        return y

    def backward(self, dy):
        dy, pooled_shape = self._load(dy)
        d = self.avgpool.backward(self.fc.backward(dy).reshape(pooled_shape))
        for m in reversed(self._stem() + self._stages()):
            d = m.backward(d)
        return d


def _stage(block, inplanes, planes, blocks, stride, shortcut, dtype):
    """``(Sequential of blocks, output channels)``; the first block strides and gets the
    shortcut when the shape changes."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        if shortcut == "A":
            downsample = PadShortcut(inplanes, out, stride)
        else:
            downsample = Sequential(Conv2d(inplanes, out, 1, stride, bias=False, dtype=dtype,
                                           seed=0), BatchNorm2d(out, dtype=dtype))
    first = block(inplanes, planes, stride, downsample, dtype=dtype, seed=0)
    return Sequential(first, *(block(out, planes, dtype=dtype, seed=0)
                               for _ in range(blocks - 1))), out


def cifar_resnet(depth, num_classes=10, shortcut="A", seed=None, dtype=np.float32):
    """He et al. 2016's CIFAR ResNet of ``depth = 6n + 2`` layers (section 4.2): a 3x3 conv
    with 16 filters, three stages of ``n`` :class:`~nbconv.layers.BasicBlock` with 16, 32 and
    64 filters (feature maps 32, 16 and 8 for 32x32 inputs), global average pooling and a
    ``Linear(64, num_classes)``. ``shortcut``: ``"A"`` (the paper's CIFAR choice: identity, and
    stride-2 subsampling with zero-padded channels where the shape changes; no parameters) or
    ``"B"`` (1x1 projection + BatchNorm2d there). Module names as torchvision's ResNets
    (``conv1, bn1, relu, layer1..3, avgpool, fc``)."""
    depth = check_int(depth, "depth", 8)
    if (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110, ...), "
                         f"got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), num_classes, widths=(16, 32, 64), stem="cifar",
                  shortcut=shortcut, seed=seed, dtype=dtype)


def resnet20(num_classes=10, shortcut="A", seed=None, dtype=np.float32):
    """ResNet-20 for CIFAR (0.27M parameters with shortcut A); see :func:`cifar_resnet`."""
    return cifar_resnet(20, num_classes, shortcut, seed, dtype)


def resnet32(num_classes=10, shortcut="A", seed=None, dtype=np.float32):
    """ResNet-32 for CIFAR (0.46M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(32, num_classes, shortcut, seed, dtype)


def resnet44(num_classes=10, shortcut="A", seed=None, dtype=np.float32):
    """ResNet-44 for CIFAR (0.66M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(44, num_classes, shortcut, seed, dtype)


def resnet56(num_classes=10, shortcut="A", seed=None, dtype=np.float32):
    """ResNet-56 for CIFAR (0.85M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(56, num_classes, shortcut, seed, dtype)


def resnet110(num_classes=10, shortcut="A", seed=None, dtype=np.float32):
    """ResNet-110 for CIFAR (1.7M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(110, num_classes, shortcut, seed, dtype)


#: the models of the training command (``--model``), by name: ``name(seed=..., dtype=...)``
MODELS = {"three-layer": three_layer_convnet, "deep": deep_convnet, "resnet20": resnet20,
          "resnet32": resnet32, "resnet44": resnet44, "resnet56": resnet56,
          "resnet110": resnet110}


def resnet18(num_classes=1000, zero_init_residual=False, seed=None, dtype=np.float32):
    """torchvision's ResNet-18 (BasicBlock, 2-2-2-2; 11,689,512 parameters, 1.81 G
    multiply-adds at 224x224); same module names and state_dict keys."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, zero_init_residual=zero_init_residual,
                  seed=seed, dtype=dtype)


def resnet34(num_classes=1000, zero_init_residual=False, seed=None, dtype=np.float32):
    """torchvision's ResNet-34 (BasicBlock, 3-4-6-3; 21,797,672 parameters)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, zero_init_residual=zero_init_residual,
                  seed=seed, dtype=dtype)


def resnet50(num_classes=1000, zero_init_residual=False, seed=None, dtype=np.float32):
    """torchvision's ResNet-50 (Bottleneck, 3-4-6-3, v1.5; 25,557,032 parameters)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, zero_init_residual=zero_init_residual,
                  seed=seed, dtype=dtype)
