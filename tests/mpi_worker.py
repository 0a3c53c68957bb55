"""Run under ``mpiexec -n P python tests/mpi_worker.py MODE``; launched by
tests/test_distributed.py. Every check is an ``assert``: a failure raises, the abort hook of
:func:`nbconv.distributed.init` ends the job with a non-zero exit. Rank 0 prints one line
``RESULT {json}`` with the measured differences.

Modes:
- ``train``: 20 steps of Trainer(comm=world) vs one process with the same global batch (7,
  split 4/3 on 2 ranks), seed, crop/flip augmentation: plain and SyncBatchNorm nets, float32
  and float64, SGD with momentum and Adam.
- ``grad``: the averaged gradient of the shards equals the full-batch gradient.
- ``syncbn``: SyncBatchNorm2d's mean, variance, running statistics, output and dx equal
  BatchNorm2d's on the whole batch.
- ``raise``: rank 1 raises while rank 0 waits in a collective.
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from nbconv import distributed as dist  # noqa: E402
from nbconv import optim  # noqa: E402
from nbconv.layers import (BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU,  # noqa: E402
                           Sequential, SoftmaxCrossEntropy, SyncBatchNorm2d,
                           convert_sync_batchnorm)
from nbconv.train import Trainer  # noqa: E402


def net(dtype, bn=False, comm=None, seed=3):
    # no conv bias before a norm (its gradient is rounding noise, which Adam amplifies)
    layers = [Conv2d(3, 4, 3, padding=1, bias=not bn, dtype=dtype, seed=seed)]
    if bn:
        layers.append(BatchNorm2d(4, dtype=dtype))
    layers += [ReLU(), MaxPool2d(2), Flatten(), Linear(4 * 4 * 4, 5, dtype=dtype, seed=seed + 1)]
    model = Sequential(*layers)
    return convert_sync_batchnorm(model, comm) if (bn and comm is not None) else model


def data(dtype, n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, 8, 8)).astype(dtype), rng.integers(0, 5, n))


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def max_rel(d1, d2):
    """Largest difference over the arrays of ``d2``, relative to the largest value of all of
    them (a conv bias before BatchNorm has a gradient of rounding noise only)."""
    scale = max(float(np.max(np.abs(v))) for v in d2.values())
    return max(float(np.max(np.abs(d1[k] - d2[k]))) for k in d2) / max(scale, 1e-30)


def same_on_all_ranks(world, arrays):
    flat = np.concatenate([a.ravel().astype(np.float64) for a in arrays.values()])
    every = world.allgather(flat)
    return bool(all(np.array_equal(every[0], e) for e in every[1:]))


def mode_train(world):
    out = {}
    B, steps = 7, 20
    for dtype, bn, opt_name in ((np.float64, False, "sgd"), (np.float32, False, "sgd"),
                                (np.float32, False, "adam"), (np.float64, True, "sgd"),
                                (np.float32, True, "adam"), (np.float64, True, "adam")):
        x, y = data(dtype, B * steps)
        xv, yv = data(dtype, 33, seed=1)
        d = {"x_train": x, "y_train": y, "x_val": xv, "y_val": yv}
        results = []
        for comm in (None, world):
            model = net(dtype, bn, comm)
            if comm is not None:   # start from rank 0's weights (identical here anyway)
                dist.broadcast_parameters(model, comm)
            if opt_name == "sgd":
                opt = optim.SGD(model.params, model.grads, lr=0.05, momentum=0.9)
            else:
                opt = optim.Adam(model.params, model.grads, lr=1e-2)
            tr = Trainer(model, opt, batch_size=B, crop=2, flip=True, seed=5, progress=False,
                         verbose=False, comm=comm)
            tr.fit(d, 1)
            results.append((model, tr.history[-1]))
        (m1, h1), (mp, hp) = results
        key = f"{np.dtype(dtype).name}-{'syncbn' if bn else 'plain'}-{opt_name}"
        diff = max_rel(mp.params, m1.params)
        bdiff = max_rel(mp.buffers, m1.buffers) if m1.buffers else 0.0
        tol = 1e-12 if dtype == np.float64 else 1e-5
        assert diff < tol, (key, "params", diff)
        assert bdiff < tol, (key, "buffers", bdiff)
        assert abs(hp["loss"] - h1["loss"]) < tol * 10, (key, hp["loss"], h1["loss"])
        assert hp["train_accuracy"] == h1["train_accuracy"], (key, hp, h1)
        assert hp["val_accuracy"] == h1["val_accuracy"], (key, hp, h1)
        assert same_on_all_ranks(world, mp.params), key
        out[key] = {"params_rel_diff": diff, "buffers_rel_diff": bdiff,
                    "loss": [h1["loss"], hp["loss"]]}
    return out


def local_grads(model, x, y, world, scale_to_global=True):
    lo, hi = dist.shard_bounds(len(y), world.rank, world.size)
    loss, d = SoftmaxCrossEntropy()(model(x[lo:hi]), y[lo:hi])
    if scale_to_global:
        d = d * d.dtype.type((hi - lo) * world.size / len(y))
    model.backward(d)


def mode_grad(world):
    out = {}
    for dtype in (np.float64, np.float32):
        for bn in (False, True):
            x, y = data(dtype, 11)               # 6 / 5 on two ranks
            ref = net(dtype, bn)
            loss, d = SoftmaxCrossEntropy()(ref(x), y)
            ref.backward(d)
            model = net(dtype, bn, world)
            local_grads(model, x, y, world)
            averager = dist.GradientAverager(model.grads, world)
            averager.average()
            diff = max_rel(model.grads, ref.grads)
            tol = 1e-12 if dtype == np.float64 else 1e-5
            key = f"{np.dtype(dtype).name}-{'syncbn' if bn else 'plain'}"
            assert diff < tol, (key, diff)
            out[key] = diff
            # through DistributedOptimizer: the same averaged gradient, then the step
            model2 = net(dtype, bn, world)
            local_grads(model2, x, y, world)
            opt = dist.DistributedOptimizer(optim.SGD(model2.params, model2.grads, lr=0.1),
                                            world)
            opt.step()
            ref_opt = optim.SGD(ref.params, ref.grads, lr=0.1)
            ref_opt.step()
            pdiff = max_rel(model2.params, ref.params)
            assert pdiff < tol, (key, "DistributedOptimizer", pdiff)
            assert opt.averager.calls == 1
    return out


def mode_syncbn(world):
    out = {}
    rng = np.random.default_rng(7)
    for dtype in (np.float64, np.float32):
        x = (rng.standard_normal((7, 5, 3, 4)) * 3 + 1e2).astype(dtype)   # uneven 4 / 3
        dy = rng.standard_normal(x.shape).astype(dtype)
        bn = BatchNorm2d(5, momentum=0.3, dtype=dtype)
        sbn = SyncBatchNorm2d(5, momentum=0.3, dtype=dtype, comm=world)
        for layer in (bn, sbn):
            layer.params["weight"][...] = np.linspace(0.5, 2, 5)
            layer.params["bias"][...] = np.linspace(-1, 1, 5)
        lo, hi = dist.shard_bounds(len(x), world.rank, world.size)
        for _ in range(2):   # two steps: running statistics follow
            y1 = bn(x)
            ys = sbn(x[lo:hi])
            dx1 = bn.backward(dy)
            dxs = sbn.backward(dy[lo:hi])
        _, m1, r1, _ = bn._saved
        _, ms, rs, _ = sbn._saved
        # float64 sums either way, but float32 data is centred and squared in float32
        tol_stats = 1e-13 if dtype == np.float64 else 1e-6
        tol = 1e-12 if dtype == np.float64 else 1e-5
        res = {"mean": rel(ms, m1), "rstd": rel(rs, r1),
               "running_mean": rel(sbn.running_mean, bn.running_mean),
               "running_var": rel(sbn.running_var, bn.running_var),
               "y": rel(ys, y1[lo:hi]), "dx": rel(dxs, dx1[lo:hi])}
        for k in ("mean", "rstd"):
            assert res[k] < tol_stats, (dtype, k, res)
        for k in ("running_mean", "running_var", "y", "dx"):
            assert res[k] < tol, (dtype, k, res)
        # parameter gradients: this rank's share, summed over the ranks = the full ones
        g = np.concatenate([sbn.grads["weight"], sbn.grads["bias"]]).astype(np.float64)
        world.allreduce_sum_(g)
        gref = np.concatenate([bn.grads["weight"], bn.grads["bias"]])
        res["dweight_dbias"] = rel(g, gref)
        assert res["dweight_dbias"] < tol, (dtype, res)
        out[np.dtype(dtype).name] = res
    return out


def mode_raise(world):
    buf = np.ones(4)
    if world.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    world.allreduce_sum_(buf)     # rank 0 would wait here forever without the abort
    return {"unreachable": True}


def main():
    mode = sys.argv[1]
    world = dist.init()
    assert world.size >= 2, f"run me with mpiexec -n 2 or more, got {world.size} rank(s)"
    result = {"train": mode_train, "grad": mode_grad, "syncbn": mode_syncbn,
              "raise": mode_raise}[mode](world)
    result["threads"] = world.threads
    if world.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
