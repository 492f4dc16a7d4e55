"""The engine's fast paths: plain records, one pending row per request, the GC pause."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowroute.comparator import scoring
from shadowroute.comparator.aggregates import CandidateState, PairRow, new_candidate_state
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.gcpause import PeriodicCollection, gc_paused
from shadowroute.comparator.production import ProductionState
from shadowroute.comparator.reading import Label, Pair, read_label, read_pair
from shadowroute.comparator.store import Store
from shadowroute.core.records import LabelRecord, RecordError, decode_label, decode_pair
from shadowroute.core.revision import revision_id, slot_name
from test_comparator_gen import T0, cand_state, config, pair
from test_comparator_labels import _SCALARS, _variants

ROUTE, CAND, CAND2 = "fraud", "fraud-v8", "fraud-v9"
# Pending rows name the candidate's revision slot (the generated records' identities).
_RID = revision_id((None, "8", None), (None, "7", None))
SLOT, SLOT2 = slot_name(CAND, _RID), slot_name(CAND2, _RID)


def _engine(path: Path, **cfg: Any) -> Engine:
    return Engine(config(str(path), **cfg), Store(path))


def _cand(engine: Engine, cand: str = CAND) -> CandidateState:
    state = cand_state(engine, ROUTE, cand, 0)
    assert isinstance(state, CandidateState)
    return state


def _prod(engine: Engine) -> ProductionState:
    state = engine.production(ROUTE, 0)
    assert isinstance(state, ProductionState)
    return state


def _rows(engine: Engine) -> list[tuple[str, str, str | None]]:
    return list(engine.store.conn.execute("SELECT key, kind, cand FROM pending ORDER BY 1, 2"))


# --- plain records: the same values as the record decoders -----------------------------------


def _pair_outcome(value: bytes) -> Any:
    try:
        rec = decode_pair(value)
    except RecordError as exc:
        return ("error", exc.reason)
    p, c = rec.production, rec.candidate
    return ("ok", rec.id, rec.route, rec.ts, p.error, p.latency_ms, p.output,
            None if c is None else c.model, None if c is None else c.error,
            None if c is None else c.latency_ms, None if c is None else c.output,
            rec.input)  # fmt: skip


def _read_outcome(value: bytes) -> Any:
    try:
        r = read_pair(value)
    except RecordError as exc:
        return ("error", exc.reason)
    return ("ok", r.id, r.route, r.ts, r.prod_error, r.prod_latency, r.prod_output, r.candidate,
            r.cand_error, r.cand_latency, r.cand_output, r.input)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(_variants())
def test_read_pair_gives_what_decode_pair_gives(rec: dict[str, Any]) -> None:
    value = orjson.dumps(rec)
    got, want = _read_outcome(value), _pair_outcome(value)
    assert got == want
    if got[0] == "ok":  # types too: 4 and 4.0 compare equal
        assert [type(x) for x in got] == [type(x) for x in want]


@pytest.mark.parametrize(
    "value",
    [b"", b"[", b"[]", b"null", b'{"v": 1}', pair("a", T0, [1], None), pair("b", T0, [], [])],
)
def test_read_pair_on_odd_values(value: bytes) -> None:
    assert _read_outcome(value) == _pair_outcome(value)


@pytest.mark.parametrize(
    "rid", ["a", "~" * 256, "x" * 257, "", "a b", "a\n", "é", "a#1", "!", "\x7f", "a\u00a0"]
)
def test_ids_are_checked_as_the_record_decoders_check_them(rid: str) -> None:
    value = orjson.loads(pair("a", T0, [1], [1]))
    value["id"] = rid
    raw = orjson.dumps(value)
    assert _read_outcome(raw) == _pair_outcome(raw)
    label = orjson.dumps({"v": 1, "id": rid, "label": 1, "ts": T0})
    want = _label_outcome(lambda v: decode_label(orjson.loads(v)), label)
    assert _label_outcome(read_label, label) == want


def _label_outcome(fn: Any, value: bytes) -> Any:
    try:
        lab = fn(value)
    except RecordError as exc:
        return ("error", exc.reason)
    except orjson.JSONDecodeError:
        return ("error", "unparseable")
    return ("ok", lab.id, lab.label, type(lab.label), lab.ts, lab.route)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "id", "label", "ts", "route"]), _SCALARS))
def test_read_label_gives_what_decode_label_gives(obj: dict[str, Any]) -> None:
    value = orjson.dumps(obj)
    want = _label_outcome(lambda v: decode_label(orjson.loads(v)), value)
    assert _label_outcome(read_label, value) == want


def test_read_label_on_odd_values() -> None:
    for value in (b"", b"{", b"[1]", b'{"id": "a", "label": [0.1, 0.9], "ts": 1}'):
        want = _label_outcome(lambda v: decode_label(orjson.loads(v)), value)
        assert _label_outcome(read_label, value) == want
    lab = Label.of(LabelRecord("a#1", "x", 5, ROUTE))
    assert (lab.id, lab.label, lab.ts, lab.route, lab.joined, lab.prod_done) == (
        "a#1", "x", 5, ROUTE, False, False,
    )  # fmt: skip
    assert isinstance(read_pair(pair("a", T0, [1], [0])), Pair)


# --- one pending row per request ---------------------------------------------------------------


def test_first_record_of_a_request_writes_one_row_for_both_entries(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite")
    engine.process(0, [(b"a", pair("a", T0, [1], [0]))], [])
    assert _rows(engine) == [("a", "", SLOT)]
    assert engine.store.pending_count() == 2
    # a second candidate of the same request (the same time): its own row; production is
    # not watched twice
    engine.process(0, [(b"a", pair("a", T0, [1], [1], candidate=CAND2))], [])
    assert _rows(engine) == [("a", "", SLOT), ("a", SLOT2, None)]
    engine.process(0, [], [LabelRecord("a", 1, T0 + 100)])
    assert engine.store.pending_count() == 0
    assert _cand(engine).labelled == 1 and _cand(engine, CAND2).labelled == 1
    assert _cand(engine).quality["accuracy"].cand_sum == 0.0
    assert _cand(engine, CAND2).quality["accuracy"].cand_sum == 1.0
    assert _prod(engine).counts["requests"] == 1
    assert _prod(engine).counts["labelled"] == 1


def test_batched_request_writes_one_row_per_instance(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite")
    engine.process(0, [(b"m", pair("m", T0, [1, 0, 1], [1, 1]))], [])
    # production has an entry per instance; the candidate answered for two of them, and its
    # third instance waits for its label too: no prediction there is scored as its miss
    assert _rows(engine) == [("m#0", "", SLOT), ("m#1", "", SLOT), ("m#2", "", SLOT)]
    assert engine.store.pending_count() == 6
    labels = [LabelRecord(f"m#{i}", 1, T0 + 10) for i in range(3)]
    engine.process(0, [], labels)
    assert engine.store.pending_count() == 0
    assert _cand(engine).labelled == 3
    assert _cand(engine).count("labelled_no_prediction") == 1
    assert _cand(engine).quality["accuracy"].cand_sum == 2.0  # right on m#0 and m#1 only


def test_a_resent_pair_is_counted_and_joined_once(tmp_path: Path) -> None:
    """A pair record sent again (same request, candidate and time: a Kafka re-delivery) is
    skipped whole and counted as a duplicate, before its label and after it, so the label
    joins it once and it is one pair."""
    engine = _engine(tmp_path / "s.sqlite")
    value = pair("a", T0, [1], [0])
    engine.process(0, [(b"a", value)], [])
    engine.process(0, [(b"a", value), (b"a", value)], [])
    assert engine.store.pending_count() == 2
    engine.process(0, [], [LabelRecord("a", 1, T0 + 10)])
    engine.process(0, [(b"a", value)], [])  # after its label joined
    assert _cand(engine).pairs == 1
    assert _cand(engine).labelled == 1
    assert _prod(engine).counts["requests"] == 1
    assert engine.counters(0)["duplicate_pairs"] == 3


@pytest.mark.parametrize("late_first", [True, False])
def test_of_two_requests_under_one_id_in_a_batch_the_earlier_stays(
    tmp_path: Path, late_first: bool
) -> None:
    """Two requests under one id in a batch: the earlier one (its row sorts first) holds the
    id, for production's entry and the candidate's, whatever the order they came in."""
    engine = _engine(tmp_path / "s.sqlite", ttl_s=60.0)
    late, early = (b"a", pair("a", T0 + 50_000, [1], [1])), (b"a", pair("a", T0, [1], [1]))
    engine.process(0, [late, early] if late_first else [early, late], [])
    assert _rows(engine) == [("a", "", SLOT)]  # one row for both: the early request's
    assert engine.counters(0)["duplicate_ids"] == 1
    assert _prod(engine).counts["requests"] == 1  # production watched once: the early one
    engine.process(0, [], [LabelRecord("a", 1, T0 + 100_000)])
    # 100 s from the early request: beyond the TTL, and the label's time ends both entries
    # (the late request, 50 s from it, is not the id's)
    assert _cand(engine).labelled == 0 and _cand(engine).count("orphan_pairs") == 1
    assert _prod(engine).counts.get("labelled", 0) == 0
    assert _rows(engine) == []


def test_a_combined_row_expires_as_two_orphans(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite", ttl_s=10.0)
    engine.process(0, [(b"a", pair("a", T0, [1], [1])), (b"b", pair("b", T0, [1], None))], [])
    engine.process(0, [], [LabelRecord("late", 0, T0 + 20_000)])
    assert engine.store.pending_count() == 0
    assert _cand(engine).count("orphan_pairs") == 1
    assert _prod(engine).counts["unlabelled_expired"] == 2


def test_a_label_out_of_reach_keeps_the_row_and_a_later_pair_is_ignored(tmp_path: Path) -> None:
    """A label beyond the TTL of a pending row leaves it pending (with its candidate entry);
    a record in the same batch for that candidate is ignored as before."""
    engine = _engine(tmp_path / "s.sqlite", ttl_s=10.0)
    engine.process(0, [(b"a", pair("a", T0, [1], [1]))], [])
    engine.process(0, [(b"a", pair("a", T0 + 30_000, [1], [0]))], [LabelRecord("a", 1, T0 + 5)])
    # the label joined the row in the store (5 ms apart), not the new record (30 s apart)
    assert _cand(engine).labelled == 1
    assert _cand(engine).quality["accuracy"].cand_sum == 1.0


def test_a_store_from_before_combined_rows_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE pending(
          key TEXT NOT NULL, kind TEXT NOT NULL, partition INTEGER NOT NULL,
          route TEXT NOT NULL, expires INTEGER NOT NULL, data BLOB NOT NULL,
          PRIMARY KEY(key, kind)) WITHOUT ROWID;
        """
    )
    expires = T0 + 3_600_000
    conn.executemany(
        "INSERT INTO pending VALUES (?, ?, 0, ?, ?, ?)",
        [
            ("a", "", ROUTE, expires, orjson.dumps([T0, 1, None])),
            ("a", CAND, ROUTE, expires, orjson.dumps([T0, 1, 0])),
        ],
    )
    conn.commit()
    conn.close()
    engine = _engine(path)
    assert engine.store.pending_count() == 2
    engine.process(0, [(b"b", pair("b", T0, [0], [0]))], [LabelRecord("a", 1, T0 + 10)])
    assert engine.store.pending_count() == 2  # "b", in one row
    # the old entry joins the evidence it was written for (kept apart from the new revision's)
    old = engine.candidate(ROUTE, CAND, 0)
    assert isinstance(old, CandidateState) and old.revision is None
    assert old.labelled == 1 and old.quality["accuracy"].prod_sum == 1.0
    assert engine.candidate(ROUTE, SLOT, 0).labelled == 0


# --- scoring a batch of pairs in one pass -------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, "timeout", "http_5xx"]),
            st.sampled_from([None, "timeout", "connect"]),
            st.one_of(st.none(), st.floats(0, 1e4)),
            st.one_of(st.none(), st.lists(st.sampled_from([0, 1, 2, 1.0, True, "1", None]))),
            st.one_of(st.none(), st.lists(st.sampled_from([0, 1, 2, 1.0, False, "0", None]))),
        ),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(["classification", "regression", "probability", "text"]),
)
def test_add_pairs_counts_what_the_row_wise_scoring_gives(rows: list[Any], task: str) -> None:
    from shadowroute.core.config import parse_config

    route = parse_config(
        {"routes": [{"name": "r", "protocol": "kserve-v1", "task": task,
                     "production": {"name": "p", "url": "http://127.0.0.1:1"}}]},
        environ={},
    ).routes[0]  # fmt: skip
    state = new_candidate_state(route, "c", ["hour"])
    prs = [
        PairRow(T0 + i, pe, ce, lat, lat, po, co) for i, (pe, ce, lat, po, co) in enumerate(rows)
    ]
    state.add_pairs(prs)
    agreed: list[float] = []
    instances = invalid = 0
    for r in prs:
        if r.prod_output is None or r.cand_output is None:
            continue
        for p, q in zip(r.prod_output, r.cand_output, strict=False):
            instances += 1
            a = scoring.agree(task, p, q)
            if a is None:
                invalid += 1
            else:
                agreed.append(float(a))
    assert state.count("instances") == instances
    assert state.count("invalid") == invalid
    assert state.agreement.n == len(agreed)
    assert state.agreement.cand_sum == sum(agreed)
    assert state.pairs == len(prs)
    errors = sum(1 for r in prs if r.prod_error is not None)
    assert sum(v for k, v in state.counts.items() if k.startswith("error:production:")) == errors


# --- the GC pause ------------------------------------------------------------------------------


def test_gc_is_enabled_again_after_a_failed_batch(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite")
    engine.store.close()
    assert gc.isenabled()
    with pytest.raises(sqlite3.ProgrammingError):
        engine.process(0, [(b"a", pair("a", T0, [1], [1]))], [])
    assert gc.isenabled()


def test_gc_pause_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_periodic_collection_collects_at_most_every_interval() -> None:
    now = [100.0]
    collection = PeriodicCollection(interval_s=5.0, clock=lambda: now[0])
    collection.tick()
    assert collection.collections == 0
    now[0] = 105.0
    collection.tick()
    collection.tick()
    assert collection.collections == 1
    now[0] = 109.0
    collection.tick()
    assert collection.collections == 1
    now[0] = 110.0
    collection.tick()
    assert collection.collections == 2
