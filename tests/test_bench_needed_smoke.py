"""The ``needed`` estimate benchmark (``benchmarks/bench_needed.py``) on a small set: it runs,
reports a time per estimate, and compares two builds' answers (here the same build twice)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_needed.py"
SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_benchmark_compares_two_builds_answers() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--base-site", str(SRC), "--count", "20", "--loops", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    medians = re.findall(r"median (\d+) µs per estimate \(20 inconclusive metrics\)", out)
    assert len(medians) == 2 and all(int(m) > 0 for m in medians), out
    assert "totals: 20 compared, largest difference 0.00%" in out, out
    assert "'cannot estimate' agrees on 20/20" in out, out
