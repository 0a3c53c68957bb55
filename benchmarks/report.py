"""Run benchmark files and print one table per group: rates side by side and same-run ratios.

    python benchmarks/report.py                      # every benchmarks/bench_*.py
    python benchmarks/report.py benchmarks/bench_conv.py -k forward
    NBCONV_BENCH_ROUNDS=11 python benchmarks/report.py ...   # more rounds, steadier medians

    python benchmarks/report.py --separate benchmarks/bench_conv.py -k "forward and S2"
    python benchmarks/report.py --separate --runs 5 --with torch,im2col ...

Arguments are passed to pytest. Only this script's tables are printed: pytest's own output
(with pytest-benchmark's table) goes to ``.benchmarks/run-<time>-<pid>.log`` and is shown only
when a test fails; one progress line per test goes to stderr. The raw pytest-benchmark JSON of
each run is kept beside it in ``.benchmarks/run-<time>-<pid>.json``. Ratios are ``nbconv speed
/ other speed`` (> 1: nbconv is faster), medians of per-round ratios from interleaved rounds;
the last line of each table is the geometric mean over its rows. Under a table, a legend
gives each short row id in words (``S1: N 64, C 3, H 32, W 32, F 32, kernel 7x7, stride 1,
padding 3``: batch, channels in, height, width, filters out, then the conv's geometry) where the
benchmark recorded one. A column missing from a row
(e.g. ``winograd`` on a strided convolution) prints ``-``. Each table's rates are also drawn as
grouped bars (nbconv, torch, im2col per row) in a PNG beside the JSON, when matplotlib is
installed (else a one-line message says so).

``--separate`` times each library alone in its own process: per benchmark row, ``--runs``
times (default 3), a fresh worker process for nbconv and one for each ``--with`` library
(default ``torch``), alternating, each timing its library only (``NBCONV_BENCH_ONLY``, see
``_harness.py``); the table gives each library's median over runs of its median time and the
ratio of those medians. Two OpenMP pools in one process (Numba's and torch's) spin against each
other, so the in-process ratios of the default mode and these can differ: quote both.

The ``textbook`` column times :mod:`nbconv.textbook` (the readable loop nests of
``nbconv/kernels/textbook.py``), so ``nbconv/textbook`` is what the fast kernels' optimisations
buy. A column marked ``*`` was timed on a slice of the batch (the textbook convolution: about
40 MFLOP per call, at least one image) and its times scaled up to the full batch; the note under
the table gives the slice.
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
import sys
from collections import OrderedDict
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def geomean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


FIRST = {"nbconv": 0, "direct": 1, "winograd": 2}  # nbconv's own columns lead
PEAK_IMPLS = ("nbconv", "torch")  # whose GFLOP/s are also given as a share of the peak


def measure_peak():
    """The machine's FMA peak (``benchmarks/peak.py --json``, in a process of its own so that no
    other thread pool competes): ``{"float32": {"per_core", "all_cores"}, "float64": ..., "cpu",
    "threads"}``, or None if it could not run."""
    res = subprocess.run([sys.executable, os.path.join(HERE, "peak.py"), "--json"], cwd=ROOT,
                         capture_output=True, text=True)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"(no FMA peak: benchmarks/peak.py failed: {res.stderr.strip()[-300:]})",
              file=sys.stderr)
        return None


def peak_of(group, unit, peak):
    """The all-cores FMA peak (GFLOP/s) that a table's rates compare with: only for GFLOP/s
    tables whose group names a float dtype; else None."""
    if not peak or unit != "GFLOP/s":
        return None
    for dt in ("float32", "float64"):
        if dt in group and dt in peak:
            return peak[dt]["all_cores"]
    return None


def print_peak(peak, out=sys.stdout):
    if peak:
        print(f"FMA peak ({peak['cpu']}, {peak['simd_bytes'] * 8}-bit vectors; "
              f"benchmarks/peak.py): float32 {peak['float32']['per_core']:.1f} GFLOP/s per core, "
              f"{peak['float32']['all_cores']:.1f} on {peak['threads']} threads; float64 "
              f"{peak['float64']['per_core']:.1f} / {peak['float64']['all_cores']:.1f}",
              file=out)
        micro = peak.get("micro_kernels")
        if micro:
            core = peak["float32"]["per_core"]
            print("micro-kernels in L1 (float32, one thread, k=" + str(micro["k"]) + "): " +
                  ", ".join(f"{name} {micro[name]:.1f} GFLOP/s ({100 * micro[name] / core:.0f}% "
                            f"of a core)" for name in ("tile_4x3", "dot_4x3")), file=out)


def print_tables(data, out=sys.stdout, peak=None):
    groups = OrderedDict()
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        if "rate" not in info:
            continue
        groups.setdefault(info["group"], []).append(info)
    for group, rows in groups.items():
        unit = rows[0]["unit"]
        impls = list(OrderedDict.fromkeys(k for r in rows for k in r["rate"]))
        impls.sort(key=lambda k: FIRST.get(k, len(FIRST)))  # stable: the rest keep their order
        others = [k for k in impls if k != "nbconv"]
        sliced = {k: [r.get("fraction", {}).get(k, 1.0) for r in rows] for k in others}
        sliced = {k: fs for k, fs in sliced.items() if min(fs) < 1}
        mark = {k: "*" if k in sliced else "" for k in impls}
        pk = peak_of(group, unit, peak)
        pimpls = [k for k in PEAK_IMPLS if k in impls] if pk else []
        head = (["shape"] + [f"{k}{mark[k]} {unit}" for k in impls]
                + [f"{k} %peak" for k in pimpls]
                + [f"nbconv/{k}{mark[k]}" for k in others])
        lines = []
        cell = lambda d, k, fmt: fmt.format(d[k]) if k in d else "-"  # noqa: E731
        pct = lambda v: f"{100 * v / pk:.0f}%"  # noqa: E731
        for r in rows:
            lines.append([str(r["row"])] + [cell(r["rate"], k, "{:.2f}") for k in impls]
                         + [pct(r["rate"][k]) if k in r["rate"] else "-" for k in pimpls]
                         + [cell(r["ratio"], k, "{:.2f}x") for k in others])
        gm = lambda d, k: geomean([r[d][k] for r in rows if k in r[d]])  # noqa: E731
        lines.append(["geomean"] + [f"{gm('rate', k):.2f}" for k in impls]
                     + [pct(gm("rate", k)) for k in pimpls]
                     + [f"{gm('ratio', k):.2f}x" for k in others])
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
        print_notes(rows, unit, others, out)
        if pk:
            print(f"%peak: a rate as a share of the machine's FMA peak on all cores, {pk:.1f} "
                  f"GFLOP/s (a register-only FMA loop, benchmarks/peak.py); Winograd rows count "
                  f"the direct algorithm's FLOPs", file=out)


RATIO_NOTE = ("nbconv/X = nbconv's speed / X's speed (the median of per-round ratios): above "
              "1 means nbconv is faster")


def print_notes(rows, unit, others, out=sys.stdout):
    """Under a table: what the ratio columns mean and, per row id that has one, its legend."""
    if others:
        print(f"{RATIO_NOTE}; rates in {unit}, higher is faster.", file=out)
    legends = [(str(r["row"]), r["legend"]) for r in rows if r.get("legend")]
    if legends:
        width = max(len(row) for row, _ in legends)
        print("rows:", file=out)
        for row, text in legends:
            print(f"  {row.ljust(width)}  {text}", file=out)


CHART_IMPLS = ("nbconv", "torch", "im2col")


def write_charts(data, stem, out=sys.stdout, peak=None):
    """One PNG per table: grouped bars of the rates of ``CHART_IMPLS`` per row
    (:func:`nbconv.viz.save_speed_chart`), written to ``<stem>-<group>.png``. Skipped with a
    message when matplotlib is missing."""
    from nbconv import viz
    if not viz.have_matplotlib():
        print("\n(no speed charts: matplotlib is not installed; pip install matplotlib)",
              file=out)
        return []
    groups = OrderedDict()
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        if "rate" in info:
            groups.setdefault(info["group"], []).append(info)
    paths = []
    for group, rows in groups.items():
        bars = [dict({"label": str(r["row"])},
                     **{k: r["rate"][k] for k in CHART_IMPLS if k in r["rate"]}) for r in rows]
        path = f"{stem}-{re.sub(r'[^A-Za-z0-9]+', '-', group).strip('-')}.png"
        pk = peak_of(group, rows[0]["unit"], peak)
        viz.save_speed_chart(path, bars, group, ylabel=f"{rows[0]['unit']} (higher is faster)",
                             xlabel="benchmark row (shapes: the table's legend)",
                             peak=(pk, f"FMA peak, all cores ({pk:.0f})") if pk else None)
        paths.append(path)
    if paths:
        print("\nspeed charts: " + ", ".join(os.path.relpath(p, ROOT) for p in paths), file=out)
    return paths


def run_pytest(args, out_json, log_path, env=None, quiet=False):
    """pytest on ``args`` with its output in ``log_path`` and one progress line per test on
    stderr (the ``_progress`` plugin; ``quiet``: stderr into the log too); returns pytest's
    exit code."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_progress",
           "--benchmark-only", "--benchmark-json", out_json] + list(args)
    with open(log_path, "w") as log:
        return subprocess.call(cmd, cwd=ROOT, stdout=log, env=env,
                               stderr=subprocess.STDOUT if quiet else None)


def _stem():
    os.makedirs(os.path.join(ROOT, ".benchmarks"), exist_ok=True)
    return os.path.join(ROOT, ".benchmarks",
                        f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")


def main(argv):
    stem = _stem()
    out_json, log_path = stem + ".json", stem + ".log"
    peak = measure_peak()
    rc = run_pytest(argv or [os.path.join("benchmarks")], out_json, log_path)
    if rc not in (0, 5):
        with open(log_path) as f:
            sys.stdout.write(f.read())
    print(f"(pytest output: {os.path.relpath(log_path, ROOT)}, JSON: "
          f"{os.path.relpath(out_json, ROOT)})", file=sys.stderr)
    if not os.path.exists(out_json):
        return rc or 1
    with open(out_json) as f:
        data = json.load(f)
    print_peak(peak)
    print_tables(data, peak=peak)
    write_charts(data, stem, peak=peak)
    return rc


# ---- --separate: every library alone in its own process ----------------------------------------

def _collect(args):
    """The test ids that ``args`` select."""
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only",
                          "-p", "no:cacheprovider"] + list(args), cwd=ROOT,
                         capture_output=True, text=True)
    ids = [l.strip() for l in res.stdout.splitlines() if "::" in l and not l.startswith(" ")]
    if not ids:
        sys.stdout.write(res.stdout + res.stderr)
    return ids


def _worker(node, impl, tmp):
    """One process timing ``impl`` alone on the test ``node``: its ``extra_info``."""
    out_json = os.path.join(tmp, "w.json")
    env = dict(os.environ, NBCONV_BENCH_ONLY=impl)
    rc = run_pytest([node], out_json, os.path.join(tmp, "w.log"), env, quiet=True)
    if rc != 0 or not os.path.exists(out_json):
        with open(os.path.join(tmp, "w.log")) as f:
            sys.stdout.write(f.read())
        raise SystemExit(f"worker for {impl} on {node} failed (exit {rc})")
    with open(out_json) as f:
        return json.load(f)["benchmarks"][0]["extra_info"]


def separate(a, args):
    """``--separate``: ``a`` the parsed options, ``args`` the arguments for pytest."""
    others = [o for o in a.others.split(",") if o]
    nodes = _collect(args or [os.path.join("benchmarks")])
    peak = measure_peak()
    print_peak(peak)
    groups = OrderedDict()
    with tempfile.TemporaryDirectory() as tmp:
        for node in nodes:
            times, info = {}, None
            for run in range(a.runs):
                order = ["nbconv"] + others
                if run % 2:  # alternate who goes first
                    order = order[::-1]
                for impl in order:
                    i = _worker(node, impl, tmp)
                    info = info or i
                    if "time" in i:
                        times.setdefault(impl, []).append(i["time"])
            med = {k: statistics.median(v) for k, v in times.items()}
            groups.setdefault(info["group"], []).append((info, med))
            print(f"  {node}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items()),
                  file=sys.stderr)
    for group, rows in groups.items():
        impls = ["nbconv"] + [o for o in others if any(o in m for _, m in rows)]
        unit = rows[0][0]["unit"]
        pk = peak_of(group, unit, peak)
        pimpls = [k for k in PEAK_IMPLS if k in impls] if pk else []
        head = (["shape"] + [f"{k} {unit}" for k in impls] + [f"{k} %peak" for k in pimpls]
                + [f"nbconv/{k}" for k in impls[1:]])
        lines = []
        for info, med in rows:
            rate = {k: 1e-9 * info["work"] / t for k, t in med.items()}
            lines.append([str(info["row"])]
                         + [f"{rate[k]:.2f}" if k in rate else "-" for k in impls]
                         + [f"{100 * rate[k] / pk:.0f}%" if k in rate else "-" for k in pimpls]
                         + [f"{med[k] / med['nbconv']:.2f}x" if k in med else "-"
                            for k in impls[1:]])
        ratios = {k: [m[k] / m["nbconv"] for _, m in rows if k in m] for k in impls[1:]}
        lines.append(["geomean"] + [""] * (len(impls) + len(pimpls))
                     + [f"{geomean(ratios[k]):.2f}x" for k in impls[1:]])
        widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
        print(f"\n## {group} (each library alone in its own process, median of {a.runs} runs; "
              f"ratio of medians)")
        print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
        for l in lines:
            print("  ".join(c.rjust(w) for c, w in zip(l, widths)))
        print_notes([info for info, _ in rows], unit, impls[1:])
    return 0


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python benchmarks/report.py", allow_abbrev=False,
        usage="%(prog)s [--separate [--runs N] [--with LIBS]] [PYTEST ARGUMENTS ...]",
        description="Run benchmark files (default: every benchmarks/bench_*.py) and print one "
                    "table per group: the rates of nbconv and the other implementations side by "
                    "side, and nbconv's speed ratios. " + RATIO_NOTE + ". Short row ids (S1, "
                    "R1, V1...) are explained under each table.",
        epilog="Every other argument goes to pytest, e.g. a file and -k: python "
               "benchmarks/report.py benchmarks/bench_conv.py -k \"forward and S2\". "
               "NBCONV_BENCH_ROUNDS=11 gives steadier medians. pytest's own output goes to "
               ".benchmarks/run-<time>-<pid>.log, beside its JSON and a PNG chart per table.")
    ap.add_argument("--separate", action="store_true",
                    help="time each library alone in its own process, alternating (two OpenMP "
                         "pools in one process spin against each other)")
    ap.add_argument("--runs", type=int, default=None, metavar="N",
                    help="with --separate: runs per library and row (default: 3)")
    ap.add_argument("--with", dest="others", default=None, metavar="LIBS",
                    help="with --separate: comma-separated libraries timed beside nbconv "
                         "(default: torch)")
    return ap


def parse(argv):
    """``(options, pytest arguments)``; ``--help`` exits 0, misuse exits 2 (argparse)."""
    ap = build_parser()
    a, rest = ap.parse_known_args(argv)
    if not a.separate and (a.runs is not None or a.others is not None):
        ap.error("--runs and --with go with --separate")
    if a.runs is not None and a.runs < 1:
        ap.error(f"--runs {a.runs}: must be at least 1")
    a.runs = 3 if a.runs is None else a.runs
    a.others = "torch" if a.others is None else a.others
    return a, rest


if __name__ == "__main__":
    opts, rest = parse(sys.argv[1:])
    sys.exit(separate(opts, rest) if opts.separate else main(rest))
