"""Layers called from several Python threads, and from forked children (issue 11, bug C).
The rules are in nbconv/_config.py ("threads and processes")."""
import multiprocessing as mp
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import nbconv
from nbconv import functional as F
from nbconv._config import ForkedProcessError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _work(seed):
    g = np.random.default_rng(seed)
    x = g.standard_normal((3, 4, 9, 9)).astype(np.float32)
    w = g.standard_normal((5, 4, 3, 3)).astype(np.float32)
    y = F.conv2d(x, w, padding=1)
    p = nbconv.MaxPool2d(2)(y)
    n = nbconv.GroupNorm(5, 5)(p)
    return y, p, n


def test_threads_give_the_serial_results():
    want = [_work(s) for s in range(4)]
    got, errors = {}, []

    def run(s):
        try:
            for _ in range(5):
                got.setdefault(s, []).append(_work(s))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in ts)
    for s in range(4):
        for res in got[s]:
            for a, b in zip(res, want[s]):
                np.testing.assert_array_equal(a, b)


def test_threads_under_workqueue_layer_do_not_abort():
    code = ("import sys; sys.path.insert(0, %r); import test_threads as t; "
            "t.test_threads_give_the_serial_results(); import numba; "
            "print(numba.threading_layer())" % os.path.dirname(__file__))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, NUMBA_THREADING_LAYER="workqueue"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("workqueue")


def _child(seed):
    try:
        return _work(seed)[2].sum()
    except ForkedProcessError as e:
        return str(e)


def test_forked_child_works_or_says_what_to_do():
    _work(0)  # a parallel kernel has run in this process
    import numba
    layer = numba.threading_layer()
    with mp.get_context("fork").Pool(1) as pool:
        out = pool.apply_async(_child, (0,)).get(timeout=60)  # never hangs
    if layer == "omp":
        assert isinstance(out, str) and "'spawn'" in out and "forkserver" in out
    else:
        assert np.isfinite(out)
