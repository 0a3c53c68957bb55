"""The conv dispatcher (nbconv/functional/_dispatch.py): the spec is parsed once, one function
picks the engine for a spec and a geometry, every public conv op (and the transposed conv)
goes through it, and each engine gives the same results through the same methods."""
import numpy as np
import pytest

import nbconv
import nbconv.functional as F
from nbconv import _checks
from nbconv import reference as R
from nbconv.functional import _dispatch as D
from helpers import DTYPES, assert_close

ENGINES = {"direct": D.DIRECT, "pointwise": D.POINTWISE, "depthwise": D.DEPTHWISE,
           "winograd": D.WINOGRAD, "exact": D.EXACT}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("NBCONV_CONV_ALGORITHM", raising=False)


def _geom(spec, x_shape, w_shape):
    return D.geometry(spec, x_shape, w_shape, np.float32)


@pytest.mark.parametrize("kw, x_shape, w_shape, auto, direct", [
    (dict(kernel_size=3, padding=1), (64, 32, 16, 16), (32, 32, 3, 3), "winograd", "direct"),
    (dict(kernel_size=3, padding=1), (2, 3, 9, 9), (8, 3, 3, 3), "direct", "direct"),
    (dict(kernel_size=3, stride=2, padding=1), (64, 32, 16, 16), (32, 32, 3, 3), "direct",
     "direct"),
    (dict(kernel_size=1), (4, 16, 8, 8), (32, 16, 1, 1), "pointwise", "pointwise"),
    (dict(kernel_size=1, stride=2), (4, 16, 8, 8), (32, 16, 1, 1), "pointwise", "pointwise"),
    (dict(kernel_size=1, padding=1), (4, 16, 8, 8), (32, 16, 1, 1), "direct", "direct"),
    (dict(kernel_size=3, padding=1, groups=16), (4, 16, 8, 8), (16, 1, 3, 3), "depthwise",
     "depthwise"),
    (dict(kernel_size=5, padding=2), (2, 1, 9, 9), (4, 1, 5, 5), "depthwise", "depthwise"),
])
def test_select_engine_picks_by_algorithm_and_geometry(kw, x_shape, w_shape, auto, direct):
    for algorithm, want in (("auto", auto), ("direct", direct)):
        spec = F.conv_spec(**kw, algorithm=algorithm)
        assert D.select_engine(spec, _geom(spec, x_shape, w_shape)).name == want
    spec = F.conv_spec(**kw, algorithm="winograd")
    geom = _geom(spec, x_shape, w_shape)
    if kw["kernel_size"] == 3 and kw.get("stride", 1) == 1:
        assert D.select_engine(spec, geom) is D.WINOGRAD
    else:
        with pytest.raises(ValueError, match="winograd"):
            D.select_engine(spec, geom)


def test_environment_overrides_the_choice(monkeypatch):
    spec = F.conv_spec(3, padding=1)
    geom = _geom(spec, (64, 32, 16, 16), (32, 32, 3, 3))
    monkeypatch.setenv("NBCONV_CONV_ALGORITHM", "direct")
    assert D.select_engine(spec, geom) is D.DIRECT
    monkeypatch.setenv("NBCONV_CONV_ALGORITHM", "winograd")
    strided = F.conv_spec(3, stride=2, padding=1, algorithm="winograd")
    assert D.select_engine(strided, _geom(strided, (2, 4, 8, 8), (4, 4, 3, 3))) is D.DIRECT


def test_spec_is_frozen_and_parsed_once_by_the_layer(monkeypatch):
    """Conv2d parses its arguments at construction: a training step does not parse the padding
    again (it did on every call)."""
    layer = nbconv.Conv2d(4, 6, 3, padding="same", stride=1)
    assert layer.spec.padding == (1, 1, 1, 1)
    with pytest.raises(Exception):
        layer.spec.padding = (0, 0, 0, 0)
    calls = []
    real = _checks.conv2d_padding
    monkeypatch.setattr(_checks, "conv2d_padding", lambda *a: (calls.append(a), real(*a))[1])
    monkeypatch.setattr(D, "conv2d_padding", _checks.conv2d_padding)
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 7)).astype(np.float32)
    y = layer(x)
    layer.backward(np.ones_like(y))
    assert calls == []
    F.conv2d(x, layer.params["weight"], padding="same")   # the functional op parses per call
    assert len(calls) == 1


def test_spec_and_separate_arguments_do_not_mix():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    spec = F.conv_spec(3, padding=1)
    assert F.conv2d(x, w, spec=spec).shape == (1, 3, 5, 5)
    with pytest.raises(TypeError, match="spec"):
        F.conv2d(x, w, padding=1, spec=spec)
    with pytest.raises(TypeError, match="ConvSpec"):
        F.conv2d(x, w, spec={"padding": 1})
    with pytest.raises(ValueError, match="kernel size"):
        F.conv2d(x, np.zeros((3, 2, 5, 5), np.float32), spec=spec)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kw, x_shape, w_shape", [
    ("direct", dict(kernel_size=3, padding=1, stride=2), (2, 5, 9, 8), (6, 5, 3, 3)),
    ("pointwise", dict(kernel_size=1), (2, 6, 5, 7), (4, 6, 1, 1)),
    ("pointwise", dict(kernel_size=1, stride=2, groups=2), (2, 6, 5, 7), (4, 3, 1, 1)),
    ("depthwise", dict(kernel_size=3, padding=1, groups=4), (2, 4, 6, 6), (8, 1, 3, 3)),
    ("winograd", dict(kernel_size=3, padding=1), (2, 5, 9, 8), (6, 5, 3, 3)),
    ("exact", dict(kernel_size=3, padding=2, dilation=2, groups=2), (2, 4, 7, 6),
     (6, 2, 3, 3)),
])
def test_every_engine_through_its_methods(name, kw, x_shape, w_shape, dtype):
    """Each engine's layout/forward/input_grad/weight_grad/backward against the reference."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    spec = F.conv_spec(**kw)
    geom = D.geometry(spec, x.shape, w.shape, dtype)
    eng = ENGINES[name]
    args = dict(stride=spec.stride, padding=kw.get("padding", 0), dilation=spec.dilation,
                groups=spec.groups)
    ref_y = R.conv2d_im2col(x, w, b, **args)
    dy = rng.standard_normal(ref_y.shape).astype(dtype)
    ref = R.conv2d_backward_im2col(dy, x, w, **args)
    xb = eng.layout(x, geom)
    scale = np.abs(ref_y).max()
    assert_close(eng.forward(geom, xb, w, b), ref_y, dtype, scale=scale)
    assert_close(eng.input_grad(geom, dy, w), ref[0], dtype, scale=np.abs(ref[0]).max())
    dw, db = eng.weight_grad(geom, xb, dy, True)
    assert_close(dw, ref[1], dtype, scale=np.abs(ref[1]).max() * 4)
    assert_close(db, ref[2], dtype, scale=np.abs(ref[2]).max())
    dx2, dw2, db2 = eng.backward(geom, xb, dy, w, True, False)
    assert db2 is None
    assert_close(dx2, ref[0], dtype, scale=np.abs(ref[0]).max())
    assert_close(dw2, ref[1], dtype, scale=np.abs(ref[1]).max() * 4)
    if name != "pointwise" or spec.stride == (1, 1):
        np.testing.assert_array_equal(eng.x_of(xb, geom), x)


def test_transposed_conv_goes_through_the_dispatcher(monkeypatch):
    calls = []
    real = D.select_engine
    monkeypatch.setattr(D, "select_engine", lambda *a: (calls.append(a[0]), real(*a))[1])
    layer = nbconv.ConvTranspose2d(4, 3, 3, stride=2, padding=1)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    y = layer(x)
    layer.backward(np.ones_like(y))
    assert calls and all(isinstance(s, F.ConvSpec) for s in calls)
