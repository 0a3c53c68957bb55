"""The machine's FMA peak: a register-only FMA loop on nbconv's SIMD vocabulary.

    python benchmarks/peak.py            # a small table
    python benchmarks/peak.py --json     # one JSON line (benchmarks/report.py reads it)

:func:`nbconv.kernels.peak.fma_chains` keeps 12 vector accumulators in registers and does
nothing but fused multiply-adds: the ceiling of any kernel written with the same vocabulary.
Measured per core (one thread, ``time.thread_time``: the CPU time the thread got, so a busy
machine lowers the rate less) and for all cores (one chain set per thread, wall time), float32
and float64, at the width nbconv uses (``nbconv.kernels.simd.WIDTH``). Best of ``--repeat``.
``report.py`` prints every conv row's GFLOP/s as a percentage of the all-cores figure.

Then the two micro-kernels every conv and Linear kernel is built on
(:mod:`nbconv.kernels.gemm`), float32, one thread, operands in L1 (a few KiB): ``tile_4x3``
(the forward, input-gradient, Winograd and Linear products; ``--k`` reduction elements per
call) and ``dot_4x3`` (the weight gradients; ``--k`` pixels per call), each as a share of the
per-core peak. Measured (AMD EPYC Zen 3, AVX2, quiet): tile_4x3 97-101% at k = 64 to 1024;
dot_4x3 27% at k=64, 42% at 128, 85% at 1024 (each call ends in 12 horizontal sums, about as
many instructions as 64 pixels of FMAs).
"""
import argparse
import json
import os
import platform
import sys
import time

import numba
import numpy as np

from nbconv.kernels import peak, simd

STEPS = 4_000_000   # about 8-30 ms per call on current cores


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(dtype, threads=None, repeat=7, steps=STEPS):
    """``(per_core, all_cores)`` GFLOP/s of the FMA loop in ``dtype`` (``threads``: Numba's
    thread count for the all-cores figure, default the current one)."""
    w = simd.WIDTH
    L = w.lanes(dtype)
    seed = np.full(max(L, 2), 0.999, dtype)
    seed[1] = 1e-3
    flops = 2 * 12 * L * steps
    out = np.zeros(L, dtype)
    peak.fma_chains(w, seed, 16, out)
    best = min(_timed(lambda: peak.fma_chains(w, seed, steps, out), time.thread_time)
               for _ in range(repeat))
    per_core = flops / best / 1e9
    threads = threads or numba.get_num_threads()
    outp = np.zeros((threads, L), dtype)
    peak.fma_peak(w, seed, 16, outp)
    best = min(_timed(lambda: peak.fma_peak(w, seed, steps, outp), time.perf_counter)
               for _ in range(repeat))
    return per_core, threads * flops / best / 1e9


def measure_micro(k=128, repeat=7):
    """``{"tile_4x3": GFLOP/s, "dot_4x3": GFLOP/s}``: the micro-kernels in L1 on one thread,
    float32, ``k`` reduction elements (tile_4x3) or pixels (dot_4x3) per call."""
    w = simd.WIDTH
    L = w.lanes(np.float32)
    g = np.random.default_rng(0)
    row = 3 * L + 8   # rows apart, as the rows of a padded image are
    x = g.uniform(-1, 1, k * row).astype(np.float32)
    op = np.arange(k, dtype=np.int64) * row
    wq = g.uniform(-1, 1, 4 * k).astype(np.float32)
    buf = np.zeros((4, 3 * L), np.float32)
    reps = max(1, 2_000_000_000 // (24 * L * k))   # about 20 ms a call
    peak.tile_4x3_in_l1(w, x, op, wq, buf, 1)
    best = min(_timed(lambda: peak.tile_4x3_in_l1(w, x, op, wq, buf, reps), time.thread_time)
               for _ in range(repeat))
    res = {"tile_4x3": 2 * 12 * L * k * reps / best / 1e9}
    xd = g.uniform(-1, 1, 4 * k).astype(np.float32)
    opd = np.arange(4, dtype=np.int64) * k
    dy = g.uniform(-1, 1, (3, k)).astype(np.float32)
    P = np.zeros((4, 3), np.float32)
    reps = max(1, 2_000_000_000 // (24 * k))
    peak.dot_4x3_in_l1(w, xd, opd, dy, k, P, 1)
    best = min(_timed(lambda: peak.dot_4x3_in_l1(w, xd, opd, dy, k, P, reps), time.thread_time)
               for _ in range(repeat))
    res["dot_4x3"] = 2 * 12 * k * reps / best / 1e9
    return res


def _timed(fn, clock):
    t0 = clock()
    fn()
    return clock() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--repeat", type=int, default=7, help="best of this many calls (default 7)")
    ap.add_argument("--k", type=int, default=128,
                    help="reduction length of each micro-kernel call (default 128)")
    args = ap.parse_args(argv)
    if args.k < 4:
        ap.error(f"--k must be at least 4, got {args.k}")
    threads = numba.get_num_threads()
    res = {"cpu": _cpu_name(), "simd_bytes": simd.WIDTH.nbytes, "threads": threads}
    for dt in (np.float32, np.float64):
        core, allc = measure(dt, threads, args.repeat)
        res[np.dtype(dt).name] = {"per_core": core, "all_cores": allc}
    res["micro_kernels"] = {"k": args.k, **measure_micro(args.k, args.repeat)}
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['cpu']}, {res['simd_bytes'] * 8}-bit vectors, {threads} threads")
    for dt in ("float32", "float64"):
        r = res[dt]
        print(f"  {dt}: {r['per_core']:.1f} GFLOP/s per core, {r['all_cores']:.1f} GFLOP/s on "
              f"{threads} threads")
    core = res["float32"]["per_core"]
    for name in ("tile_4x3", "dot_4x3"):
        rate = res["micro_kernels"][name]
        print(f"  {name} in L1 (float32, one thread, k={args.k}): {rate:.1f} GFLOP/s, "
              f"{100 * rate / core:.0f}% of the per-core peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
