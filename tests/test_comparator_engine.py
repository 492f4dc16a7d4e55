"""The comparator's core: joins, TTL orphans, dead letters, exactly-once state, merging."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.embedded import Comparator
from shadowroute.comparator.engine import Engine, label_keys
from shadowroute.comparator.reader import StateView
from shadowroute.comparator.store import Store
from shadowroute.core.records import LabelRecord, encode_label
from shadowroute.stream.murmur2 import partition_for
from test_comparator_gen import (
    T0,
    Stream,
    cand_key,
    cand_state,
    classification,
    config,
    interleave,
    pair,
)

ROUTE, CAND = "fraud", "fraud-v8"


def _engine(path: Path, **kw: Any) -> Engine:
    return Engine(config(str(path), **kw.pop("cfg", {})), Store(path), **kw)


def _cand(engine: Engine, partition: int = 0, cand: str = CAND) -> CandidateState:
    state = cand_state(engine, ROUTE, cand, partition)
    assert isinstance(state, CandidateState)
    return state


def _truth(s: Stream) -> tuple[int, int, float, float]:
    """Labelled instances, and summed production / candidate accuracy, computed directly."""
    labels = {lab.id: lab.label for lab in s.labels}
    n, prod_ok, cand_ok = 0, 0.0, 0.0
    for _, value in s.pairs:
        rec = orjson.loads(value)
        outs_p, outs_c = rec["production"]["output"], rec["candidate"]["output"]
        for key, p, c in zip(label_keys(rec["id"], len(outs_p)), outs_p, outs_c, strict=True):
            if key in labels:
                n += 1
                prod_ok += float(p == labels[key])
                cand_ok += float(c == labels[key])
    return len(s.pairs), n, prod_ok, cand_ok


def _assert_matches_truth(state: CandidateState, s: Stream) -> None:
    pairs, n, prod_ok, cand_ok = _truth(s)
    acc = state.quality["accuracy"]
    assert state.pairs == pairs
    assert state.labelled == n == acc.n
    assert acc.prod_sum == prod_ok and acc.cand_sum == cand_ok


@pytest.mark.parametrize("order", ["labels_first", "pairs_first"])
def test_rows_stored_as_blobs_by_earlier_versions_still_join(tmp_path: Path, order: str) -> None:
    """Pending entries and labels are stored as JSON text; a store whose rows an earlier
    version wrote as BLOBs (the same UTF-8 bytes) joins them just the same."""
    s = classification(800, p_prod=0.7, p_cand=0.85, seed=31, label_share=0.8, batched_every=5)
    engine = _engine(tmp_path / "s.sqlite")
    pairs_then_labels = [(s.pairs, []), ([], s.labels)]
    first, then = pairs_then_labels[::-1] if order == "labels_first" else pairs_then_labels
    engine.process(0, *first)
    conn = engine.store.conn

    def types() -> dict[str, int]:
        q = (
            "SELECT typeof(data), count(*) FROM pending GROUP BY 1 UNION ALL "
            "SELECT typeof(label), count(*) FROM labels GROUP BY 1"
        )
        out: dict[str, int] = {}
        for kind, n in conn.execute(q):
            out[kind] = out.get(kind, 0) + n
        return out

    stored = types()
    assert list(stored) == ["text"] and stored["text"] > 0
    conn.execute("UPDATE pending SET data = CAST(data AS BLOB)")
    conn.execute("UPDATE labels SET label = CAST(label AS BLOB)")
    assert types() == {"blob": stored["text"]}
    engine.process(0, *then)
    _assert_matches_truth(_cand(engine), s)


@pytest.mark.parametrize("order", ["labels_first", "pairs_first", "shuffled"])
def test_join_in_either_order(tmp_path: Path, order: str) -> None:
    s = classification(1500, p_prod=0.7, p_cand=0.85, seed=3, label_share=0.8, batched_every=7)
    engine = _engine(tmp_path / "s.sqlite")
    if order == "labels_first":
        engine.process(0, [], s.labels)
        engine.process(0, s.pairs, [])
    elif order == "pairs_first":
        engine.process(0, s.pairs, [])
        engine.process(0, [], s.labels)
    else:
        items = list(interleave(s))
        for i in range(0, len(items), 97):
            chunk = items[i : i + 97]
            engine.process(
                0,
                [v for k, v in chunk if k == "pair"],  # type: ignore[misc]
                [v for k, v in chunk if k == "label"],  # type: ignore[misc]
            )
    _assert_matches_truth(_cand(engine), s)
    prod = engine.production(ROUTE, 0)
    # production is watched once per instance, whichever side came first
    assert prod.counts["labelled"] == _truth(s)[1]  # type: ignore[attr-defined]


def test_batched_request_labels_per_instance(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite")
    engine.process(0, [(b"b1", pair("b1", T0, [1, 0, 1], [1, 1, 1]))], [])
    labels = [LabelRecord(f"b1#{i}", y, T0 + 5) for i, y in enumerate([1, 0, 0])]
    engine.process(0, [], labels)
    acc = _cand(engine).quality["accuracy"]
    assert acc.n == 3
    assert acc.prod_sum == 2.0  # 1 right, 0 right, 1 wrong
    assert acc.cand_sum == 1.0  # 1 right, 1 wrong, 1 wrong
    assert _cand(engine).count("instances") == 3
    assert engine.store.pending_count() == 0


def test_orphans_when_the_ttl_ends(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite", cfg={"ttl_s": 60.0})
    engine.process(0, [(b"a", pair("a", T0, [1], [1])), (b"b", pair("b", T0, [0], [1]))], [])
    engine.process(0, [], [LabelRecord("zzz", 1, T0 + 1000)])  # a label whose pair never comes
    assert _cand(engine).count("orphan_pairs") == 0
    # labels well after the TTL end the pending pairs; pairs well after it end the label
    engine.process(0, [], [LabelRecord("late", 0, T0 + 61_001)])
    assert _cand(engine).count("orphan_pairs") == 2
    assert engine.counters(0).get("orphan_labels", 0) == 0
    engine.process(0, [(b"c", pair("c", T0 + 70_000, [1], [1]))], [])
    assert engine.counters(0)["orphan_labels"] == 1
    # "late" would match no pair either, and a late pair "a" would no longer join
    engine.process(0, [], [LabelRecord("a", 1, T0 + 200)])
    assert _cand(engine).labelled == 0


def test_injected_clock_expires_without_records(tmp_path: Path) -> None:
    now = [T0]
    engine = _engine(tmp_path / "s.sqlite", cfg={"ttl_s": 10.0}, clock=lambda: now[0])
    engine.process(0, [(b"a", pair("a", T0, [1], [1]))], [])
    assert engine.store.pending_count() == 2  # the candidate's entry and production's
    now[0] = T0 + 10_001
    engine.process(0, [], [])
    assert engine.store.pending_count() == 0
    assert _cand(engine).count("orphan_pairs") == 1
    assert engine.production(ROUTE, 0).counts["unlabelled_expired"] == 1  # type: ignore[attr-defined]


def test_expire_counts_orphans_by_the_clock_alone(tmp_path: Path) -> None:
    """``Engine.expire``: no batch, no position moved; only what is due, committed (a
    reopened engine sees it); nothing done without a clock or before the TTL ends."""
    now = [T0]
    path = tmp_path / "s.sqlite"
    engine = _engine(path, cfg={"ttl_s": 10.0}, clock=lambda: now[0])
    engine.process(0, [(b"a", pair("a", T0, [1], [1]))], [LabelRecord("zzz", 1, T0 + 5_000)])
    pos = engine.position(0)
    before = (pos.pairs, pos.labels, pos.pairs_wm, pos.labels_wm)
    assert engine.expire(0) is False  # nothing due yet
    now[0] = T0 + 10_001
    version = engine.version
    assert engine.expire(0) is True
    assert engine.version == version + 1
    assert engine.store.pending_count() == 0 and engine.store.label_count() == 1
    assert _cand(engine).count("orphan_pairs") == 1
    now[0] = T0 + 15_001
    assert engine.expire(0) is True
    assert engine.counters(0)["orphan_labels"] == 1
    assert engine.expire(0) is False  # nothing left
    pos = engine.position(0)
    assert (pos.pairs, pos.labels, pos.pairs_wm, pos.labels_wm) == before
    engine.store.close()
    reopened = _engine(path, cfg={"ttl_s": 10.0}, clock=None)
    assert _cand(reopened).count("orphan_pairs") == 1
    assert reopened.counters(0)["orphan_labels"] == 1
    assert reopened.expire(0) is False  # no clock: record time only (Kafka)


def test_dead_letters_and_the_stream_goes_on(tmp_path: Path) -> None:
    got: list[tuple[bytes, bytes, str]] = []
    engine = _engine(tmp_path / "s.sqlite", dead_letters=got.extend)
    good = pair("ok", T0, [1], [1])
    bad_version = orjson.dumps({**orjson.loads(good), "v": 2})
    unknown_route = orjson.dumps({**orjson.loads(good), "route": "nope"})
    rec = orjson.loads(good)
    rec["candidate"]["model"] = "stranger"
    unknown_cand = orjson.dumps(rec)
    pairs = [
        (b"x", b"{not json"),
        (b"x", bad_version),
        (b"x", unknown_route),
        (b"x", unknown_cand),
        (b"ok", good),
    ]
    bad_labels: list[bytes | LabelRecord] = [
        b"[1, 2",
        orjson.dumps({"id": "ok"}),
        encode_label(LabelRecord("ok", 1, T0 + 1, route="elsewhere")),
        encode_label(LabelRecord("ok", 1, T0 + 1)),
    ]
    engine.process(0, pairs, bad_labels)
    reasons = [r for _, _, r in got]
    assert reasons == [
        "label:unparseable",
        "label:missing_field:label",
        "label:unknown_route",
        "unparseable",
        "schema_version",
        "unknown_route",
        "unknown_candidate",
    ]
    assert got[3][1] == b"{not json"  # the original bytes
    assert _cand(engine).pairs == 1 and _cand(engine).labelled == 1
    part = engine.counters(0)
    assert part["deadletter:unknown_route"] == 1 and part["deadletter:label:unparseable"] == 1


def test_production_only_records_feed_only_production(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite")
    engine.process(0, [(b"m", pair("m", T0, [1], None))], [LabelRecord("m", 1, T0 + 1)])
    assert not any(k.kind == "cand" for k in engine.states)
    prod = engine.production(ROUTE, 0)
    assert prod.counts == {"requests": 1, "instances": 1, "labelled": 1}  # type: ignore[attr-defined]


def test_a_request_with_two_candidates_counts_once_for_production(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite")
    engine.process(0, [(b"q", pair("q", T0, [1], [1]))], [LabelRecord("q", 1, T0 + 1)])
    engine.process(0, [(b"q", pair("q", T0, [1], [0], candidate="fraud-v9"))], [])
    prod = engine.production(ROUTE, 0)
    assert prod.counts["requests"] == 1 and prod.counts["labelled"] == 1  # type: ignore[attr-defined]
    assert _cand(engine, cand="fraud-v9").labelled == 1


def _offline(path: Path, s: Stream) -> dict[tuple[str, str, str, int], Any]:
    engine = _engine(path)
    engine.process(0, s.pairs, s.labels)
    return engine.states


def _assert_equal_states(a: CandidateState, b: CandidateState) -> None:
    """Counts and sketches exactly; float sums to summation order."""
    assert a.counts.keys() == b.counts.keys()
    for k in a.counts:
        assert a.counts[k] == pytest.approx(b.counts[k], rel=1e-12), k
    assert a.latency_prod.buckets == b.latency_prod.buckets
    assert a.latency_cand.buckets == b.latency_cand.buckets
    for name, m in a.metrics().items():
        o = b.metrics()[name]
        assert m.n == o.n, name
        for attr in ("prod_sum", "cand_sum", "diff_sum", "diff_sq"):
            assert getattr(m, attr) == pytest.approx(getattr(o, attr), rel=1e-9, abs=1e-9)


async def test_crash_and_replay_equals_offline(tmp_path: Path) -> None:
    s = classification(4000, p_prod=0.7, p_cand=0.75, seed=5, label_share=0.7, batched_every=11)
    path = tmp_path / "s.sqlite"
    cfg = config(str(path))
    first = Comparator(cfg, clock=None)
    await first.consume(s.pairs[:1500])
    await first.consume_labels(s.labels[:700])
    await first.flush()
    await first.consume(s.pairs[1500:2500])  # consumed, never committed: lost in the crash
    await first.consume_labels(s.labels[700:1600])
    del first  # abandoned without close: the crash

    second = Comparator(cfg, clock=None)
    pos = second.positions()
    assert (pos.pairs, pos.labels) == (1500, 700)
    for i in range(pos.pairs, len(s.pairs), 333):
        await second.consume(s.pairs[i : i + 333])
    for i in range(pos.labels, len(s.labels), 251):
        await second.consume_labels(s.labels[i : i + 251])
    await second.close()

    offline = _offline(tmp_path / "offline.sqlite", s)
    again = Engine(cfg, Store(path))
    _assert_equal_states(_cand(again), offline[cand_key(offline, ROUTE, CAND, 0)])
    _assert_matches_truth(_cand(again), s)


class _FailingStore(Store):
    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path)
        self.calls = 0
        self.fail_at = fail_at

    def put_positions(self, partition: int, p: Any) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("disk full")
        super().put_positions(partition, p)


def test_a_failed_commit_rolls_back_state_and_positions(tmp_path: Path) -> None:
    s = classification(600, seed=8)
    path = tmp_path / "s.sqlite"
    engine = Engine(config(str(path)), _FailingStore(path, fail_at=2))
    engine.process(0, s.pairs[:300], s.labels[:300])
    with pytest.raises(OSError):
        engine.process(0, s.pairs[300:], s.labels[300:])
    assert engine.position(0).pairs == 300
    assert _cand(engine).pairs == 300
    engine.process(0, s.pairs[300:], s.labels[300:])  # the retry
    _assert_matches_truth(_cand(engine), s)


def test_merged_partitions_equal_one_partition(tmp_path: Path) -> None:
    s = classification(3000, p_prod=0.75, p_cand=0.8, seed=9, label_share=0.9, batched_every=5)
    parts = 3
    engine = _engine(tmp_path / "p.sqlite")
    for p in range(parts):
        mine = [kv for kv in s.pairs if partition_for(kv[0], parts) == p]
        labs = [lab for lab in s.labels if partition_for(lab.id.split("#")[0].encode(), parts) == p]
        engine.process(p, mine, labs)
    view = StateView()
    view.update(engine.snapshot())
    merged = view.candidate(ROUTE, CAND)
    assert merged is not None
    single = _offline(tmp_path / "one.sqlite", s)
    single = single[cand_key(single, ROUTE, CAND, 0)]
    _assert_equal_states(merged, single)
    prod_merged = view.production(ROUTE)
    assert prod_merged is not None
    assert prod_merged.counts == single_prod_counts(tmp_path, s)


def single_prod_counts(tmp_path: Path, s: Stream) -> dict[str, int]:
    engine = _engine(tmp_path / "one2.sqlite")
    engine.process(0, s.pairs, s.labels)
    return dict(engine.production(ROUTE, 0).counts)  # type: ignore[attr-defined]


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def test_memory_stays_flat_with_100k_pending_joins(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite")
    rng = np.random.default_rng(0)

    def chunk(start: int, n: int) -> list[tuple[bytes, bytes]]:
        out = []
        for i in range(start, start + n):
            rid = f"p{i}"
            y = int(rng.integers(0, 2))
            out.append((rid.encode(), pair(rid, T0 + i, [y], [1 - y], amount=float(i % 100))))
        return out

    engine.process(0, chunk(0, 10_000), [])
    before = _rss_mib()
    for start in range(10_000, 100_000, 10_000):
        engine.process(0, chunk(start, 10_000), [])
    after = _rss_mib()
    assert engine.store.pending_count() == 200_000  # candidate + production entry each
    assert after - before < 40, f"RSS grew {after - before:.1f} MiB for 90k more pending joins"


def test_label_partition_key() -> None:
    from shadowroute.comparator.engine import label_partition_key

    assert label_partition_key("abc") == b"abc"
    assert label_partition_key("abc#2") == b"abc"
    assert label_partition_key("a#b") == b"a#b"
    assert label_keys("abc", 1) == ["abc"] and label_keys("abc", 2) == ["abc#0", "abc#1"]
