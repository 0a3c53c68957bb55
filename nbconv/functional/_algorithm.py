"""The rules behind the conv dispatcher's choice
(:func:`nbconv.functional._dispatch.select_engine`): which algorithm a convolution asks for
(``"direct"``, ``"winograd"`` or ``"auto"``), where Winograd can run and where it measured
faster, and the check of the data that ``"auto"`` makes before running Winograd on it.

:func:`nbconv.functional.conv2d`, :func:`~nbconv.functional.conv2d_prepare`,
:func:`~nbconv.functional.conv2d_backward` and :class:`nbconv.layers.Conv2d` take
``algorithm=``, as cuDNN users pick a convolution algorithm:

- ``"direct"``: the direct kernels (:mod:`nbconv.functional._conv_plan`,
  :mod:`nbconv.functional.depthwise`), any convolution.
- ``"winograd"``: Winograd F(4x4,3x3) (:mod:`nbconv.functional.winograd`) for the forward pass,
  the input gradient and the weight gradient. Only 3x3, stride 1, dilation 1,
  padding the same on both sides of each axis; anything else raises ``ValueError`` naming the
  reason (:func:`winograd_reason`). A NaN or inf in ``x`` (or ``dy``, for ``dx``) reaches every
  output of the 4x4 tiles whose input tile holds it (as NaN), not only the outputs whose 3x3
  window holds it as in PyTorch, and values past the overflow bound below may overflow
  (``"winograd"`` does what it is asked; ``"auto"`` checks).
- ``"auto"`` (the default): Winograd where :func:`prefers_winograd` says it measured faster,
  direct elsewhere, and direct whenever the input (``x`` for the forward pass, ``dy`` for
  ``dx``) or the weight holds a NaN or inf, so results follow PyTorch's non-finite semantics,
  or values so large that a Winograd intermediate could overflow (below), so finite inputs
  never give a non-finite output that direct would not. Both are one check,
  :func:`winograd_fits`: the largest ``|value|`` of each array (NumPy's ``max`` and ``min``
  over chunks, so a NaN or inf shows too), stopping at the first chunk past its bound:
  0.09-0.35 ms for 2-8 MB float32 inputs (AMD EPYC Zen 3, 2 busy cores), 1.1-1.5x the
  finiteness-only check it replaced (NumPy's ``isfinite`` over the same chunks; 0.2-0.5 ms, 0.3%
  of a Winograd forward pass, on the Zen 5 of the table below). A Numba kernel doing the pass
  (multiply by zero, sum, compare) measured 64 ms per call on this busy machine, whatever the
  size: waking its thread pool cost more than the pass. Where Winograd ran the forward pass,
  ``"auto"`` computes the weight gradient by Winograd too on maps of at least
  ``WINOGRAD_DW_MIN_PIXELS`` output pixels (:func:`prefers_winograd_weight_grad`), when ``x``
  and ``dy`` pass :func:`winograd_grad_fits`; else by the direct engine.

  The overflow bound, derived from the transform matrices of :mod:`nbconv.kernels.winograd`
  (``BT``, ``G``, ``AT``; the gain of a matrix is its largest row sum of ``|entries|``, the
  most by which it can multiply the largest ``|value|`` it is applied to, every partial sum
  included): with ``a = max|x|`` (or ``max|dy|``), ``w = max|weight|`` and ``K`` the channels
  one output sums (``C/groups`` forward, ``n_filters/groups`` for ``dx``), the input transform
  ``BT d BT^T`` is at most ``gain(BT)^2 a = 100 a``, the weight transform ``G g G^T`` at most
  ``gain(G)^2 w = w``, their products summed over the channels at most ``K * 100 a * w``, and
  the output transform ``AT m AT^T`` at most ``gain(AT)^2 = 361`` times that. Winograd runs
  only when ``100 a``, ``w`` and ``36100 K a w`` are all at most half the dtype's largest value
  (the other half is headroom for rounding). The true output is at most ``9 K a w``, so the
  bound gives away a factor of about 4000 (12 bits): for float32 with ``|weight| <= 1`` and
  ``K = 512`` Winograd still runs up to ``|x|`` of about ``9e30``.

The environment variable ``NBCONV_CONV_ALGORITHM`` (``auto``, ``direct`` or ``winograd``),
read at every call, overrides the argument everywhere (for debugging and benchmarks):
``direct`` runs the direct kernels everywhere, ``auto`` applies the rule everywhere, and
``winograd`` runs Winograd on every convolution it can do (without the non-finite and
overflow fallback, as an explicit ``"winograd"``) and direct on the others, instead of
raising. An unknown value raises ``ValueError``.

The ``"auto"`` rule, measured (float32, 2 threads of a busy 2-core Zen 5, AVX-512;
``benchmarks/winograd_probe.py``, 3x3 padding 1, medians of 5 interleaved rounds; speed of
Winograd / direct, forward pass and whole backward pass (Winograd dx + direct dw vs direct dx +
dw); two numbers: two runs):

    shape (N, C, H, W, F)    forward  backward (dx + dw)
    64, 3, 32, 32, 16          0.84     0.91
    64, 8, 32, 32, 8           0.97     0.89
    64, 16, 32, 32, 16         1.61     1.10
    64, 16, 16, 16, 64         1.23     -
    64, 32, 16, 16, 32         1.21     -
    64, 64, 16, 16, 128 g4     1.46     1.07     (Cg = 16)
    64, 64, 16, 16, 64 g8      0.85     0.85     (Cg = 8)
    64, 64, 12, 12, 64         1.14     0.97
    64, 64, 8, 8, 64           1.01-1.07  1.03
    64, 64, 4, 4, 64           0.93     -
    64, 128, 4, 4, 128         0.79     0.86
    8, 64, 56, 56, 64          1.59     1.11
    1, 64, 56, 56, 64          0.65-0.72  0.79
    1, 64, 32, 32, 64          0.44     0.72
    1, 64, 8, 8, 64            0.64     -

The machine ran about 10 other processes on its 2 cores (loads of 10), so absolute rates were
10-30 GFLOP/s, a tenth of a quiet machine's, and single ratios move by about 0.1; the rule keeps
to what held in every measurement. Re-measure after any change to the Winograd kernels.

Re-measured after both algorithms moved to the SIMD kernels (issue 16: AMD EPYC Zen 3, AVX2,
float32, padding 1; Winograd / direct speed, forward and ``dx``; one thread by
``time.thread_time``, best of 5, and two threads by wall time, best of 9, on a machine
loaded with about 3 other jobs)::

    shape (N, C, H, W, F)    1 thread: fwd  dx    2 threads: fwd  dx
    64, 16, 32, 32, 16           0.99  1.11            2.02  1.77
    64, 32, 32, 32, 32           1.57  1.63             -     -
    64, 64, 16, 16, 64           1.66  1.37            1.07  1.32
    64, 64, 8, 8, 64             1.70  1.83             -     -
    64, 256, 8, 8, 256           2.19  1.91             -     -
    128, 64, 4, 4, 64            1.47  1.66            1.21  0.57
    64, 128, 4, 4, 128           1.61  1.92            3.69  1.35
    8, 64, 56, 56, 64            2.73  3.18            2.30  1.64
    1, 64, 56, 56, 64            1.21  1.57            0.41  0.34
    1, 64, 32, 32, 64            0.91  0.93            0.43  0.45
    4, 64, 16, 16, 64            0.77  0.78            0.43  0.31
    16, 64, 8, 8, 64              -     -              0.50  0.57
    16, 8, 32, 32, 8             0.73  0.70             -     -
    64, 3, 32, 32, 16            0.66  0.82             -     -

The rule below still holds: few channels lose, few tiles per tile row lose on two threads
(Winograd's tasks are tile rows); 4x4 maps now win on one thread but not always on two, so
the 64-pixel floor stays.

Rule: Winograd when the convolution is one Winograd can do, with ``Cg >= WINOGRAD_MIN_CG`` (16)
input channels and ``Fg >= WINOGRAD_MIN_FG`` (16) filters per group, at least
``WINOGRAD_MIN_PIXELS`` (64) output pixels per map and ``N * ceil(OW / 4) >=
WINOGRAD_MIN_ROW_TILES`` (64) 4x4 tiles per tile row over the batch (Winograd's tasks are tile
rows: with one image they are too short). Constants in :mod:`nbconv._config`.
"""
import os

import numpy as np

from .._checks import ALGORITHMS, check_algorithm  # noqa: F401  (re-exported)
from .._config import (WINOGRAD_DW_MIN_PIXELS, WINOGRAD_MIN_CG, WINOGRAD_MIN_FG,
                       WINOGRAD_MIN_PIXELS, WINOGRAD_MIN_ROW_TILES)
from ..kernels import winograd as _wk

AUTO, DIRECT, WINOGRAD = ALGORITHMS
ENV = "NBCONV_CONV_ALGORITHM"
_CHUNK = 1 << 18  # elements per max/min call: a chunk (1-2 MB) stays in L2 for the second pass


def _gain(m):
    """The most by which ``m @ v`` can exceed ``max|v|``, every partial sum included: the
    largest row sum of ``|m|``."""
    return float(np.abs(m).sum(axis=1).max())


# 2-d transforms apply each matrix on both sides: BT d BT^T, G g G^T, AT m AT^T
INPUT_GAIN, WEIGHT_GAIN, OUTPUT_GAIN = (_gain(m) ** 2 for m in (_wk.BT, _wk.G, _wk.AT))
# the weight gradient's: dy's transform A dY A^T (A = AT^T) and dw = G^T dU G
DY_GAIN, GRAD_GAIN = _gain(_wk.AT.T) ** 2, _gain(_wk.G.T) ** 2


def requested(algorithm):
    """``(algorithm, forced)``: the argument checked, or ``NBCONV_CONV_ALGORITHM`` when that is
    set (``forced`` True)."""
    check_algorithm(algorithm)
    env = os.environ.get(ENV, "").strip().lower()
    if not env:
        return algorithm, False
    if env not in ALGORITHMS:
        raise ValueError(f"environment variable {ENV}={os.environ[ENV]!r} must be one of "
                         f"{', '.join(ALGORITHMS)} (or unset)")
    return env, True


def winograd_reason(geom):
    """None if Winograd F(4x4,3x3) can run the convolution of ``geom`` (a validated
    :class:`~nbconv.functional._conv_plan.ConvGeometry`), else why not."""
    if (geom.KH, geom.KW) != (3, 3):
        return f"kernel size {(geom.KH, geom.KW)} is not 3x3"
    if (geom.sh, geom.sw) != (1, 1):
        return f"stride {(geom.sh, geom.sw)} is not 1"
    if (geom.dh, geom.dw) != (1, 1):
        return f"dilation {(geom.dh, geom.dw)} is not 1"
    if geom.pt != geom.pb or geom.pl != geom.pr:
        return (f"padding (top, bottom, left, right) {(geom.pt, geom.pb, geom.pl, geom.pr)} "
                f"is not the same on both sides")
    return None


def prefers_winograd(geom):
    """The ``"auto"`` rule (see the module docstring): True where Winograd measured faster."""
    return (winograd_reason(geom) is None and geom.Cg >= WINOGRAD_MIN_CG
            and geom.Fg >= WINOGRAD_MIN_FG and geom.OH * geom.OW >= WINOGRAD_MIN_PIXELS
            and geom.N * -(-geom.OW // 4) >= WINOGRAD_MIN_ROW_TILES)


def prefers_winograd_weight_grad(geom):
    """Where ``"auto"`` computes the weight gradient by Winograd too (when it ran the forward
    pass): maps of at least ``WINOGRAD_DW_MIN_PIXELS`` output pixels (the Winograd weight
    gradient sums over a task's tiles with horizontal sums per 4x3 block of channels and
    filters: it wins only where the runs of tiles are long; see :mod:`nbconv._config`)."""
    return prefers_winograd(geom) and geom.OH * geom.OW >= WINOGRAD_DW_MIN_PIXELS


def winograd_grad_fits(x, dy, geom):
    """True if the Winograd weight gradient can run on ``x`` and ``dy``: both finite and no
    intermediate able to overflow: the input transform of ``x`` (gain 100), that of ``dy``
    (``A dY A^T``, gain ``15^2 = 225``), their products summed over every tile of the batch
    (``N * ceil(OH/4) * ceil(OW/4)`` terms) and the final ``G^T dU G`` (gain at most
    ``(5/3)^2``) stay under half the dtype's largest value."""
    half = float(np.finfo(x.dtype).max) / 2
    tiles = geom.N * -(-geom.OH // 4) * -(-geom.OW // 4)
    a = _max_abs_within(x, half / INPUT_GAIN)
    if a is None:
        return False
    bound = half / DY_GAIN
    if a > 0:
        bound = min(bound, half / (GRAD_GAIN * tiles * INPUT_GAIN * DY_GAIN * a))
    return _max_abs_within(dy, bound) is not None


def _max_abs_within(a, bound):
    """``max|a|`` (0 for an empty array) if every element is finite and at most ``bound`` in
    magnitude, else None: one pass of ``max`` and ``min`` per chunk (a NaN makes both NaN),
    stopping at the first chunk that fails."""
    flat = a.reshape(-1)
    m = 0.0
    for i in range(0, flat.size, _CHUNK):
        c = flat[i:i + _CHUNK]
        hi, lo = float(c.max()), -float(c.min())
        if not (hi <= bound and lo <= bound):  # False for a NaN
            return None
        m = max(m, hi, lo)
    return m


def winograd_bound(dtype, channels, w_max):
    """The largest ``max|a|`` for which Winograd on ``a`` (``x``, or ``dy`` for ``dx``), with
    weights of largest magnitude ``w_max`` summed over ``channels`` channels, cannot overflow
    ``dtype`` (module docstring): half the dtype's largest value over the gains."""
    half = float(np.finfo(dtype).max) / 2
    bound = half / INPUT_GAIN
    if w_max > 0:
        bound = min(bound, half / (OUTPUT_GAIN * channels * INPUT_GAIN * WEIGHT_GAIN * w_max))
    return bound


def winograd_fits(a, weight, channels):
    """True if Winograd can run on ``a`` (``x``, or ``dy`` for ``dx``) with ``weight``, one
    output summing ``channels`` channels: both arrays finite, and no intermediate able to
    overflow (:func:`winograd_bound`). One chunked pass over each array, ``weight`` first."""
    half = float(np.finfo(a.dtype).max) / 2
    w_max = _max_abs_within(weight, half / WEIGHT_GAIN)
    if w_max is None:
        return False
    return _max_abs_within(a, winograd_bound(a.dtype, channels, w_max)) is not None
