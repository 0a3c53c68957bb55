import os
import sys

# Three thread pools share two cores in one benchmark process: Numba's (libgomp), torch's (its own
# libgomp) and OpenBLAS's (inside the im2col reference). By default an idle libgomp or OpenBLAS
# worker keeps spinning for milliseconds after its parallel region and steals a core from whichever
# library runs next in the interleaved round (measured: nbconv's conv rates halved, torch's too
# when it came next). Passive waiting for all of them keeps the comparison fair. Set here, before
# numpy, torch or a Numba kernel starts its threads; an explicit setting in the environment wins.
# A worker of ``report.py --separate`` (NBCONV_BENCH_ONLY set) runs one library alone: it keeps
# the libraries' defaults, as a user's process has them (passive waiting puts every parallel
# region's threads to sleep, which slowed nbconv's backward on small maps by up to 25%: R3 13.0
# against 10.4 ms, Zen 3).
if not os.environ.get("NBCONV_BENCH_ONLY"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# benchmarks import their harness as a plain module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
