"""pytest plugin for ``report.py``: one line per finished test on stderr (pytest's own output,
pytest-benchmark's table included, goes to a log file)."""
import sys
import time

_T0 = [time.perf_counter()]


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        took = time.perf_counter() - _T0[0]
        _T0[0] = time.perf_counter()
        print(f"  {report.outcome:>7}  {report.nodeid}  ({took:.1f} s)", file=sys.stderr,
              flush=True)
