"""Regression tests for bugs found by the reliability pass (issue 11) and by the property-based
tests (tests/test_properties.py): each holds the exact failing case."""
import numpy as np
import pytest

from nbconv import functional as F


# ---- batch_norm2d: a read-only running statistic ------------------------------------------

@pytest.mark.parametrize("read_only", ["running_mean", "running_var"])
def test_batch_norm_read_only_running_stat_updates_neither(rng, read_only):
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    stats = {"running_mean": np.zeros(3, np.float32), "running_var": np.ones(3, np.float32)}
    stats[read_only].flags.writeable = False
    with pytest.raises(ValueError, match=f"{read_only} is read-only"):
        F.batch_norm2d(x, stats["running_mean"], stats["running_var"], training=True)
    np.testing.assert_array_equal(stats["running_mean"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(stats["running_var"], np.ones(3, np.float32))
    # evaluation only reads them
    y = F.batch_norm2d(x, stats["running_mean"], stats["running_var"], training=False)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-6)


# ---- group_norm: groups of one value (found by the thorough hypothesis profile) -------------

def test_group_norm_groups_of_one_value():
    """torch refuses N * (C/G) * H * W == 1 (shape (1, 2, 1, 1), num_groups=2: "expected more
    than 1 value per channel"); nbconv, deliberately, normalises each one-value group: xhat = 0,
    so y is the bias and dx is 0."""
    x = np.array([3.0, -1.0]).reshape(1, 2, 1, 1)
    w, b = np.array([2.0, 5.0]), np.array([0.5, -0.25])
    y, mean, rstd = F.group_norm(x, 2, w, b, return_stats=True)
    np.testing.assert_array_equal(y.reshape(-1), b)
    dx, dw, db = F.group_norm_backward(np.ones_like(x), x, mean, rstd, 2, w)
    np.testing.assert_array_equal(dx, np.zeros_like(x))
    np.testing.assert_array_equal(dw, [0.0, 0.0])
    np.testing.assert_array_equal(db, [1.0, 1.0])


# ---- one home for each shared rule (issue 19, "the house") ----------------------------------

def _package_sources():
    import pathlib
    import nbconv
    root = pathlib.Path(nbconv.__file__).parent
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.py")}


def test_shared_rules_have_one_home():
    """The "output size ... is too small" error and the x_shape check live in _checks only
    (they were written five and four times), and the Winograd rule is one function,
    _algorithm.winograd_reason (winograd_supported said the same thing beside it)."""
    src = _package_sources()
    assert [f for f, s in src.items() if "is too small" in s] == ["_checks.py"]
    assert [f for f, s in src.items() if "must be a 4-tuple (N, C, H, W)" in s] == ["_checks.py"]
    assert not [f for f, s in src.items() if "winograd_supported" in s]
    assert [f for f, s in src.items() if "def winograd_reason" in s] == [
        "functional/_algorithm.py"]


def test_output_size_and_x_shape_errors_read_the_same_everywhere():
    from nbconv import textbook as T
    x = np.zeros((1, 2, 3, 3), np.float32)
    w = np.zeros((4, 2, 5, 5), np.float32)
    small = (r"^output size \(-?\d+, -?\d+\) is too small: (x|input|x_shape) of shape "
             r"\(1, 2, 3, 3\), ")
    for call in (lambda: F.conv2d(x, w), lambda: T.conv2d(x, w),
                 lambda: F.conv2d_input_grad(np.zeros((1, 4, 1, 1), np.float32), w, x.shape),
                 lambda: F.conv_transpose2d(x, np.zeros((2, 2, 3, 3), np.float32), padding=3),
                 lambda: F.max_pool2d(x, 5, padding=2, dilation=2), lambda: T.avg_pool2d(x, 5, 5),
                 lambda: F.avg_pool2d_backward(np.zeros((1, 2, 1, 1), np.float32), x.shape, 5)):
        with pytest.raises(ValueError, match=small):
            call()
    dy = np.zeros((1, 2, 1, 1), np.float32)
    for bad in ((1, 2, 3, 3, 1), (1, 2.0, 3, 3), [2, 3]):
        for call in (lambda: F.conv2d_input_grad(dy, np.zeros((2, 2, 3, 3), np.float32), bad),
                     lambda: F.avg_pool2d_backward(dy, bad, 3),
                     lambda: F.adaptive_avg_pool2d_backward(dy, bad),
                     lambda: T.global_avg_pool2d_backward(dy[..., 0, 0], bad)):
            with pytest.raises((ValueError, TypeError), match=r"^x_shape must "):
                call()
