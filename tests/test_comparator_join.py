"""The comparator's joins as a pure step (``engine.Joiner``), without a store.

Each test builds what the engine would have read from the store (stored labels, pending rows,
pending (key, kind)) directly, runs the join and asserts what it decided in the ``Batch``."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowroute.comparator.aggregates import LabelledRow
from shadowroute.comparator.engine import Batch, Joiner, PendingEntry, _pending_rows
from shadowroute.comparator.reading import Label, Pair, read_pair
from shadowroute.comparator.state import StateKey
from shadowroute.comparator.store import PROD, LabelRow, PendingRow
from test_comparator_gen import T0, config, pair

ROUTE, CAND = "fraud", "fraud-v8"
TTL_MS = 3_600_000


@pytest.fixture
def joiner(tmp_path: Path) -> Joiner:
    return Joiner(config(str(tmp_path / "never-opened.sqlite")), "hour")


def _labels(
    joiner: Joiner, labels: list[Label], stored: dict[str, LabelRow], rows: list[PendingRow]
) -> tuple[Batch, list[str]]:
    b = Batch()
    outcomes = ["accepted"] * len(labels)
    later = joiner.first_labels(labels, b)
    for key in stored:  # the engine reads pending rows only under ids not stored
        assert all(row[0] != key for row in rows)
    joiner.labels(0, later, stored, rows, outcomes, list(range(len(labels))), b)
    return b, outcomes


def _pairs(
    joiner: Joiner, records: list[Pair], b: Batch | None = None,
    stored: dict[str, LabelRow] | None = None, in_store: dict[tuple[str, str], int] | None = None,
    pending_at: dict[tuple[str, str], int] | None = None,
) -> Batch:  # fmt: skip
    b = b or Batch()
    wanted, repeats = joiner.pair_keys(records, b.fresh)
    stored = {k: v for k, v in (stored or {}).items() if k in wanted}
    at = pending_at or {}
    joiner.pairs(
        0, records, repeats, stored, in_store or {},
        lambda key, slot, ts: at.get((key, slot)) == ts, b,
    )  # fmt: skip
    return b


def _rec(rid: str, ts: int, prod: list[object], cand: list[object] | None) -> Pair:
    return read_pair(pair(rid, ts, prod, cand))


# --- labels joining pending entries ----------------------------------------------------------


def test_a_label_joins_a_combined_pending_row_for_both_entries(joiner: Joiner) -> None:
    label = Label("a", 1, T0 + 500, None)
    rows: list[PendingRow] = [("a", PROD, ROUTE, f"[{T0},1,0]", CAND)]
    b, outcomes = _labels(joiner, [label], {}, rows)
    assert outcomes == ["accepted"]
    assert b.labelled[(ROUTE, CAND)] == [LabelledRow(T0, 1, 0, 1)]
    assert b.prod_labelled[ROUTE] == [(T0, T0 + 500, 1.0)]
    assert b.joined == [("a", PROD)]
    assert {("a", PROD), ("a", CAND)} <= b.existing  # a later pair under "a" is a duplicate
    assert label.joined and label.prod_done and label.slots == [f"{CAND}/{T0}"]
    assert b.prod_pending == {"a"}
    assert {StateKey.cand(ROUTE, CAND, 0), StateKey.prod(ROUTE, 0)} <= b.touched
    assert b.counts["labels"] == 1 and b.fresh == {"a": label}


def test_a_label_joins_candidate_and_production_rows_apart(joiner: Joiner) -> None:
    label = Label("a", 0, T0 + 10, ROUTE)
    rows: list[PendingRow] = [
        ("a", PROD, ROUTE, f"[{T0},1,null]", None),
        ("a", CAND, ROUTE, f"[{T0},1,0]".encode(), None),  # bytes: a row of an earlier version
    ]
    b, _ = _labels(joiner, [label], {}, rows)
    assert b.labelled[(ROUTE, CAND)] == [LabelledRow(T0, 1, 0, 0)]
    assert b.prod_labelled[ROUTE] == [(T0, T0 + 10, 0.0)]
    assert b.joined == [("a", PROD), ("a", CAND)]
    assert label.slots == [f"/{T0}", f"{CAND}/{T0}"]  # production's entry as ``/<ts>``


def test_a_label_beyond_the_ttl_or_of_another_route_joins_nothing(joiner: Joiner) -> None:
    far = Label("a", 1, T0 + TTL_MS + 1, None)
    other = Label("b", 1, T0, "another-route")
    rows: list[PendingRow] = [
        ("a", CAND, ROUTE, f"[{T0},1,1]", None),
        ("b", CAND, ROUTE, f"[{T0},1,1]", None),
    ]
    b, outcomes = _labels(joiner, [far, other], {}, rows)
    assert outcomes == ["accepted", "accepted"]
    assert not b.labelled and not b.joined
    assert b.existing == {("a", CAND), ("b", CAND)}  # still pending: new pairs are duplicates
    assert not far.joined and not other.joined


def test_a_label_exactly_at_the_ttl_joins(joiner: Joiner) -> None:
    label = Label("a", 1, T0 + TTL_MS, None)
    b, _ = _labels(joiner, [label], {}, [("a", CAND, ROUTE, f"[{T0},1,1]", None)])
    assert b.joined == [("a", CAND)]


def test_duplicate_and_conflicting_labels_are_counted_and_join_nothing(joiner: Joiner) -> None:
    labels = [
        Label("a", 1, T0, None),
        Label("a", 1, T0 + 1, None),  # the same again: a re-send
        Label("a", 0, T0 + 2, None),  # another value: a conflict
        Label("s", 1, T0, None),  # a label already stored under "s", with another value
    ]
    stored = {"s": LabelRow("s", T0 - 5, None, 0, False, False)}
    b, outcomes = _labels(joiner, labels, stored, [("a", CAND, ROUTE, f"[{T0},1,1]", None)])
    assert outcomes == ["accepted", "duplicate", "conflict", "conflict"]
    assert b.counts["duplicate_labels"] == 1 and b.counts["conflicting_labels"] == 2
    assert list(b.fresh) == ["a"] and b.counts["labels"] == 1
    assert b.labelled[(ROUTE, CAND)] == [LabelledRow(T0, 1, 1, 1)]


def test_an_invalid_label_for_production_is_counted(joiner: Joiner) -> None:
    label = Label("a", {"not": "a class"}, T0, None)
    b, _ = _labels(joiner, [label], {}, [("a", PROD, ROUTE, f"[{T0},1,null]", None)])
    assert b.counts["invalid_labels"] == 1 and not b.prod_labelled
    assert label.prod_done


# --- pair instances --------------------------------------------------------------------------


def test_pairs_without_labels_wait_in_one_row_per_record(joiner: Joiner) -> None:
    recs = [_rec("a", T0, [1], [0]), _rec("m", T0 + 1, [1, 0], [1, 1])]
    b = _pairs(joiner, recs)
    assert recs[1].keys == ["m#0", "m#1"]
    entry = b.pending["a"][CAND]
    assert isinstance(entry, PendingEntry)
    assert (entry.route, entry.expires, entry.ts, entry.prod, entry.cand, entry.index) == (
        ROUTE, T0 + TTL_MS, T0, 1, 0, 0,
    )  # fmt: skip
    assert b.pending["a"][PROD].cand is None and b.pending["a"][PROD].index == 0
    assert b.pending["m#1"][CAND].prod == 0 and b.pending["m#1"][CAND].cand == 1
    # production's entry and the candidate's of one record share a row
    rows = _pending_rows(3, b.pending)
    assert rows[0] == ("a", PROD, 3, ROUTE, T0 + TTL_MS, f"[{T0},1,0]", CAND)
    assert [r[0] for r in rows] == ["a", "m#0", "m#1"]
    assert not b.labelled and not b.joined
    assert b.requests[ROUTE] == [(T0, False, 1), (T0 + 1, False, 2)]
    assert {StateKey.cand(ROUTE, CAND, 0), StateKey.prod(ROUTE, 0)} <= b.touched


def test_pairs_join_the_batch_labels_in_memory(joiner: Joiner) -> None:
    label = Label("a", 1, T0 + 50, None)
    b, _ = _labels(joiner, [label], {}, [])
    b = _pairs(joiner, [_rec("a", T0, [1], [0])], b)
    assert b.labelled[(ROUTE, CAND)] == [LabelledRow(T0, 1, 0, 1)]
    assert b.prod_labelled[ROUTE] == [(T0, T0 + 50, 1.0)]
    assert not b.pending and not b.marks
    # the candidate's slot carries the request's time (production's is marked only alone)
    assert label.joined and label.prod_done and label.slots == [f"{CAND}/{T0}"]


def test_pairs_join_a_stored_label_and_mark_it(joiner: Joiner) -> None:
    stored = {"a": LabelRow("a", T0 + 50, ROUTE, 1, False, False)}
    b = _pairs(joiner, [_rec("a", T0, [1], [0])], stored=stored)
    assert b.labelled[(ROUTE, CAND)] == [LabelledRow(T0, 1, 0, 1)]
    assert b.marks == {"a": 1} and b.slot_marks == {"a": [f"{CAND}/{T0}"]}
    assert b.unwaited == {"waiting:fraud": 1}  # it no longer waits for its pair
    assert not b.pending


def test_a_stored_label_out_of_reach_leaves_the_pair_pending(joiner: Joiner) -> None:
    stored = {"a": LabelRow("a", T0 + TTL_MS + 1, None, 1, False, False)}
    b = _pairs(joiner, [_rec("a", T0, [1], [0])], stored=stored)
    assert set(b.pending["a"]) == {PROD, CAND} and not b.labelled and not b.marks


def test_a_second_request_under_a_pending_id_is_a_duplicate(joiner: Joiner) -> None:
    b = _pairs(
        joiner,
        [_rec("a", T0 + 7, [1], [0])],
        in_store={("a", PROD): T0, ("a", CAND): T0},
        pending_at={("a", CAND): T0},  # the pending one came at another time
    )
    assert b.counts["duplicate_ids"] == 1
    assert CAND not in b.pending.get("a", {}) and not b.labelled


def test_a_request_under_an_id_whose_label_the_candidate_joined_is_a_duplicate(
    joiner: Joiner,
) -> None:
    stored = {"a": LabelRow("a", T0 + 50, ROUTE, 1, True, True, frozenset({f"{CAND}/{T0}"}))}
    b = _pairs(joiner, [_rec("a", T0 + 7, [1], [1])], stored=stored)
    assert b.counts["duplicate_ids"] == 1
    assert not b.labelled and not b.prod_labelled and not b.pending
    assert not b.marks and not b.slot_marks
    assert len(b.rows[(ROUTE, CAND)]) == 1  # its unlabelled figures still count
    # the same record again (the time the label remembers) is a re-delivery, not a duplicate
    b = _pairs(joiner, [_rec("a", T0, [1], [1])], stored=stored)
    assert b.counts == {"duplicate_pairs": 1} and not b.rows


def test_a_label_another_candidate_joined_joins_the_same_request_only(joiner: Joiner) -> None:
    other = "fraud-v9"
    stored = {"a": LabelRow("a", T0 + 50, ROUTE, 1, True, True, frozenset({f"{other}/{T0}"}))}
    # the same request's record for this candidate (the same time): joins
    b = _pairs(joiner, [_rec("a", T0, [1], [0])], stored=stored)
    assert "duplicate_ids" not in b.counts
    assert b.labelled[(ROUTE, CAND)] == [LabelledRow(T0, 1, 0, 1)]
    assert b.slot_marks == {"a": [f"{CAND}/{T0}"]}
    # another request under the id, to a candidate the first one never reached: kept out
    b = _pairs(joiner, [_rec("a", T0 + 7, [1], [1])], stored=stored)
    assert b.counts["duplicate_ids"] == 1
    assert not b.labelled and not b.pending and not b.slot_marks


def test_production_joining_a_label_alone_marks_its_request_time(joiner: Joiner) -> None:
    label = Label("a", 1, T0 + 50, None)
    b, _ = _labels(joiner, [label], {}, [])
    _pairs(joiner, [_rec("a", T0, [1], None)], b)  # a production-only record
    assert label.prod_done and label.slots == [f"/{T0}"]
    stored = {"a": LabelRow("a", T0 + 50, ROUTE, 1, False, False)}
    b = _pairs(joiner, [_rec("a", T0, [1], None)], stored=stored)
    assert b.marks == {"a": 1} and b.slot_marks == {"a": [f"/{T0}"]}


def test_a_label_production_alone_joined_holds_the_id_for_its_request(joiner: Joiner) -> None:
    """A production-only record joined the label (no candidate was mirrored); a candidate's
    record of another request under the id (a fraction raised since) joins nothing."""
    stored = {"a": LabelRow("a", T0 + 50, ROUTE, 1, True, True, frozenset({f"/{T0}"}))}
    b = _pairs(joiner, [_rec("a", T0 + 7, [1], [1])], stored=stored)
    assert b.counts["duplicate_ids"] == 1 and not b.labelled and not b.pending
    b = _pairs(joiner, [_rec("a", T0, [1], [1])], stored=stored)  # its own request: joins
    assert "duplicate_ids" not in b.counts
    assert b.labelled[(ROUTE, CAND)] == [LabelledRow(T0, 1, 1, 1)]


def test_an_id_pending_for_another_candidate_holds_it_for_its_request(joiner: Joiner) -> None:
    other = "fraud-v9"
    in_store = {("a", PROD): T0, ("a", other): T0}  # a combined row: production and fraud-v9
    b = _pairs(joiner, [_rec("a", T0 + 7, [1], [1])], in_store=in_store)
    assert b.counts["duplicate_ids"] == 1 and not b.pending
    assert len(b.rows[(ROUTE, CAND)]) == 1  # its unlabelled figures still count
    b = _pairs(joiner, [_rec("a", T0, [1], [1])], in_store=in_store)  # the same request
    assert "duplicate_ids" not in b.counts
    assert set(b.pending["a"]) == {CAND} and b.pending["a"][CAND].ts == T0


def test_an_entry_this_batch_s_label_could_not_join_still_holds_its_id(joiner: Joiner) -> None:
    """The batch's label is out of reach of the request pending under its id (beyond the
    TTL); a replay within reach of the label is still another request: it joins nothing."""
    other = "fraud-v9"
    label = Label("a", 1, T0 + TTL_MS + 50, None)
    rows: list[PendingRow] = [("a", PROD, ROUTE, f"[{T0},1,0]", CAND)]
    b, _ = _labels(joiner, [label], {}, rows)
    assert not label.joined and b.held == {"a": {T0}}
    replay = read_pair(pair("a", T0 + TTL_MS, [1], [1], candidate=other))
    b = _pairs(joiner, [replay], b)
    assert b.counts["duplicate_ids"] == 1
    assert not b.labelled and not label.joined and not b.pending


def test_in_one_batch_the_earliest_request_holds_the_id_for_every_candidate(
    joiner: Joiner,
) -> None:
    later = read_pair(pair("a", T0 + 7, [0], [1], candidate="fraud-v9"))
    first = _rec("a", T0, [1], [1])
    for records in ([later, first], [first, later]):  # whatever the order in the batch
        b = _pairs(joiner, records)
        assert b.counts["duplicate_ids"] == 1
        assert set(b.pending["a"]) == {PROD, CAND}
        assert b.pending["a"][PROD].ts == b.pending["a"][CAND].ts == T0
        assert b.requests[ROUTE] == [(T0, False, 1)]  # production watched once: the first


def test_each_instance_of_a_replayed_request_is_a_duplicate(joiner: Joiner) -> None:
    stored = {
        k: LabelRow(k, T0 + 50, ROUTE, 1, True, True, frozenset({f"{CAND}/{T0}"}))
        for k in ("m#0", "m#1")
    }
    b = _pairs(joiner, [_rec("m", T0 + 7, [1, 0], [1, 0])], stored=stored)
    assert b.counts["duplicate_ids"] == 2
    assert not b.labelled and not b.pending and not b.slot_marks


def test_the_same_pair_record_again_is_skipped_whole(joiner: Joiner) -> None:
    rec = pair("a", T0, [1], [0])
    b = _pairs(
        joiner,
        [read_pair(rec)],
        in_store={("a", PROD): T0, ("a", CAND): T0},
        pending_at={("a", CAND): T0},  # a re-delivery: the same time as the pending entry
    )
    assert b.counts["duplicate_pairs"] == 1 and "duplicate_ids" not in b.counts
    assert not b.rows and not b.pending
    # twice in one batch: the second is skipped
    b = _pairs(joiner, [read_pair(rec), read_pair(rec)])
    assert b.counts["duplicate_pairs"] == 1 and len(b.rows[(ROUTE, CAND)]) == 1


def test_of_two_requests_under_one_id_in_a_batch_the_first_row_stays(joiner: Joiner) -> None:
    b = _pairs(joiner, [_rec("a", T0 + 9, [0], [0]), _rec("a", T0, [1], [1])])
    assert b.counts["duplicate_ids"] == 1
    kept = b.pending["a"][CAND]
    assert (kept.ts, kept.index) == (T0, 1)  # the row that sorts first, as a replay keeps
