"""The SIMD conv kernels at every vector width in one process: 16, 32 and 64 bytes (64 runs on
an AVX2 machine too: LLVM splits each 512-bit operation in two, slower but the same results up
to rounding), so the AVX-512 code is tested on every machine and the AVX2 and SSE code on an
AVX-512 one. ``.ci/run`` also runs the whole conv grid at the narrow width from the
environment (``NBCONV_SIMD_BYTES``)."""
import numpy as np
import pytest

import nbconv.functional as F
from nbconv import reference as R
from nbconv.kernels import simd
from helpers import DTYPES, num_threads
from test_conv import CFGS, check, make

# direct (several paths: planes with stride/dilation/groups, 1x1 in place, sub-sampled 1x1),
# Winograd-capable, depthwise
GRID = [CFGS[i] for i in (0, 1, 4, 5, 13, 14, 16, 19, 22)] + [
    (3, 16, 9, 13, 20, 3, 1, 1, 1, 1),      # Winograd: several tiles, odd sizes, Fo % 4 != 0
    (2, 24, 12, 12, 16, 3, 1, 2, 1, 2),     # Winograd with groups and padding 2
]


@pytest.fixture(params=[16, 32, 64], ids=lambda b: f"{b}B")
def width(request, monkeypatch):
    monkeypatch.setattr(simd, "WIDTH", simd.Width(request.param))
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", GRID, ids=[f"g{i}" for i in range(len(GRID))])
def test_every_width_matches_the_reference(width, cfg, dtype):
    x, w, b, args = make(cfg, dtype)
    algos = ["direct"]
    k, s, p, d = cfg[5:9]
    if k == 3 and s == 1 and d == 1 and not isinstance(p, str):
        algos.append("winograd")
    y_ref = R.conv2d_im2col(x, w, b, **args)
    dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(dtype)
    dx_ref, dw_ref, db_ref = R.conv2d_backward_im2col(dy, x, w, **args)
    for algo in algos:
        what = f"{width}B {algo}"
        check(F.conv2d(x, w, b, **args, algorithm=algo), y_ref, dtype, what + " y")
        dx, dw, db = F.conv2d_backward(dy, x, w, **args, algorithm=algo)
        check(dx, dx_ref, dtype, what + " dx")
        check(dw, dw_ref, dtype, what + " dw")
        check(db, db_ref, dtype, what + " db")
    check(F.conv2d_input_grad(dy, w, x.shape, **args), dx_ref, dtype, f"{width}B input_grad")


def test_every_width_is_thread_count_invariant(width):
    x, w, b, args = make((3, 16, 9, 13, 20, 3, 1, 1, 1, 1), np.float32)
    dy = np.random.default_rng(2).standard_normal((3, 20, 9, 13)).astype(np.float32)
    runs = []
    for n in (1, 2, 1):
        with num_threads(n):
            runs.append([F.conv2d(x, w, b, **args, algorithm=a) for a in ("direct", "winograd")]
                        + list(F.conv2d_backward(dy, x, w, **args)))
    for r in runs[1:]:
        for a, e in zip(r, runs[0]):
            assert np.array_equal(a, e)
