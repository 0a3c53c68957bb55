"""Ready-made CIFAR-10 networks built from :mod:`nbconv.layers` (inputs ``(N, 3, 32, 32)``,
outputs ``(N, 10)`` logits; train them with :class:`nbconv.layers.SoftmaxCrossEntropy`).

- :func:`three_layer_convnet`: the CS231n three-layer net ``conv 7x7 (32 filters, pad 3) -> ReLU
  -> 2x2 max pool -> Linear(32*16*16, hidden) -> ReLU -> Linear(hidden, 10)``.
- :func:`deep_convnet`: stages of ``conv 3x3 (pad 1) -> GroupNorm/BatchNorm2d -> ReLU`` blocks,
  each stage but the last followed by a 2x2 max pool, then ``GlobalAvgPool2d -> Linear``.

Both are :class:`nbconv.layers.Sequential` models, reproducible from ``seed``.
"""
import numpy as np

from ._checks import check_dtype, check_float, check_int
from .layers import (BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, GroupNorm, Linear, MaxPool2d,
                     ReLU, Sequential)

__all__ = ["three_layer_convnet", "deep_convnet", "MODELS"]


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


MODELS = {"three-layer": three_layer_convnet, "deep": deep_convnet}
