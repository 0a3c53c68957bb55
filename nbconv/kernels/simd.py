"""Explicit SIMD for the kernels: a small vocabulary of vector types and intrinsics.

This is the one module of nbconv that writes LLVM IR. The kernels use it as C code uses
``<immintrin.h>``: a value of a vector type is an SSA value, so LLVM keeps it in a vector
register (a plain loop's accumulators live in memory, which is what limited the kernels before),
and each operation below compiles to one or a few vector instructions.

The width (``WIDTH``) is the machine's, chosen at import from the host CPU's features: 64 bytes
(16 float32 / 8 float64 lanes) with AVX-512, 32 with AVX2 + FMA, else 16. The environment
variable ``NBCONV_SIMD_BYTES`` (16, 32 or 64; see :mod:`nbconv._config`) forces a narrower one,
so an AVX-512 machine can run and test the AVX2 code. A request wider than the machine is
capped to the machine's width, with a warning.

Kernels do not read the width from a global: it is an argument, ``w`` (``WIDTH``, or any
:class:`Width`), whose Numba type (``SimdWidth(32)``) is part of the kernel's signature. So
Numba's on-disk cache, which is keyed on the signature (and the CPU) but not on globals, keeps
one machine code per width, and a test can run the same kernel at several widths in one process.

The vocabulary (``w`` a width, ``a`` a C-contiguous array indexed flat, ``i`` and ``n``
integers, ``s`` a scalar, ``u``, ``v``, ``t`` vectors of one dtype; ``L = lanes(w, a)``)::

    lanes(w, a)          number of lanes of a vector of a's dtype (a: array or float scalar)
    zero(w, a)           vector of zeros of a's dtype
    splat(w, s)          vector with every lane s (s's dtype)
    load(w, a, i)        a[i:i+L] as a vector (unaligned)
    load_tail(w, a, i, n)    a[i:i+n] in lanes 0..n-1, zeros above (n <= L; reads nothing else)
    store(a, i, v)       a[i:i+L] = v (unaligned)
    store_tail(a, i, v, n)   a[i:i+n] = v[0:n] (n <= L; writes nothing else)
    fma(u, v, t)         u * v + t, fused (one rounding)
    add(u, v), sub(u, v), mul(u, v)
    max(u, v)            lane-wise maximum, NaN if either lane is NaN (as torch.maximum)
    hsum(v)              v[0] + ... + v[L-1] as a scalar, in a fixed order: halves added
                         pairwise, (v[:L/2] + v[L/2:]) and so on (bitwise the same every call)
    lane(v, k)           v[k] as a scalar (0 <= k < L)
    load4(w, a, i)       a[i:i+4L] split by position mod 4: 4 vectors, lane k of the m-th
                         a[i + 4k + m] (a stride-4 gather, as ARM's vld4)
    store4(a, i, u, v, t, s)   the inverse: a[i + 4k + m] = (u, v, t, s)[m][k] for k < L

Nothing checks bounds: the caller keeps ``i .. i+L-1`` (or ``i .. i+n-1``) inside the array, as
with any kernel written with ``boundscheck=False``. Types are checked at compile time: a float64
scalar splatted into a float32 loop is a typing error, not a silent conversion.
"""
import os
import warnings

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from .._config import SIMD_BYTES_ENV as ENV
_ALLOWED = (16, 32, 64)


# ---- the width ---------------------------------------------------------------------------------

def host_bytes():
    """The widest vector (bytes) the CPU that Numba compiles for runs natively: 64 with
    AVX-512F, 32 with AVX2 and FMA, else 16 (SSE, NEON, ...)."""
    from numba.core import config
    import llvmlite.binding as ll
    feats = config.CPU_FEATURES
    if feats:   # NUMBA_CPU_FEATURES, e.g. "+avx2,+fma,-avx512f"
        on = {f[1:] for f in feats.split(",") if f.startswith("+")}
    else:
        on = {k for k, v in ll.get_host_cpu_features().items() if v}
    if "avx512f" in on:
        return 64
    if "avx2" in on and "fma" in on:
        return 32
    return 16


def chosen_bytes(environ=os.environ):
    """The width to use: ``NBCONV_SIMD_BYTES`` if set (16, 32 or 64, at most the host's), else
    the host's. Raises ``ValueError`` for a value that is not one of those."""
    host = host_bytes()
    raw = environ.get(ENV, "").strip()
    if not raw:
        return host
    if raw not in {str(b) for b in _ALLOWED}:
        raise ValueError(f"environment variable {ENV}={raw!r} must be 16, 32 or 64 (bytes per "
                         f"vector; this CPU runs {host})")
    want = int(raw)
    if want > host:
        warnings.warn(f"{ENV}={want} is wider than this CPU's {host}-byte vectors: using {host}",
                      RuntimeWarning, stacklevel=2)
        return host
    return want


class Width:
    """A vector width in bytes, passed to kernels as an argument (its Numba type carries the
    width into the kernel's signature and so into the cache key)."""

    # ``_numba_type_``: Numba's dispatcher reads this attribute in C instead of calling the
    # Python ``typeof`` below (measured: 0.8 instead of 4 microseconds per kernel call, which
    # small Linear products notice)
    __slots__ = ("nbytes", "_numba_type_")

    def __init__(self, nbytes):
        if nbytes not in _ALLOWED:
            raise ValueError(f"vector width must be one of {_ALLOWED} bytes, got {nbytes!r}")
        self.nbytes = nbytes
        self._numba_type_ = SimdWidth(nbytes)

    def lanes(self, dtype):
        """Lanes of a vector of ``dtype`` at this width."""
        return self.nbytes // np.dtype(dtype).itemsize

    def __eq__(self, other):
        return isinstance(other, Width) and other.nbytes == self.nbytes

    def __hash__(self):
        return hash(("Width", self.nbytes))

    def __repr__(self):
        return f"Width({self.nbytes})"


class SimdWidth(types.Type):
    """Numba type of a :class:`Width`: ``SimdWidth(32)``."""

    def __init__(self, nbytes):
        self.nbytes = nbytes
        super().__init__(name=f"SimdWidth({nbytes})")


@typeof_impl.register(Width)
def _typeof_width(val, c):
    return SimdWidth(val.nbytes)


register_model(SimdWidth)(models.OpaqueModel)


@unbox(SimdWidth)
def _unbox_width(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


WIDTH = Width(chosen_bytes())   # the width every kernel call uses


# ---- the vector type ---------------------------------------------------------------------------

class Vec(types.Type):
    """A vector of ``lanes`` values of ``dtype`` (float32 or float64), held in a register."""

    def __init__(self, dtype, lanes):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vec({dtype}x{lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_ir_float(fe_type.dtype), fe_type.lanes))


def _ir_float(dtype):
    return ir.DoubleType() if dtype == types.float64 else ir.FloatType()


def _float_of(a):
    """The float dtype an argument stands for (an array's or a scalar's), or None."""
    dt = a.dtype if isinstance(a, types.Array) else a
    return dt if dt in (types.float32, types.float64) else None


def _vec(w, a):
    """The Vec type of width ``w`` for ``a``'s dtype; a typing error otherwise."""
    if not isinstance(w, SimdWidth):
        raise TypingError(f"simd: the first argument must be a Width, got {w}")
    dt = _float_of(a)
    if dt is None:
        raise TypingError(f"simd: float32 or float64 needed, got {a}")
    return Vec(dt, w.nbytes * 8 // dt.bitwidth)


def _check_array(a):
    if not (isinstance(a, types.Array) and a.layout == "C" and _float_of(a) is not None):
        raise TypingError(f"simd: a C-contiguous float32/float64 array needed, got {a}")


def _check_int(i, what):
    if not isinstance(i, types.Integer):
        raise TypingError(f"simd: {what} must be an integer, got {i}")


def _same(*vs):
    if not all(isinstance(v, Vec) for v in vs) or len({(v.dtype, v.lanes) for v in vs}) != 1:
        raise TypingError(f"simd: vectors of one type needed, got {vs}")
    return vs[0]


def _pointer(context, builder, arrty, arr, ityp, i, vecty):
    """Pointer to ``arr``'s flat element ``i``, typed as a pointer to ``vecty``."""
    ary = context.make_array(arrty)(context, builder, arr)
    idx = context.cast(builder, i, ityp, types.intp)
    return builder.bitcast(builder.gep(ary.data, [idx]), vecty.as_pointer())


def _mask(builder, lanes, n, ntyp, context):
    """``<i1 x lanes>``: lane k is on when ``k < n``."""
    nn = context.cast(builder, n, ntyp, types.int32)
    i32 = ir.IntType(32)
    ramp = ir.Constant(ir.VectorType(i32, lanes), [ir.Constant(i32, k) for k in range(lanes)])
    splat = builder.insert_element(ir.Constant(ir.VectorType(i32, lanes), ir.Undefined), nn,
                                   ir.Constant(i32, 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(i32, lanes),
                                                             [ir.Constant(i32, 0)] * lanes))
    return builder.icmp_signed("<", ramp, splat)


def _llvm_fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _suffix(vt):
    return f"v{vt.lanes}f{vt.dtype.bitwidth}"


# ---- the intrinsics ----------------------------------------------------------------------------

@intrinsic
def lanes(typingctx, w, a):
    """Lanes of a vector of ``a``'s dtype at width ``w`` (a compile-time constant)."""
    vt = _vec(w, a)

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, vt.lanes)
    return types.intp(w, a), codegen


@intrinsic
def zero(typingctx, w, a):
    """A vector of zeros of ``a``'s dtype."""
    vt = _vec(w, a)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)
    return vt(w, a), codegen


@intrinsic
def splat(typingctx, w, s):
    """A vector with every lane ``s``."""
    if not isinstance(s, types.Float):
        raise TypingError(f"simd.splat: a float32/float64 scalar needed, got {s}")
    vt = _vec(w, s)

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(vt)
        i32 = ir.IntType(32)
        v = builder.insert_element(ir.Constant(ty, ir.Undefined), args[1], ir.Constant(i32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, vt.lanes),
                                                        [ir.Constant(i32, 0)] * vt.lanes))
    return vt(w, s), codegen


@intrinsic
def load(typingctx, w, a, i):
    """``a[i:i+L]`` as a vector (unaligned load)."""
    _check_array(a)
    _check_int(i, "i")
    vt = _vec(w, a)

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(vt)
        ptr = _pointer(context, builder, sig.args[1], args[1], sig.args[2], args[2], ty)
        return builder.load(ptr, align=vt.dtype.bitwidth // 8)
    return vt(w, a, i), codegen


@intrinsic
def load_tail(typingctx, w, a, i, n):
    """``a[i:i+n]`` in lanes ``0..n-1`` and zeros above (a masked load: nothing past
    ``a[i+n-1]`` is read)."""
    _check_array(a)
    _check_int(i, "i")
    _check_int(n, "n")
    vt = _vec(w, a)

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(vt)
        ptr = _pointer(context, builder, sig.args[1], args[1], sig.args[2], args[2], ty)
        mask = _mask(builder, vt.lanes, args[3], sig.args[3], context)
        fn = _llvm_fn(builder, f"llvm.masked.load.{_suffix(vt)}.p0", ty,
                      [ptr.type, ir.IntType(32), mask.type, ty])
        return builder.call(fn, [ptr, ir.Constant(ir.IntType(32), vt.dtype.bitwidth // 8), mask,
                                 ir.Constant(ty, None)])
    return vt(w, a, i, n), codegen


@intrinsic
def store(typingctx, a, i, v):
    """``a[i:i+L] = v`` (unaligned store)."""
    _check_array(a)
    _check_int(i, "i")
    if not (isinstance(v, Vec) and v.dtype == a.dtype):
        raise TypingError(f"simd.store: a vector of {a.dtype} needed, got {v}")

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(v)
        ptr = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], ty)
        builder.store(args[2], ptr, align=v.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(a, i, v), codegen


@intrinsic
def store_tail(typingctx, a, i, v, n):
    """``a[i:i+n] = v[0:n]`` (a masked store: nothing past ``a[i+n-1]`` is written)."""
    _check_array(a)
    _check_int(i, "i")
    _check_int(n, "n")
    if not (isinstance(v, Vec) and v.dtype == a.dtype):
        raise TypingError(f"simd.store_tail: a vector of {a.dtype} needed, got {v}")

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(v)
        ptr = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], ty)
        mask = _mask(builder, v.lanes, args[3], sig.args[3], context)
        fn = _llvm_fn(builder, f"llvm.masked.store.{_suffix(v)}.p0", ir.VoidType(),
                      [ty, ptr.type, ir.IntType(32), mask.type])
        builder.call(fn, [args[2], ptr, ir.Constant(ir.IntType(32), v.dtype.bitwidth // 8),
                          mask])
        return context.get_dummy_value()
    return types.void(a, i, v, n), codegen


@intrinsic
def fma(typingctx, u, v, t):
    """``u * v + t``, fused (one rounding)."""
    vt = _same(u, v, t)

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(vt)
        fn = _llvm_fn(builder, f"llvm.fma.{_suffix(vt)}", ty, [ty, ty, ty])
        return builder.call(fn, list(args))
    return vt(u, v, t), codegen


def _binary(op):
    @intrinsic
    def impl(typingctx, u, v):
        vt = _same(u, v)

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])
        return vt(u, v), codegen
    return impl


add = _binary("fadd")
add.__doc__ = "``u + v`` lane-wise."
sub = _binary("fsub")
sub.__doc__ = "``u - v`` lane-wise."
mul = _binary("fmul")
mul.__doc__ = "``u * v`` lane-wise."


@intrinsic
def max(typingctx, u, v):  # noqa: A001  (the intrinsic's name, as in C's _mm256_max_ps)
    """Lane-wise maximum; a lane is NaN if either input lane is (``llvm.maximum``)."""
    vt = _same(u, v)

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(vt)
        fn = _llvm_fn(builder, f"llvm.maximum.{_suffix(vt)}", ty, [ty, ty])
        return builder.call(fn, list(args))
    return vt(u, v), codegen


@intrinsic
def hsum(typingctx, v):
    """``v[0] + ... + v[L-1]``: halves added pairwise (a fixed tree, the same every call)."""
    _same(v)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        x, n = args[0], v.lanes
        while n > 1:
            h = n // 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, h),
                                                          [ir.Constant(i32, k) for k in range(h)]))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, h),
                                                          [ir.Constant(i32, h + k)
                                                           for k in range(h)]))
            x, n = builder.fadd(lo, hi), h
        return builder.extract_element(x, ir.Constant(i32, 0))
    return v.dtype(v), codegen


@intrinsic
def lane(typingctx, v, k):
    """``v[k]`` as a scalar."""
    _same(v)
    _check_int(k, "k")

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], args[1])
    return v.dtype(v, k), codegen


def _wide(vt, n):
    return ir.VectorType(_ir_float(vt.dtype), n)


@intrinsic
def load4(typingctx, w, a, i):
    """``a[i:i+4L]`` deinterleaved by position mod 4: a tuple of 4 vectors whose ``m``-th holds
    ``a[i + m], a[i + 4 + m], ..., a[i + 4(L-1) + m]`` (one wide load, then shuffles)."""
    _check_array(a)
    _check_int(i, "i")
    vt = _vec(w, a)
    L = vt.lanes

    def codegen(context, builder, sig, args):
        wide = _wide(vt, 4 * L)
        ptr = _pointer(context, builder, sig.args[1], args[1], sig.args[2], args[2], wide)
        big = builder.load(ptr, align=vt.dtype.bitwidth // 8)
        i32 = ir.IntType(32)
        parts = [builder.shuffle_vector(big, big, ir.Constant(ir.VectorType(i32, L),
                                                              [ir.Constant(i32, 4 * k + m)
                                                               for k in range(L)]))
                 for m in range(4)]
        return context.make_tuple(builder, sig.return_type, parts)
    return types.UniTuple(vt, 4)(w, a, i), codegen


@intrinsic
def store4(typingctx, a, i, u, v, t, s):
    """``a[i + 4k + m] = (u, v, t, s)[m][k]``: 4 vectors interleaved into ``4L`` consecutive
    elements (shuffles, then one wide store); the inverse of :func:`load4`."""
    _check_array(a)
    _check_int(i, "i")
    vt = _same(u, v, t, s)
    if vt.dtype != a.dtype:
        raise TypingError(f"simd.store4: vectors of {a.dtype} needed, got {vt}")
    L = vt.lanes

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        c = lambda idx: ir.Constant(ir.VectorType(i32, len(idx)),  # noqa: E731
                                    [ir.Constant(i32, k) for k in idx])
        uv = builder.shuffle_vector(args[2], args[3], c([p // 2 + (p % 2) * L
                                                         for p in range(2 * L)]))
        ts = builder.shuffle_vector(args[4], args[5], c([p // 2 + (p % 2) * L
                                                         for p in range(2 * L)]))
        big = builder.shuffle_vector(uv, ts, c([2 * (p // 4) + (p % 4) if p % 4 < 2
                                                else 2 * L + 2 * (p // 4) + (p % 4) - 2
                                                for p in range(4 * L)]))
        ptr = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], big.type)
        builder.store(big, ptr, align=vt.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(a, i, u, v, t, s), codegen
