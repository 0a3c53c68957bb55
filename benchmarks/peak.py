"""The machine's FMA peak: a register-only FMA loop on nbconv's SIMD vocabulary.

    python benchmarks/peak.py            # a small table
    python benchmarks/peak.py --json     # one JSON line (benchmarks/report.py reads it)

:func:`nbconv.kernels.peak.fma_chains` keeps 12 vector accumulators in registers and does
nothing but fused multiply-adds: the ceiling of any kernel written with the same vocabulary.
Measured per core (one thread, ``time.thread_time``: the CPU time the thread got, so a busy
machine lowers the rate less) and for all cores (one chain set per thread, wall time), float32
and float64, at the width nbconv uses (``nbconv.kernels.simd.WIDTH``). Best of ``--repeat``.
``report.py`` prints every conv row's GFLOP/s as a percentage of the all-cores figure.
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


def _timed(fn, clock):
    t0 = clock()
    fn()
    return clock() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--repeat", type=int, default=7, help="best of this many calls (default 7)")
    args = ap.parse_args(argv)
    threads = numba.get_num_threads()
    res = {"cpu": _cpu_name(), "simd_bytes": simd.WIDTH.nbytes, "threads": threads}
    for dt in (np.float32, np.float64):
        core, allc = measure(dt, threads, args.repeat)
        res[np.dtype(dt).name] = {"per_core": core, "all_cores": allc}
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['cpu']}, {res['simd_bytes'] * 8}-bit vectors, {threads} threads")
    for dt in ("float32", "float64"):
        r = res[dt]
        print(f"  {dt}: {r['per_core']:.1f} GFLOP/s per core, {r['all_cores']:.1f} GFLOP/s on "
              f"{threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
