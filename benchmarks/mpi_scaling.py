"""Data-parallel scaling on this machine: 1 rank x 2 threads vs 2 ranks x 1 thread.

    python benchmarks/mpi_scaling.py [--steps 8] [--models three-layer deep]

Launches itself (``--worker``) once as one process with 2 Numba threads and once under
``mpiexec -n 2`` with 1 thread per rank; each worker times ``--steps`` training steps (after 2
warm-up steps) of each model on the model's global batch (three-layer 50, deep 64; random
CIFAR-shaped data), and on 2 ranks the gradient averaging inside the step (pack + Allreduce +
unpack, including any wait for the slower rank) and a bare Allreduce of the gradient buffer
after a barrier. Prints a table and one JSON line (numbers for docs/scaling.md). Not a pytest
file: speed lives here, never in tests.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BATCH = {"three-layer": 50, "deep": 64}


def worker(models, steps):
    from nbconv import distributed as dist
    from nbconv import models as M
    from nbconv import optim
    from nbconv.layers import SoftmaxCrossEntropy
    world = dist.init()
    out = {}
    for name in models:
        model = M.three_layer_convnet(seed=0) if name == "three-layer" else M.deep_convnet(seed=0)
        dp = dist.DataParallel(world, model)
        opt = optim.Adam(model.params, model.grads, lr=1e-3)
        loss_fn = SoftmaxCrossEntropy()
        rng = np.random.default_rng(0)
        B = BATCH[name]
        x = rng.standard_normal((B, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, B)
        t_step, t_avg = [], []
        for k in range(steps + 2):
            world.barrier()
            t0 = time.perf_counter()
            xb, yb, scale = dp.shard(x, y)
            _, d = loss_fn(model(xb), yb)
            model.backward(d * d.dtype.type(scale))
            t1 = time.perf_counter()
            dp.average_gradients()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            if k >= 2:
                t_step.append(t3 - t0)
                t_avg.append(t2 - t1)
        buf = dp.averager._flat.buf
        t_ar = []
        for _ in range(20):
            world.barrier()
            t0 = time.perf_counter()
            world.allreduce_sum_(buf)
            t_ar.append(time.perf_counter() - t0)
        out[name] = {"ranks": world.size, "threads": world.threads, "batch": B,
                     "grad_bytes": int(buf.nbytes), "step_s": float(np.median(t_step)),
                     "average_s": float(np.median(t_avg)),
                     "bare_allreduce_s": float(np.median(t_ar))}
    if world.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def launch(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=["three-layer", "deep"], choices=list(BATCH))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.models, args.steps)
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(args.steps),
          "--models", *args.models]
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    one = launch(me, dict(os.environ, NBCONV_THREADS_PER_RANK="2"))
    two = launch([mpiexec, "-n", "2", *me], dict(os.environ, NBCONV_THREADS_PER_RANK="1"))
    print(f"{'model':12} {'grad MB':>8} {'1x2 step s':>11} {'2x1 step s':>11} {'speed-up':>9} "
          f"{'avg s':>8} {'avg %':>6} {'allreduce s':>12}")
    for name in args.models:
        a, b = one[name], two[name]
        print(f"{name:12} {a['grad_bytes'] / 1e6:8.2f} {a['step_s']:11.3f} {b['step_s']:11.3f} "
              f"{a['step_s'] / b['step_s']:9.2f} {b['average_s']:8.4f} "
              f"{100 * b['average_s'] / b['step_s']:6.2f} {b['bare_allreduce_s']:12.5f}")
    print("JSON " + json.dumps({"1x2": one, "2x1": two}))


if __name__ == "__main__":
    main()
