import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Property-based tests (tests/test_properties.py): "ci" (the default) runs a fixed,
# derandomised set of examples per test, so the suite's time and results do not vary;
# "thorough" searches much longer (NBCONV_HYPOTHESIS=thorough, or pytest's
# --hypothesis-profile=thorough, which wins over the variable).
_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("NBCONV_HYPOTHESIS", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
