"""PyTorch's default parameter initialisation, reproducible from a seed.

``Conv2d`` and ``Linear`` in PyTorch initialise ``weight`` with
``kaiming_uniform_(a=sqrt(5))``, which is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and ``bias``
with the same bound; ``fan_in`` is ``in_features`` for Linear and ``C/groups * KH * KW`` for
Conv2d. The numbers differ from PyTorch's (a different generator) but the distribution is the same.
"""
import math

import numpy as np


def make_rng(seed):
    """A ``numpy.random.Generator`` from ``None`` (fresh entropy), an int, or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def uniform_fan_in(shape, fan_in, rng, dtype):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` of the given shape and dtype."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


# ---- torch.nn.init's in-place initialisers, on NumPy arrays ----------------------------------
# Each fills ``array`` in place (float32/float64, values drawn in float64 and cast) and returns
# it; ``generator`` is a seed, a ``numpy.random.Generator`` or None (fresh entropy).

_GAINS = {"linear": 1.0, "conv2d": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
          "selu": 0.75}


def _fans(array):
    """``(fan_in, fan_out)`` of a weight: ``(out, in, *kernel)`` as torch lays them out."""
    if array.ndim < 2:
        raise ValueError(f"fan in and fan out need an array of at least 2 dimensions, got "
                         f"shape {array.shape}")
    field = int(np.prod(array.shape[2:]))
    return array.shape[1] * field, array.shape[0] * field


def calculate_gain(nonlinearity, param=None):
    """The gain torch.nn.init recommends for ``nonlinearity``."""
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; one of "
                         f"{sorted(_GAINS) + ['leaky_relu']}")
    return _GAINS[nonlinearity]


def _fill(array, values):
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise TypeError(f"expected a float numpy.ndarray to fill in place, got "
                        f"{getattr(array, 'dtype', type(array).__name__)}")
    array[...] = values
    return array


def kaiming_normal_(array, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """``normal(0, gain / sqrt(fan))`` with ``fan`` the weight's ``fan_in`` or ``fan_out``
    (``mode``), as ``torch.nn.init.kaiming_normal_`` (torchvision's ResNets: ``mode="fan_out",
    nonlinearity="relu"``)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = _fans(array)[mode == "fan_out"]
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill(array, make_rng(generator).normal(0.0, std, array.shape))


def normal_(array, mean=0.0, std=1.0, generator=None):
    return _fill(array, make_rng(generator).normal(mean, std, array.shape))


def uniform_(array, a=0.0, b=1.0, generator=None):
    return _fill(array, make_rng(generator).uniform(a, b, array.shape))


def constant_(array, val):
    return _fill(array, val)


def zeros_(array):
    return _fill(array, 0)


def ones_(array):
    return _fill(array, 1)
