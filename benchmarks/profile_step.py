"""Where a training step's time goes: forward + backward + Adam, batch 64, float32, 2 threads.

For the three-layer and the deep net, times every nbconv layer's forward and backward, the loss
and the optimizer step (medians over ``--steps`` steps after warm-up), and prints them sorted
by time with their share of the step; then PyTorch's whole step for the same net (same initial
parameters) and, with ``--torch-ops``, PyTorch's own profile of its step (top ops by self time
from ``torch.profiler``).

    python benchmarks/profile_step.py [--net three-layer|deep|all] [--steps 20] [--torch-ops]

Run it from the repository root (or anywhere nbconv imports from). Timings on a shared machine
drift: compare rows of one run, not runs.
"""
import argparse
import os
import statistics
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nbconv import optim  # noqa: E402
from nbconv.layers import SoftmaxCrossEntropy  # noqa: E402
from nbconv.models import deep_convnet, three_layer_convnet  # noqa: E402

BATCH = 64


def _nb_profile(model, x, y, steps):
    """``{row name: [seconds per step]}`` and the list of whole-step times."""
    opt = optim.Adam(model.params, model.grads, lr=1e-3)
    ce = SoftmaxCrossEntropy()
    names = [f"{i}.{type(layer).__name__}" for i, layer in enumerate(model.layers)]
    rows = {}
    totals = []

    def add(key, dt):
        rows.setdefault(key, []).append(dt)

    for s in range(steps + 2):   # 2 warm-up steps (compiles, page faults)
        warm = s < 2
        t_step = time.perf_counter()
        model._set_input_grads()
        h = x
        for name, layer in zip(names, model.layers):
            t0 = time.perf_counter()
            h = layer(h)
            if not warm:
                add(f"{name} fwd", time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, d = ce(h, y)
        if not warm:
            add("loss (softmax CE)", time.perf_counter() - t0)
        for name, layer in zip(reversed(names), reversed(model.layers)):
            t0 = time.perf_counter()
            d = layer.backward(d)
            if not warm:
                add(f"{name} bwd", time.perf_counter() - t0)
        t0 = time.perf_counter()
        opt.step()
        if not warm:
            add("Adam step", time.perf_counter() - t0)
            totals.append(time.perf_counter() - t_step)
    return rows, totals


def _torch_step(net, x, y, steps, torch, ops):
    nn = torch.nn
    topt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        topt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(tx), ty).backward()
        topt.step()

    for _ in range(2):
        step()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    table = None
    if ops:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return ts, table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", default="all", choices=["three-layer", "deep", "all"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch-ops", action="store_true", help="print torch.profiler's top ops")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch = None
    if not args.no_torch:
        import torch
        torch.set_num_threads(args.threads)
        import bench_train as BT
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    nets = ["three-layer", "deep"] if args.net == "all" else [args.net]
    for name in nets:
        model = three_layer_convnet(seed=0) if name == "three-layer" else deep_convnet(seed=0)
        net = None
        if torch is not None:
            net = BT._torch_three_layer() if name == "three-layer" else BT._torch_deep()
            with torch.no_grad():
                sd = net.state_dict()
                for k, v in model.params.items():
                    sd[k].copy_(torch.from_numpy(v))
        rows, totals = _nb_profile(model, x, y, args.steps)
        med = {k: statistics.median(v) for k, v in rows.items()}
        step = statistics.median(totals)
        parts = sum(med.values())
        print(f"\n== {name}: training step, batch {BATCH}, float32, {args.threads} threads, "
              f"median of {args.steps} steps ==")
        print(f"{'nbconv row':<28}{'ms':>9}{'% step':>9}")
        for k, v in sorted(med.items(), key=lambda kv: -kv[1]):
            print(f"{k:<28}{v * 1e3:9.3f}{100 * v / step:8.1f}%")
        conv = sum(v for k, v in med.items() if "Conv2d" in k)
        print(f"{'sum of rows':<28}{parts * 1e3:9.3f}{100 * parts / step:8.1f}%")
        print(f"{'whole step (nbconv)':<28}{step * 1e3:9.3f}")
        other = parts - conv
        print(f"{'non-conv rows':<28}{other * 1e3:9.3f}{100 * other / step:8.1f}%")
        if net is not None:
            ts, table = _torch_step(net, x, y, args.steps, torch, args.torch_ops)
            tstep = statistics.median(ts)
            print(f"{'whole step (torch)':<28}{tstep * 1e3:9.3f}   nbconv speed = "
                  f"{tstep / step:.2f}x torch")
            if table:
                print(table)


if __name__ == "__main__":
    main()
