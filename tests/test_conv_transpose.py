"""conv_transpose2d: forward and every gradient vs PyTorch and the naive NumPy twin."""
import numpy as np
import pytest
import torch

import nbconv.functional.conv_transpose as CT
from nbconv import reference as R
from helpers import DTYPES, assert_close, non_contiguous, num_threads, numeric_grad, torch_tensor

# (stride, padding, output_padding, dilation, groups, kernel, C_in, C_out)
CFGS = [
    (1, 0, 0, 1, 1, 3, 3, 4),
    (2, 1, 1, 1, 1, 3, 3, 5),
    (3, 2, 2, 1, 1, (4, 3), 2, 3),
    (2, 0, 0, 1, 2, 3, 4, 6),
    (1, 1, 0, 2, 1, 3, 3, 2),
    ((2, 3), (1, 0), (1, 2), 1, 1, (3, 2), 3, 2),
    (1, 0, 2, 3, 1, 2, 2, 2),            # output_padding >= stride, allowed by the dilation
    (2, 1, 1, 2, 1, 3, 2, 3),
    (3, 0, 0, 1, 1, 2, 2, 3),            # stride > kernel: gaps in the output
    (1, 0, 0, 1, 1, 1, 4, 3),            # 1x1 stride 1 (the conv's native path)
    (2, 0, 0, 1, 1, 1, 4, 3),            # strided 1x1 (the conv's sub-sampled path)
    (2, 0, 1, 1, 1, 1, 3, 3),
    (1, 1, 0, 1, 4, 3, 4, 4),            # depthwise (one output channel per group)
    (2, 1, 1, 1, 1, 3, 3, 1),            # one output channel (the conv's depthwise path)
    (2, 1, 0, 1, 2, (2, 3), 4, 2),
]
SHAPES = [(2, 5, 6), (1, 4, 3)]  # (N, H, W); N=1, odd sizes


def kw(cfg):
    s, p, op, d, g, _, _, _ = cfg
    return dict(stride=s, padding=p, output_padding=op, dilation=d, groups=g)


def make(cfg, nhw, dtype, rng, bias=True):
    _, _, _, _, g, k, cin, cout = cfg
    k = k if isinstance(k, tuple) else (k, k)
    n, h, w = nhw
    x = rng.standard_normal((n, cin, h, w)).astype(dtype)
    wt = rng.standard_normal((cin, cout // g) + k).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype) if bias else None
    return x, wt, b


def torch_run(x, w, b, dy, args):
    xt, wt = torch_tensor(x, True), torch_tensor(w, True)
    bt = torch_tensor(b, True) if b is not None else None
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, **args)
    yt.backward(torch.from_numpy(dy))
    return (yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
            bt.grad.numpy() if bt is not None else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nhw", SHAPES, ids=str)
@pytest.mark.parametrize("cfg", CFGS, ids=str)
def test_against_torch_and_reference(cfg, nhw, dtype, rng):
    args = kw(cfg)
    x, w, b = make(cfg, nhw, dtype, rng)
    y = CT.conv_transpose2d(x, w, b, **args)
    assert y.dtype == dtype
    oh = CT.conv_transpose2d_out_size(x.shape[2], w.shape[2], *(
        (v if isinstance(v, tuple) else (v, v))[0] for v in
        (args["stride"], args["padding"], args["output_padding"], args["dilation"])))
    assert y.shape[:3] == (x.shape[0], w.shape[1] * args["groups"], oh)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty, tdx, tdw, tdb = torch_run(x, w, b, dy, args)
    scale = 10.0
    assert_close(y, ty, scale=scale)
    dx, dw, db = CT.conv_transpose2d_backward(dy, x, w, **args)
    assert_close(dx, tdx, scale=scale)
    assert_close(dw, tdw, scale=scale)
    assert_close(db, tdb, scale=scale)
    if dtype == np.float64:
        assert_close(y, R.conv_transpose2d_naive(x, w, b, **args))
        rdx, rdw, rdb = R.conv_transpose2d_backward_naive(dy, x, w, **args)
        assert_close(dx, rdx)
        assert_close(dw, rdw)
        assert_close(db, rdb)


@pytest.mark.parametrize("cfg", [CFGS[1], CFGS[6], CFGS[12]], ids=str)
def test_finite_differences(cfg, rng):
    args = kw(cfg)
    x, w, b = make(cfg, (1, 3, 2), np.float64, rng)
    dy = rng.standard_normal(CT.conv_transpose2d(x, w, b, **args).shape)
    loss = lambda: float((CT.conv_transpose2d(x, w, b, **args) * dy).sum())  # noqa: E731
    dx, dw, db = CT.conv_transpose2d_backward(dy, x, w, **args)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(loss, w), atol=1e-7)
    np.testing.assert_allclose(db, numeric_grad(loss, b), atol=1e-7)


def test_need_flags_unbatched_and_layouts(rng):
    cfg = CFGS[1]
    args = kw(cfg)
    x, w, b = make(cfg, (1, 5, 6), np.float32, rng)
    y = CT.conv_transpose2d(x, w, b, **args)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = CT.conv_transpose2d_backward(dy, x, w, **args)
    dx2, dw2, db2 = CT.conv_transpose2d_backward(dy, x, w, **args, need_dx=False,
                                                  need_bias=False)
    assert dx2 is None and db2 is None and dw2.tobytes() == dw.tobytes()
    # unbatched (C_in, H, W) as PyTorch
    yu = CT.conv_transpose2d(x[0], w, b, **args)
    assert yu.tobytes() == y[0].tobytes()
    dxu, dwu, dbu = CT.conv_transpose2d_backward(dy[0], x[0], w, **args)
    assert dxu.tobytes() == dx[0].tobytes() and dwu.tobytes() == dw.tobytes()
    # non-contiguous inputs: same bits, not modified
    xn, wn = non_contiguous(x), non_contiguous(w)
    before = (xn.copy(), wn.copy())
    assert CT.conv_transpose2d(xn, wn, b, **args).tobytes() == y.tobytes()
    np.testing.assert_array_equal(xn, before[0])
    np.testing.assert_array_equal(wn, before[1])


@pytest.mark.parametrize("cfg", [CFGS[1], CFGS[6], CFGS[10], CFGS[12]], ids=str)
def test_bitwise_across_thread_counts(cfg, rng):
    args = kw(cfg)
    x, w, b = make(cfg, (3, 9, 7), np.float32, rng)
    dy = rng.standard_normal(CT.conv_transpose2d(x, w, b, **args).shape).astype(np.float32)
    out = []
    for n in (1, 2):
        with num_threads(n):
            y = CT.conv_transpose2d(x, w, b, **args)
            out.append([a.tobytes() for a in (y,) + CT.conv_transpose2d_backward(dy, x, w,
                                                                                  **args)])
    assert out[0] == out[1]


def test_errors():
    x = np.zeros((2, 4, 5, 5), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="output_padding .* smaller than either stride"):
        CT.conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="output_padding .* smaller than either stride"):
        CT.conv_transpose2d(x, w, output_padding=(0, 1))
    with pytest.raises(ValueError, match="has 3 channels but weight of shape"):
        CT.conv_transpose2d(np.zeros((2, 3, 5, 5), np.float32), w)
    with pytest.raises(ValueError, match="groups=3 must divide in_channels"):
        CT.conv_transpose2d(x, w, groups=3)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        CT.conv_transpose2d(x, w, np.zeros(3, np.float32), groups=2)
    with pytest.raises(TypeError, match="dtype"):
        CT.conv_transpose2d(x.astype(np.float64), w)
    with pytest.raises(ValueError, match=r"4-d \(N, C_in, H, W\) or 3-d"):
        CT.conv_transpose2d(np.zeros((4, 5), np.float32), w)
    with pytest.raises(ValueError, match="weight must be 4-d"):
        CT.conv_transpose2d(x, w[0])
    with pytest.raises(ValueError, match="padding must be an int or a pair"):
        CT.conv_transpose2d(x, w, padding="same")
    with pytest.raises(ValueError, match="padding must be >= 0"):
        CT.conv_transpose2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        CT.conv_transpose2d(x, w, stride=0)
    with pytest.raises(ValueError, match="output size .* too small"):
        CT.conv_transpose2d(np.zeros((1, 4, 1, 1), np.float32), w, padding=2)
    with pytest.raises(ValueError, match="dy must have the output shape"):
        CT.conv_transpose2d_backward(np.zeros((2, 3, 6, 7), np.float32), x, w)
    with pytest.raises(ValueError, match="dy must be 4-d"):
        CT.conv_transpose2d_backward(np.zeros((3, 7, 7), np.float32), x, w)


def _python_lines(fn, budget=200_000):
    """``fn()``'s result and the number of Python lines it ran (the kernels run as machine
    code, uncounted); stops with an AssertionError past ``budget`` lines."""
    import sys
    count = [0]

    def tracer(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] > budget:
                raise AssertionError(f"more than {budget} Python lines")
        return tracer

    sys.settrace(tracer)
    try:
        out = fn()
    finally:
        sys.settrace(None)
    return out, count[0]


def test_huge_stride_plans_only_the_phases_a_tap_reads(rng):
    """A transposed conv (and a conv's input gradient) with a huge stride plans only the
    stride phases some kernel tap reaches (at most KH * KW), so Python's work does not grow
    with the stride (issue 18: stride 30,000 spent 16 s and 100,000 over 90 s planning
    stride_h x stride_w phases before failing). Counted in Python lines run, not timed."""
    from nbconv import ConvTranspose2d
    import nbconv.functional as F
    x = rng.standard_normal((1, 2, 2, 3)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    xt, wt = torch_tensor(x, True), torch_tensor(w, True)
    counts = {}
    for s in (3, 100_000):
        yt = torch.nn.functional.conv_transpose2d(xt, wt, stride=(s, 2))
        dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
        t_dx, t_dw = torch.autograd.grad(yt, (xt, wt), torch_tensor(dy))
        layer = ConvTranspose2d(2, 3, 3, stride=(s, 2), bias=False)
        layer.params["weight"][...] = w
        # a conv whose input gradient has 100,000 row phases (the conv of the transpose)
        xc = rng.standard_normal((1, 3) + yt.shape[2:]).astype(np.float32)
        def run():
            return (layer(x), layer.backward(dy),
                    F.conv2d_backward(np.ones((1, 2, 2, 3), np.float32), xc, w, stride=(s, 2))[0])
        if s == 3:
            run()  # compiles or loads the kernels (Numba's compiler is Python): not counted
        (y, dx, dxc), counts[s] = _python_lines(run)
        assert_close(y, yt.detach().numpy(), np.float32, scale=10, err_msg=f"y, stride {s}")
        assert_close(dx, t_dx.numpy(), np.float32, scale=10, err_msg=f"dx, stride {s}")
        assert_close(layer.grads["weight"], t_dw.numpy(), np.float32, scale=10)
        assert dxc.shape == xc.shape
    assert counts[100_000] <= counts[3] + 200, counts
