"""The bulk throughput benchmark (``benchmarks/bench_bulk.py``), run with 1 MiB transfers: it
starts its server and ``serve``, moves every byte both ways straight and through the proxy (it
checks each transfer's status and length itself), and prints its table. No speed is asserted:
that is the benchmark's business."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_bulk.py"
REP = re.compile(r"rep (\d) (direct|proxy)\s+upload\s+(\d+) MiB/s\s+download\s+(\d+)")


@pytest.mark.slow
def test_a_short_bulk_run_moves_every_byte_and_prints_its_table() -> None:
    argv = [sys.executable, str(BENCH), "--mib", "1", "--reps", "2"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    reps = REP.findall(run.stdout)
    assert sorted((r, t) for r, t, _, _ in reps) == [
        ("0", "direct"), ("0", "proxy"), ("1", "direct"), ("1", "proxy"),
    ]  # fmt: skip
    assert all(int(up) > 0 and int(down) > 0 for _, _, up, down in reps)
    rows = re.findall(r"^\| (upload|download) \| (\d+) \| (\d+) \| ([\d.]+) \|$", run.stdout, re.M)
    assert [r[0] for r in rows] == ["upload", "download"]
