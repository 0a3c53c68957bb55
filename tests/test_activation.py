"""The activations (LeakyReLU, GELU, SiLU, Sigmoid, Tanh) and CrossEntropyLoss: kernels against
the NumPy reference and PyTorch in both dtypes (NaN and inf included), finite differences,
thread-count invariance, the layers' backward protocol and bad arguments."""
import numpy as np
import pytest
import torch

import nbconv
from nbconv import functional as F
from nbconv import reference as R
from nbconv.layers import (GELU, CrossEntropyLoss, LeakyReLU, Sigmoid, SiLU,
                           SoftmaxCrossEntropy, Tanh)
from helpers import (DTYPES, assert_close, assert_same_bits_wherever, bits, num_threads,
                     numeric_grad, torch_tensor)
from nbconv.kernels import activation as K

TF = torch.nn.functional

# name -> (nbconv layer, torch function, reference forward, reference backward(dy, x))
ACTS = {
    "leaky_relu": (lambda: LeakyReLU(0.2), lambda t: TF.leaky_relu(t, 0.2),
                   lambda x: R.leaky_relu(x, 0.2), lambda d, x: R.leaky_relu_backward(d, x, 0.2)),
    "gelu": (GELU, TF.gelu, R.gelu, R.gelu_backward),
    "gelu_tanh": (lambda: GELU("tanh"), lambda t: TF.gelu(t, approximate="tanh"),
                  lambda x: R.gelu(x, "tanh"), lambda d, x: R.gelu_backward(d, x, "tanh")),
    "silu": (SiLU, TF.silu, R.silu, R.silu_backward),
    "sigmoid": (Sigmoid, torch.sigmoid, R.sigmoid, R.sigmoid_backward),
    "tanh": (Tanh, torch.tanh, R.tanh, R.tanh_backward),
}
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 50.0, -50.0, 100.0, -100.0,
           1000.0, 3.0, -3.0, 1e-8]


def _torch(fn, x, dy):
    t = torch_tensor(x, requires_grad=True)
    y = fn(t)
    y.backward(torch_tensor(dy))
    return y.detach().numpy(), t.grad.numpy()


def _same_specials(ours, theirs, dtype):
    """NaN where torch has NaN, the same infinities, and close finite values."""
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    fin = np.isfinite(theirs)
    np.testing.assert_array_equal(ours[np.isinf(ours)], theirs[np.isinf(theirs)])
    tol = 1e-12 if dtype == np.float64 else 1e-4   # torch float32 loses digits in 1 + erf
    np.testing.assert_allclose(ours[fin], theirs[fin], rtol=tol, atol=1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTS))
def test_activation_matches_torch_and_reference(name, dtype, rng):
    make, tfn, rf, rb = ACTS[name]
    x = (rng.standard_normal((3, 4, 5, 6)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    layer = make()
    y = layer(x)
    dx = layer.backward(dy)
    ty, tdx = _torch(tfn, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == x.shape
    assert_close(y, ty, dtype)
    assert_close(dx, tdx, dtype)
    assert_close(y, rf(x), dtype)
    assert_close(dx, rb(dy, x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTS))
def test_activation_nan_and_inf_as_torch(name, dtype):
    make, tfn, _, _ = ACTS[name]
    x = np.array(SPECIAL, dtype)
    dy = np.ones_like(x)
    layer = make()
    y = layer(x)
    dx = layer.backward(dy)
    ty, tdx = _torch(tfn, x, dy)
    _same_specials(y, ty, dtype)
    _same_specials(dx, tdx, dtype)


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_finite_differences(name, rng):
    make = ACTS[name][0]
    x = rng.standard_normal((2, 3, 4)) * 2
    x[np.abs(x) < 1e-3] = 0.5   # LeakyReLU's kink
    layer = make()
    layer(x)
    w = rng.standard_normal(x.shape)
    dx = layer.backward(w)
    np.testing.assert_allclose(dx, numeric_grad(lambda: float(np.sum(make()(x) * w)), x),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_parallel_path_thread_count_invariant(name, rng, monkeypatch):
    import nbconv.functional.activation as A
    make = ACTS[name][0]
    x = rng.standard_normal(40000).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    serial = make()
    ys, dxs = serial(x), serial.backward(dy)
    monkeypatch.setattr(A, "PARALLEL_ELEMENTS", 1)   # the prange kernels, several tasks
    got = []
    for n in (1, 2):
        with num_threads(n):
            layer = make()
            got.append((layer(x), layer.backward(dy)))
    for a, b, c in zip(got[0], got[1], (ys, dxs)):
        assert np.array_equal(bits(a), bits(b))   # bitwise, whatever the thread count
        assert np.array_equal(bits(a), bits(c))   # and the same as the serial loop


# name -> (kernel op code, LeakyReLU's slope, the saved array for backward from x)
OPS = {"leaky_relu": (K.LEAKY_RELU, 0.2, lambda x: x), "gelu": (K.GELU, 0.0, lambda x: x),
       "gelu_tanh": (K.GELU_TANH, 0.0, lambda x: x), "silu": (K.SILU, 0.0, lambda x: x),
       "sigmoid": (K.SIGMOID, 0.0, R.sigmoid), "tanh": (K.TANH, 0.0, R.tanh)}


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_activation_kernels_bitwise_wherever_the_arrays_lie(name, dtype, parallel, rng):
    """Each element's result depends on its inputs only: not on the arrays' addresses (an
    output allocated right behind an input, misaligned arrays) nor on its position in the
    vectorised loop. With fastmath, LLVM's vector loop and its scalar copy (taken when a
    runtime check finds the arrays close, and for the last elements) rounded sigmoid's and
    GELU-tanh's backward differently, so a result changed with the heap's state."""
    op, alpha, saved = OPS[name]
    fwd, bwd = (K.forward, K.backward) if parallel else (K.forward_serial, K.backward_serial)
    n = 1003
    x = (rng.standard_normal(n) * 3).astype(dtype)
    x[:4] = [0.0, -0.0, 1e-30, -1e-30]
    dy = rng.standard_normal(n).astype(dtype)
    s = saved(x).astype(dtype)
    y, = assert_same_bits_wherever(lambda a, o: fwd(a, o, op, alpha), [x, np.empty_like(x)], [1])
    dx, = assert_same_bits_wherever(lambda d, v, o: bwd(d, v, o, op, alpha),
                                    [dy, s, np.empty_like(x)], [2])
    # the same elements at other places in the vector loop, and each alone (the scalar loop)
    parts = [(k, n) for k in range(1, 9)] + [(i, i + 1) for i in range(64)]
    for lo, hi in parts:
        yk, dxk = np.empty(hi - lo, dtype), np.empty(hi - lo, dtype)
        fwd(x[lo:hi], yk, op, alpha)
        bwd(dy[lo:hi], s[lo:hi], dxk, op, alpha)
        assert np.array_equal(bits(yk), y[lo:hi]), f"forward of x[{lo}:{hi}]"
        assert np.array_equal(bits(dxk), dx[lo:hi]), f"backward of x[{lo}:{hi}]"


def test_activation_layers_protocol_and_bad_arguments(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    x0 = x.copy()
    for make, *_ in ACTS.values():
        layer = make()
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(x)
        y = layer(x)
        assert np.array_equal(x, x0)   # the input is not modified
        with pytest.raises(ValueError, match="shape"):
            layer.backward(np.ones((2, 4), np.float32))
        with pytest.raises(TypeError, match="dtype"):
            layer.backward(np.ones((2, 3)))
        layer.input_grad = False
        layer(x)
        assert layer.backward(np.ones_like(y)) is None
        assert layer.state_dict() == {} and layer.output_shape((2, 3)) == (2, 3)
        assert layer.macs((2, 3)) == 0
        with pytest.raises(TypeError, match="int64"):
            layer(np.ones(3, np.int64))
    with pytest.raises(ValueError, match="approximate"):
        GELU("fast")
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="erf")
    with pytest.raises(TypeError, match="negative_slope"):
        LeakyReLU("0.1")
    with pytest.raises(ValueError, match="dy must have the shape of y"):
        F.sigmoid_backward(np.ones(3, np.float32), np.ones(4, np.float32))


def test_activation_reprs_are_torchs():
    pairs = [(LeakyReLU(), torch.nn.LeakyReLU()), (LeakyReLU(0.2, inplace=True),
                                                  torch.nn.LeakyReLU(0.2, inplace=True)),
             (GELU(), torch.nn.GELU()), (GELU("tanh"), torch.nn.GELU(approximate="tanh")),
             (SiLU(), torch.nn.SiLU()), (Sigmoid(), torch.nn.Sigmoid()), (Tanh(), torch.nn.Tanh()),
             (nbconv.ReLU(inplace=True), torch.nn.ReLU(inplace=True)),
             (nbconv.Identity(), torch.nn.Identity()),
             (CrossEntropyLoss(label_smoothing=0.1),
              torch.nn.CrossEntropyLoss(label_smoothing=0.1))]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


# ---- CrossEntropyLoss ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_loss_matches_torch(dtype, reduction, smoothing, rng):
    logits = (rng.standard_normal((7, 5)) * 4).astype(dtype)
    labels = rng.integers(0, 5, 7)
    crit = CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    loss = crit(logits, labels)
    d = crit.backward()
    t = torch_tensor(logits, requires_grad=True)
    tl = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(
        t, torch.from_numpy(labels))
    tl.backward()
    assert loss.dtype == dtype and np.ndim(loss) == 0 and d.dtype == dtype
    assert_close(np.asarray(loss), np.asarray(tl.item(), dtype), dtype)
    assert_close(d, t.grad.numpy(), dtype)
    rl, rd = R.cross_entropy_naive(logits, labels, reduction, smoothing)
    assert_close(np.asarray(loss), np.asarray(rl), dtype)
    assert_close(d, rd, dtype)
    assert_close(crit.backward(2.5), 2.5 * d, dtype)


def test_cross_entropy_loss_equals_softmax_cross_entropy_and_is_stable(rng):
    logits = rng.standard_normal((6, 10))
    logits[0, 3] = 1e4   # extreme logits stay finite (log-sum-exp)
    labels = rng.integers(0, 10, 6)
    crit = CrossEntropyLoss()
    loss = crit(logits, labels)
    ref_loss, ref_d = SoftmaxCrossEntropy()(logits, labels)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-14)
    np.testing.assert_allclose(crit.backward(), ref_d, rtol=1e-12, atol=1e-15)
    assert np.isfinite(loss)
    c = CrossEntropyLoss(label_smoothing=0.2)
    c(logits[1:], labels[1:])
    small = logits[1:].copy()
    f = lambda: float(CrossEntropyLoss(label_smoothing=0.2)(small, labels[1:]))  # noqa: E731
    np.testing.assert_allclose(c.backward(), numeric_grad(f, small), rtol=1e-6, atol=1e-9)


def test_cross_entropy_loss_bad_arguments():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(RuntimeError, match="before forward"):
        CrossEntropyLoss().backward()
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="weight"):
        CrossEntropyLoss(weight=np.ones(4))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        CrossEntropyLoss()(logits, np.array([0, 1, 4]))
    with pytest.raises(TypeError, match="integer"):
        CrossEntropyLoss()(logits, np.zeros(3))
    with pytest.raises(ValueError, match="2-d"):
        CrossEntropyLoss()(np.zeros(4, np.float32), np.array([1]))
