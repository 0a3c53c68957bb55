"""Side-by-side timing for pytest-benchmark.

``compare`` times the nbconv function with pytest-benchmark, and in every round first runs each
competitor once (timed here with ``perf_counter``), so rounds interleave
``[competitors..., nbconv]`` and a noisy machine slows all of them alike. Ratios are medians of
per-round ratios; rates (GFLOP/s or GB/s) come from median times. Everything lands in
``benchmark.extra_info`` for ``benchmarks/report.py`` to print.

``NBCONV_BENCH_ONLY=<name>`` (set by ``report.py --separate``) times only that implementation
(``nbconv`` or a competitor's name) and runs nothing else in the process, so no other library's
thread pool starts; the row records the names it could have timed under ``extra_info["impls"]``.

A competitor too slow for the full shape (the textbook convolution) can be timed on a part of
the work, e.g. the first images of the batch: wrap it with :func:`partial`, and its times are
divided by that fraction (scaled up to the full work) before rates and ratios are taken.
"""
import os
import statistics
import time

ROUNDS = int(os.environ.get("NBCONV_BENCH_ROUNDS", "7"))
ONLY = os.environ.get("NBCONV_BENCH_ONLY", "")


def partial(fn, fraction):
    """Mark the competitor ``fn`` as doing ``fraction`` (0 < fraction <= 1) of one call's work,
    e.g. ``n`` of ``N`` images: ``compare`` scales its times by ``1 / fraction``. Valid when the
    work is linear in what was sliced (true for the batch axis of every op here)."""
    fn.work_fraction = float(fraction)
    return fn


def compare(benchmark, group, row, nbconv_fn, others, work, unit="GFLOP/s", rounds=None,
            legend=None):
    """Benchmark ``nbconv_fn`` against ``others`` (name -> zero-argument callable).

    ``work`` is FLOPs (unit GFLOP/s) or bytes read + written (unit GB/s) of one call.
    ``group`` names the table (e.g. ``"conv2d forward float32"``), ``row`` the line (a shape id);
    ``legend`` says in words what a short row id stands for (``report.py`` prints it under the
    table), e.g. ``"N 64, C 3, H 32, W 32, F 32, kernel 7x7, stride 1, padding 3"``.
    """
    rounds = rounds or ROUNDS
    if ONLY:
        info = _compare_only(benchmark, group, row, nbconv_fn, others, work, unit, rounds)
        if legend:
            info["legend"] = legend
        return info
    # warm up: compile, fault in pages, let torch pick its algorithms
    nbconv_fn()
    for fn in others.values():
        fn()

    times = {name: [] for name in others}
    fraction = {name: getattr(fn, "work_fraction", 1.0) for name, fn in others.items()}

    def run_others():
        for name, fn in others.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / fraction[name])

    benchmark.group = group
    benchmark.pedantic(nbconv_fn, setup=run_others, rounds=rounds, warmup_rounds=0, iterations=1)
    nb = list(benchmark.stats.stats.data)
    scale = 1e-9 * work
    info = benchmark.extra_info
    info.update(group=group, row=row, unit=unit, work=work, rounds=rounds)
    if legend:
        info["legend"] = legend
    info["rate"] = {"nbconv": scale / statistics.median(nb)}
    info["ratio"] = {}
    info["fraction"] = {name: f for name, f in fraction.items() if f != 1.0}
    for name, ts in times.items():
        info["rate"][name] = scale / statistics.median(ts)
        # speed ratio nbconv / other = t_other / t_nbconv, per round, then the median
        info["ratio"][name] = statistics.median(t / n for t, n in zip(ts, nb))
    return info


def _compare_only(benchmark, group, row, nbconv_fn, others, work, unit, rounds):
    """Time ``ONLY`` alone (nothing else runs): its median time lands in ``extra_info``."""
    info = benchmark.extra_info
    info.update(group=group, row=row, unit=unit, work=work, rounds=rounds, only=ONLY,
                impls=["nbconv"] + list(others))
    if ONLY != "nbconv" and ONLY not in others:
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        return info
    fn = nbconv_fn if ONLY == "nbconv" else others[ONLY]
    fraction = getattr(fn, "work_fraction", 1.0)
    fn()  # warm up
    benchmark.group = group
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0, iterations=1)
    info["time"] = statistics.median(benchmark.stats.stats.data) / fraction
    return info


def conv_flops(n, c, h, w, f, kh, kw, oh, ow, groups=1):
    """Multiply-adds x 2 of a convolution's forward pass (the same count for dx and for dw)."""
    return 2.0 * n * f * oh * ow * (c // groups) * kh * kw
