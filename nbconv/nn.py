"""``import nbconv.nn as nn``: the layers under ``torch.nn``'s names, so model-building code
written for PyTorch runs unchanged where it can.

``nn.Module`` is :class:`nbconv.layers.Layer` (sub-layers as attributes, ``state_dict``,
``named_parameters``, ``train``/``eval``, ``to``, ...); ``nn.functional`` is
:mod:`nbconv.functional` and ``nn.init`` is :mod:`nbconv.init` (``kaiming_normal_``,
``zeros_``, ... on NumPy arrays). What differs from PyTorch: arrays are NumPy arrays, a layer's
``backward(dy)`` is written by hand (no autograd), parameters live in ``layer.params`` (name ->
array; ``layer.weight`` reads them) with their gradients in ``layer.grads``, and
``backward`` overwrites the gradients instead of adding to them (see the README's "Coming from
PyTorch").
"""
from . import functional, init  # noqa: F401
from .layers import (GELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d,  # noqa: F401
                     BatchNorm2d, Conv2d, ConvTranspose2d, CrossEntropyLoss, Dropout, Flatten,
                     GroupNorm, Identity, Layer, LeakyReLU, Linear, MaxPool2d, ModuleList, ReLU,
                     Sequential, Sigmoid, SiLU, SyncBatchNorm2d, Tanh)

Module = Layer
SyncBatchNorm = SyncBatchNorm2d

__all__ = ["Module", "Layer", "functional", "init", "Conv2d", "ConvTranspose2d", "Linear",
           "ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "Identity", "Flatten",
           "Dropout", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
           "BatchNorm2d", "GroupNorm", "SyncBatchNorm", "Sequential", "ModuleList",
           "CrossEntropyLoss"]
