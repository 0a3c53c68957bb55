"""nbconv: CNN layers whose kernels are explicit loops compiled with Numba.

Layers follow ``torch.nn``'s names and arguments on NCHW NumPy arrays; see ``README.md``.
"""
from . import functional, init, reference  # noqa: F401
from ._checks import conv_out_size  # noqa: F401
from .layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d,  # noqa: F401
                     GroupNorm, Layer, Linear, MaxPool2d, ReLU, Sequential, SoftmaxCrossEntropy)
from .layers import AdaptiveAvgPool2d, AdaptiveMaxPool2d, ConvTranspose2d  # noqa: F401
from .layers import (GELU, CrossEntropyLoss, Identity, LeakyReLU, Sigmoid, SiLU,  # noqa: F401
                     Tanh)
from .layers import BasicBlock, Bottleneck, ModuleList, PadShortcut  # noqa: F401
from .layers import (enable_grad, inference_mode, is_grad_enabled, no_grad,  # noqa: F401
                     set_grad_enabled)
from .serialization import (FileFormatError, SafetensorsError, TorchFileError,  # noqa: F401
                            UnsafeFileError, load, load_safetensors, load_torch, save,
                            save_safetensors, save_torch)
from . import checkpoint, data, models, nn, optim, train, viz  # noqa: F401,E402
from .models import deep_convnet, three_layer_convnet  # noqa: F401
from .checkpoint import CheckpointError  # noqa: F401
from .train import Trainer  # noqa: F401
from .summary import summary  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "Layer", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "GroupNorm", "BatchNorm2d",
    "ReLU", "Linear", "Flatten", "Dropout", "Sequential", "SoftmaxCrossEntropy",
    "ConvTranspose2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Identity", "LeakyReLU", "GELU",
    "SiLU", "Sigmoid", "Tanh", "CrossEntropyLoss", "ModuleList", "BasicBlock", "Bottleneck",
    "PadShortcut", "no_grad", "enable_grad", "inference_mode", "is_grad_enabled",
    "set_grad_enabled",
    "load_torch", "save_torch", "save_safetensors", "load_safetensors", "save", "load",
    "FileFormatError", "SafetensorsError", "TorchFileError", "UnsafeFileError", "summary",
    "functional", "reference", "init", "nn", "optim", "data", "models", "train", "checkpoint",
    "viz",
    "three_layer_convnet", "deep_convnet", "Trainer", "CheckpointError", "conv_out_size",
]
