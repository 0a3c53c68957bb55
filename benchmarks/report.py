"""Run benchmark files and print one table per group: rates side by side and same-run ratios.

    python benchmarks/report.py                      # every benchmarks/bench_*.py
    python benchmarks/report.py benchmarks/bench_conv.py -k forward
    NBCONV_BENCH_ROUNDS=11 python benchmarks/report.py ...   # more rounds, steadier medians

Arguments are passed to pytest. The raw pytest-benchmark JSON of each run is kept in
``.benchmarks/run-<time>-<pid>.json``. Ratios are ``nbconv speed / other speed`` (> 1: nbconv is faster),
medians of per-round ratios from interleaved rounds; the last line of each table is the
geometric mean over its rows.

The ``textbook`` column times :mod:`nbconv.textbook` (the readable loop nests of
``nbconv/kernels/textbook.py``), so ``nbconv/textbook`` is what the fast kernels' optimisations
buy. A column marked ``*`` was timed on a slice of the batch (the textbook convolution: about
40 MFLOP per call, at least one image) and its times scaled up to the full batch; the note under
the table gives the slice.
"""
import json
import math
import os
import subprocess
import time
import sys
from collections import OrderedDict
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def geomean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def print_tables(data, out=sys.stdout):
    groups = OrderedDict()
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        if "rate" not in info:
            continue
        groups.setdefault(info["group"], []).append(info)
    for group, rows in groups.items():
        unit = rows[0]["unit"]
        impls = list(rows[0]["rate"])
        others = [k for k in impls if k != "nbconv"]
        sliced = {k: [r.get("fraction", {}).get(k, 1.0) for r in rows] for k in others}
        sliced = {k: fs for k, fs in sliced.items() if min(fs) < 1}
        mark = {k: "*" if k in sliced else "" for k in impls}
        head = (["shape"] + [f"{k}{mark[k]} {unit}" for k in impls]
                + [f"nbconv/{k}{mark[k]}" for k in others])
        lines = []
        for r in rows:
            lines.append([str(r["row"])] + [f"{r['rate'][k]:.2f}" for k in impls]
                         + [f"{r['ratio'][k]:.2f}x" for k in others])
        lines.append(["geomean"] + [f"{geomean([r['rate'][k] for r in rows]):.2f}" for k in impls]
                     + [f"{geomean([r['ratio'][k] for r in rows]):.2f}x" for k in others])
        widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
        print(f"\n## {group}", file=out)
        print("  ".join(h.rjust(w) for h, w in zip(head, widths)), file=out)
        for l in lines:
            print("  ".join(c.rjust(w) for c, w in zip(l, widths)), file=out)
        for k, fs in sliced.items():
            lo, hi = (Fraction(f).limit_denominator(1 << 16) for f in (min(fs), max(fs)))
            span = f"{lo}" if lo == hi else f"{lo} to {hi}"
            print(f"* {k}: timed on a slice of the batch ({span} of the images per call), its "
                  f"times scaled up to the full batch", file=out)


def main(argv):
    os.makedirs(os.path.join(ROOT, ".benchmarks"), exist_ok=True)
    out_json = os.path.join(ROOT, ".benchmarks", f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json")
    args = argv or [os.path.join("benchmarks")]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--benchmark-only", "--benchmark-json", out_json, "--benchmark-columns=median,rounds"]
    cmd += args
    rc = subprocess.call(cmd, cwd=ROOT)
    if not os.path.exists(out_json):
        return rc or 1
    with open(out_json) as f:
        print_tables(json.load(f))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
