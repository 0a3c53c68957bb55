"""Shared test helpers: tolerances, torch conversion, thread-count control, finite differences."""
import contextlib
import os

import numba
import numpy as np

# Per-dtype tolerances for comparing kernels with references / torch. Sums of K products in
# float32 carry an error of about sqrt(K) * eps * |terms|; callers scale atol by the magnitude.
TOL = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-4),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-9),
}
DTYPES = [np.float32, np.float64]

# The shared CIFAR-10 subset, found beside the checkout (``../shared``) or where
# NBCONV_CIFAR_SUBSET points; tests that need it skip with that reason when it is absent.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET = os.environ.get("NBCONV_CIFAR_SUBSET") or os.path.normpath(
    os.path.join(ROOT, "..", "shared", "cifar10-subset", "cifar-10-batches-py"))
SUBSET_ABSENT = (f"the shared CIFAR-10 subset is absent ({SUBSET}; set NBCONV_CIFAR_SUBSET to "
                 f"a cifar-10-batches-py folder)")


def assert_close(actual, expected, dtype=None, scale=1.0, err_msg=""):
    """``np.testing.assert_allclose`` with the tolerance of ``dtype`` (default: actual's);
    ``scale`` multiplies atol (use the magnitude of the values compared)."""
    dt = np.dtype(dtype if dtype is not None else actual.dtype)
    tol = TOL[dt]
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {err_msg}"
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=err_msg)


def torch_tensor(a, requires_grad=False):
    import torch
    t = torch.from_numpy(np.array(a, copy=True))
    t.requires_grad_(requires_grad)
    return t


def to_numpy(t):
    return t.detach().numpy()


@contextlib.contextmanager
def num_threads(n):
    """Run the block with ``n`` Numba threads, restoring the previous count."""
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(old)


def numeric_grad(f, x, eps=1e-6):
    """Central-difference gradient of scalar ``f()`` w.r.t. array ``x`` (modified in place and
    restored). Use float64 and tiny shapes."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def non_contiguous(a):
    """A non-contiguous view with the same values as ``a`` (a strided slice of a larger array)."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    v = big[..., ::2]
    assert not v.flags.c_contiguous
    return v


def placements(arrays, max_gap=8, offsets=16):
    """Yield ``(where, copies)``: C-contiguous copies of ``arrays`` (same shapes, dtypes and
    values; all of one dtype) placed in memory in different ways, for kernels whose results
    must not depend on where their arrays lie: back to back in one buffer, in the given order
    and reversed, with 0 .. max_gap-1 elements between them (a fresh allocation can land right
    behind another one, and LLVM's runtime alias checks then take the loop's scalar copy), and
    each alone at 0 .. offsets-1 elements past a 64-byte boundary (vector alignment)."""
    dt = arrays[0].dtype
    assert all(a.dtype == dt for a in arrays)

    def aligned(n):
        raw = np.empty(n + 64 // dt.itemsize, dt)
        o = (-raw.ctypes.data % 64) // dt.itemsize
        return raw[o:o + n]

    def put(buf, start, a):
        v = buf[start:start + a.size].reshape(a.shape)
        v[...] = a
        return v

    k = len(arrays)
    for order in (list(range(k)), list(range(k))[::-1]):
        for gap in range(max_gap):
            buf = aligned(sum(a.size for a in arrays) + gap * k)
            copies, pos = [None] * k, 0
            for i in order:
                copies[i] = put(buf, pos, arrays[i])
                pos += arrays[i].size + gap
            yield f"in one buffer in the order {order}, {gap} elements apart", copies
    for off in range(offsets):
        yield (f"each alone, {off} elements past 64 bytes",
               [put(aligned(a.size + off), off, a) for a in arrays])


def bits(a):
    """The raw bits of float array ``a`` as unsigned integers (tells -0.0 from 0.0 and NaN
    payloads apart)."""
    return np.ascontiguousarray(a).view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_same_bits_wherever(call, arrays, outputs):
    """Run ``call(*copies)`` for every placement of ``arrays`` (:func:`placements`); the arrays
    at indices ``outputs`` (written by the call) must come out with the same bits each time.
    Returns the outputs of the first placement."""
    first = None
    for where, copies in placements(arrays):
        call(*copies)
        got = [bits(copies[i]).copy() for i in outputs]
        if first is None:
            first = got
            continue
        for i, g, f in zip(outputs, got, first):
            diff = np.flatnonzero(g != f)
            assert diff.size == 0, (f"output {i} differs in {diff.size} elements (first at "
                                    f"{diff[0]}) with the arrays {where}")
    return first
