"""Conv2d forward and backward: nbconv vs the im2col NumPy reference vs PyTorch vs the textbook
seven-loop kernels (:mod:`nbconv.textbook`).

    python benchmarks/report.py benchmarks/bench_conv.py            # all groups
    python benchmarks/report.py benchmarks/bench_conv.py -k "forward and S2"

Rows S1..S6 are the issue's shapes (N, C, H, W, F, k, stride, pad), R1..R3 and V1 3x3
stride-1 layers of ResNet/VGG-style CIFAR nets; the "other" groups time a few more layers
(depthwise, grouped, dilated, 5x5, N=1). Backward is dx + dweight + dbias (work counted as 2x
the forward FLOPs, dbias ignored); every implementation gets its forward-time state prepared
outside the timed call (nbconv: the padded input; im2col: the columns; torch: the autograd
graph).

Columns: ``nbconv`` is the default ``algorithm="auto"``; ``direct`` and ``winograd`` force one
algorithm (``winograd`` only on rows it can run: 3x3, stride 1, dilation 1), then ``im2col``,
``torch`` and ``textbook``. Setting ``NBCONV_CONV_ALGORITHM`` forces every nbconv column alike.

The textbook kernels run at a fraction of a GFLOP/s, 10-100x slower than nbconv: they are
timed on the first ``n`` images of the batch only, ``n`` chosen so that a forward call does about
``TEXTBOOK_FLOP`` (at least one image), and their times are scaled by ``N / n`` (the work is
linear in the batch); ``report.py`` marks the column ``textbook*`` and prints the slice.
"""
import numpy as np
import pytest
import torch

import nbconv.functional as F
from nbconv import reference as R
from nbconv import textbook as T
from _harness import compare, conv_flops, partial

torch.set_num_threads(2)

# FLOPs of one textbook forward call: about 0.2 s at the textbook's 0.1-0.5 GFLOP/s, so it adds
# a few seconds per row instead of minutes
TEXTBOOK_FLOP = 4e7

SHAPES = {  # N, C, H, W, F, k, stride, pad[, groups, dilation]
    "S1": (64, 3, 32, 32, 32, 7, 1, 3),
    "S2": (64, 32, 32, 32, 64, 3, 1, 1),
    "S3": (64, 64, 16, 16, 128, 3, 1, 1),
    "S4": (64, 128, 8, 8, 256, 3, 1, 1),
    "S5": (64, 64, 32, 32, 64, 1, 1, 0),
    "S6": (32, 64, 32, 32, 64, 3, 2, 1),
    "R1": (128, 16, 32, 32, 16, 3, 1, 1),
    "R2": (128, 32, 16, 16, 32, 3, 1, 1),
    "R3": (128, 64, 8, 8, 64, 3, 1, 1),
    "V1": (64, 128, 16, 16, 128, 3, 1, 1),
}
OTHER = {
    "depthwise 3x3": (64, 64, 32, 32, 64, 3, 1, 1, 64, 1),
    "depthwise 3x3 s2": (64, 128, 16, 16, 128, 3, 2, 1, 128, 1),
    "groups=4 3x3": (64, 64, 16, 16, 128, 3, 1, 1, 4, 1),
    "dilated 3x3 d2": (32, 32, 32, 32, 32, 3, 1, 2, 1, 2),
    "5x5 s1": (32, 32, 16, 16, 64, 5, 1, 2, 1, 1),
    "N=1 3x3": (1, 64, 56, 56, 64, 3, 1, 1, 1, 1),
    "1x1 s2": (64, 128, 16, 16, 256, 1, 2, 0, 1, 1),
}


def setup(shape, dtype):
    N, C, H, W, Fn, k, s, p = shape[:8]
    g, d = shape[8:] if len(shape) > 8 else (1, 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((Fn, C // g, k, k)) / np.sqrt(C // g * k * k)).astype(dtype)
    b = rng.standard_normal(Fn).astype(dtype)
    args = dict(stride=s, padding=p, dilation=d, groups=g)
    # the output size without running nbconv (a worker of ``report.py --separate`` that times
    # torch alone must not start nbconv's thread pool)
    pads = R.conv2d_padding(p, (k, k), (s, s), (d, d))
    OH = R.conv_out_size(H, k, s, pads[0], pads[1], d)
    OW = R.conv_out_size(W, k, s, pads[2], pads[3], d)
    dy = rng.standard_normal((N, Fn, OH, OW)).astype(dtype)
    flops = conv_flops(N, C, H, W, Fn, k, k, OH, OW, g)
    return x, w, b, dy, args, flops


def legend(shape):
    """The row's shape in words: ``N 64, C 3, H 32, W 32, F 32, kernel 7x7, stride 1,
    padding 3`` (groups and dilation when not 1)."""
    N, C, H, W, Fn, k, s, p = shape[:8]
    g, d = shape[8:] if len(shape) > 8 else (1, 1)
    return (f"N {N}, C {C}, H {H}, W {W}, F {Fn}, kernel {k}x{k}, stride {s}, padding {p}"
            + (f", groups {g}" if g != 1 else "") + (f", dilation {d}" if d != 1 else ""))


def algorithms(args, k):
    """The forced-algorithm columns this row has: direct always, winograd where it can run."""
    s, d = args["stride"], args["dilation"]
    wino = k == 3 and s == 1 and d == 1 and not isinstance(args["padding"], str)
    return ["direct"] + (["winograd"] if wino else [])


def textbook_slice(x, flops):
    """How many leading images the textbook kernels are timed on, and that fraction of N."""
    N = x.shape[0]
    n = max(1, min(N, round(N * TEXTBOOK_FLOP / flops)))
    return n, n / N


def once(make):
    """``make()`` on the first call (a competitor's warm-up call), its result after: the
    forward-time state of one implementation is built only where that one runs (a worker of
    ``report.py --separate`` runs one library alone)."""
    memo = []
    return lambda: memo[0] if memo else (memo.append(make()) or memo[0])


def torch_fns(x, w, b, dy, args):
    xt, wt, bt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b))
    dyt = torch.from_numpy(dy.copy())
    fwd = lambda: torch.nn.functional.conv2d(xt, wt, bt, **args)  # noqa: E731
    yt = once(fwd)
    bwd = lambda: torch.autograd.grad(yt(), (xt, wt, bt), dyt, retain_graph=True)  # noqa: E731
    return (lambda: fwd().detach()), bwd


def run_forward(benchmark, group, row, shape, dtype):
    x, w, b, dy, args, flops = setup(shape, dtype)
    tf, _ = torch_fns(x, w, b, dy, args)
    n, frac = textbook_slice(x, flops)
    xs = x[:n]
    algos = {a: (lambda a=a: F.conv2d(x, w, b, **args, algorithm=a))
             for a in algorithms(args, w.shape[2])}
    with torch.no_grad():
        compare(benchmark, group, row, lambda: F.conv2d(x, w, b, **args),
                {**algos, "im2col": lambda: R.conv2d_im2col(x, w, b, **args), "torch": tf,
                 "textbook": partial(lambda: T.conv2d(xs, w, b, **args), frac)}, flops,
                legend=legend(shape))


def run_backward(benchmark, group, row, shape, dtype):
    x, w, b, dy, args, flops = setup(shape, dtype)
    _, tb = torch_fns(x, w, b, dy, args)
    prep = once(lambda: F.conv2d_prepare(x, w, **args))
    k = w.shape[2:]
    cols = once(lambda: R.im2col(x, k, args["stride"], args["padding"], args["dilation"]).copy())
    n, frac = textbook_slice(x, flops)
    xs, dys = x[:n], dy[:n]
    # a Winograd forward pass leaves x as it is: the first (warm-up) call of the weight
    # gradient lays it out, later calls reuse that, as the direct column reuses its layout
    preps = {a: once(lambda a=a: F.conv2d_prepare(x, w, **args, algorithm=a))
             for a in algorithms(args, k[0])}
    algos = {a: (lambda a=a: F.conv2d_backward(dy, None, w, **args, prepared=preps[a](),
                                               algorithm=a)) for a in preps}
    compare(benchmark, group, row,
            lambda: F.conv2d_backward(dy, x, w, **args, prepared=prep()),
            {**algos, "im2col": lambda: R.conv2d_backward_im2col(dy, x, w, **args, cols=cols()),
             "torch": tb,
             "textbook": partial(lambda: T.conv2d_backward(dys, xs, w, **args), frac)},
            2 * flops, legend=legend(shape))


@pytest.mark.parametrize("row", list(SHAPES))
def test_forward_f32(benchmark, row):
    run_forward(benchmark, "conv2d forward float32", row, SHAPES[row], np.float32)


@pytest.mark.parametrize("row", list(SHAPES))
def test_backward_f32(benchmark, row):
    run_backward(benchmark, "conv2d backward float32", row, SHAPES[row], np.float32)


@pytest.mark.parametrize("row", ["S2", "S3", "S4"])
def test_forward_f64(benchmark, row):
    run_forward(benchmark, "conv2d forward float64", row, SHAPES[row], np.float64)


@pytest.mark.parametrize("row", ["S2", "S3", "S4"])
def test_backward_f64(benchmark, row):
    run_backward(benchmark, "conv2d backward float64", row, SHAPES[row], np.float64)


@pytest.mark.parametrize("row", list(OTHER))
def test_forward_other_f32(benchmark, row):
    run_forward(benchmark, "conv2d forward float32, other layers", row, OTHER[row], np.float32)


@pytest.mark.parametrize("row", list(OTHER))
def test_backward_other_f32(benchmark, row):
    run_backward(benchmark, "conv2d backward float32, other layers", row, OTHER[row],
                 np.float32)
