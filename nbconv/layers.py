"""Layer classes: thin stateful wrappers around :mod:`nbconv.functional`.

Every layer follows one protocol (see ``shared/API.md``)::

    y  = layer(x)            # same as layer.forward(x)
    dx = layer.backward(dy)  # gradient w.r.t. the last forward's input
    layer.params             # name -> ndarray, trainable parameters (may be empty)
    layer.grads              # same keys and shapes, filled by backward
    layer.buffers            # name -> ndarray, non-trainable state (BatchNorm2d running stats)
    layer.train(); layer.eval()

``forward`` saves only what ``backward`` needs. ``backward`` before any ``forward`` raises
``RuntimeError``; a ``dy`` whose shape is not the last output's raises ``ValueError``.
Setting ``layer.input_grad = False`` makes ``backward`` skip dx and return ``None`` (the first
layer of a network never needs it; ``Sequential`` does this for you).
"""
import numpy as np

from . import functional as F
from ._checks import check_array, check_dtype


class Layer:
    """Base class: holds ``params``, ``grads``, ``buffers``, the train/eval flag and the values
    the last ``forward`` saved for ``backward``."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        self.input_grad = True
        self._saved = None      # what forward keeps for backward
        self._out_shape = None  # shape of the last forward's output

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    # -- helpers for subclasses ---------------------------------------------------------------
    def _save(self, out_shape, *saved):
        self._out_shape = tuple(out_shape)
        self._saved = saved

    def _load(self, dy, name="dy"):
        """Check ``dy`` against the last forward and return ``(dy_contiguous, *saved)``."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if not isinstance(dy, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(dy).__name__}")
        if dy.shape != self._out_shape:
            raise ValueError(f"{name} must have the shape of the last forward's output "
                             f"{self._out_shape}, got {dy.shape}")
        return (check_array(dy, name),) + tuple(self._saved)

    def __repr__(self):
        return f"{type(self).__name__}()"


# ---- conv: Conv2d --------------------------------------------------------------------------

# ---- pool: MaxPool2d, AvgPool2d, GlobalAvgPool2d ------------------------------------------

# ---- norm: GroupNorm, BatchNorm2d ---------------------------------------------------------

# ---- basic: ReLU, Linear, Flatten, Dropout, Sequential --------------------------------------
