"""Decision quality, the small version of ``benchmarks/bench_decisions.py``: under every null
the verdict, read after every batch, promotes a candidate that is not better on the traffic
seen in at most α of the runs (with a binomial allowance), and the verdicts the benchmark
computes vectorised are the ones ``decide()`` gives."""

from __future__ import annotations

import importlib.util
import math
import sys
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decisions.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_decisions", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_decisions"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()
RUNS = 400


@pytest.mark.parametrize("name", list(bench.NULLS))
def test_false_promotions_at_most_alpha_under_every_null(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    d, mu = bench.NULLS[name](rng, RUNS)
    got = bench.verdicts(d, mu, bench.guardrails_pass_from())
    bench.self_check(d, got, runs=2)
    false = ((got.verdict == 1) & (got.target <= 0)).any(axis=1).mean()
    alpha = bench.POLICY.alpha
    assert false <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / RUNS)


def test_better_then_worse_ends_in_reject_and_the_old_method_did_not() -> None:
    rng = np.random.default_rng(3)
    d, mu = bench.better_then_worse(rng, RUNS)
    got = bench.verdicts(d, mu, bench.guardrails_pass_from())
    assert np.mean(got.verdict[:, -1] == -1) > 0.95
    assert not np.any(got.verdict[:, -1] == 1)
    lo_old, up_old = bench.prpl_eb_intersected(d[:50], 2 * bench.A_PRIMARY)
    est = d[:50].mean(axis=1)
    assert np.mean((lo_old[:, -1] > est) | (up_old[:, -1] < est)) > 0.9


def test_a_two_point_better_candidate_is_promoted() -> None:
    rng = np.random.default_rng(5)
    d, mu = bench.plus_two(rng, 200)
    got = bench.verdicts(d, mu, bench.guardrails_pass_from())
    first = bench.first_read(got.verdict == 1, got.looks)
    assert np.mean(np.isfinite(first)) > 0.99
    assert np.median(first) < 2 * bench.mcnemar_n(0.5, 0.06, 0.04, bench.A_PRIMARY)


def test_mcnemar_power_matches_simulation_with_statsmodels() -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(9)
    n, alpha = 800, 0.05
    hits = 0
    sims = 400
    for _ in range(sims):
        u = rng.random(n)
        b, c = int(np.sum(u < 0.06)), int(np.sum((u >= 0.06) & (u < 0.10)))
        p = mcnemar([[0, b], [c, 0]], exact=True).pvalue
        hits += p < alpha and b > c
    power = bench.mcnemar_power(n, 0.06, 0.04, alpha)
    assert abs(hits / sims - power) < 4 * math.sqrt(power * (1 - power) / sims)
