"""benchmarks/report.py as a user meets it: --help, tables that explain their row ids and
ratios, charts with both axes labelled (no benchmark is run here)."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "benchmarks", "report.py")


def _report():
    spec = importlib.util.spec_from_file_location("report", REPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _data():
    rows = [("S1", "N 64, C 3, H 32, W 32, F 32, kernel 7x7, stride 1, padding 3", 2.0),
            ("R1", "N 128, C 16, H 32, W 32, F 16, kernel 3x3, stride 1, padding 1", 0.5)]
    return {"benchmarks": [{"extra_info": {
        "group": "conv2d forward float32", "row": row, "unit": "GFLOP/s", "legend": legend,
        "rate": {"nbconv": 10.0 * ratio, "torch": 10.0}, "ratio": {"torch": ratio}}}
        for row, legend, ratio in rows]}


def test_help_prints_usage_and_options_and_exits_0():
    logs = os.path.join(ROOT, ".benchmarks")
    before = set(os.listdir(logs)) if os.path.isdir(logs) else set()
    r = subprocess.run([sys.executable, REPORT, "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python benchmarks/report.py")
    for word in ("--separate", "--runs", "--with", "pytest", "nbconv is faster", "S1"):
        assert word in r.stdout, word
    assert r.stderr == ""   # and no pytest run, no log
    assert (set(os.listdir(logs)) if os.path.isdir(logs) else set()) == before


def test_options_are_checked_and_the_rest_goes_to_pytest():
    rep = _report()
    a, rest = rep.parse(["benchmarks/bench_conv.py", "-k", "forward and S2"])
    assert not a.separate and rest == ["benchmarks/bench_conv.py", "-k", "forward and S2"]
    a, rest = rep.parse(["--separate", "b.py", "--runs", "5", "-x", "--with", "torch,im2col"])
    assert (a.separate, a.runs, a.others, rest) == (True, 5, "torch,im2col", ["b.py", "-x"])
    assert rep.parse(["--separate"])[0].runs == 3
    with pytest.raises(SystemExit) as e:
        rep.parse(["--runs", "5"])
    assert e.value.code == 2


def test_tables_explain_row_ids_and_ratios():
    import io
    out = io.StringIO()
    _report().print_tables(_data(), out)
    text = out.getvalue()
    assert "above 1 means nbconv is faster" in text
    assert "  S1  N 64, C 3, H 32, W 32, F 32, kernel 7x7, stride 1, padding 3" in text
    assert "  R1  N 128, C 16" in text and "2.00x" in text and "0.50x" in text


def test_speed_charts_label_both_axes(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from nbconv import viz
    seen = []
    real = viz._save

    def keep(fig, path, **kw):
        ax = fig.axes[0]
        seen.append((ax.get_xlabel(), ax.get_ylabel()))
        return real(fig, path, **kw)
    monkeypatch.setattr(viz, "_save", keep)
    paths = _report().write_charts(_data(), str(tmp_path / "run"), out=open(os.devnull, "w"))
    assert len(paths) == 1 and os.path.exists(paths[0])
    (xlabel, ylabel), = seen
    assert "row" in xlabel and "GFLOP/s" in ylabel and "faster" in ylabel
    viz.save_speed_chart(tmp_path / "s.png", [{"label": "a", "nbconv": 1.0}], "t")
    assert seen[-1][0] == "benchmark row"


PEAK = {"cpu": "test cpu", "simd_bytes": 32, "threads": 2,
        "float32": {"per_core": 100.0, "all_cores": 200.0},
        "float64": {"per_core": 50.0, "all_cores": 100.0},
        "micro_kernels": {"k": 128, "tile_4x3": 97.0, "dot_4x3": 42.0}}


def test_conv_tables_give_rates_as_a_share_of_the_fma_peak(tmp_path, monkeypatch):
    """Every GFLOP/s row of a float32 table: nbconv's and torch's rate as a percentage of the
    all-cores FMA peak, their ratio beside; the chart draws the peak as a line."""
    import io
    rep = _report()
    out = io.StringIO()
    rep.print_peak(PEAK, out)
    rep.print_tables(_data(), out, peak=PEAK)
    text = out.getvalue()
    assert "nbconv %peak" in text and "torch %peak" in text
    # S1: nbconv 20 GFLOP/s (10%), torch 10 (5%); R1: nbconv 5 (2%)
    assert "10%" in text and "5%" in text and "2%" in text and "200.0 GFLOP/s" in text
    assert "float32 100.0 GFLOP/s per core, 200.0 on 2 threads" in text
    assert ("micro-kernels in L1 (float32, one thread, k=128): tile_4x3 97.0 GFLOP/s (97% of a "
            "core), dot_4x3 42.0 GFLOP/s (42% of a core)") in text
    no_peak = io.StringIO()
    rep.print_tables(_data(), no_peak)
    assert "%peak" not in no_peak.getvalue()
    pytest.importorskip("matplotlib")
    from nbconv import viz
    lines = []
    real = viz._save

    def keep(fig, path, **kw):
        lines.extend(l.get_label() for l in fig.axes[0].get_lines())
        return real(fig, path, **kw)
    monkeypatch.setattr(viz, "_save", keep)
    rep.write_charts(_data(), str(tmp_path / "run"), out=open(os.devnull, "w"), peak=PEAK)
    assert any("FMA peak" in l for l in lines)


def test_peak_script_measures_both_dtypes():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "peak.py"), "--json",
                        "--repeat", "1"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    import json
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for dt in ("float32", "float64"):
        assert res[dt]["per_core"] > 0 and res[dt]["all_cores"] > 0
    assert res["micro_kernels"]["k"] == 128
    assert res["micro_kernels"]["tile_4x3"] > 0 and res["micro_kernels"]["dot_4x3"] > 0
