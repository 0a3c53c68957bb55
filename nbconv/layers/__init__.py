"""Layer classes: thin stateful wrappers around :mod:`nbconv.functional`, one module per family.

- :mod:`.base`: the :class:`Layer` protocol (forward/backward, params/grads/buffers,
  train/eval, ``state_dict``/``load_state_dict``, ``get_extra_state``/``set_extra_state``)
- :mod:`.grad_mode`: :class:`no_grad` (forwards that keep nothing for backward),
  :class:`enable_grad`, :class:`inference_mode`, :func:`is_grad_enabled`,
  :class:`set_grad_enabled`
- :mod:`.conv`: :class:`Conv2d`, :class:`ConvTranspose2d`
- :mod:`.pool`: :class:`MaxPool2d`, :class:`AvgPool2d`, :class:`GlobalAvgPool2d`,
  :class:`AdaptiveAvgPool2d`, :class:`AdaptiveMaxPool2d`
- :mod:`.norm`: :class:`GroupNorm`, :class:`BatchNorm2d`
- :mod:`.sync_norm`: :class:`SyncBatchNorm2d` (statistics over every MPI rank's slice)
- :mod:`.basic`: :class:`Identity`, :class:`ReLU`, :class:`Linear`, :class:`Flatten`,
  :class:`Dropout`, :class:`SoftmaxCrossEntropy`, :class:`CrossEntropyLoss`
- :mod:`.activation`: :class:`LeakyReLU`, :class:`GELU`, :class:`SiLU`, :class:`Sigmoid`,
  :class:`Tanh`
- :mod:`.container`: :class:`Sequential`, :class:`ModuleList`
- :mod:`.residual`: :class:`BasicBlock`, :class:`Bottleneck`, :class:`PadShortcut` (skip
  connections, torchvision's names)

The API is documented in the README. Layers parse their arguments once, at construction, and
leave the checks of ``x`` and ``dy`` to the functional op they call.
"""
from .activation import GELU, LeakyReLU, Sigmoid, SiLU, Tanh
from .base import Layer, grad_of
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .basic import (CrossEntropyLoss, Dropout, Flatten, Identity, Linear, ReLU,
                    SoftmaxCrossEntropy)
from .container import ModuleList, Sequential
from .conv import Conv2d, ConvTranspose2d
from .norm import BatchNorm2d, GroupNorm
from .pool import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d,
                   MaxPool2d)
from .residual import BasicBlock, Bottleneck, PadShortcut
from .sync_norm import SyncBatchNorm2d, convert_sync_batchnorm

__all__ = ["Layer", "grad_of", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "GroupNorm",
           "BatchNorm2d", "ReLU", "Linear", "Flatten", "Dropout", "Sequential",
           "SoftmaxCrossEntropy", "ConvTranspose2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
           "SyncBatchNorm2d", "convert_sync_batchnorm", "Identity", "LeakyReLU", "GELU", "SiLU",
           "Sigmoid", "Tanh", "CrossEntropyLoss", "ModuleList", "BasicBlock",
           "Bottleneck", "PadShortcut", "no_grad", "enable_grad", "inference_mode",
           "is_grad_enabled", "set_grad_enabled"]
