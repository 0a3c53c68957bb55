"""ConvTranspose2d forward and backward: nbconv vs PyTorch, float32.

    python benchmarks/report.py benchmarks/bench_conv_transpose.py

Rows are decoder-style upsampling layers (N, C_in, H, W, C_out, k, stride, padding,
output_padding). nbconv's transposed convolution runs on the conv kernels (its forward is
conv2d's input gradient, its input gradient conv2d's forward), so these rows show what that
reuse costs against PyTorch's own transposed kernels. Work is counted as the forward's
multiply-adds x 2 (backward: x 2 again, dx + dweight; dbias ignored), the same for both.
"""
import numpy as np
import pytest
import torch

import nbconv.functional as F
from _harness import compare

torch.set_num_threads(2)

SHAPES = {  # N, C_in, H, W, C_out, k, stride, padding, output_padding
    "up2 4x4 s2 (64,64,8,8)->32": (64, 64, 8, 8, 32, 4, 2, 1, 0),
    "up2 3x3 s2 op1 (64,32,16,16)->16": (64, 32, 16, 16, 16, 3, 2, 1, 1),
    "3x3 s1 (32,64,16,16)->64": (32, 64, 16, 16, 64, 3, 1, 1, 0),
}


def setup(shape):
    N, C, H, W, Co, k, s, p, op = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((C, Co, k, k)) / np.sqrt(Co * k * k)).astype(np.float32)
    b = rng.standard_normal(Co).astype(np.float32)
    args = dict(stride=s, padding=p, output_padding=op)
    y = F.conv_transpose2d(x, w, b, **args)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    flops = 2.0 * N * C * H * W * Co * k * k
    return x, w, b, dy, args, flops


@pytest.mark.parametrize("row", list(SHAPES))
def test_forward(benchmark, row):
    x, w, b, dy, args, flops = setup(SHAPES[row])
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
    with torch.no_grad():
        compare(benchmark, "conv_transpose2d forward float32", row,
                lambda: F.conv_transpose2d(x, w, b, **args),
                {"torch": lambda: torch.nn.functional.conv_transpose2d(xt, wt, bt, **args)},
                flops)


@pytest.mark.parametrize("row", list(SHAPES))
def test_backward(benchmark, row):
    x, w, b, dy, args, flops = setup(SHAPES[row])
    xt, wt, bt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b))
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, **args)
    dyt = torch.from_numpy(dy)
    compare(benchmark, "conv_transpose2d backward float32", row,
            lambda: F.conv_transpose2d_backward(dy, x, w, **args),
            {"torch": lambda: torch.autograd.grad(yt, (xt, wt, bt), dyt, retain_graph=True)},
            2 * flops)
