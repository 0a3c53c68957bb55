"""Data parallelism over MPI (nbconv.distributed, SyncBatchNorm2d, Trainer(comm=...)).

The MPI tests launch ``mpiexec -n 2 python tests/mpi_worker.py MODE`` for real (see that file
for what each mode checks); they are skipped, with the reason, only when mpi4py or mpiexec are
missing (``pip install -e ".[mpi]"``)."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from nbconv import distributed as dist
from nbconv.layers import BatchNorm2d, Sequential, SyncBatchNorm2d, convert_sync_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "mpi_worker.py")


def find_mpiexec():
    """The ``mpiexec`` next to this Python (the mpich wheel puts it in the venv's bin), else
    the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def _mpi_missing():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e \".[mpi]\")"
    if find_mpiexec() is None:
        return "no mpiexec next to python or on PATH (pip install -e \".[mpi]\" brings mpich)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def launch(mode, n=2, timeout=900):
    """Run the worker on ``n`` ranks (1 Numba thread each): ``(returncode, stdout, stderr,
    seconds)``."""
    env = dict(os.environ, NBCONV_THREADS_PER_RANK="1")
    cmd = [find_mpiexec(), "-n", str(n), sys.executable, WORKER, mode]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def result(mode):
    rc, out, err, _ = launch(mode)
    assert rc == 0, f"mpiexec {mode} failed (exit {rc}):\n{out}\n{err}"
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, f"expected one RESULT line from rank 0, got:\n{out}"
    return json.loads(lines[0][len("RESULT "):])


# ---- under mpiexec -n 2 ------------------------------------------------------------------------

@needs_mpi
def test_two_ranks_follow_one_process_for_20_steps():
    res = result("train")
    assert res["threads"] == 1
    for key, r in res.items():
        if key == "threads":
            continue
        tol = 1e-12 if key.startswith("float64") else 1e-5
        assert r["params_rel_diff"] < tol, (key, r)


@needs_mpi
def test_averaged_gradient_equals_full_batch_gradient():
    res = result("grad")
    assert res["float64-plain"] < 1e-12 and res["float64-syncbn"] < 1e-12, res
    assert res["float32-plain"] < 1e-5 and res["float32-syncbn"] < 1e-5, res


@needs_mpi
def test_sync_batchnorm_statistics_equal_single_process():
    res = result("syncbn")
    assert res["float64"]["mean"] < 1e-13 and res["float64"]["rstd"] < 1e-13, res
    assert res["float64"]["dx"] < 1e-12, res


@needs_mpi
def test_a_rank_that_raises_ends_the_job_within_seconds():
    rc, out, err, seconds = launch("raise", timeout=120)
    assert rc != 0
    assert "rank 1 fails on purpose" in err
    assert "RESULT" not in out
    assert seconds < 30, f"the job took {seconds:.1f} s to end"


# ---- the training command under mpiexec ---------------------------------------------------------

SCRIPT = os.path.join(ROOT, "scripts", "train_cifar.py")


@pytest.fixture(scope="module")
def two_data_dirs(tmp_path_factory):
    """Two tiny CIFAR-10 folders whose training images differ by one."""
    from nbconv import data as D
    raw = D.load_cifar10()
    dirs = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"data{i}") / "cifar-10-batches-py"
        d.mkdir()
        D.save_batch(d / "data_batch_1", raw["x_train"][i:80 + i], raw["y_train"][i:80 + i], "b")
        D.save_batch(d / "test_batch", raw["x_test"][:30], raw["y_test"][:30], "t")
        dirs.append(d)
    return dirs


def launch_script(*ranks, timeout=300):
    """``mpiexec -n 1 python train_cifar.py ARGS0 : -n 1 ... ARGS1 ...``, one argument list per
    rank: ``(returncode, stdout, stderr, seconds)``."""
    env = dict(os.environ, NBCONV_THREADS_PER_RANK="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    cmd = [find_mpiexec()]
    for i, args in enumerate(ranks):
        cmd += ([":"] if i else []) + ["-n", "1", sys.executable, SCRIPT, "--distributed",
                                       "--no-progress"] + [str(a) for a in args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def tiny_run(d, out):
    return ["--data-dir", d, "--val-size", "16", "--batch-size", "16", "--hidden", "8",
            "--epochs", "1", "--out", out]


@needs_mpi
def test_train_command_on_two_ranks(two_data_dirs, tmp_path):
    out = tmp_path / "run"
    rc, stdout, stderr, _ = launch_script(*[tiny_run(two_data_dirs[0], out)] * 2)
    assert rc == 0, stdout + stderr
    assert stdout.count("test accuracy") == 1 and "(+ " not in stdout   # rank 0 alone prints
    with open(out / "metrics.json") as f:
        assert json.load(f)["result"]["epoch"] == 1


@needs_mpi
@pytest.mark.parametrize("case", ["lr", "data-dir", "seed"])
def test_ranks_started_differently_end_the_job_naming_the_option(two_data_dirs, tmp_path, case):
    """``mpiexec -n 1 ... --lr 0.001 : -n 1 ... --lr 0.01`` (or another --data-dir, --seed):
    every rank compares the arguments and the digest of its data before anything is written;
    the job ends, naming the option and each rank's value, and creates no run folder."""
    out = tmp_path / "run"
    a, b = tiny_run(two_data_dirs[0], out), tiny_run(two_data_dirs[0], out)
    if case == "lr":
        a, b = a + ["--lr", "0.001"], b + ["--lr", "0.01"]
        want = "--lr: rank 0 0.001, rank 1 0.01"
    elif case == "data-dir":
        b = tiny_run(two_data_dirs[1], out)
        want = (f"--data-dir: the ranks loaded different data: rank 0 {two_data_dirs[0]} "
                f"(sha256 ")
    else:
        b = b + ["--seed", "3"]
        want = "--seed: rank 0 0, rank 1 3"
    rc, stdout, stderr, seconds = launch_script(a, b, timeout=120)
    assert rc != 0 and "test accuracy" not in stdout, stdout + stderr
    assert "the MPI ranks were started differently: " + want in stderr, stderr
    assert case == "data-dir" or "--data-dir" not in stderr, stderr   # explained by the option
    assert "Traceback" not in stderr and not out.exists()
    assert seconds < 60, f"the job took {seconds:.1f} s to end"


# ---- without MPI -------------------------------------------------------------------------------

def test_import_nbconv_does_not_import_mpi4py():
    code = ("import sys, nbconv, nbconv.distributed, nbconv.train, nbconv.layers; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("n,size", [(7, 2), (8, 2), (10, 3), (2, 3), (1, 1)])
def test_shard_bounds_are_contiguous_and_cover(n, size):
    bounds = [dist.shard_bounds(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (a0, b0), (a1, b1) in zip(bounds, bounds[1:]):
        assert b0 == a1
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_threads_per_rank_share_the_cores():
    assert dist.threads_per_rank(2, cores=2) == 1
    assert dist.threads_per_rank(2, cores=16) == 8
    assert dist.threads_per_rank(4, cores=2) == 1
    assert dist.threads_per_rank(1, cores=2) == 2


def test_sync_batchnorm_without_comm_is_batchnorm(rng):
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    bn, sbn = BatchNorm2d(3), SyncBatchNorm2d(3)
    np.testing.assert_array_equal(sbn(x), bn(x))
    np.testing.assert_array_equal(sbn.backward(dy), bn.backward(dy))
    np.testing.assert_array_equal(sbn.grads["weight"], bn.grads["weight"])
    np.testing.assert_array_equal(sbn.running_var, bn.running_var)
    assert sorted(sbn.state_dict()) == sorted(bn.state_dict())


def test_convert_sync_batchnorm_shares_the_arrays():
    model = Sequential(BatchNorm2d(3), Sequential(BatchNorm2d(2)))
    params = dict(model.params)
    convert_sync_batchnorm(model, None)
    assert isinstance(model[0], SyncBatchNorm2d) and isinstance(model[1][0], SyncBatchNorm2d)
    for k, v in params.items():
        assert model.params[k] is v
    assert model[0].params["weight"] is params["0.weight"]


def test_convert_sync_batchnorm_reaches_every_batchnorm_of_a_resnet():
    """--sync-bn on a ResNet: the BatchNorms inside the blocks and in the projection shortcuts
    (layer2.0.downsample.1) become SyncBatchNorm2d, under the same names, sharing the arrays."""
    from nbconv import models
    model = models.resnet20(shortcut="B", seed=0)
    names = [n for n, m in model.named_modules() if isinstance(m, BatchNorm2d)]
    assert len(names) == 21 and "layer2.0.downsample.1" in names
    sd, params = model.state_dict(), dict(model.params)
    assert convert_sync_batchnorm(model, None) is model
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, BatchNorm2d)}
    assert list(kinds) == names and set(kinds.values()) == {SyncBatchNorm2d}
    assert list(model.state_dict()) == list(sd)
    for k, v in params.items():
        assert model.params[k] is v, k


@needs_mpi
def test_resnet20_sync_bn_on_two_ranks_follows_one_process(two_data_dirs, tmp_path):
    """``mpiexec -n 2 ... --model resnet20 --sync-bn`` (the paper's recipe: crop, flip, SGD,
    the multistep schedule) trains the parameters and running statistics of one process with
    the same global batch (float64: up to rounding)."""
    from nbconv.train import Trainer
    args = ["--model", "resnet20", "--data-dir", two_data_dirs[0], "--val-size", "16",
            "--batch-size", "16", "--epochs", "2", "--dtype", "float64"]
    rc, stdout, stderr, _ = launch_script(args + ["--sync-bn", "--out", tmp_path / "two"],
                                          args + ["--sync-bn", "--out", tmp_path / "two"],
                                          timeout=600)
    assert rc == 0, stdout + stderr
    assert "model: resnet20 (shortcut A, 269,722 parameters, float64)" in stdout
    p = subprocess.run([sys.executable, SCRIPT, "--no-progress", "--out", tmp_path / "one"]
                       + [str(a) for a in args], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    one = Trainer.read(str(tmp_path / "one" / "checkpoint.npz"))[1]
    two = Trainer.read(str(tmp_path / "two" / "checkpoint.npz"))[1]
    keys = [k for k in one if k.startswith(("param/", "buffer/"))]
    assert len(keys) == 59 + 3 * 19 and sorted(one) == sorted(two)   # params, BN buffers
    for k in keys:
        scale = max(float(np.max(np.abs(one[k]))), 1e-30)
        assert float(np.max(np.abs(two[k] - one[k]))) / scale < 1e-9, k
