"""The ``needed`` estimate of an inconclusive metric: time per estimate, this build against
another, side by side.

A comparator re-estimates every inconclusive metric whose sums moved after every batch (five a
second by default), so this cost is paid continuously whenever a candidate differs from
production. The benchmark builds a fixed set of metrics (accuracy, error rate, MAE; 300 to
50,000 observations; estimates on both sides of thresholds 0 and ±0.01, none decided yet),
then times ``observations_needed`` over all of them, several rounds, alternating builds in
separate processes (the other build through ``PYTHONPATH``, e.g. a ``pip install --target``
of an earlier commit). The answers of both builds are compared too: the contract is the same
1% bracket, so totals may differ by up to about 1%, never more.

    .venv/bin/python benchmarks/bench_needed.py
    .venv/bin/python benchmarks/bench_needed.py --base-site /tmp/base-site --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from abrun import child_json, parse, parser, sides

ROOT = Path(__file__).resolve().parent.parent


def metrics(count: int, seed: int) -> list[tuple[Any, float]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_comparator_gen import random_paired_metric

    rng = np.random.default_rng(seed)
    out: list[tuple[Any, float]] = []
    while len(out) < count:
        _, m, n, threshold = random_paired_metric(
            rng, 0.05 / 4, n_min=300, effect_sd=0.01, mae_sd=0.03
        )
        lower, upper = m.interval()
        if lower < threshold < upper and abs(m.diff_sum / n - threshold) > 1e-9:
            out.append((m, threshold))
    return out


def child(count: int, seed: int, loops: int) -> None:
    """One build: the estimates' totals and the best time per estimate over ``loops``."""
    from shadowroute.core.stats.needed import observations_needed

    cases = metrics(count, seed)
    totals = [observations_needed(m, t, 0.05 / 4).total for m, t in cases]
    best = float("inf")
    for _ in range(loops):
        t0 = time.perf_counter()
        for m, t in cases:
            observations_needed(m, t, 0.05 / 4)
        best = min(best, (time.perf_counter() - t0) / len(cases))
    print(json.dumps({"us_per_estimate": best * 1e6, "totals": totals}))


def run(site: str | None, a: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = child_json(__file__, [str(a.count), str(a.seed), str(a.loops)], site)
    return doc


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=200, help="inconclusive metrics in the set")
    p.add_argument("--loops", type=int, default=5, help="timed passes per round (best kept)")
    a = parse(p, child)
    if a is None:
        return
    builds = sides(a.base_site)
    times: dict[str, list[float]] = {k: [] for k in builds}
    totals: dict[str, list[int | None]] = {}
    for r in range(a.rounds):
        for name, site in builds.items():
            doc = run(site, a)
            times[name].append(doc["us_per_estimate"])
            totals[name] = doc["totals"]
            print(f"round {r + 1} {name}: {doc['us_per_estimate']:.0f} µs per estimate", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k}: median {v:.0f} µs per estimate ({a.count} inconclusive metrics)")
    if a.base_site:
        print(f"this build / base: x{med['this build'] / med['base']:.2f}")
        pairs = [
            (x, y)
            for x, y in zip(totals["base"], totals["this build"], strict=True)
            if x is not None and y is not None
        ]
        worst = max(abs(y / x - 1.0) for x, y in pairs)
        same_none = sum(
            (x is None) == (y is None)
            for x, y in zip(totals["base"], totals["this build"], strict=True)
        )
        print(
            f"totals: {len(pairs)} compared, largest difference {worst:.2%}; "
            f"'cannot estimate' agrees on {same_none}/{a.count}"
        )


if __name__ == "__main__":
    main()
