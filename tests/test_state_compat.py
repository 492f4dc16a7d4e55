"""A state file and a scores topic written before the comparator's state was named still load.

``data/state_v1.json`` was captured from the comparator as it stood before ``StateKey``,
``PartitionCounters`` and ``PendingEntry``: the rows of its SQLite state file (BLOB columns in
base64) and the scores-topic messages (key, value) it published for them. The engine must read
the file back to the same serialised states (byte for byte), publish the same messages, go on
joining the entries left pending in it; a reader must take the old messages as they are.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.kafka_source import ScoresFollower, scores_key
from shadowroute.comparator.production import ProductionState
from shadowroute.comparator.reader import StateView, Verdicts
from shadowroute.comparator.state import STATE_TYPES, PartitionCounters, StateKey
from shadowroute.comparator.store import Store
from shadowroute.core.records import LabelRecord
from test_comparator_gen import config

FIXTURE = Path(__file__).parent / "data" / "state_v1.json"


def _fixture() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FIXTURE.read_text())
    return doc


def _restore(path: Path) -> dict[str, Any]:
    """Write the captured rows into a fresh state file at ``path``."""
    doc = _fixture()
    Store(path).close()  # the schema
    conn = sqlite3.connect(str(path))
    with conn:
        for table, blob_column in (
            ("positions", None),
            ("state", 4),
            ("pending", None),
            ("labels", None),
            ("meta", 1),
        ):
            for row in doc[table]:
                values = list(row)
                if blob_column is not None:
                    values[blob_column] = base64.b64decode(values[blob_column])
                conn.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(values))})", values)
    conn.close()
    return doc


def _message(engine: Engine, key: StateKey, state: dict[str, Any]) -> tuple[str, str]:
    """The scores-topic message the comparator publishes for a state (KafkaComparator)."""
    pos = engine.positions[key.partition]
    value = orjson.dumps(
        {
            "kind": key.kind,
            "route": key.route,
            "candidate": key.candidate,
            "partition": key.partition,
            "positions": [pos.pairs, pos.labels],
            "state": state,
        }
    )
    return key.topic_key().decode(), value.decode()


def test_an_old_state_file_loads_to_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    doc = _restore(path)
    engine = Engine(config(str(path)), Store(path))
    snapshot = engine.snapshot()
    assert len(snapshot) == len(doc["state"]) == 7
    for kind, route, cand, partition, data in doc["state"]:
        key = StateKey(kind, route, cand, partition)
        assert isinstance(engine.states[key], STATE_TYPES[kind])
        assert orjson.dumps(snapshot[key]) == base64.b64decode(data)
    assert isinstance(engine.counters(0), PartitionCounters)
    assert isinstance(engine.production("fraud", 1), ProductionState)
    assert len(engine.candidate_revisions("fraud", "fraud-v8", 0)) == 2
    # the store's keys are named, and equal to the plain tuples
    for key in engine.store.states():
        assert key == tuple(key) and key.kind in STATE_TYPES


def test_an_old_state_file_publishes_the_same_scores_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    doc = _restore(path)
    engine = Engine(config(str(path)), Store(path))
    got = sorted(_message(engine, key, state) for key, state in engine.snapshot().items())
    assert got == sorted((k, v) for k, v in doc["scores"])
    for key in engine.snapshot():
        assert scores_key(tuple(key)) == key.topic_key()  # type: ignore[arg-type]


async def test_old_scores_messages_load_in_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    doc = _restore(path)
    cfg = config(str(path), bootstrap="127.0.0.1:9")  # never connected: apply() only
    view = StateView()
    history = Store(tmp_path / "history.sqlite")
    follower = ScoresFollower(cfg, view, Verdicts(cfg, view, history))
    messages = [(k.encode(), v.encode()) for k, v in doc["scores"]]
    assert follower.apply(messages) == len(messages)
    engine = Engine(config(str(path)), Store(path))
    want = StateView()
    want.update(engine.snapshot())
    for slot, state in want.candidate_revisions("fraud", "fraud-v8").items():
        got = view.candidate_revisions("fraud", "fraud-v8")[slot]
        assert got.to_dict() == state.to_dict()
    prod, want_prod = view.production("fraud"), want.production("fraud")
    assert prod is not None and want_prod is not None
    assert prod.to_dict() == want_prod.to_dict()
    counts = view.partition_counts()
    assert counts == want.partition_counts() and counts["pairs_read"] == 62
    # a tombstone (an old key) drops the revision it names: the one kept on partition 0 only
    (slot,) = set(engine.candidate_revisions("fraud", "fraud-v8", 0)) - set(
        engine.candidate_revisions("fraud", "fraud-v8", 1)
    )
    assert slot in view.candidate_revisions("fraud", "fraud-v8")
    assert follower.apply([(f"fraud|{slot}|0".encode(), None)]) == 1
    assert slot not in view.candidate_revisions("fraud", "fraud-v8")
    assert len(view.candidate_revisions("fraud", "fraud-v8")) == 1
    await follower._consumer.stop()
    history.close()
    engine.store.close()


def test_an_old_state_file_goes_on_joining_its_pending_entries(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    doc = _restore(path)
    engine = Engine(config(str(path)), Store(path))
    before = {p: _labelled(engine, p) for p in (0, 1)}
    pending = engine.store.pending_count()
    held = doc["held_labels"]
    assert held and pending
    by_partition: dict[int, list[LabelRecord]] = {0: [], 1: []}
    keys = {row[0]: row[2] for row in doc["pending"]}
    for lid, label, ts in held:
        by_partition[keys[lid]].append(LabelRecord(id=lid, label=label, ts=ts))
    for p, labels in by_partition.items():
        engine.process(p, [], labels)
        assert engine.label_outcomes == ["accepted"] * len(labels)
        assert engine.labels_kept_waiting == []  # every one joined an old pending entry
    after = {p: _labelled(engine, p) for p in (0, 1)}
    joined = sum(after.values()) - sum(before.values())
    assert joined == len(held)
    assert engine.store.pending_count() < pending
    engine.store.close()


def _labelled(engine: Engine, partition: int) -> int:
    states = engine.candidate_revisions("fraud", "fraud-v8", partition).values()
    return sum(s.labelled for s in states if isinstance(s, CandidateState))


def test_state_keys_and_their_scores_topic_keys() -> None:
    cand, prod, part = StateKey.cand("r", "c@1", 3), StateKey.prod("r", 3), StateKey.part(3)
    assert cand == ("cand", "r", "c@1", 3) and hash(cand) == hash(("cand", "r", "c@1", 3))
    assert prod == ("prod", "r", "", 3) and part == ("part", "", "", 3)
    assert [k.topic_key() for k in (cand, prod, part)] == [
        b"r|c@1|3",
        b"r|@production|3",
        b"@partition|@partition|3",
    ]
    assert StateKey.of_tombstone(b"r|c@1|3") == cand
    assert StateKey.of_tombstone(b"a|b|c@1|3") == ("cand", "a|b", "c@1", 3)  # route with a bar
    for other in (prod.topic_key(), part.topic_key(), b"r|c|x", b"nonsense", None):
        assert StateKey.of_tombstone(other) is None


def test_partition_counters_merge_and_serialise() -> None:
    a = PartitionCounters.from_dict({"pairs_read": 3, "waiting:": "2"})
    b = PartitionCounters({"pairs_read": 1, "orphan_labels": 4})
    a.add("labels")
    merged = a.merge(b)
    assert merged == {"pairs_read": 4, "waiting:": 2, "labels": 1, "orphan_labels": 4}
    assert a == {"pairs_read": 3, "waiting:": 2, "labels": 1}  # unchanged
    assert orjson.dumps(merged.to_dict()) == orjson.dumps(dict(merged))
    assert STATE_TYPES["part"] is PartitionCounters
