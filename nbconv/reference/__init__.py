"""Plain NumPy twins of every op, written to be obviously correct rather than fast.

Each op has a naive loop version that reads like the textbook formula and, where it matters for
speed comparisons, a vectorised version (im2col/col2im for convolution). Tests check the Numba
kernels against both; benchmarks compare against the vectorised one. One module per family:
:mod:`.conv` (convolution, im2col, transposed convolution), :mod:`.pool` (max/avg, global and
adaptive pooling), :mod:`.norm` (group and batch norm), :mod:`.basic` (ReLU, Linear, dropout,
softmax cross-entropy), :mod:`.activation` (LeakyReLU, GELU, SiLU, Sigmoid, Tanh, label-smoothed
cross-entropy); every name is re-exported here (``from nbconv import reference as R``).
"""
from .._checks import conv2d_padding, conv_out_size, pool_out_size  # noqa: F401  (one parser for every module)
from .activation import (  # noqa: F401
    cross_entropy_naive, gelu, gelu_backward, leaky_relu, leaky_relu_backward, sigmoid,
    sigmoid_backward, silu, silu_backward, tanh, tanh_backward)
from .basic import (  # noqa: F401
    dropout, linear, linear_backward, linear_naive, relu, relu_backward,
    softmax_cross_entropy_naive)
from .conv import (  # noqa: F401
    _conv_geometry, conv2d_backward_im2col, conv2d_backward_naive, conv2d_im2col, conv2d_naive,
    conv_transpose2d_backward_naive, conv_transpose2d_naive, im2col)
from .norm import (  # noqa: F401
    _affine, _group_view, batch_norm2d, batch_norm2d_backward, group_norm, group_norm_backward,
    group_norm_naive)
from .pool import (  # noqa: F401
    _avg_divisor, _avg_window, _first_tap, _pad_to, _pool_out, _pool_pairs, _pool_taps,
    adaptive_avg_pool2d_backward_naive, adaptive_avg_pool2d_naive,
    adaptive_max_pool2d_backward_naive, adaptive_max_pool2d_naive, adaptive_bins, avg_pool2d,
    avg_pool2d_backward, avg_pool2d_backward_naive, avg_pool2d_naive, global_avg_pool2d,
    global_avg_pool2d_backward, max_pool2d, max_pool2d_backward, max_pool2d_backward_naive,
    max_pool2d_naive)
