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
