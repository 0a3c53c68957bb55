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
