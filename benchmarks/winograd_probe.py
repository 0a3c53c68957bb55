"""Probe: Winograd F(4x4,3x3) forward vs nbconv's direct conv2d vs torch, float32, 2 threads.

    python benchmarks/winograd_probe.py [--rounds R] [--shapes i,j,...] [--dx]
    python benchmarks/winograd_probe.py --shape 1,64,8,8,64 --shape 32,8,32,32,8,2 ...

A development probe for the ``algorithm="auto"`` rule of :func:`nbconv.functional.conv2d`
(its table came from here): many shapes, quickly, outside pytest. ``benchmarks/bench_conv.py``
(via ``report.py``) is the benchmark of record; it has ``direct`` and ``winograd`` columns.
``--shape N,C,H,W,F[,groups]`` adds a shape (3x3, padding 1); ``--shapes`` picks from the
built-in list by index.

Medians of interleaved rounds (each round times every contender once, in turn, and the ratios
are taken per round); GFLOP/s counts the direct-equivalent flops ``2*N*F*C*9*OH*OW``.
``--dx`` times the backward pass instead (dx + dw): ``conv2d_backward(algorithm="winograd")``
(Winograd dx, direct dw) vs ``algorithm="direct"`` vs torch's autograd (dx + dw), the choice
that ``algorithm="auto"`` makes for a backward pass.
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nbconv.functional import conv2d, conv2d_backward  # noqa: E402
from nbconv.functional.winograd import winograd_conv2d  # noqa: E402

SHAPES = [(64, 32, 32, 32, 32), (64, 64, 16, 16, 64), (64, 128, 8, 8, 128),
          (128, 16, 32, 32, 16), (128, 32, 16, 16, 32), (128, 64, 8, 8, 64),
          (64, 128, 16, 16, 128)]


def _time(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--shapes", default="")
    ap.add_argument("--dx", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", action="append", default=[])
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    shapes = [] if a.shape else SHAPES
    if a.shapes:
        shapes = [SHAPES[int(i)] for i in a.shapes.split(",")]
    shapes = [s + (1,) for s in shapes] + [tuple(int(v) for v in t.split(",")) + (1,) * (
        6 - len(t.split(","))) for t in a.shape]
    rng = np.random.default_rng(0)
    print(f"{'shape (N,C,H,W,F)':<24}{'wino ms':>9}{'direct ms':>10}{'torch ms':>9}"
          f"{'wino GF/s':>10}{'dir GF/s':>9}{'tor GF/s':>9}{'w/torch':>8}{'w/dir':>7}")
    for (N, C, H, W, F, G) in shapes:
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = (rng.standard_normal((F, C // G, 3, 3)) / np.sqrt(9 * C // G)).astype(np.float32)
        b = rng.standard_normal(F).astype(np.float32)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        if a.dx:
            dy = rng.standard_normal((N, F, H, W)).astype(np.float32)
            dyt = torch.from_numpy(dy)
            xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)
            with torch.enable_grad():
                yt = torch.nn.functional.conv2d(xg, wg, None, padding=1, groups=G)
            fns = {
                "wino": lambda: conv2d_backward(dy, x, w, padding=1, groups=G,
                                                need_bias=False, algorithm="winograd"),
                "direct": lambda: conv2d_backward(dy, x, w, padding=1, groups=G,
                                                  need_bias=False, algorithm="direct"),
                "torch": lambda: torch.autograd.grad(yt, (xg, wg), dyt, retain_graph=True),
            }
        else:
            fns = {
                "wino": lambda: winograd_conv2d(x, w, b, padding=(1, 1), groups=G),
                "direct": lambda: conv2d(x, w, b, padding=1, groups=G, algorithm="direct"),
                "torch": lambda: torch.nn.functional.conv2d(xt, wt, bt, padding=1, groups=G),
            }
        with torch.no_grad():
            for f in fns.values():
                f()
            reps = {k: max(1, int(0.15 / max(_time(f, 1), 1e-4))) for k, f in fns.items()}
            times = {k: [] for k in fns}
            for _ in range(a.rounds):
                for k, f in fns.items():
                    times[k].append(_time(f, reps[k]))
        med = {k: float(np.median(v)) for k, v in times.items()}
        r_t = float(np.median(np.array(times["torch"]) / np.array(times["wino"])))
        r_d = float(np.median(np.array(times["direct"]) / np.array(times["wino"])))
        flops = 2 * N * F * C // G * 9 * H * W * (2 if a.dx else 1)
        gf = {k: flops / v / 1e9 for k, v in med.items()}
        name = str((N, C, H, W, F)) + (f" g{G}" if G > 1 else "")
        print(f"{name:<24}{med['wino'] * 1e3:>9.2f}{med['direct'] * 1e3:>10.2f}"
              f"{med['torch'] * 1e3:>9.2f}{gf['wino']:>10.0f}{gf['direct']:>9.0f}"
              f"{gf['torch']:>9.0f}{r_t:>8.2f}{r_d:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
