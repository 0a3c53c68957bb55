"""The Winograd engine: F(4x4, 3x3) convolution on :mod:`nbconv.kernels.winograd`.

Shapes: ``x`` ``(N, C, H, W)``, ``weight`` ``(F, C/groups, 3, 3)``, ``bias`` ``(F,)``,
``y``/``dy`` ``(N, F, OH, OW)`` with ``OH = H + 2*ph - 2``, ``OW = W + 2*pw - 2`` (stride 1,
dilation 1, ``ph``/``pw`` >= 0 on both sides of an axis; any groups, each group an independent
convolution). float32 and float64.

:class:`WinogradEngine` (:data:`WINOGRAD`) is the engine the conv dispatcher
(:mod:`nbconv.functional._dispatch`) runs on a validated geometry; its layout is ``x`` itself:

- forward: the bias added in the output transform;
- input gradient: the same kernel on ``dy`` shifted by ``2 - p`` (a crop when ``p > 2``) with
  the flipped, channel-swapped weights;
- weight gradient in the Winograd domain (:func:`_weight_grad`), which the dispatcher uses where
  it measured faster than the direct one.

The functions :func:`winograd_conv2d`, :func:`winograd_conv2d_input_grad` and
:func:`winograd_conv2d_weight_grad` run the engine on arrays checked here (dtypes, shapes, and
the one Winograd rule, :func:`nbconv.functional._algorithm.winograd_reason`). Inputs are never
modified.

Tiling (see :func:`_plan`): tasks of up to ``_T_MAX`` 4x4 tiles whose transformed input (36 x
channels x tiles) fits ``_V_BYTES``; fixed by the shapes alone, so results are bitwise identical
across runs and thread counts. Accuracy and speed notes: :mod:`nbconv.kernels.winograd`.
"""
import numba
import numpy as np

from .._checks import check_int, check_out_size, check_x_shape, to_pair
from ..kernels import simd
from ..kernels import winograd as _k
from ._algorithm import winograd_reason
from ._conv_plan import ConvGeometry
from ._engine import Engine

__all__ = ["winograd_conv2d", "winograd_conv2d_input_grad", "winograd_conv2d_weight_grad"]

# tuning constants, each with its reason in nbconv._config
from .._config import WINOGRAD_FBK as _FBK  # noqa: E402
from .._config import WINOGRAD_MIN_TASKS as _MIN_TASKS  # noqa: E402
from .._config import WINOGRAD_T_MAX as _T_MAX  # noqa: E402
from .._config import WINOGRAD_T_MIN as _T_MIN  # noqa: E402
from .._config import WINOGRAD_V_BYTES as _V_BYTES  # noqa: E402
from .._config import WINOGRAD_WG_BYTES as _WG_BYTES  # noqa: E402
from .._config import WINOGRAD_WG_CHUNKS as _WG_CHUNKS  # noqa: E402


def _geometry(x_shape, w_shape, padding, groups, dtype):
    """``((ph, pw), geom)``: the padding and the
    :class:`~nbconv.functional._conv_plan.ConvGeometry` of the stride-1 convolution of
    ``x_shape (N, C, H, W)`` with ``w_shape``, ``padding`` ``(ph, pw)`` on both sides;
    ``ValueError`` naming why Winograd cannot run it (the rule:
    :func:`~nbconv.functional._algorithm.winograd_reason`) or why the shapes do not fit."""
    if len(w_shape) != 4:
        raise ValueError(f"weight must be (F, C/groups, 3, 3), got shape {w_shape}")
    ph, pw = to_pair(padding, "padding", 0)
    groups = check_int(groups, "groups", 1)
    if w_shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the {w_shape[0]} filters")
    if x_shape[1] != w_shape[1] * groups:
        raise ValueError(f"x has {x_shape[1]} channels, weight of shape {w_shape} with "
                         f"groups={groups} expects {w_shape[1] * groups}")
    geom = ConvGeometry(x_shape, w_shape, (1, 1), (ph, ph, pw, pw), (1, 1), groups, dtype)
    why = winograd_reason(geom)
    if why is not None:
        raise ValueError(f"winograd convolution not applicable: {why}")
    check_out_size((geom.OH, geom.OW), ("x of shape", x_shape), ("weight of shape", w_shape),
                   ("padding", (ph, pw)))
    return (ph, pw), geom


def _consts(dtype):
    return np.array([2, 4, 5, 8, 1 / 4, 1 / 6, 1 / 12, 1 / 24], dtype)


def _plan(N, OH, OW, G, Cp, itemsize):
    """Task rows ``(g, th, n0, n1, tw0, tw1)``: a tile row of a few images (or a run of tile
    columns of one image), about ``T`` tiles each, the tile rows of the same images one after
    the other; halving ``T`` (down to ``_T_MIN``) while there are fewer than ``_MIN_TASKS``
    tasks. Independent of the thread count, so results are too."""
    TH, TW = -(-OH // 4), -(-OW // 4)
    T = int(min(_T_MAX, max(_T_MIN, _V_BYTES // (36 * Cp * itemsize))))
    while True:
        rows = []
        if TW >= T:
            k = -(-TW // T)
            cuts = [TW * i // k for i in range(k + 1)]
            for g in range(G):
                for n in range(N):
                    for th in range(TH):
                        rows += [(g, th, n, n + 1, cuts[i], cuts[i + 1]) for i in range(k)]
        else:
            nb = max(1, T // TW)
            k = -(-N // nb)
            cuts = [N * i // k for i in range(k + 1)]
            for g in range(G):
                for i in range(k):
                    rows += [(g, th, cuts[i], cuts[i + 1], 0, TW) for th in range(TH)]
        if len(rows) >= _MIN_TASKS or T <= _T_MIN:
            return np.array(rows, np.int64).reshape(-1, 6)
        T = max(_T_MIN, T // 2)


def _transform_weights(weight, G, cst):
    Ft, Cg = weight.shape[:2]
    Fo = Ft // G
    U = np.empty((G, 36, -(-Fo // 4), Cg, 4), weight.dtype)
    _k.weight_transform(weight, U, cst)
    return U


def _run(x, weight, bias, pt, pl, OH, OW, groups):
    dtype = x.dtype
    N, F = x.shape[0], weight.shape[0]
    cst = _consts(dtype)
    U = _transform_weights(weight, groups, cst)
    y = np.empty((N, F, OH, OW), dtype)
    if y.size == 0:
        return y
    Cg = U.shape[3]
    b = np.zeros(F, dtype) if bias is None else np.ascontiguousarray(bias, dtype)
    tasks = _plan(N, OH, OW, groups, Cg, dtype.itemsize)
    nth = numba.get_num_threads()
    Tmax = int(((tasks[:, 3] - tasks[:, 2]) * (tasks[:, 5] - tasks[:, 4])).max())
    block = 3 * simd.WIDTH.lanes(dtype)   # the product runs on whole blocks of 3 vectors
    Ts = _k._row_len(-(-Tmax // block) * block, 64 // dtype.itemsize)
    Vs = np.empty((nth, Cg, 36, Ts), dtype)
    Ms = np.empty((nth, min(_FBK, 4 * U.shape[2]), 36, Ts), dtype)
    Ds = np.empty((nth, 36, Ts), dtype)
    wmax = int(((tasks[:, 3] - tasks[:, 2]) * (4 * (tasks[:, 5] - tasks[:, 4]) + 2)).max())
    Rs = np.empty((nth, wmax + 4 * simd.WIDTH.lanes(dtype)), dtype)   # + load4's spare
    Qs = np.empty((nth, 16 * Ts), dtype)
    voff = np.arange(Cg, dtype=np.int64) * (36 * Ts)
    _k.winograd_forward(x, U, b, y, tasks, pt, pl, Vs, Ms, Ds, Rs, Qs, voff, cst, simd.WIDTH)
    return y


def _weight_grad(x, dy, geom):
    """dweight (F, C/groups, 3, 3) for ``x`` and ``dy`` of ``geom`` in the Winograd domain:
    ``dU[e] = sum over tiles of V[:, e] dM[:, e]^T`` (``V`` the input transform of ``x``'s
    tiles, ``dM = A dY A^T`` that of ``dy``'s), then ``dw = G^T dU G``: 36 products per 4x4
    tile and channel pair instead of 144. The tiles are summed in chunks fixed by the shapes,
    added in a fixed order: bitwise the same for any thread count."""
    N, F, OH, OW = geom.y_shape
    Cg, groups, Fo, dtype = geom.Cg, geom.G, geom.Fg, geom.dtype
    Cg4, F3 = -(-Cg // 4) * 4, -(-Fo // 3) * 3
    tasks = _plan(N, OH, OW, groups, Cg, dtype.itemsize)
    per_chunk = groups * 36 * Cg4 * F3 * 8
    nchunks = int(max(1, min(len(tasks), _WG_CHUNKS, _WG_BYTES // per_chunk)))
    cut = np.array([len(tasks) * k // nchunks for k in range(nchunks + 1)], np.int64)
    nth = numba.get_num_threads()
    Tmax = int(((tasks[:, 3] - tasks[:, 2]) * (tasks[:, 5] - tasks[:, 4])).max())
    block = 3 * simd.WIDTH.lanes(dtype)
    Ts = _k._row_len(-(-Tmax // block) * block, 64 // dtype.itemsize)
    wmax = int(((tasks[:, 3] - tasks[:, 2]) * (4 * (tasks[:, 5] - tasks[:, 4]) + 2)).max())
    Vs = np.empty((nth, Cg, 36, Ts), dtype)
    Ms = np.empty((nth, min(_FBK // 3 * 3 or 3, F3), 36, Ts), dtype)
    Ds = np.empty((nth, 36, Ts), dtype)
    Rs = np.empty((nth, wmax + 4 * simd.WIDTH.lanes(dtype)), dtype)   # + load4's spare
    voff = np.arange(Cg4, dtype=np.int64) % Cg * (36 * Ts)
    # the sums over tiles in float64: the transforms scale them up and G^T dU G cancels much
    # of them again, so float32 sums lost 13x more than the direct weight gradient's
    P = np.empty((nchunks, groups, 36, Cg4, F3), np.float64)
    cst = _consts(dtype)
    _k.winograd_weight_grad(x, dy, P, tasks, cut, geom.pt, geom.pl, Vs, Ms, Ds, Rs, voff, cst,
                            simd.WIDTH)
    with np.errstate(invalid="ignore", over="ignore"):
        for k in range(1, nchunks):
            P[0] += P[k]
    dw = np.empty((F, Cg, 3, 3), np.float64)
    _k.weight_grad_transform(P[0], dw, _consts(np.float64))
    return dw.astype(dtype, copy=False)


def _flipped(weight, geom):
    """``wt[g*Cg + c, f, i, j] = weight[g*Fo + f, c, 2 - i, 2 - j]``: the weights of the input
    gradient as a convolution of ``dy``."""
    groups, Cg, Fo = geom.G, geom.Cg, geom.Fg
    return np.ascontiguousarray(
        weight[:, :, ::-1, ::-1].reshape(groups, Fo, Cg, 3, 3).transpose(0, 2, 1, 3, 4)
    ).reshape(groups * Cg, Fo, 3, 3)


class WinogradEngine(Engine):
    """The Winograd engine (see the module docstring): one instance, :data:`WINOGRAD`. A NaN or
    inf spreads over whole 4x4 output tiles and large values can overflow in the transforms:
    the dispatcher's ``"auto"`` checks the data first (:func:`nbconv.functional._algorithm.
    winograd_fits`)."""

    name = "winograd"

    def forward(self, geom, x, weight, bias):
        return _run(x, weight, bias, geom.pt, geom.pl, geom.OH, geom.OW, geom.G)

    def input_grad(self, geom, dy, weight):
        return _run(dy, _flipped(weight, geom), None, 2 - geom.pt, 2 - geom.pl, geom.H, geom.W,
                    geom.G)

    def weight_grad(self, geom, x, dy, need_bias):
        db = None
        if need_bias:
            with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN, as torch
                db = dy.sum(axis=(0, 2, 3))
        return _weight_grad(x, dy, geom), db


WINOGRAD = WinogradEngine()


def winograd_conv2d_weight_grad(x, dy, w_shape, padding=(1, 1), groups=1):
    """The weight gradient ``dweight (F, C/groups, 3, 3)`` of :func:`winograd_conv2d` for
    ``x (N, C, H, W)`` and ``dy (N, F, OH, OW)`` in the Winograd domain (:func:`_weight_grad`).
    Raises ValueError (with the reason) where Winograd does not apply."""
    x = _float_array(x, "x")
    dy = _float_array(dy, "dy", x.dtype)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape}")
    _, geom = _geometry(x.shape, tuple(w_shape), padding, groups, x.dtype)
    if dy.shape != geom.y_shape:
        raise ValueError(f"dy must have shape {geom.y_shape}, got {dy.shape}")
    return _weight_grad(x, dy, geom)


def _float_array(a, name, dtype=None):
    a = np.ascontiguousarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dtype}")
    return a


def winograd_conv2d(x, weight, bias=None, padding=(1, 1), groups=1):
    """``torch.nn.functional.conv2d(x, weight, bias, padding=padding, groups=groups)`` for a
    3x3, stride-1, dilation-1 kernel by Winograd F(4x4,3x3): ``(N, C, H, W) -> (N, F, H + 2*ph
    - 2, W + 2*pw - 2)``. Raises ValueError (with the reason) where that does not apply."""
    x = _float_array(x, "x")
    weight = _float_array(weight, "weight", x.dtype)
    if bias is not None:
        bias = _float_array(bias, "bias", x.dtype)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape}")
    _, geom = _geometry(x.shape, weight.shape, padding, groups, x.dtype)
    return WINOGRAD.forward(geom, x, weight, bias)


def winograd_conv2d_input_grad(dy, weight, padding, x_shape, groups=1):
    """Input gradient ``dx (N, C, H, W)`` of :func:`winograd_conv2d` for ``dy (N, F, OH,
    OW)``: the same Winograd convolution of ``dy`` (shifted by ``2 - p``, zero outside) with
    the flipped, channel-swapped weights ``wt[g*Cg + c, f, i, j] = weight[g*Fo + f, c, 2 - i,
    2 - j]``."""
    dy = _float_array(dy, "dy")
    weight = _float_array(weight, "weight", dy.dtype)
    x_shape = check_x_shape(x_shape, unbatched=False)
    _, geom = _geometry(x_shape, weight.shape, padding, groups, dy.dtype)
    if dy.shape != geom.y_shape:
        raise ValueError(f"dy must have shape {geom.y_shape}, got {dy.shape}")
    return WINOGRAD.input_grad(geom, dy, weight)
