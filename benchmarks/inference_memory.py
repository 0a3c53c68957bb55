"""Peak memory and time of a ResNet-18 forward, nbconv under ``nbconv.no_grad()`` beside PyTorch
under ``torch.inference_mode()``, each library alone in its own process.

    python benchmarks/inference_memory.py                    # batch 8 x 3 x 224 x 224, 2 threads
    python benchmarks/inference_memory.py --batch 1 --size 64 --repeat 1   # a quick check

Each library runs in a child process (``--worker nbconv|torch``, one after the other) that
imports, builds ResNet-18 (torch's twin with nbconv's weights, so the logits are compared too),
makes the input, runs one forward to load kernels and settle thread pools, and then, ``--repeat``
times: resets the kernel's high-water mark of its resident memory (``/proc/self/clear_refs``),
reads the resident size (``VmRSS``), runs one forward and reads the high-water mark
(``VmHWM``). The figure is the peak increase over that baseline: the memory the forward itself
needed (activations, scratch, the output), beside the weights and the input that the baseline
already holds. The median of the repeats is printed, with the forward's time.

glibc's malloc keeps freed memory of a previous forward for reuse (its mmap threshold grows
after large frees), which would hide part of a later forward's peak: both children run with
``MALLOC_MMAP_THRESHOLD_=131072`` (every allocation over 128 KiB is its own mapping, returned
on free) unless ``--malloc default``. For nbconv, ``tracemalloc`` also gives the peak of the
NumPy arrays allocated from Python during one forward (Numba's own allocations inside kernels
are not traced). Linux only (reads /proc).
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

MIB = 1024 * 1024


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024   # kB
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak():
    """Reset VmHWM to the current resident size (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure(forward, repeat):
    """``[(peak increase bytes, seconds)]`` of ``repeat`` calls of ``forward``."""
    out = []
    for _ in range(repeat):
        gc.collect()
        if not _reset_peak():
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs is not writable)")
        base = _status("VmRSS")
        t0 = time.perf_counter()
        y = forward()
        dt = time.perf_counter() - t0
        peak = _status("VmHWM")
        del y
        out.append((peak - base, dt))
    return out


def worker(lib, args):
    from nbconv import models
    model = models.resnet18(seed=0)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)) \
        .astype(np.float32)
    if lib == "nbconv":
        import nbconv
        model.eval()

        def forward():
            with nbconv.no_grad():
                return model(x)
    else:
        import torch
        from _torch_resnet import twin
        torch.set_num_threads(args.threads)
        net = twin(model, "resnet18").eval()
        del model
        tx = torch.from_numpy(x)

        def forward():
            with torch.inference_mode():
                return net(tx)
    y = forward()   # kernels loaded or compiled, thread pools started, caches settled
    logits = np.array(y, copy=True)
    del y
    rows = _measure(forward, args.repeat)
    res = {"lib": lib, "peak_bytes": [r[0] for r in rows], "seconds": [r[1] for r in rows],
           "logits": logits[:2, :8].tolist(), "ru_maxrss_bytes": _ru_maxrss()}
    if lib == "nbconv":
        saving = []   # eval() alone: every layer keeps its values for backward
        for _ in range(args.repeat):
            with nbconv.no_grad():
                model(x)
            saving += _measure(lambda: model(x), 1)
        res["saving_peak_bytes"] = [r[0] for r in saving]
        import tracemalloc
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        y = forward()
        res["numpy_peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
        res["output_bytes"] = y.nbytes
        tracemalloc.stop()
    print("RESULT " + json.dumps(res), flush=True)


def _ru_maxrss():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(lib, args):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    if args.malloc == "fixed":
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--batch", str(args.batch),
           "--size", str(args.size), "--threads", str(args.threads), "--repeat", str(args.repeat)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"the {lib} worker failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--threads", type=int, default=2, help="threads of each library")
    ap.add_argument("--repeat", type=int, default=3, help="measured forwards per library")
    ap.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                    help="fixed: MALLOC_MMAP_THRESHOLD_=128 KiB in both children (see above)")
    ap.add_argument("--json", action="store_true", help="print one JSON line as well")
    ap.add_argument("--worker", choices=("nbconv", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args)
    res = {lib: run_child(lib, args) for lib in ("nbconv", "torch")}
    nb, tc = res["nbconv"], res["torch"]
    diff = float(np.max(np.abs(np.subtract(nb["logits"], tc["logits"]))))
    print(f"ResNet-18 forward, batch {args.batch} x 3 x {args.size} x {args.size}, float32, "
          f"{args.threads} threads, each library in its own process (median of {args.repeat}):")
    print(f"{'':34}{'peak over baseline':>20}{'forward':>10}")
    for name, r in (("nbconv under no_grad()", nb), ("PyTorch under inference_mode()", tc)):
        print(f"{name:34}{statistics.median(r['peak_bytes']) / MIB:>16.1f} MiB"
              f"{statistics.median(r['seconds']):>9.3f}s")
    print(f"{'nbconv, eval() alone (saves)':34}"
          f"{statistics.median(nb['saving_peak_bytes']) / MIB:>16.1f} MiB")
    tpeak = statistics.median(tc["peak_bytes"])
    ratio = statistics.median(nb["peak_bytes"]) / tpeak if tpeak > 0 else float("nan")
    if tpeak <= 0:
        print("PyTorch's forward raised no peak over its baseline: its allocator reused memory "
              "it kept from the first forward (run with --malloc fixed)")
    print(f"nbconv / PyTorch peak: {ratio:.2f}x; nbconv's NumPy arrays (tracemalloc) peak "
          f"{nb['numpy_peak_bytes'] / MIB:.1f} MiB (output {nb['output_bytes'] / MIB:.2f} MiB); "
          f"logits differ by {diff:.1e}")
    if args.json:
        print(json.dumps({"ratio": ratio, **{k: {kk: vv for kk, vv in v.items()
                                                 if kk != "logits"} for k, v in res.items()}}))


if __name__ == "__main__":
    main()
