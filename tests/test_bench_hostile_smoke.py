"""The hostile soak benchmark (``benchmarks/bench_hostile_soak.py``), run for a few seconds: it
starts ``serve --workers 1`` and its model servers, runs one clean and one hostile phase, and
every attack ends in its expected outcome class (refused with its status, or served), normal
clients see no error, production never receives a smuggled request, and the proxy's /metrics
show the bounds that were hit. No latency is asserted: speed is the benchmark's business."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_hostile_soak.py"
sys.path.insert(0, str(BENCH.parent))

from bench_hostile_soak import ATTACKS, EXPECTED, PHASE_END  # noqa: E402


@pytest.mark.slow
def test_a_short_hostile_soak_runs_and_every_attack_is_refused_or_served(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = [
        sys.executable, str(BENCH), "--rounds", "1", "--seconds", "3", "--no-pin",
        "--rate", "100", "--conns", "4", "--head-timeout", "1", "--flood", "40",
        "--slowloris", "4", "--max-connections", "300", "--stop-readers", "1", "--hold", "0.5",
        "--upload-mib", "2", "--big-prod-mib", "2", "--big-candidate-mib", "2",
        "--settle", "1.2", "--json", str(out),
    ]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text())
    verdict = doc["verdict"]
    phases = doc["phases"]
    assert [p["kind"] for p in phases] == ["clean", "hostile"]
    for p in phases:
        assert p["requests"] > 0
        assert p["errors"] == {}, p["errors"]
    outcomes = verdict["outcomes"]
    assert set(outcomes) == set(ATTACKS)
    for attack, got in outcomes.items():
        judged = {k: v for k, v in got.items() if k != PHASE_END}
        assert judged, f"{attack}: no attempt finished"
        assert set(judged) <= EXPECTED[attack], (attack, got)
    assert doc["production"].get("smuggled", 0) == 0
    assert doc["production"]["early_answers"] > 0
    hostile = verdict["metrics"]["hostile"]
    for key in (
        "limits_hit{head_timeout}",
        "limits_hit{input_too_large}",
        "limits_hit{input_unencodable}",
        "limits_hit{candidate_too_large}",
        "requests_rejected{400}",
        "requests_rejected{408}",
        "requests_rejected{431}",
        "upstream_framing_closed{early_answer}",
    ):
        assert hostile.get(key, 0) > 0, (key, hostile)
    assert not any(k.startswith("records_dropped") and v for k, v in hostile.items()), hostile
    assert doc["log_errors"] == []


def test_the_ratio_interval_pools_resampled_rounds_as_the_criterion_does() -> None:
    """The bootstrap interval holds the pooled ratio of the rounds as run, is the same for the
    same run, and its pooled p99s (found from each phase's top tail only) are those of the
    whole pool: with rounds alike, every draw gives the exact ratio."""
    from bench_hostile_soak import pct, ratio_interval

    rng = random.Random(7)
    phases = []
    for rnd in range(1, 5):
        for kind, scale in (("clean", 1.0), ("hostile", 1.3)):
            lat = sorted(int(rng.lognormvariate(5.0, 0.6) * scale) for _ in range(3000))
            phases.append({"round": rnd, "kind": kind, "lat_us": lat})
    lo, hi = ratio_interval(phases)
    pooled = {
        kind: sorted(x for p in phases if p["kind"] == kind for x in p["lat_us"])
        for kind in ("clean", "hostile")
    }
    ratio = pct(pooled["hostile"], 99) / pct(pooled["clean"], 99)
    assert lo <= ratio <= hi
    assert lo > 1.0 and hi < 1.7  # a 1.3 scale, drawn again
    assert ratio_interval(phases) == (lo, hi)
    # Rounds alike: every draw pools to the same p99s, found from the phases' tails alone.
    alike = [{**p, "round": rnd} for rnd in (1, 2, 3) for p in phases if p["round"] == 1]
    first = {p["kind"]: p["lat_us"] for p in phases if p["round"] == 1}
    exact = pct(first["hostile"], 99) / pct(first["clean"], 99)
    assert ratio_interval(alike) == (exact, exact)
    one_round = [p for p in phases if p["round"] == 1]
    assert all(math.isnan(x) for x in ratio_interval(one_round))
