"""Functional ops: each validates its arguments, computes output sizes with
:func:`nbconv._checks.conv_out_size`, makes arrays C-contiguous, allocates outputs and calls the
jitted loops in :mod:`nbconv.kernels`. Layers in :mod:`nbconv.layers` call these functions.
"""
from .conv import *   # noqa: F401,F403
from .pool import *   # noqa: F401,F403
from .norm import *   # noqa: F401,F403
from .basic import *  # noqa: F401,F403
from .activation import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .adaptive import *  # noqa: F401,F403
from .conv_transpose import *  # noqa: F401,F403
from .._checks import conv_out_size  # noqa: F401
from .sync_norm import *  # noqa: F401,F403
