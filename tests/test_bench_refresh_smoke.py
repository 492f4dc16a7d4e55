"""The verdict refresh benchmark (``benchmarks/bench_refresh.py``) on a few batches: it runs,
reports the commit and refresh times per route count, and compares two builds' decisions
(here the same build twice)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_refresh.py"
SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_benchmark_times_the_refresh_and_compares_decisions() -> None:
    argv = [sys.executable, str(BENCH), "--base-site", str(SRC), "--routes", "1,3"]
    out = subprocess.run(
        [*argv, "--rounds", "1", "--batches", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = re.findall(
        r"^\| (\d+) \| (base|this build) \| ([\d.]+) ms \| ([\d.]+) ms \|$", out, re.M
    )
    assert len(rows) == 4, out
    assert all(float(commit) >= float(refresh) > 0 for *_, commit, refresh in rows), out
    for n in (1, 3):
        assert f"{n} routes: commit this build / base x" in out, out
        assert re.search(rf"^{n} routes: .*decisions the same$", out, re.M), out
