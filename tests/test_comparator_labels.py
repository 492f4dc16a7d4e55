"""Labels sent twice, the decoders' fast paths, and the metrics the dashboard and alerts read."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from shadowroute.api.scores import ScoresCollector
from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.embedded import Comparator
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.production import ProductionState
from shadowroute.comparator.store import Store
from shadowroute.core import records
from shadowroute.core.records import LabelRecord, RecordError, decode_label, decode_pair
from test_comparator_gen import T0, cand_state, classification, config, pair

ROUTE, CAND = "fraud", "fraud-v8"


def _engine(path: Path) -> Engine:
    return Engine(config(str(path)), Store(path))


def _states(engine: Engine) -> tuple[CandidateState, ProductionState, dict[str, int]]:
    cand = cand_state(engine, ROUTE, CAND, 0)
    prod = engine.production(ROUTE, 0)
    part = engine.counters(0)
    assert isinstance(cand, CandidateState) and isinstance(prod, ProductionState)
    return cand, prod, part


@pytest.mark.parametrize("when", ["same_batch", "next_batch", "after_the_pair", "before_pair"])
def test_a_label_sent_twice_is_joined_once_and_counted(tmp_path: Path, when: str) -> None:
    s = classification(300, seed=3)
    engine = _engine(tmp_path / "s.sqlite")
    if when == "same_batch":
        engine.process(0, s.pairs, s.labels + s.labels)
    elif when == "next_batch":
        engine.process(0, s.pairs, s.labels)
        engine.process(0, [], s.labels)
    elif when == "after_the_pair":
        engine.process(0, s.pairs, [])
        engine.process(0, [], s.labels)
        engine.process(0, [], s.labels)
    else:
        engine.process(0, [], s.labels)
        engine.process(0, [], s.labels)
        engine.process(0, s.pairs, [])
    cand, prod, part = _states(engine)
    assert cand.labelled == 300 and cand.quality["accuracy"].n == 300
    assert prod.counts["labelled"] == 300
    assert part["duplicate_labels"] == 300
    assert part["labels"] == 300
    assert engine.store.pending_count() == 0


def test_a_resent_label_with_another_value_does_not_change_the_scores(tmp_path: Path) -> None:
    s = classification(200, seed=4)
    engine = _engine(tmp_path / "s.sqlite")
    engine.process(0, s.pairs, s.labels)
    before = _states(engine)[0].to_dict()
    flipped = [LabelRecord(lab.id, 1 - lab.label, lab.ts) for lab in s.labels]
    engine.process(0, [], flipped)
    cand, _, part = _states(engine)
    assert cand.to_dict() == before
    assert part["conflicting_labels"] == 200  # another value: a conflict, the first stays
    assert "duplicate_labels" not in part
    assert engine.label_outcomes == ["conflict"] * 200


async def test_duplicates_and_model_age_are_exported(tmp_path: Path) -> None:
    comp = Comparator(config(str(tmp_path / "s.sqlite")), clock=None)
    s = classification(50, seed=5)
    await comp.consume(s.pairs)
    await comp.consume_labels(s.labels)
    await comp.flush()
    await comp.consume_labels(s.labels[:20])
    await comp.flush()
    try:
        registry = CollectorRegistry()
        registry.register(ScoresCollector(comp.reader))
        text = generate_latest(registry).decode()
    finally:
        await comp.close()
    assert "shadowroute_duplicate_labels_total 20.0" in text
    # fraud-v7 declares lineage.trained_through 2026-10-31; the candidates declare none.
    ages = [line for line in text.splitlines() if line.startswith("shadowroute_model_age_days{")]
    assert len(ages) == 1 and 'model="fraud-v7"' in ages[0] and 'route="fraud"' in ages[0]
    today = datetime.now(UTC).date()
    want = (today - date(2026, 10, 31)).days
    assert float(ages[0].rsplit(" ", 1)[1]) in (want, want - 1)  # midnight between the two


# --- decoders: the fast path gives exactly what the full validator gives --------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)


def _variants() -> st.SearchStrategy[dict[str, Any]]:
    """Valid records with one field replaced by an arbitrary value or removed."""
    base = orjson.loads(pair("r-1", T0, [1, 0], [0, 0]))
    paths = [
        ("v",),
        ("id",),
        ("route",),
        ("ts",),
        ("candidate",),
        ("production",),
        *[(side, f) for side in ("production", "candidate") for f in base["production"]],
    ]

    def build(path: tuple[str, ...], value: Any, drop: bool) -> dict[str, Any]:
        rec = orjson.loads(orjson.dumps(base))
        target = rec
        for key in path[:-1]:
            target = target[key]
        if drop:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
        return rec  # type: ignore[no-any-return]

    return st.builds(build, st.sampled_from(paths), _SCALARS, st.booleans())


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except RecordError as exc:
        return ("error", exc.reason)


@settings(max_examples=400, deadline=None)
@given(_variants())
def test_pair_fast_path_agrees_with_the_full_validator(rec: dict[str, Any]) -> None:
    value = orjson.dumps(rec)
    assert _outcome(decode_pair, value) == _outcome(records._checked_pair, orjson.loads(value))


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["v", "id", "label", "ts", "route"]), _SCALARS),
    st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_label_fast_path_agrees_with_the_full_validator(
    obj: dict[str, Any], now_ms: int | None
) -> None:
    fast = _outcome(decode_label, obj, now_ms)
    assert records._fast_label(obj, now_ms) is None or fast[0] == "ok"
    slow = _outcome(_full_label, obj, now_ms)
    assert fast == slow


def _full_label(obj: dict[str, Any], now_ms: int | None) -> LabelRecord:
    """``decode_label`` with the fast path switched off."""
    original = records._fast_label
    records._fast_label = lambda *_: None  # type: ignore[assignment]
    try:
        return decode_label(obj, now_ms)
    finally:
        records._fast_label = original


def _bounded_engine(path: Path, max_waiting: int) -> Engine:
    cfg = config(str(path)).model_copy(
        update={"labels": config(str(path)).labels.model_copy(
            update={"max_waiting_per_route": max_waiting})}
    )  # fmt: skip
    return Engine(cfg, Store(path))


def test_labels_waiting_for_their_pair_are_bounded_and_leave_the_backlog_when_joined(
    tmp_path: Path,
) -> None:
    engine = _bounded_engine(tmp_path / "s.sqlite", 5)
    labels = [LabelRecord(f"r{i}", 1, T0 + i) for i in range(7)]
    engine.process(0, [], labels)
    part = engine.counters(0)
    assert engine.label_outcomes == ["accepted"] * 5 + ["refused:backlog_full"] * 2
    assert engine.labels_kept_waiting == [0, 1, 2, 3, 4]
    assert part["waiting:"] == 5 and part["deadletter:label:backlog_full"] == 2
    # two of the waiting labels meet their pairs: they leave the backlog, room for two more
    engine.process(0, [(b"r0", pair("r0", T0, [1], [1])), (b"r1", pair("r1", T0, [1], [0]))], [])
    assert part["waiting:"] == 3
    engine.process(0, [], [LabelRecord(f"n{i}", 0, T0 + i) for i in range(3)])
    assert engine.label_outcomes == ["accepted", "accepted", "refused:backlog_full"]
    assert part["waiting:"] == 5
    # a label whose pair is in the same batch joins at once and never waits
    engine.process(0, [(b"x", pair("x", T0, [1], [1]))], [LabelRecord("x", 1, T0)])
    assert engine.label_outcomes == ["accepted"] and part["waiting:"] == 5
    assert engine.labels_kept_waiting == []
    # a pair already pending: its label matches at once; a re-sent label is a duplicate
    engine.process(0, [(b"y", pair("y", T0, [1], [1]))], [])
    engine.process(0, [], [LabelRecord("y", 1, T0), LabelRecord("x", 1, T0)])
    assert engine.label_outcomes == ["accepted", "duplicate"]
    assert engine.labels_kept_waiting == [] and part["waiting:"] == 5


def test_a_second_pair_under_a_pending_id_is_counted_and_kept_out(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s.sqlite")
    first = [(b"a", pair("a", T0, [1], [1]))]
    second = [(b"a", pair("a", T0 + 5, [1], [0]))]  # another request under the same id
    third = [(b"a", pair("a", T0 + 7, [1], [0]))]  # and another
    engine.process(0, first, [])
    engine.process(0, second + third + second, [])  # the second one re-delivered, too
    engine.process(0, [], [LabelRecord("a", 1, T0 + 10)])
    cand, _, part = _states(engine)
    assert part["duplicate_ids"] == 2
    assert part["duplicate_pairs"] == 1  # the same record again is not another request
    assert cand.labelled == 1 and cand.quality["accuracy"].n == 1
    assert cand.pairs == 3  # its unlabelled figures still count: a real request each


@pytest.mark.parametrize(
    "order",
    ["label_between", "label_first", "label_with_second", "label_first_then_both"],
)
def test_an_id_replayed_after_its_label_joined_is_a_duplicate(tmp_path: Path, order: str) -> None:
    """A second request under an id stays out of the evidence however the label and the two
    requests fall into batches: while the first waits for its label, and once the label has
    joined it (the label remembers which candidate joined it). The first one stays."""
    engine = _engine(tmp_path / "s.sqlite")
    first = (b"a", pair("a", T0, [1], [1]))  # the candidate is right on the first request
    second = (b"a", pair("a", T0 + 5, [1], [0]))  # and wrong on the replay
    label = LabelRecord("a", 1, T0 + 10)
    batches: dict[str, list[tuple[list[tuple[bytes, bytes]], list[LabelRecord]]]] = {
        "label_between": [([first], []), ([], [label]), ([second], [])],
        "label_first": [([], [label]), ([first], []), ([second], [])],
        "label_with_second": [([first], []), ([second], [label])],
        "label_first_then_both": [([], [label]), ([first, second], [])],
    }
    for pairs, labels in batches[order]:
        engine.process(0, pairs, labels)
    cand, prod, part = _states(engine)
    assert part["duplicate_ids"] == 1
    assert "duplicate_pairs" not in part
    assert cand.labelled == 1 and cand.quality["accuracy"].cand_sum == 1.0
    assert cand.pairs == 2  # the replay's unlabelled figures still count
    assert prod.counts["labelled"] == 1  # production is watched once per request


@pytest.mark.parametrize(
    "order",
    ["label_between", "label_first", "label_with_replay", "all_in_one", "replay_first_in_batch"],
)
def test_a_replay_to_a_candidate_the_first_request_missed_is_a_duplicate(
    tmp_path: Path, order: str
) -> None:
    """The first request under an id reached fraud-v8 only (fraud-v9's mirror was not sent,
    or came later); a replay under the id reaches fraud-v9. The id is the first request's:
    the replay joins nothing, for any candidate, however the records fall into batches."""
    engine = _engine(tmp_path / "s.sqlite")
    first = (b"a", pair("a", T0, [1], [1]))
    replay = (b"a", pair("a", T0 + 5, [0], [1], candidate="fraud-v9"))
    label = LabelRecord("a", 1, T0 + 10)
    batches: dict[str, list[tuple[list[tuple[bytes, bytes]], list[LabelRecord]]]] = {
        "label_between": [([first], []), ([], [label]), ([replay], [])],
        "label_first": [([], [label]), ([first], []), ([replay], [])],
        "label_with_replay": [([first], []), ([replay], [label])],
        "all_in_one": [([first, replay], [label])],
        "replay_first_in_batch": [([replay, first], []), ([], [label])],
    }
    for pairs, labels in batches[order]:
        engine.process(0, pairs, labels)
    cand, prod, part = _states(engine)
    other = cand_state(engine, ROUTE, "fraud-v9", 0)
    assert isinstance(other, CandidateState)
    assert part["duplicate_ids"] == 1
    assert cand.labelled == 1 and other.labelled == 0
    assert other.pairs == 1  # the replay's unlabelled figures still count
    assert prod.counts["labelled"] == 1
    labelled = prod.quality.sums(prod.quality.windows())
    assert (labelled.n, labelled.s1) == (1, 1.0)  # the first request's answer: right
