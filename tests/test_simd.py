"""The SIMD vocabulary (nbconv/kernels/simd.py): every op against NumPy at every width, both
dtypes; tails never touch memory outside their range; the horizontal sum's fixed order; the
width from the environment; Numba's disk cache keyed on the width."""
import json
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest

from nbconv._config import SIMD_BYTES_ENV
from nbconv.kernels import peak, simd

import simd_probe as probe

WIDTHS = [simd.Width(b) for b in (16, 32, 64)]   # 64 runs on AVX2 too (LLVM splits it)
DTYPES = [np.float32, np.float64]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fused(a, b, c):
    """a * b + c rounded once (exact rational arithmetic; non-finite as NumPy's a * b + c)."""
    out = a * b + c
    for k in np.flatnonzero(np.isfinite(out)):
        exact = Fraction(float(a[k])) * Fraction(float(b[k])) + Fraction(float(c[k]))
        out[k] = a.dtype.type(float(exact)) if a.dtype == np.float64 else \
            np.float32(exact.numerator / exact.denominator)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", WIDTHS, ids=repr)
def test_elementwise_ops_match_numpy(w, dtype):
    L = w.lanes(dtype)
    rng = np.random.default_rng(L)
    n = 4 * L
    a, b, c = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    a[3], b[5] = np.nan, np.inf           # NaN and inf go through as in NumPy
    out = np.empty(6 * n, dtype)
    assert probe.elementwise(w, a, b, c, out) == L
    o = out.reshape(6, n)
    np.testing.assert_array_equal(o[0], _fused(a, b, c))
    np.testing.assert_array_equal(o[1], a + b)
    np.testing.assert_array_equal(o[2], a - b)
    np.testing.assert_array_equal(o[3], a * b)
    np.testing.assert_array_equal(o[4], np.maximum(a, b))   # NaN if either is NaN
    assert np.isnan(o[4][3])
    np.testing.assert_array_equal(o[5], np.full(n, a[0]))


def test_max_nan_in_second_operand():
    w = simd.Width(32)
    a = np.zeros(16, np.float32)
    b = np.zeros(16, np.float32)
    b[2] = np.nan
    a[4] = -0.0
    out = np.empty(6 * 16, np.float32)
    probe.elementwise(w, a, b, a, out)
    m = out[4 * 16:5 * 16]
    assert np.isnan(m[2]) and np.isnan(m).sum() == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", WIDTHS, ids=repr)
def test_tails_touch_only_their_range(w, dtype):
    """load_tail/store_tail of n lanes read and write a[i:i+n] only: checked at the very end of
    an array (a read past it would be outside the buffer) and against sentinels."""
    L = w.lanes(dtype)
    for n in range(L + 1):
        a = np.arange(1, n + 1, dtype=dtype) * 1.5      # exactly n elements: nothing after them
        out = np.full(n + 2 * L, -7, dtype)
        s = probe.tail_copy(w, a, 0, n, out, L)
        assert s == a.sum(), n
        assert (out[:L] == -7).all() and (out[L + n:] == -7).all(), n
        np.testing.assert_array_equal(out[L:L + n], a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", WIDTHS, ids=repr)
def test_hsum_fixed_pairwise_order(w, dtype):
    """hsum adds halves pairwise: bitwise equal to that tree in NumPy, every call."""
    L = w.lanes(dtype)
    rng = np.random.default_rng(7)
    for _ in range(20):
        a = (rng.standard_normal(L) * 10.0 ** rng.integers(-8, 8, L)).astype(dtype)
        out = np.empty(L, dtype)
        got = probe.hsum_lanes(w, a, out)
        np.testing.assert_array_equal(out, a)
        v = a.copy()
        while v.size > 1:
            v = v[:v.size // 2] + v[v.size // 2:]
        assert got == v[0] and probe.hsum_lanes(w, a, out) == got


@pytest.mark.parametrize("dtype", DTYPES)
def test_fma_chains_sum(dtype):
    """The peak kernel computes what it says: 12 chains c <- c*a + b, summed."""
    w = simd.WIDTH
    L = w.lanes(dtype)
    seed = np.full(max(L, 2), 0.5, dtype)
    seed[1] = 0.25
    out = np.zeros(L, dtype)
    peak.fma_chains(w, seed, 3, out)
    c = np.full(L, seed[0], dtype)
    for _ in range(3):
        c = c * seed[:L] + seed[1]
    np.testing.assert_allclose(out, 12 * c, rtol=1e-6)
    outp = np.zeros((3, L), dtype)
    peak.fma_peak(w, seed, 3, outp)
    np.testing.assert_array_equal(outp, np.broadcast_to(out, (3, L)))


@pytest.mark.parametrize("reps", [1, 3])
def test_micro_kernel_drivers_compute_the_products(reps):
    """benchmarks/peak.py's drivers run the micro-kernels on what they are given: tile_4x3's
    first call overwrites, the others add (``reps`` times the product); dot_4x3 adds each call."""
    w = simd.WIDTH
    L = w.lanes(np.float32)
    g = np.random.default_rng(1)
    k, row = 5, 3 * L + 3
    x = g.integers(-3, 4, k * row).astype(np.float32)
    op = np.arange(k, dtype=np.int64) * row
    wq = g.integers(-3, 4, 4 * k).astype(np.float32)
    buf = np.full((4, 3 * L), np.nan, np.float32)
    peak.tile_4x3_in_l1(w, x, op, wq, buf, reps)
    rows = np.stack([x[o:o + 3 * L] for o in op])               # (k, 3L)
    np.testing.assert_array_equal(buf, reps * (wq.reshape(k, 4).T @ rows))
    nq = 2 * L + 3
    xd = g.integers(-3, 4, 4 * nq).astype(np.float32)
    dy = g.integers(-3, 4, (3, nq)).astype(np.float32)
    P = np.zeros((4, 3), np.float32)
    peak.dot_4x3_in_l1(w, xd, np.arange(4, dtype=np.int64) * nq, dy, nq, P, reps)
    np.testing.assert_array_equal(P, reps * (xd.reshape(4, nq) @ dy.T))


def test_width_from_environment():
    host = simd.host_bytes()
    assert simd.chosen_bytes({}) == host
    assert simd.chosen_bytes({simd.ENV: "16"}) == 16
    assert simd.chosen_bytes({simd.ENV: " 32 "}) == min(32, host)
    for bad in ("48", "avx2", "0", "-16"):
        with pytest.raises(ValueError, match=simd.ENV):
            simd.chosen_bytes({simd.ENV: bad})
    if host < 64:
        with pytest.warns(RuntimeWarning, match="wider than this CPU"):
            assert simd.chosen_bytes({simd.ENV: "64"}) == host
    with pytest.raises(ValueError, match="width"):
        simd.Width(24)


def test_wrong_types_are_compile_errors():
    """A float64 scalar splatted into float32 work, or an int array, fails to compile."""
    from numba import njit
    from numba.core.errors import TypingError

    @njit
    def mixed(w, a):
        return simd.hsum(simd.fma(simd.load(w, a, 0), simd.splat(w, 1.0), simd.zero(w, a)))

    with pytest.raises(TypingError):
        mixed(simd.Width(32), np.zeros(8, np.float32))

    @njit
    def ints(w, a):
        return simd.hsum(simd.load(w, a, 0))

    with pytest.raises(TypingError):
        ints(simd.Width(32), np.zeros(8, np.int32))


def _run(code, env):
    """Run `code` in a fresh interpreter with `env` on top of this one's environment, less any
    forced width of ours (CI runs this file again under NBCONV_SIMD_BYTES; the probe's "host" run
    must see the host width)."""
    full = {k: v for k, v in os.environ.items() if k != SIMD_BYTES_ENV}
    full.update(PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), **env)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


_PROBE = """
    import json
    import numpy as np
    import simd_probe as probe
    from nbconv.kernels import simd
    a = np.zeros(64, np.float32)
    lanes = probe.width_lanes(simd.WIDTH, a)
    st = probe.width_lanes.stats
    print(json.dumps(dict(width=simd.WIDTH.nbytes, lanes=int(lanes),
                          hits=sum(st.cache_hits.values()), misses=sum(st.cache_misses.values()),
                          sigs=[str(s[0]) for s in probe.width_lanes.signatures])))
"""


def test_disk_cache_is_keyed_on_the_width(tmp_path):
    """A second process loads the kernel from Numba's cache without compiling; a process with a
    narrower forced width over that warm cache compiles and runs the narrow code (not the
    cached wide one); a third loads the narrow code from the cache too."""
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    host = simd.host_bytes()
    narrow = {"NBCONV_SIMD_BYTES": str(host // 2), **cache}
    first = _run(_PROBE, cache)
    assert first["width"] == host and first["lanes"] == host // 4 and first["misses"] == 1
    again = _run(_PROBE, cache)
    assert again["hits"] == 1 and again["misses"] == 0 and again["lanes"] == host // 4
    forced = _run(_PROBE, narrow)
    assert forced["width"] == host // 2 and forced["lanes"] == host // 8
    assert forced["misses"] == 1 and forced["sigs"] == [f"SimdWidth({host // 2})"]
    forced_again = _run(_PROBE, narrow)
    assert forced_again["hits"] == 1 and forced_again["misses"] == 0
    assert forced_again["lanes"] == host // 8


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", WIDTHS, ids=repr)
def test_load4_store4_deinterleave_and_interleave(w, dtype):
    """load4 splits 4L elements by position mod 4 (lane k of vector m = a[4k + m]); store4 puts
    them back: the round trip is the identity, and each vector holds its positions."""
    L = w.lanes(dtype)
    a = (np.arange(12 * L) * 1.25 - 7).astype(dtype)
    out = np.full_like(a, np.nan)
    sums = probe.gather4_scatter4(w, a, out)
    np.testing.assert_array_equal(out, a)
    block = a[:4 * L].reshape(L, 4)
    for m in range(4):
        v = block[:, m].copy()
        while v.size > 1:
            v = v[:v.size // 2] + v[v.size // 2:]
        assert sums[m] == v[0], m
