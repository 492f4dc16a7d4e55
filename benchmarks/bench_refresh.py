"""The verdict refresh after each batch, by number of routes: this build against another, side
by side.

The embedded comparator commits a batch about five times a second and then refreshes every
verdict (``Verdicts.refresh``); the Kafka comparator's follower does the same after each
batch of states. Traffic seldom reaches every route in every batch. The benchmark configures
``R`` routes of two candidates each, gives every route 3,000 labelled pairs, then commits
100 batches (``--batches``) of 80 labelled pairs to one route only, timing each commit
(decode, join, score, SQLite, view update, refresh) and, inside it, the refresh. Builds alternate in
processes of their own (the other build through ``PYTHONPATH``, e.g. a ``pip install
--target`` of an earlier commit), and the decisions both builds end with are compared:
they must be the same.

    .venv/bin/python benchmarks/bench_refresh.py
    .venv/bin/python benchmarks/bench_refresh.py --base-site /tmp/base-site --routes 1,4,16,64
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from abrun import child_json, parse, parser, sides

ROOT = Path(__file__).resolve().parent.parent
BATCH = 80


def child(routes: int, seed: int, batches: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from shadowroute.comparator.embedded import Comparator
    from test_comparator_gen import classification, on_route, routes_config

    def stream(name: str, n: int, s: int) -> tuple[list[tuple[bytes, bytes]], list[Any]]:
        return on_route(classification(n, seed=s, p_cand=0.79), name)

    names = [f"r{i}" for i in range(routes)]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = routes_config(str(Path(tmp) / "s.sqlite"), names, drift=True)
        comp = Comparator(cfg, clock=None)
        for i, name in enumerate(names):
            comp._commit(*stream(name, 3000, seed + 1 + i))
        pairs, labels = stream(names[0], batches * BATCH, seed)
        real = comp.verdicts.refresh
        refresh: list[float] = []

        def timed() -> Any:
            t0 = time.perf_counter()
            out = real()
            refresh.append(time.perf_counter() - t0)
            return out

        comp.verdicts.refresh = timed  # type: ignore[method-assign]
        commit: list[float] = []
        for j in range(0, batches * BATCH, BATCH):
            t0 = time.perf_counter()
            comp._commit(pairs[j : j + BATCH], labels[j : j + BATCH])
            commit.append(time.perf_counter() - t0)
        decisions = {
            f"{n}/{c}": {
                k: v
                for k, v in comp.verdicts.current(n, c).items()
                if k in ("verdict", "reasons", "metrics", "pairs", "labelled")
            }
            for n in names
            for c in ("fraud-v8", "fraud-v9")
        }
        comp._history.close()
        comp.engine.store.close()
    print(
        orjson.dumps(
            {
                "commit_ms": statistics.median(commit) * 1e3,
                "refresh_ms": statistics.median(refresh) * 1e3,
                "decisions": decisions,
            }
        ).decode()
    )


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--routes", default="1,4,16", help="route counts, comma-separated")
    p.add_argument("--batches", type=int, default=100, help="timed batches per run")
    a = parse(p, child)
    if a is None:
        return
    builds = sides(a.base_site)
    counts = [int(x) for x in a.routes.split(",")]
    got: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in range(a.rounds):
        for n in counts:
            for name, site in builds.items():
                doc = child_json(__file__, [str(n), str(a.seed), str(a.batches)], site)
                got.setdefault((name, n), []).append(doc)
                print(
                    f"round {r + 1} {name}, {n} routes: commit {doc['commit_ms']:.2f} ms, "
                    f"refresh {doc['refresh_ms']:.2f} ms (medians per batch)",
                    flush=True,
                )
    print(f"\nmedian per batch of {BATCH} pairs to one route, over {a.rounds} rounds:")
    print("| routes | build | commit | of it, refresh |")
    print("|---|---|---|---|")
    for n in counts:
        for name in builds:
            docs = got[(name, n)]
            commit = statistics.median(d["commit_ms"] for d in docs)
            refresh = statistics.median(d["refresh_ms"] for d in docs)
            print(f"| {n} | {name} | {commit:.2f} ms | {refresh:.2f} ms |")
    if a.base_site:
        for n in counts:
            same = got[("base", n)][-1]["decisions"] == got[("this build", n)][-1]["decisions"]
            ratio = statistics.median(d["commit_ms"] for d in got[("this build", n)]) / (
                statistics.median(d["commit_ms"] for d in got[("base", n)])
            )
            print(
                f"{n} routes: commit this build / base x{ratio:.2f}; "
                f"decisions {'the same' if same else 'DIFFER'}"
            )


if __name__ == "__main__":
    main()
