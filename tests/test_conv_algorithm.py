"""Conv2d's ``algorithm=`` ("auto" | "direct" | "winograd"): plumbing and errors, the
``NBCONV_CONV_ALGORITHM`` override, the "auto" rule, torch parity of every algorithm on the 3x3
stride-1 grid, the non-finite fallback, thread-count invariance, the layer, and the one layout
of ``x`` per training step."""
import numpy as np
import pytest

import nbconv.functional as F
import nbconv.functional._algorithm as ALGO
import nbconv.functional._conv_plan as PLAN
import nbconv.functional.depthwise as DW
from nbconv.functional.direct import DirectEngine
from nbconv.functional.pointwise import PointwiseEngine
from nbconv.functional.winograd import WinogradEngine
from nbconv import _config
from nbconv.layers import Conv2d
from helpers import DTYPES, num_threads
from test_conv import check, make, torch_ref

ALGOS = ["auto", "direct", "winograd"]

# 3x3, stride 1, dilation 1 (N, C, H, W, F, kernel, stride, padding, dilation, groups): every
# algorithm can run these
GRID3 = [
    (2, 3, 7, 9, 4, 3, 1, 1, 1, 1),        # odd sizes, C=3
    (2, 20, 9, 9, 34, 3, 1, 1, 1, 2),      # groups, odd filter count
    (2, 2, 5, 6, 3, 3, 1, "full", 1, 1),   # 'full' = padding 2
    (1, 2, 5, 5, 3, 3, 1, 4, 1, 1),        # padding 4 > k - 1 (dx reads a cropped dy)
    (2, 6, 7, 7, 6, 3, 1, 1, 1, 6),        # depthwise
    (32, 16, 8, 8, 16, 3, 1, "same", 1, 1),  # "auto" picks Winograd here (see below)
    (22, 64, 12, 10, 64, 3, 1, (0, 2), 1, 4),  # "auto": Winograd, groups, ph != pw
]
GRID3_IDS = [f"g3cfg{i}" for i in range(len(GRID3))]
AUTO_WINOGRAD = [GRID3[5], GRID3[6]]  # shapes "auto" runs by Winograd (asserted below)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """These tests set NBCONV_CONV_ALGORITHM themselves where they mean to."""
    monkeypatch.delenv(ALGO.ENV, raising=False)


def _dy(y, seed=1):
    return np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)


# ---- parity with torch, every algorithm --------------------------------------------------------

@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", GRID3, ids=GRID3_IDS)
def test_every_algorithm_matches_torch(cfg, dtype, algorithm):
    x, w, b, args = make(cfg, dtype)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    y = F.conv2d(x, w, b, **args, algorithm=algorithm)
    check(y, torch_ref(x64, w64, b64, args), dtype, "y vs torch")
    dy = _dy(y)
    grads = F.conv2d_backward(dy, x, w, **args, algorithm=algorithm)
    for name, a, t in zip(("dx", "dweight", "dbias"), grads,
                          torch_ref(x64, w64, b64, args, dy.astype(np.float64))):
        check(a, t, dtype, f"{name} vs torch ({algorithm})")


def _winograd_calls(monkeypatch):
    """A list that records each call of the Winograd engine's forward, input and weight
    gradients from now on."""
    calls = []
    for name in ("forward", "input_grad", "weight_grad"):
        fn = getattr(WinogradEngine, name)
        monkeypatch.setattr(WinogradEngine, name,
                            lambda *a, _fn=fn, _n=name, **k: (calls.append(_n), _fn(*a, **k))[1])
    return calls


def test_winograd_really_runs(monkeypatch):
    """"winograd" (and "auto" on its shapes) goes through the Winograd engine, "direct" not;
    an explicit "winograd" computes the weight gradient by Winograd too, "auto" only on large
    maps (not these)."""
    calls = _winograd_calls(monkeypatch)
    x, w, b, args = make(GRID3[6], np.float32)
    for algorithm, expect in [("direct", []),
                              ("winograd", ["forward", "input_grad", "weight_grad"]),
                              ("auto", ["forward", "input_grad"])]:
        calls.clear()
        y = F.conv2d(x, w, b, **args, algorithm=algorithm)
        F.conv2d_backward(_dy(y), x, w, **args, algorithm=algorithm)
        assert calls == expect, algorithm
    calls.clear()  # need_dx=False: only the weight gradient
    F.conv2d_backward(_dy(y), x, w, **args, algorithm="winograd", need_dx=False)
    assert calls == ["weight_grad"]
    calls.clear()
    F.conv2d_backward(_dy(y), x, w, **args, need_dx=False)
    assert calls == []


@pytest.mark.parametrize("algorithm", ALGOS)
def test_unbatched_input_every_algorithm(algorithm):
    """An unbatched (C, H, W) input gives (F, OH, OW), and takes an unbatched dy for an
    unbatched dx, under every algorithm as under direct and torch (issue 18: Winograd returned
    (1, F, OH, OW), and the layer then refused the unbatched dy). (16, 4, 256) with a 16->16
    3x3 padding-1 conv is a shape "auto" runs by Winograd."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 4, 256)).astype(np.float64)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float64)
    b = rng.standard_normal(16).astype(np.float64)
    args = dict(stride=1, padding=1, dilation=1, groups=1)
    assert F.conv2d_prepare(x, w, padding=1).engine.name == "winograd"
    t_y = torch_ref(x, w, b, args)
    dy = _dy(t_y)
    t_dx, t_dw, t_db = torch_ref(x, w, b, args, dy)
    assert t_y.shape == (16, 4, 256) and t_dx.shape == x.shape
    y = F.conv2d(x, w, b, padding=1, algorithm=algorithm)
    check(y, t_y, np.float64, "y")
    prep = F.conv2d_prepare(x, w, padding=1, algorithm=algorithm)
    check(F.conv2d(None, w, b, padding=1, prepared=prep, algorithm=algorithm), t_y,
          np.float64, "y (prepared)")
    for dx, dw, db in (F.conv2d_backward(dy, x, w, padding=1, algorithm=algorithm),
                       F.conv2d_backward(dy, None, w, padding=1, prepared=prep,
                                         algorithm=algorithm)):
        check(dx, t_dx, np.float64, "dx")
        check(dw, t_dw, np.float64, "dw")
        check(db, t_db, np.float64, "db")
    check(F.conv2d_input_grad(dy, w, x.shape, padding=1), t_dx, np.float64, "input_grad")
    layer = Conv2d(16, 16, 3, padding=1, dtype=np.float64, algorithm=algorithm)
    layer.params["weight"][...] = w
    layer.params["bias"][...] = b
    check(layer(x), t_y, np.float64, "layer y")
    check(layer.backward(dy), t_dx, np.float64, "layer dx")
    check(layer.grads["weight"], t_dw, np.float64, "layer dw")


# ---- arguments and errors ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, reason", [
    (dict(k=5, padding=2), r"kernel size \(5, 5\) is not 3x3"),
    (dict(stride=2, padding=1), r"stride \(2, 2\) is not 1"),
    (dict(dilation=2, padding=2), r"dilation \(2, 2\) is not 1"),
    (dict(k=(3, 1), padding=1), r"kernel size \(3, 1\) is not 3x3"),
])
def test_winograd_refused_with_reason(kwargs, reason):
    k = kwargs.pop("k", 3)
    kh, kw = k if isinstance(k, tuple) else (k, k)
    x = np.ones((2, 4, 9, 9), np.float32)
    w = np.ones((4, 4, kh, kw), np.float32)
    match = "algorithm='winograd' cannot run this convolution: " + reason
    with pytest.raises(ValueError, match=match):
        F.conv2d(x, w, **kwargs, algorithm="winograd")
    with pytest.raises(ValueError, match=match):
        F.conv2d_prepare(x, w, **kwargs, algorithm="winograd")
    with pytest.raises(ValueError, match=match):
        F.conv2d_backward(np.ones((2, 4, 9, 9), np.float32), x, w, **kwargs,
                          algorithm="winograd")
    layer = Conv2d(4, 4, k, **kwargs, algorithm="winograd")  # the input size is not known yet
    with pytest.raises(ValueError, match=match):
        layer(x)
    F.conv2d(x, w, **kwargs, algorithm="auto")  # "auto" and "direct" run it
    F.conv2d(x, w, **kwargs, algorithm="direct")


def test_winograd_refuses_asymmetric_padding():
    x, w = np.ones((1, 2, 6, 6), np.float32), np.ones((2, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="2, 2"):  # the 2x2 kernel is named first
        F.conv2d(x, w, padding="same", algorithm="winograd")
    geom = PLAN.ConvGeometry((1, 2, 6, 6), (2, 2, 3, 3), (1, 1), (1, 0, 1, 1), (1, 1), 1,
                             np.float32)
    assert "not the same on both sides" in ALGO.winograd_reason(geom)


@pytest.mark.parametrize("bad", ["Winograd", "fft", "", None, 1])
def test_unknown_algorithm(bad):
    x, w = np.ones((1, 2, 6, 6), np.float32), np.ones((2, 2, 3, 3), np.float32)
    match = "algorithm must be one of 'auto', 'direct', 'winograd'"
    for call in (lambda: F.conv2d(x, w, algorithm=bad),
                 lambda: F.conv2d_prepare(x, w, algorithm=bad),
                 lambda: F.conv2d_backward(np.ones((1, 2, 4, 4), np.float32), x, w,
                                           algorithm=bad),
                 lambda: Conv2d(2, 2, 3, algorithm=bad)):
        with pytest.raises(ValueError, match=match):
            call()


def test_prepared_carries_the_algorithm():
    x, w, b, args = make(GRID3[6], np.float32)
    prep = F.conv2d_prepare(x, w, **args, algorithm="winograd")
    assert prep.spec.algorithm == "winograd" and prep.engine.name == "winograd"
    y = F.conv2d(None, w, b, **args, prepared=prep, algorithm="winograd")
    assert np.array_equal(y, F.conv2d(x, w, b, **args, algorithm="winograd"))
    for a, e in zip(F.conv2d_backward(_dy(y), None, w, **args, prepared=prep,
                                      algorithm="winograd"),
                    F.conv2d_backward(_dy(y), x, w, **args, algorithm="winograd")):
        assert np.array_equal(a, e)
    with pytest.raises(ValueError, match="prepared .*algorithm winograd vs auto"):
        F.conv2d(None, w, b, **args, prepared=prep)
    with pytest.raises(ValueError, match="prepared .*algorithm winograd vs direct"):
        F.conv2d_backward(_dy(y), None, w, **args, prepared=prep, algorithm="direct")


# ---- the environment variable -------------------------------------------------------------------

def test_environment_overrides_the_argument(monkeypatch):
    x, w, b, args = make(GRID3[6], np.float32)
    direct = F.conv2d(x, w, b, **args, algorithm="direct")
    wino = F.conv2d(x, w, b, **args, algorithm="winograd")
    assert not np.array_equal(direct, wino)  # else this test could not tell them apart
    monkeypatch.setenv(ALGO.ENV, "direct")
    for algorithm in ALGOS:
        assert np.array_equal(F.conv2d(x, w, b, **args, algorithm=algorithm), direct)
    monkeypatch.setenv(ALGO.ENV, "winograd")
    for algorithm in ALGOS:
        assert np.array_equal(F.conv2d(x, w, b, **args, algorithm=algorithm), wino)
        layer = Conv2d(64, 64, 3, **args, algorithm=algorithm)
        layer.params["weight"][...], layer.params["bias"][...] = w, b
        assert np.array_equal(layer(x), wino)
    # forced Winograd runs what it can and leaves the rest direct instead of raising
    x5, w5, b5, a5 = make((2, 3, 10, 11, 5, 5, 2, 2, 1, 1), np.float32)
    assert np.array_equal(F.conv2d(x5, w5, b5, **a5, algorithm="winograd"),
                          F.conv2d(x5, w5, b5, **a5, algorithm="direct"))
    monkeypatch.setenv(ALGO.ENV, " AUTO ")  # case and spaces are forgiven
    assert np.array_equal(F.conv2d(x, w, b, **args, algorithm="direct"), wino)
    monkeypatch.setenv(ALGO.ENV, "fast")
    with pytest.raises(ValueError, match="NBCONV_CONV_ALGORITHM='fast'"):
        F.conv2d(x, w, b, **args)
    monkeypatch.setenv(ALGO.ENV, "")  # empty: as unset
    assert np.array_equal(F.conv2d(x, w, b, **args, algorithm="direct"), direct)


# ---- the "auto" rule -----------------------------------------------------------------------------

def _geom(N, C, H, W, Fn, k=3, s=1, p=1, d=1, g=1):
    return PLAN.ConvGeometry((N, C, H, W), (Fn, C // g, k, k), (s, s), (p,) * 4, (d, d), g,
                             np.float32)


def test_auto_rule_as_documented():
    mc, mf, mp = _config.WINOGRAD_MIN_CG, _config.WINOGRAD_MIN_FG, _config.WINOGRAD_MIN_PIXELS
    mt = _config.WINOGRAD_MIN_ROW_TILES
    side = int(np.ceil(np.sqrt(mp)))
    n = -(-mt // -(-side // 4))  # just enough images for mt tiles per tile row
    assert ALGO.prefers_winograd(_geom(n, mc, side, side, mf))
    assert not ALGO.prefers_winograd(_geom(n - 1, mc, side, side, mf))     # too few tiles
    assert not ALGO.prefers_winograd(_geom(1, 64, 56, 56, 64))             # N = 1
    assert ALGO.prefers_winograd(_geom(8, 64, 56, 56, 64))
    assert ALGO.prefers_winograd(_geom(64, 4 * mc, 16, 16, 4 * mf, g=4))   # groups, mc each
    assert not ALGO.prefers_winograd(_geom(n, mc - 1, side, side, mf))     # few channels
    assert not ALGO.prefers_winograd(_geom(n, mc, side, side, mf - 1))     # few filters
    assert not ALGO.prefers_winograd(_geom(64, 3, 32, 32, 64))             # first layer
    assert not ALGO.prefers_winograd(_geom(64, 4 * mc, 16, 16, 4 * mf, g=8))  # Cg < mc
    small = max(1, side - 1)
    assert small * small < mp
    assert not ALGO.prefers_winograd(_geom(512, 64, small, small, 64))     # tiny maps
    assert not ALGO.prefers_winograd(_geom(64, 64, 16, 16, 64, s=2))       # not possible
    assert not ALGO.prefers_winograd(_geom(64, 64, 16, 16, 64, k=5, p=2))
    assert not ALGO.prefers_winograd(_geom(64, 64, 16, 16, 64, d=2, p=2))
    for cfg in AUTO_WINOGRAD:
        x, w, b, args = make(cfg, np.float32)
        assert F.conv2d_prepare(x, w, **args).engine.name == "winograd", cfg
        assert np.array_equal(F.conv2d(x, w, b, **args),
                              F.conv2d(x, w, b, **args, algorithm="winograd"))
    for cfg in GRID3[:5]:
        x, w, b, args = make(cfg, np.float32)
        assert F.conv2d_prepare(x, w, **args).engine.name != "winograd", cfg
        assert np.array_equal(F.conv2d(x, w, b, **args),
                              F.conv2d(x, w, b, **args, algorithm="direct"))


# ---- non-finite values --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_fits(dtype):
    """The one chunked pass finds a NaN, an inf or a value past the overflow bound in the
    first chunk, a later one and the short tail, of the input and of the weight."""
    n = 2 * ALGO._CHUNK + 5
    a = np.random.default_rng(0).standard_normal(n).astype(dtype)
    w = np.ones((2, 2), dtype)
    bound = ALGO.winograd_bound(dtype, 7, 1.0)
    a[7] = 0.999 * bound  # inside the bound
    assert ALGO.winograd_fits(a, w, 7) and ALGO.winograd_fits(a[:0], w[:0], 7)
    assert ALGO.winograd_fits(a[:1], w, 7)
    for i in (0, ALGO._CHUNK, n - 1):  # first chunk, a later one, the short tail
        for v in (np.nan, np.inf, -np.inf, 1.01 * bound, -1.01 * bound):
            b = a.copy()
            b[i] = v
            assert not ALGO.winograd_fits(b[None, :, None], w, 7), (i, v)
            if not np.isfinite(v):
                assert not ALGO.winograd_fits(a, b.reshape(1, -1), 7), (i, v)
    assert not ALGO.winograd_fits(a, 2 * w, 7)   # a larger weight lowers the bound on a
    assert not ALGO.winograd_fits(a, w, 8)       # so do more channels
    huge = np.full(3, np.finfo(dtype).max, dtype)
    assert not ALGO.winograd_fits(np.zeros(3, dtype), huge, 7)
    assert not ALGO.winograd_fits(huge / 50, 0 * w, 7)  # overflows in the input transform


def _gains():
    """The overflow bound's factors, recomputed here from the kernels' transform matrices."""
    from nbconv.kernels import winograd as WK
    return tuple(float(np.abs(m).sum(axis=1).max()) ** 2 for m in (WK.BT, WK.G, WK.AT))


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_never_overflows_finite_inputs(dtype, monkeypatch):
    """Finite inputs with |x| ~ 1e37 (float32; 1e308 float64) and |w| ~ 1e-3, whose true
    outputs are finite, gave all-NaN under "auto" (issue 18): the Winograd transforms
    overflowed. "auto" now sees the magnitudes and runs direct: finite, as torch."""
    big = 1e37 if dtype == np.float32 else 1e308
    calls = _winograd_calls(monkeypatch)
    x, w, b, args = make(GRID3[5], dtype)  # a shape "auto" runs by Winograd
    x = (x / np.abs(x).max() * big).astype(dtype)
    w = (w / np.abs(w).max() * 1e-3).astype(dtype)
    assert F.conv2d_prepare(x, w, **args).engine.name == "winograd"
    expect = torch_ref(x, w, b, args)
    assert np.isfinite(expect).all()
    assert not np.isfinite(F.conv2d(x, w, b, **args, algorithm="winograd")).all()
    calls.clear()
    y = F.conv2d(x, w, b, **args)
    assert calls == [] and np.isfinite(y).all()
    check(y, expect, dtype, "y vs torch")
    assert np.array_equal(y, F.conv2d(x, w, b, **args, algorithm="direct"))
    dy = _dy(y)
    dy = (dy / np.abs(dy).max() * big).astype(dtype)
    t_dx = torch_ref(x, w, b, args, dy)[0]
    assert np.isfinite(t_dx).all()
    assert not np.isfinite(F.conv2d_backward(dy, x, w, **args, algorithm="winograd")[0]).all()
    calls.clear()
    dx = F.conv2d_backward(dy, x, w, **args)[0]
    assert calls == [] and np.isfinite(dx).all()
    check(dx, t_dx, dtype, "dx vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_keeps_winograd_inside_the_bound(dtype, monkeypatch):
    """Just inside the documented bound ("auto" runs Winograd: half the dtype's largest value
    over gain(BT)^2 * gain(G)^2 * gain(AT)^2 * channels * max|w|, the matrices' gains
    recomputed here) the output is finite and matches direct; just outside, direct runs. The
    same for dx with max|dy| and filters per group. Normal float32 data (|x| up to 1e30)
    keeps Winograd."""
    gi, gw, go = _gains()
    assert (gi, gw, go) == (100.0, 1.0, 361.0)
    half = float(np.finfo(dtype).max) / 2
    calls = _winograd_calls(monkeypatch)
    x, w, b, args = make(GRID3[6], dtype)  # groups 4: 16 channels and 16 filters per group
    K = x.shape[1] // args["groups"]
    bound = min(half / gi, half / (go * K * gi * gw * float(np.abs(w).max())))
    direct = F.conv2d(x, w, b, **args, algorithm="direct")
    dy = _dy(direct)
    for scale in (0.99, 1.01):
        xs = (x / np.abs(x).max() * (scale * bound)).astype(dtype)
        dys = (dy / np.abs(dy).max() * (scale * bound)).astype(dtype)
        calls.clear()
        y = F.conv2d(xs, w, b, **args)
        dx = F.conv2d_backward(dys, xs, w, **args)[0]
        assert calls == (["forward", "input_grad"] if scale < 1 else []), scale
        assert np.isfinite(y).all() and np.isfinite(dx).all()
        check(y, F.conv2d(xs, w, b, **args, algorithm="direct"), dtype, "y vs direct")
        check(dx, F.conv2d_backward(dys, xs, w, **args, algorithm="direct")[0], dtype,
              "dx vs direct")
    if dtype == np.float32:
        calls.clear()
        F.conv2d((x / np.abs(x).max() * 1e30).astype(dtype), w, b, **args)
        assert calls == ["forward"]


def _nonfinite_data(dtype):
    x, w, b, args = make(GRID3[6], dtype)
    x[0, 3, 5, 4] = np.inf
    x[1, 10, 2, 7] = np.nan
    x[1, 20, 9, 0] = -np.inf
    return x, np.abs(w) + 0.1, b, args  # positive weights: an inf stays an inf where torch's does


def _pattern(a):
    return np.isnan(a), np.isposinf(a), np.isneginf(a)


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_falls_back_to_direct_on_non_finite(dtype):
    """PyTorch's pattern of inf and NaN with "auto" (on a shape where it would run Winograd):
    an inf or NaN reaches only the outputs whose 3x3 window holds it. Explicit "winograd"
    spreads it (as NaN) over whole 4x4 output tiles, as documented."""
    x, w, b, args = _nonfinite_data(dtype)
    assert F.conv2d_prepare(x, w, **args).engine.name == "winograd"
    expect = torch_ref(x, w, b, args)
    y = F.conv2d(x, w, b, **args)
    for a, e in zip(_pattern(y), _pattern(expect)):
        assert np.array_equal(a, e)
    fin = np.isfinite(expect)
    check(np.where(fin, y, 0), np.where(fin, expect, 0), dtype, "finite part")
    wino = F.conv2d(x, w, b, **args, algorithm="winograd")
    assert (~np.isfinite(wino)).sum() > (~fin).sum()  # per-tile spreading
    # dx: dy with an inf; x finite so forward would be Winograd
    xf, _, _, _ = make(GRID3[6], dtype)
    y = F.conv2d(xf, w, b, **args)
    dy = _dy(y)
    dy[0, 2, 4, 4] = np.inf
    dy[1, 9, 0, 7] = np.nan
    expect = torch_ref(xf, w, b, args, dy)[0]
    prep = F.conv2d_prepare(xf, w, **args)
    dx = F.conv2d_backward(dy, None, w, **args, prepared=prep)[0]
    for a, e in zip(_pattern(dx), _pattern(expect)):
        assert np.array_equal(a, e)
    wdx = F.conv2d_backward(dy, xf, w, **args, algorithm="winograd")[0]
    assert (~np.isfinite(wdx)).sum() > (~np.isfinite(expect)).sum()


def test_auto_falls_back_on_non_finite_weight():
    x, w, b, args = make(GRID3[5], np.float32)
    w[3, 2, 1, 1] = np.inf
    expect = torch_ref(x, w, b, args)
    for a, e in zip(_pattern(F.conv2d(x, w, b, **args)), _pattern(expect)):
        assert np.array_equal(a, e)


# ---- determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["winograd", "auto"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_invariance(dtype, algorithm):
    for cfg in AUTO_WINOGRAD + [(3, 24, 13, 21, 20, 3, 1, 1, 1, 1)]:
        x, w, b, args = make(cfg, dtype)
        dy = _dy(F.conv2d(x, w, b, **args), 6)
        runs = []
        for n in (1, 2, 2, 1):
            with num_threads(n):
                runs.append((F.conv2d(x, w, b, **args, algorithm=algorithm),)
                            + F.conv2d_backward(dy, x, w, **args, algorithm=algorithm))
        for r in runs[1:]:
            for a, e in zip(r, runs[0]):
                assert np.array_equal(a, e)


# ---- the layer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ALGOS)
def test_layer_algorithm(algorithm):
    cfg = GRID3[6]
    x, w, b, args = make(cfg, np.float64)
    layer = Conv2d(cfg[1], cfg[4], 3, padding=args["padding"], groups=args["groups"],
                   dtype=np.float64, algorithm=algorithm)
    layer.params["weight"][...] = w
    layer.params["bias"][...] = b
    y = layer(x)
    assert np.array_equal(y, F.conv2d(x, w, b, **args, algorithm=algorithm))
    dy = _dy(y)
    dx = layer.backward(dy)
    e_dx, e_dw, e_db = F.conv2d_backward(dy, x, w, **args, algorithm=algorithm)
    assert np.array_equal(dx, e_dx)
    assert np.array_equal(layer.grads["weight"], e_dw)
    assert np.array_equal(layer.grads["bias"], e_db)
    t = torch_ref(x, w, b, args, dy)
    check(dx, t[0], np.float64, "dx vs torch")
    assert ("algorithm" in repr(layer)) == (algorithm != "auto")


@pytest.mark.parametrize("algorithm, cfg", [("winograd", GRID3[6]), ("auto", GRID3[6]),
                                            ("direct", GRID3[6]), ("winograd", GRID3[4])])
def test_layer_lays_x_out_once(monkeypatch, algorithm, cfg):
    """A training step builds the geometry once and the direct layout of ``x`` at most once:
    a Winograd forward pass reads ``x`` as it is, and only a direct weight gradient needs the
    layout, built at backward time ("auto" on small maps); an explicit "winograd" computes the
    weight gradient by Winograd too and never builds it; inference with Winograd never does."""
    count = []
    for cls in (DirectEngine, DW.DepthwiseEngine, PointwiseEngine):
        monkeypatch.setattr(cls, "layout", lambda self, x, geom, _f=cls.layout:
                            (count.append(self.name), _f(self, x, geom))[1])
    x, w, b, args = make(cfg, np.float32)
    layer = Conv2d(cfg[1], cfg[4], 3, padding=args["padding"], groups=args["groups"],
                   algorithm=algorithm)
    y = layer(x)
    assert len(count) == (0 if algorithm != "direct" else 1)
    layer.backward(np.ones_like(y))
    assert len(count) == (0 if algorithm == "winograd" else 1)
    count.clear()
    F.conv2d(x, w, b, **args, algorithm=algorithm)
    assert len(count) == (0 if algorithm != "direct" else 1)
