"""nbconv.warmup: where it says the kernels are cached is where Numba put them."""
import os
import subprocess
import sys

import nbconv
from nbconv import warmup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_dirs_is_the_package_pycache_by_default():
    if os.environ.get("NUMBA_CACHE_DIR"):
        expected = os.environ["NUMBA_CACHE_DIR"]
        assert all(d.startswith(expected) for d in warmup.cache_dirs())
    else:
        kernels = os.path.join(os.path.dirname(os.path.abspath(nbconv.__file__)), "kernels")
        assert warmup.cache_dirs() == [os.path.join(kernels, "__pycache__")]


def test_cache_dirs_follows_numba_cache_dir(tmp_path):
    """`python -m nbconv.warmup` ended with the package's __pycache__ even when NUMBA_CACHE_DIR
    sent the machine code elsewhere."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", "from nbconv import warmup; "
                        "print('\\n'.join(warmup.cache_dirs()))"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    dirs = r.stdout.split()
    assert dirs and all(d.startswith(str(tmp_path)) for d in dirs), dirs
