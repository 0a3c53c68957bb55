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
