"""Plain NumPy twins of every op, written to be obviously correct rather than fast.

Each op has a naive loop version that reads like the textbook formula and, where it matters for
speed comparisons, a vectorised version (im2col/col2im for convolution). Tests check the Numba
kernels against both; benchmarks compare against the vectorised one.
"""
import numpy as np

from ._checks import conv_out_size  # noqa: F401


# ---- conv -----------------------------------------------------------------------------------

# ---- pool -----------------------------------------------------------------------------------

# ---- norm -----------------------------------------------------------------------------------

# ---- basic ----------------------------------------------------------------------------------
