"""nbconv: CNN layers whose kernels are explicit loops compiled with Numba."""
from . import functional, reference  # noqa: F401
from ._checks import conv_out_size  # noqa: F401
from .layers import Layer  # noqa: F401

__version__ = "0.1.0"
