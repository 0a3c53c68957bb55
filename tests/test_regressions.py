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
