"""The comparator's synchronous core: one batch in, aggregates and positions committed.

``Engine.process(partition, pairs, labels, next_pairs, next_labels)`` decodes records (bad ones
go to the dead-letter callback with a reason), joins pair instances with labels by label key in
either order, updates the aggregates, expires pending sides whose TTL ended, and commits
state, pending sides and the new positions in one SQLite transaction.

A batch goes in three steps: the engine reads what the store holds under the batch's keys;
``Joiner`` (no store, no aggregates) decides every join, duplicate and new pending entry
(``PendingEntry``) into a ``Batch``; the engine writes the batch to the store and applies it
to the states (``comparator.state``: keyed by ``StateKey``, of the types in ``STATE_TYPES``).

Label keys: instance ``i`` of a request with id ``X`` is keyed ``X`` when the request has one
instance and ``X#i`` when it has several (``i`` from 0).

Expiry is driven by record timestamps: a pending pair expires when the labels seen on its
partition reach ``pair ts + TTL``, a pending label when the pairs reach ``label ts + TTL``
(or by an injected clock, whichever is later), so a replay expires exactly as the first run.
With a clock, ``expire(partition)`` also expires by it alone, when no record comes.
A pair and a label join only when their timestamps are at most the TTL apart.

Within a batch, pairs first join the batch's own labels in memory; only the other keys are
looked up in the store, and each new label is stored once, with its join flags. A label whose
key already has one (stored, or earlier in the batch) is never joined: counted as a
duplicate (``duplicate_labels``, same value) or a conflict (``conflicting_labels``). A pair
under a key that another request holds (another time: pending in the store, joined to the
key's label, or earlier in the batch's time order), or whose (key, candidate) is already
pending or joined, is a duplicate request id (``duplicate_ids``): kept out of the evidence.
Labels that join nothing wait, at most ``labels.max_waiting_per_route`` per route
(``waiting:<route>`` counters); beyond it they go to the dead letters
(``label:backlog_full``). ``label_outcomes`` says, after a batch, what became of each label.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, final

import orjson

from shadowroute.comparator import scoring
from shadowroute.comparator.aggregates import (
    WINDOW_MS,
    CandidateState,
    LabelledRow,
    new_candidate_state,
)
from shadowroute.comparator.gcpause import gc_paused
from shadowroute.comparator.production import (
    DriftBatch,
    EmbeddingPlan,
    ProductionState,
    add_endpoint_vectors,
    drift_paths,
    new_production_state,
)
from shadowroute.comparator.reading import Label, Pair, read_label, read_pair, same_text
from shadowroute.comparator.reference import reference_for
from shadowroute.comparator.state import (
    PartitionCounters,
    State,
    StateKey,
    state_from_dict,
)
from shadowroute.comparator.store import (
    PROD,
    LabelRow,
    PendingRow,
    Positions,
    Store,
    entry_ts,
)
from shadowroute.core.assessments import (
    AssessmentRecord,
    EmbeddingRecord,
    EmbedJob,
    decode_any,
)
from shadowroute.core.config import Config, Route
from shadowroute.core.label_rules import LabelRules, same_label
from shadowroute.core.records import (
    LabelRecord,
    RecordError,
    label_partition_key,
)
from shadowroute.core.revision import Identity, describe, revision_id, slot_name, split_slot
from shadowroute.core.stats.paired import PairedMetric, metric_spec
from shadowroute.core.stats.policy import metric_alpha

log = logging.getLogger("shadowroute.comparator")

__all__ = [
    "Batch",
    "DeadLetter",
    "Engine",
    "Joiner",
    "PendingEntry",
    "StateKey",
    "label_keys",
    "label_partition_key",
]

_NO_KEY: Final = ("", "")
"""Stands in for a (key, candidate) pair not needed (nothing to check it against)."""

DeadLetter = tuple[bytes, bytes, str]
"""(key, value, reason) of a record that could not be used."""
DeadLetterSink = Callable[[Sequence[DeadLetter]], None]
Clock = Callable[[], int]
LabelInput = bytes | LabelRecord
PendingAt = Callable[[str, str, int], bool]
"""Whether the entry pending in the store for (key, candidate slot) has this timestamp."""

_MONITOR: Final = "__production__"
_MAX_SLOT_CACHE: Final = 4096
EMBEDDING_SLOT: Final = "~embedding"
"""The slot under which embedding records are remembered against re-delivery (no candidate
is named so: ``~`` is not allowed in a name)."""
MAX_REVISIONS: Final = 16
"""Candidate revisions whose state is kept per (route, candidate, partition). Beyond it the
revision with the oldest newest pair is dropped from the state (counted in the partition's
``revisions_evicted``); its decision history stays."""


def label_keys(request_id: str, instances: int) -> list[str]:
    """The label key of each instance of a request."""
    if instances <= 1:
        return [request_id]
    return [f"{request_id}#{i}" for i in range(instances)]


@final
class PendingEntry:
    """A new pending pair instance, waiting for its label: the route, when it expires, the
    pair's time, production's output and the candidate's (``None`` for production's own
    entry), and the index (in the batch) of the record it came from."""

    def __init__(self, route: str, expires: int, ts: int, prod: Any, cand: Any, index: int) -> None:
        self.route = route
        self.expires = expires
        self.ts = ts
        self.prod = prod
        self.cand = cand
        self.index = index

    def data(self) -> str:
        """The stored form of the entry (``pending.data``): ``[ts, production, candidate]``."""
        return _dumps([self.ts, self.prod, self.cand])

    def order(self) -> tuple[str, int, str]:
        """Where its row sorts (of two for one (key, kind), the first is kept)."""
        return self.route, self.expires, self.data()


@dataclass
class Batch:
    """What one batch's joins decided, gathered before the store is written and the
    aggregates are updated."""

    rows: dict[tuple[str, str], list[Pair]] = field(default_factory=lambda: defaultdict(list))
    labelled: dict[tuple[str, str], list[LabelledRow]] = field(
        default_factory=lambda: defaultdict(list)
    )
    prod_labelled: dict[str, list[tuple[int, int, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    pending: dict[str, dict[str, PendingEntry]] = field(default_factory=dict)
    """New pending entries by key and kind. Of two with the same (key, kind) the one whose
    row sorts first is kept, and none where the store has one (``existing``), as
    ``INSERT OR IGNORE`` of the sorted rows would."""
    existing: set[tuple[str, str]] = field(default_factory=set)
    """(key, kind) already pending in the store and not joined in this batch."""
    joined: list[tuple[str, str]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    """Stored labels joined in this batch: key -> 1 if production's entry joined it."""
    slot_marks: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """Stored labels joined in this batch: key -> the entries that joined it (``<slot>/<ts>``,
    production's as ``/<ts>``)."""
    unwaited: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Stored labels that joined for the first time in this batch, by waiting counter."""
    touched: set[StateKey] = field(default_factory=set)
    requests: dict[str, list[tuple[int, bool, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    drift: dict[str, DriftBatch] = field(default_factory=dict)
    prod_revisions: dict[str, dict[Identity, list[int]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    """Production's revision identities seen per route: [first ts, last ts]."""
    new_slots: bool = False
    """A candidate revision got its first state on the partition in this batch."""
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Partition counters the joins add to (``duplicate_ids``, ``invalid_labels``...)."""
    fresh: dict[str, Label] = field(default_factory=dict)
    """The labels seen for the first time (stored after the batch's pairs joined them)."""
    firsts: dict[str, int] = field(default_factory=dict)
    """The position (among the labels joined) of each label id's first record."""
    prod_pending: set[str] = field(default_factory=set)
    """Keys of fresh labels with a pending production entry in the store."""
    held: dict[str, set[int]] = field(default_factory=dict)
    """Keys held by requests pending in the store: the times of those requests. Filled for
    the entries this batch's labels did not join (``Joiner.labels``), then for the other keys
    looked up (``Joiner.pairs``); the batch's pairs under another time are duplicate ids."""
    embed_jobs: list[EmbedJob] = field(default_factory=list)
    """Texts for embedding drift's endpoints (handed on once the batch is committed)."""


class Engine:
    """Aggregates for the partitions this process owns, backed by a ``Store``."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        dead_letters: DeadLetterSink | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.windows = tuple(config.comparator.windows) or ("hour",)
        self.dead_letters = dead_letters
        self.clock = clock
        self._configure(config)
        self._slots: dict[tuple[str, str, Identity | None, Identity], str] = {}
        self._revisions: dict[tuple[str, str], dict[str, Any]] = {}
        """(route, slot) -> the ``revision`` of its ``CandidateState``."""
        self.label_outcomes: list[str] = []
        """After ``process``: per label given, in order, what became of it: ``accepted``,
        ``duplicate`` (same value as the label kept), ``conflict`` (another value) or
        ``refused:<reason>`` (a dead letter: unparseable, unknown route, ``ts_in_future``,
        ``backlog_full``)."""
        self.labels_kept_waiting: list[int] = []
        """After ``process``: the positions (in the labels given) of the accepted labels that
        joined no pair instance and were kept waiting for their pair; the other accepted ones
        matched a request seen so far."""
        self._label_idx: list[int] = []
        self.states: dict[StateKey, State] = {}
        self.evicted: list[StateKey] = []
        """States dropped (``MAX_REVISIONS``) and committed, not yet taken by the reader side
        (``take_evicted``)."""
        self._batch: Batch | None = None
        self._embed_jobs: list[EmbedJob] = []
        """Committed batches' texts for embedding drift's endpoints, until taken
        (``take_embed_jobs``)."""
        self.positions: dict[int, Positions] = {}
        self._lock = threading.Lock()
        self._snapshot: dict[StateKey, dict[str, Any]] = {}
        self.version = 0
        self.load()

    def _configure(self, config: Config) -> None:
        """What the engine derives from the routes of ``config``."""
        self.config = config
        self.routes: dict[str, Route] = {r.name: r for r in config.routes}
        self.max_ttl_ms = max(int(r.label_ttl_s * 1000) for r in config.routes)
        self._refs = {r.name: reference_for(r) for r in config.routes}
        self._auto = {
            r.name: (r.drift.max_fields, r.drift.max_depth) if r.drift.auto else (0, 0)
            for r in config.routes
        }
        self._cands = {r.name: frozenset(c.name for c in r.candidates) for r in config.routes}
        self._ttl_ms = {r.name: int(r.label_ttl_s * 1000) for r in config.routes}
        self.joiner = Joiner(config, self.windows[0])
        self.rules = LabelRules.of(config)
        self.max_waiting = config.labels.max_waiting_per_route

    def reconfigure(self, config: Config) -> None:
        """Take the routes of a reloaded config (``runtime.reload``; only ``routes`` differs
        from the running config's, and no kept route changes its task or production model:
        ``core.reload.refusals``). The caller makes sure no batch is being processed.

        New routes and candidates are scored from now on; a changed route's settings apply
        to what comes next (a candidate's existing evidence keeps the alpha shares it was
        started with). What the new config drops stays known here, *retired*: pairs already
        on their way and labels for them still join, pending entries still expire, and the
        aggregates stay in the state file; the read side (API, verdicts) follows the new
        config."""
        kept = {r.name for r in config.routes}
        retired = [r for name, r in self.routes.items() if name not in kept]
        known = dict(self._cands)
        self._configure(config.model_copy(update={"routes": [*config.routes, *retired]}))
        for name, cands in known.items():
            self._cands[name] = self._cands.get(name, frozenset()) | cands

    # --- state ------------------------------------------------------------------------------

    def load(self, partitions: Sequence[int] | None = None) -> None:
        """Read positions and state (of the given partitions, or all) from the store."""
        stored = self.store.positions()
        wanted = set(stored) if partitions is None else set(partitions)
        for p in wanted:
            self.positions[p] = stored.get(p, Positions())
        for key, data in self.store.states(wanted).items():
            self.states[key] = state_from_dict(key.kind, orjson.loads(data))
        with self._lock:
            for key, state in self.states.items():
                self._snapshot[key] = state.to_dict()
            self.version += 1

    def drop_partitions(self, partitions: Sequence[int]) -> None:
        """Forget partitions this process no longer owns (their rows stay in the store)."""
        gone = set(partitions)
        for key in [k for k in self.states if k.partition in gone]:
            del self.states[key]
        for p in gone:
            self.positions.pop(p, None)
        with self._lock:
            for key in [k for k in self._snapshot if k.partition in gone]:
                del self._snapshot[key]
            self.version += 1

    def snapshot(self) -> dict[StateKey, dict[str, Any]]:
        """The serialised state of every owned partition as of the last commit."""
        with self._lock:
            return dict(self._snapshot)

    def position(self, partition: int) -> Positions:
        return self.positions.setdefault(partition, Positions())

    def candidate(self, route: str, slot: str, partition: int) -> CandidateState | None:
        """The state of a candidate revision (``slot``: ``name@revision id``) on a
        partition, if it has one."""
        state = self.states.get(StateKey.cand(route, slot, partition))
        return state if isinstance(state, CandidateState) else None

    def candidate_revisions(
        self, route: str, cand: str, partition: int
    ) -> dict[str, CandidateState]:
        """The states of a candidate's revisions on a partition, by slot."""
        return {
            key.candidate: state
            for key, state in self.states.items()
            if isinstance(state, CandidateState)
            and key.route == route
            and key.partition == partition
            and split_slot(key.candidate)[0] == cand
        }

    def production(self, route: str, partition: int) -> ProductionState | None:
        """Production's monitoring state of a route on a partition, if it has one."""
        state = self.states.get(StateKey.prod(route, partition))
        return state if isinstance(state, ProductionState) else None

    def counters(self, partition: int) -> PartitionCounters:
        """The partition's counters (empty when it has none yet)."""
        state = self.states.get(StateKey.part(partition))
        return state if isinstance(state, PartitionCounters) else PartitionCounters()

    def _cand(self, route: Route, cand: str, partition: int) -> CandidateState:
        """The state of a candidate slot (``name@revision id``)."""
        key = StateKey.cand(route.name, cand, partition)
        got = self.states.get(key)
        if got is None:
            name, rid = split_slot(cand)
            if self._batch is not None:
                self._batch.new_slots = True
            state = new_candidate_state(route, name, self.windows)
            self.states[key] = state
            state.revision = self._revisions.get((route.name, cand)) or (
                None if rid is None else {"id": rid, "candidate": None, "production": None}
            )
            return state
        assert isinstance(got, CandidateState)
        if got.revision is not None and got.revision.get("candidate") is None:
            # made by a late label (its pairs' identities unknown then): complete it
            got.revision = self._revisions.get((route.name, cand), got.revision)
        return got

    def _slot(self, route: str, cand: str, ident: Identity | None, prod: Identity) -> str:
        """The state slot of a candidate's revision (against production's)."""
        key = (route, cand, ident, prod)
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= _MAX_SLOT_CACHE:
                self._slots.clear()
                self._revisions.clear()
            rid = revision_id(ident, prod)
            slot = self._slots[key] = slot_name(cand, rid)
            self._revisions[(route, slot)] = {
                "id": rid,
                "candidate": describe(ident),
                "production": describe(prod),
            }
        return slot

    def _prod(self, route: Route, partition: int) -> ProductionState:
        key = StateKey.prod(route.name, partition)
        state = self.states.get(key)
        if state is None:
            bins, hists = self._refs[route.name]
            state = self.states[key] = new_production_state(
                route.name,
                scoring.MONITOR_METRIC[route.task],
                self.windows[0],
                route.drift.fields,
                route.drift.categorical,
                bins,
                hists,
                self.joiner.embedding.get(route.name),
            )
        assert isinstance(state, ProductionState)
        state.auto_max = self._auto[route.name][0]
        return state

    def _part(self, partition: int) -> PartitionCounters:
        key = StateKey.part(partition)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = PartitionCounters()
        assert isinstance(state, PartitionCounters)
        return state

    def _count(self, partition: int, name: str, n: int = 1) -> None:
        self._part(partition).add(name, n)

    # --- one batch --------------------------------------------------------------------------

    def process(
        self,
        partition: int,
        pairs: Sequence[tuple[bytes, bytes]],
        labels: Sequence[LabelInput],
        next_pairs: int | None = None,
        next_labels: int | None = None,
        assessments: Sequence[bytes] = (),
        next_assessments: int | None = None,
    ) -> list[DeadLetter]:
        """Process one batch of a partition and commit it with the new positions (default:
        advanced by the number of records). Returns the dead letters (also given to the
        sink). ``assessments``: assessment records (``core.assessments``), added to their
        pair's candidate evidence whether its pair came before or not."""
        with gc_paused():
            dead = self._process(
                partition, pairs, labels, next_pairs, next_labels, assessments, next_assessments
            )
        if dead and self.dead_letters is not None:
            self.dead_letters(dead)
        return dead

    def _process(
        self,
        partition: int,
        pairs: Sequence[tuple[bytes, bytes]],
        labels: Sequence[LabelInput],
        next_pairs: int | None,
        next_labels: int | None,
        assessments: Sequence[bytes] = (),
        next_assessments: int | None = None,
    ) -> list[DeadLetter]:
        pos = self.position(partition)
        dead: list[DeadLetter] = []
        self.label_outcomes = ["accepted"] * len(labels)
        self.labels_kept_waiting = []
        good_labels = self._decode_labels(partition, labels, dead)
        records = self._decode_pairs(partition, pairs, dead)
        if good_labels:
            pos.labels_wm = max(pos.labels_wm, max(lab.ts for lab in good_labels))
        if records:
            pos.pairs_wm = max(pos.pairs_wm, max(rec.ts for rec in records))

        def step(batch: Batch) -> list[StateKey]:
            self._join_labels(partition, good_labels, batch)
            self._join_pairs(partition, records, batch)
            self._write(partition, batch, dead)
            self._apply(partition, batch)
            self._expire(partition, pos, batch)
            if assessments:
                self._assess(partition, assessments, batch, dead)
            gone = self._evict(partition, batch) if batch.new_slots else []
            pos.pairs = next_pairs if next_pairs is not None else pos.pairs + len(pairs)
            pos.labels = next_labels if next_labels is not None else pos.labels + len(labels)
            if next_assessments is not None:
                pos.assessments = next_assessments
            else:
                pos.assessments += len(assessments)
            self._count(partition, "pairs_read", len(pairs))
            self._count(partition, "labels_read", len(labels))
            if assessments:
                self._count(partition, "assessments_read", len(assessments))
            for _, _, reason in dead:
                self._count(partition, f"deadletter:{reason}")
            self.store.put_positions(partition, pos)
            return gone

        self._transaction(partition, step)
        return dead

    def _transaction(self, partition: int, step: Callable[[Batch], list[StateKey]]) -> None:
        """Run ``step`` on a new batch of a partition in one store transaction, write the
        states it touched and commit, then show them to readers. ``step`` returns the state
        keys it dropped. On any error the transaction is rolled back and the partition's
        state read again from the store."""
        batch = self._batch = Batch()
        batch.touched.add(StateKey.part(partition))
        self.store.begin()
        try:
            gone = step(batch)
            serialised = self._put_states(batch.touched)
            self.store.commit()
        except BaseException:
            self.store.rollback()
            self._reload_partition(partition)
            raise
        finally:
            self._batch = None
        if batch.embed_jobs:
            with self._lock:
                self._embed_jobs.extend(batch.embed_jobs)
        self._publish(serialised, gone)

    def _put_states(self, touched: set[StateKey]) -> dict[StateKey, dict[str, Any]]:
        """Write the touched states to the store (in the open transaction); returns them
        serialised, for the snapshot once committed."""
        serialised = {key: self.states[key].to_dict() for key in touched}
        self.store.put_states([(*key, orjson.dumps(d)) for key, d in serialised.items()])
        return serialised

    def _publish(
        self, serialised: dict[StateKey, dict[str, Any]], gone: Sequence[StateKey] = ()
    ) -> None:
        """Show committed states (and the evicted ones gone) to readers of the snapshot."""
        with self._lock:
            self._snapshot.update(serialised)
            for key in gone:
                self._snapshot.pop(key, None)
            self.evicted.extend(gone)
            self.version += 1

    def expire(self, partition: int, now_ms: int | None = None) -> bool:
        """Expire, by the clock (or at ``now_ms``), the pending sides of a partition whose TTL
        ended, with no record to process: what keeps orphans counted when a stream goes quiet.
        Commits the states it changed; the positions stay. False (nothing done) without a
        clock or a time, or when nothing is due."""
        if now_ms is not None:
            now = now_ms
        elif self.clock is not None:
            now = self.clock()
        else:
            return False
        pos = self.position(partition)
        if not self.store.any_expired(partition, max(pos.labels_wm, now), max(pos.pairs_wm, now)):
            return False

        def step(batch: Batch) -> list[StateKey]:
            self._expire(partition, pos, batch, now)
            return []

        with gc_paused():
            self._transaction(partition, step)
        return True

    def take_embed_jobs(self) -> list[EmbedJob]:
        """The texts that committed batches selected for embedding drift's endpoints, once
        each (for the assessor; a rolled-back batch selects none)."""
        with self._lock:
            out, self._embed_jobs = self._embed_jobs, []
        return out

    def take_evicted(self) -> list[StateKey]:
        """The state keys dropped since the last call (for views of the snapshot)."""
        with self._lock:
            out, self.evicted = self.evicted, []
        return out

    def _evict(self, partition: int, b: Batch) -> list[StateKey]:
        """Keep at most ``MAX_REVISIONS`` revisions per candidate on the partition."""
        groups: dict[tuple[str, str], list[tuple[int, str, StateKey]]] = defaultdict(list)
        for key, state in self.states.items():
            if isinstance(state, CandidateState) and key.partition == partition:
                groups[(key.route, split_slot(key.candidate)[0])].append(
                    (state.last_ts, key.candidate, key)
                )
        gone: list[StateKey] = []
        for revisions in groups.values():
            if len(revisions) <= MAX_REVISIONS:
                continue
            revisions.sort()
            keys = [key for _, _, key in revisions]
            for key in keys[: len(keys) - MAX_REVISIONS]:
                del self.states[key]
                b.touched.discard(key)
                gone.append(key)
        if gone:
            self.store.delete_states(gone)
            self._count(partition, "revisions_evicted", len(gone))
        return gone

    def _assess(
        self, partition: int, values: Sequence[bytes], b: Batch, dead: list[DeadLetter]
    ) -> None:
        """Add assessment records to their candidates' evidence (by route, candidate and
        revision id: the state slot of the pair they assess). Sums, so the order of pairs,
        labels and assessments never changes the result. An assessment of a pair already
        counted (same id, time and slot, within the route's label TTL: a pair record judged
        again) is counted as ``duplicate_assessments`` and kept out."""
        by_slot: dict[tuple[str, str], list[AssessmentRecord]] = defaultdict(list)
        decoded: list[tuple[bytes, AssessmentRecord | EmbeddingRecord, str]] = []
        for value in values:
            try:
                rec = decode_any(value)
            except RecordError as exc:
                dead.append((b"", value, f"assessment:{exc.reason}"))
                continue
            if isinstance(rec, EmbeddingRecord):
                if self.joiner.embedding.get(rec.route) is None:
                    dead.append((rec.id.encode(), value, "assessment:unknown_route"))
                else:
                    decoded.append((value, rec, EMBEDDING_SLOT))
                continue
            names = self._cands.get(rec.route)
            if names is None or rec.candidate not in names:
                reason = "unknown_route" if names is None else "unknown_candidate"
                dead.append((rec.id.encode(), value, f"assessment:{reason}"))
                continue
            decoded.append((value, rec, slot_name(rec.candidate, rec.revision)))
        if not decoded:
            return
        seen = self.store.assessed(sorted({f"{r.id}/{r.ts}" for _, r, _ in decoded}))
        fresh: list[tuple[str, str, int, int]] = []
        duplicates = 0
        newest = 0
        embedded: list[EmbeddingRecord] = []
        for _, rec, slot in decoded:
            key = f"{rec.id}/{rec.ts}"
            if (key, slot) in seen:
                duplicates += 1
                continue
            seen.add((key, slot))
            fresh.append((key, slot, partition, rec.ts + self._ttl_ms[rec.route]))
            newest = max(newest, rec.ts)
            if isinstance(rec, EmbeddingRecord):
                embedded.append(rec)
            else:
                by_slot[(rec.route, slot)].append(rec)
        if duplicates:
            self._count(partition, "duplicate_assessments", duplicates)
        self.store.add_assessed(fresh)
        # remembered for the route's label TTL past the newest pair or assessment seen
        self.store.expire_assessed(partition, max(self.position(partition).pairs_wm, newest))
        for (name, slot), rows in by_slot.items():
            route = self.routes[name]
            state = self._cand(route, slot, partition)
            if state.judge is None and route.judge is not None:
                # evidence from before the route had a judge
                alpha = metric_alpha(route.policy, route.task).get("judge", route.policy.alpha)
                state.judge = PairedMetric(spec=metric_spec("judge"), alpha=alpha)
            state.add_assessments(rows)
            b.touched.add(StateKey.cand(name, slot, partition))
        for emb in embedded:
            self._embedded(partition, emb, b)

    def _embedded(self, partition: int, rec: EmbeddingRecord, b: Batch) -> None:
        """An endpoint's vectors, added to production's state of their request's partition
        at the window of the request's time."""
        route = self.routes[rec.route]
        plan = self.joiner.embedding[rec.route]
        prod = self._prod(route, partition)
        unknown = add_endpoint_vectors(prod, plan, rec)
        if unknown:
            self._count(partition, "embedding_unknown_fields", len(unknown))
        b.touched.add(StateKey.prod(rec.route, partition))

    def _reload_partition(self, partition: int) -> None:
        for key in [k for k in self.states if k.partition == partition]:
            del self.states[key]
        self.positions.pop(partition, None)
        self.load([partition])

    def _decode_labels(
        self, partition: int, labels: Sequence[LabelInput], dead: list[DeadLetter]
    ) -> list[Label]:
        out: list[Label] = []
        idx = self._label_idx = []
        outcomes = self.label_outcomes
        routes = self.routes
        # Labels from the future are refused where the engine has a clock (embedded): one
        # would move the labels watermark and expire every pending pair at once.
        horizon = self.clock() + self.rules.max_future_ms if self.clock is not None else None
        for i, item in enumerate(labels):
            if isinstance(item, LabelRecord):
                lab = Label.of(item)
            else:
                try:
                    lab = read_label(item)
                except RecordError as exc:
                    dead.append((b"", item, f"label:{exc.reason}"))
                    outcomes[i] = f"refused:{exc.reason}"
                    continue
            reason = None
            if lab.route is not None and lab.route not in routes:
                reason = "unknown_route"
            elif horizon is not None and lab.ts > horizon:
                reason = "ts_in_future"
            if reason is not None:
                value = item if isinstance(item, bytes) else _label_bytes(item)
                dead.append((lab.id.encode(), value, f"label:{reason}"))
                outcomes[i] = f"refused:{reason}"
                continue
            out.append(lab)
            idx.append(i)
        return out

    def _decode_pairs(
        self, partition: int, pairs: Sequence[tuple[bytes, bytes]], dead: list[DeadLetter]
    ) -> list[Pair]:
        out: list[Pair] = []
        cands = self._cands
        # Consecutive records nearly always name the same route, candidate and revisions:
        # the slot of the last one is reused without a lookup (equal values, same slot).
        last: Pair | None = None
        last_cand = last_slot = ""
        for key, value in pairs:
            try:
                rec = read_pair(value)
            except RecordError as exc:
                dead.append((key, value, exc.reason))
                continue
            names = cands.get(rec.route)
            if names is None:
                dead.append((key, value, "unknown_route"))
                continue
            cand = rec.candidate
            if cand is not None:
                if cand not in names:
                    dead.append((key, value, "unknown_candidate"))
                    continue
                if last is None or not (cand == last_cand and _same_revisions(rec, last)):
                    last, last_cand = rec, cand
                    last_slot = self._slot(rec.route, cand, rec.cand_ident, rec.prod_ident)
                rec.candidate = last_slot
            out.append(rec)
        return out

    def _join_labels(self, partition: int, labels: list[Label], b: Batch) -> None:
        """Read what a batch's labels may join (labels stored under their ids, entries
        pending under the others) and join them (``Joiner.labels``)."""
        if not labels:
            return
        joiner = self.joiner
        later = joiner.first_labels(labels, b)
        fresh = b.fresh
        stored = self.store.labels_for(list(fresh))
        rows = self.store.pending_for(
            [k for k in fresh if k not in stored] if stored else list(fresh)
        )
        joiner.labels(partition, later, stored, rows, self.label_outcomes, self._label_idx, b)

    def _join_pairs(self, partition: int, records: list[Pair], b: Batch) -> None:
        """Read what a batch's pair instances may join (labels and pending entries under
        the keys without a label in the batch) and join them (``Joiner.pairs``)."""
        if not records:
            return
        joiner = self.joiner
        wanted, repeats = joiner.pair_keys(records, b.fresh)
        stored = self.store.labels_for(wanted) if wanted else {}
        in_store = self.store.pending_kinds(wanted) if wanted else {}
        joiner.pairs(partition, records, repeats, stored, in_store, self._pending_at, b)

    def _pending_at(self, key: str, slot: str, ts: int) -> bool:
        """Whether the entry pending for (key, candidate slot) has this timestamp (asked only
        for a key already pending for the slot: rare)."""
        return self.store.pending_ts([(key, slot)]).get((key, slot)) == ts

    def _store_labels(self, partition: int, b: Batch, dead: list[DeadLetter]) -> None:
        fresh = b.fresh
        if not fresh:
            return
        # Labels that joined nothing wait for their pair, at most ``max_waiting`` per route;
        # beyond it a new one is refused (``backlog_full``), so labels for ids that never
        # existed cannot fill the disk.
        part = self._part(partition)
        for key in sorted(fresh):
            lab = fresh[key]
            if lab.joined:
                continue
            counter = _waiting(lab.route)
            if part.get(counter, 0) >= self.max_waiting:
                del fresh[key]
                at = self._label_idx[b.firsts[key]]
                self.label_outcomes[at] = "refused:backlog_full"
                dead.append((key.encode(), _label_bytes_of(lab), "label:backlog_full"))
            else:
                part[counter] = part.get(counter, 0) + 1
                self.labels_kept_waiting.append(self._label_idx[b.firsts[key]])
        if not fresh:
            return
        ttl_ms, default = self._ttl_ms, self.max_ttl_ms
        self.store.add_labels(
            [
                (
                    lab.id,
                    partition,
                    lab.ts,
                    lab.ts + ttl_ms.get(lab.route, default),  # type: ignore[arg-type]
                    lab.route,
                    _label_json(lab.label),
                    int(lab.joined),
                    int(lab.prod_done),
                    " ".join(lab.slots),
                )
                for lab in map(fresh.__getitem__, sorted(fresh))
            ]
        )

    def _write(self, partition: int, b: Batch, dead: list[DeadLetter]) -> None:
        """Write what the joins decided: new labels, joined and new pending entries, and
        stored labels that joined."""
        self._store_labels(partition, b, dead)
        self._unwait(partition, b.unwaited)
        self.store.drop_pending(b.joined)
        self.store.add_pending(_pending_rows(partition, b.pending))
        self.store.mark_labels([(prod, key) for key, prod in sorted(b.marks.items())])
        self.store.add_label_slots(
            [(" ".join(slots), key) for key, slots in sorted(b.slot_marks.items())]
        )

    def _apply(self, partition: int, b: Batch) -> None:
        """Update the aggregates with the batch (no store access)."""
        if b.counts:
            part = self._part(partition)
            for name, n in b.counts.items():
                part.add(name, n)
        for route, idents in b.prod_revisions.items():
            seen = {
                revision_id(None, ident): (describe(ident), first, last)
                for ident, (first, last) in idents.items()
            }
            if self._prod(self.routes[route], partition).note_revisions(seen):
                b.touched.add(StateKey.prod(route, partition))
        for route, reqs in b.requests.items():
            prod = self._prod(self.routes[route], partition)
            prod.add_requests(reqs)
            drift = b.drift[route]
            drift.apply(prod)
            if drift.jobs:
                b.embed_jobs.extend(drift.jobs)
        for (route, cand), rows in b.rows.items():
            self._cand(self.routes[route], cand, partition).add_pairs(rows)
        for (route, cand), lrows in b.labelled.items():
            r = self.routes[route]
            self._cand(r, cand, partition).add_labelled(lrows, r.classes)
        for route, items in b.prod_labelled.items():
            state = self._prod(self.routes[route], partition)
            state.add_labelled(
                [t for t, _, _ in items], [t for _, t, _ in items], [x for _, _, x in items]
            )

    def _expire(self, partition: int, pos: Positions, b: Batch, at: int | None = None) -> None:
        now = at if at is not None else self.clock() if self.clock is not None else 0
        orphans: dict[tuple[str, str], int] = defaultdict(int)
        for kind, route, cand in self.store.expire_pending(partition, max(pos.labels_wm, now)):
            orphans[(route, kind)] += 1
            if cand is not None:
                orphans[(route, cand)] += 1
        for (route, kind), n in orphans.items():
            r = self.routes.get(route)
            if r is None:
                continue
            if kind == PROD:
                prod = self._prod(r, partition)
                prod.counts["unlabelled_expired"] = prod.counts.get("unlabelled_expired", 0) + n
                b.touched.add(StateKey.prod(route, partition))
            else:
                self._cand(r, kind, partition).add_orphans(n)
                b.touched.add(StateKey.cand(route, kind, partition))
        gone: dict[str, int] = defaultdict(int)
        for joined, label_route in self.store.expire_labels(partition, max(pos.pairs_wm, now)):
            if not joined:
                self._count(partition, "orphan_labels")
                gone[_waiting(label_route)] += 1
        self._unwait(partition, gone)

    def _unwait(self, partition: int, counts: Mapping[str, int]) -> None:
        """Labels that no longer wait for their pair (joined, or expired)."""
        if not counts:
            return
        part = self._part(partition)
        for counter, n in counts.items():
            # Never below 0: labels stored before these counters existed were not counted.
            part[counter] = max(0, part.get(counter, 0) - n)


class Joiner:
    """The joins of one batch, a pure step between reading the store and writing it.

    Given a batch's decoded labels and pair records and what the store holds under their keys
    (read by the engine beforehand), it decides every join, duplicate and new pending entry
    into a ``Batch``; the engine then writes the batch to the store and updates the
    aggregates. It never touches the store (nor the aggregates): its only state is the
    config's."""

    def __init__(self, config: Config, window: str) -> None:
        self.routes: dict[str, Route] = {r.name: r for r in config.routes}
        self.ttl_ms = {r.name: int(r.label_ttl_s * 1000) for r in config.routes}
        self.window_ms = WINDOW_MS[window]
        self._paths = {
            r.name: drift_paths(r.drift.fields, r.drift.categorical) for r in config.routes
        }
        self._fields = {
            r.name: list(dict.fromkeys([*r.drift.fields, *r.drift.categorical]))
            for r in config.routes
        }
        self._depth = {r.name: r.drift.max_depth if r.drift.auto else 0 for r in config.routes}
        self.embedding: dict[str, EmbeddingPlan] = {
            r.name: EmbeddingPlan(r.drift.embedding)
            for r in config.routes
            if r.drift.embedding is not None
        }
        """Embedding drift per route that has it (the engine's states use the same plans)."""

    def first_labels(self, labels: list[Label], b: Batch) -> list[tuple[int, Label]]:
        """The first label of each id in ``b.fresh`` (and its position in ``b.firsts``);
        returns the others, with their positions. The engine then reads the store under the
        ids in ``b.fresh`` for ``labels``."""
        fresh, firsts = b.fresh, b.firsts
        later: list[tuple[int, Label]] = []
        for n, lab in enumerate(labels):
            if lab.id in fresh:
                later.append((n, lab))
            else:
                fresh[lab.id] = lab
                firsts[lab.id] = n
        return later

    def labels(
        self, partition: int, later: list[tuple[int, Label]], stored: Mapping[str, LabelRow],
        rows: Sequence[PendingRow], outcomes: list[str], idx: Sequence[int], b: Batch,
    ) -> None:  # fmt: skip
        """Join a batch's labels (``first_labels``) with the pairs pending for them.
        ``stored``: the labels already stored under their ids; ``rows``: the pending rows
        under the other ids, in (key, kind) order. Leaves in ``b.fresh`` the labels seen for
        the first time (stored after this batch's pairs have joined them) and in
        ``b.prod_pending`` the keys among them that have a pending production entry. A label
        whose key already has one is a duplicate: counted (``outcomes[idx[n]]`` of the
        ``n``-th label), never joined again."""
        fresh, firsts = b.fresh, b.firsts
        values: dict[str, Any] = {}
        for k, row in stored.items():
            values[k] = row.value
            later.append((firsts[k], fresh.pop(k)))
        duplicates = conflicts = 0
        for n, lab in later:
            # The first label for a key stays; a later one joins nothing. An identical one is
            # a re-send, a different one a conflict (docs/comparator.md "Duplicate labels").
            first = values[lab.id] if lab.id in values else fresh[lab.id].label
            if same_label(first, lab.label):
                duplicates += 1
                outcomes[idx[n]] = "duplicate"
            else:
                conflicts += 1
                outcomes[idx[n]] = "conflict"
        counts = b.counts
        if duplicates:
            counts["duplicate_labels"] += duplicates
        if conflicts:
            counts["conflicting_labels"] += conflicts
        prod_pending = b.prod_pending
        existing, joined = b.existing, b.joined
        # Timestamps are whole ms: |Δ| > ttl_s·1000 exactly when |Δ| > int(ttl_s·1000).
        routes, ttl_ms = self.routes, self.ttl_ms
        labelled, prod_labelled, touched = b.labelled, b.prod_labelled, b.touched
        held = b.held
        for key, kind, route_name, data, cand in rows:
            new = fresh[key]
            if kind == PROD:
                prod_pending.add(key)
            route = routes.get(route_name)
            entry: list[Any] | None = None
            if route is not None and (new.route is None or new.route == route_name):
                entry = orjson.loads(data)
                if abs(new.ts - int(entry[0])) > ttl_ms[route_name]:
                    entry = None
            if route is None or entry is None:
                existing.add((key, kind))
                if cand is not None:
                    existing.add((key, cand))
                # not joined: its request still holds the key (a joined one is in the
                # label's slots)
                _hold(held, key, entry_ts(data))
                continue
            ts, p, c = int(entry[0]), entry[1], entry[2]
            self.join_one(route, kind, ts, p, c, new.label, new.ts, b)
            if cand is not None:  # production's entry and the candidate's, in one row
                self.join_one(route, cand, ts, p, c, new.label, new.ts, b)
            row_key = (key, kind)
            joined.append(row_key)
            existing.add(row_key)  # a later pair under this key is a duplicate id
            if cand is not None:
                existing.add((key, cand))
                new.slots.append(f"{cand}/{ts}")
            else:  # production's entry alone: ``/<ts>`` (the request that holds the id)
                new.slots.append(f"{kind}/{ts}")
            new.joined = True
            if kind == PROD:
                new.prod_done = True
        # The states these joins feed (before this batch's pairs add theirs).
        for route_name, cand in labelled:
            touched.add(StateKey.cand(route_name, cand, partition))
        for route_name in prod_labelled:
            touched.add(StateKey.prod(route_name, partition))
        counts["labels"] += len(fresh)

    def join_one(
        self, route: Route, kind: str, ts: int, p: Any, c: Any, label: Any, label_ts: int,
        b: Batch,
    ) -> None:  # fmt: skip
        """Score one (pair entry, label) join: the entry's time and predictions (production's
        and the candidate's; ``c`` unused for production's entry). The caller marks the state
        touched."""
        if kind == PROD:
            if p is None:
                return
            q = scoring.quality(route.task, p, label, route.classes)
            if q:
                b.prod_labelled[route.name].append((ts, label_ts, q[0]))
            else:
                b.counts["invalid_labels"] += 1
            return
        b.labelled[(route.name, kind)].append(LabelledRow(ts, p, c, label))

    def pair_keys(self, records: list[Pair], fresh: Mapping[str, Label]) -> tuple[list[str], bool]:
        """Give each record its label keys; returns the keys to look up in the store (those
        without a label in this batch) and whether a key comes twice in the batch."""
        lookup: dict[str, None] = {}
        batch_keys: set[str] = set()
        n_keys = 0
        for rec in records:
            out = rec.prod_output
            rid = rec.id
            if not out or len(out) == 1:
                rec.keys = [rid]
                batch_keys.add(rid)
                n_keys += 1
                if rid not in fresh:
                    lookup[rid] = None
                continue
            rec.keys = keys = label_keys(rid, len(out))
            batch_keys.update(keys)
            n_keys += len(keys)
            for k in keys:
                if k not in fresh:
                    lookup[k] = None
        # No key twice in the batch (the common case): no record can repeat another of this
        # batch, so the per-(key, candidate) bookkeeping below is skipped.
        return list(lookup), len(batch_keys) != n_keys

    def pairs(
        self, partition: int, records: list[Pair], repeats: bool,
        stored: Mapping[str, LabelRow], in_store: Mapping[tuple[str, str], int],
        pending_at: PendingAt, b: Batch,
    ) -> None:  # fmt: skip
        """Score unlabelled facts; join pair instances (keys from ``pair_keys``) with this
        batch's labels (``b.fresh``) or the stored ones under the keys looked up
        (``stored``), or leave them pending. ``in_store``: the (key, kind) pending in the
        store under those keys, with the time of the request each came from; ``pending_at``
        asks the store about one of them (rare: a pair record that may be a re-delivery).

        An id names one request. A pair instance under a key that another request already
        holds (another time: pending in the store, joined to the key's label, or earlier in
        this batch's time order) is a duplicate request id, whatever its candidate."""
        fresh = b.fresh
        b.existing.update(in_store)
        prod_seen = {k for k, kind in in_store if kind == PROD}
        owners = b.held  # one time a key, but for entries stored before this rule
        for (k, _), t in in_store.items():
            _hold(owners, k, t)
        # A key twice in the batch: the request with the earliest time holds it here (as
        # the row that sorts first is the one kept pending).
        batch_owner: dict[str, int] = {}
        if repeats:
            for rec in records:
                t = rec.ts
                for key in rec.keys:
                    o = batch_owner.get(key)
                    if o is None or t < o:
                        batch_owner[key] = t
        prod_seen |= b.prod_pending
        has_labels = bool(fresh) or bool(stored)
        routes = self.routes
        ttl_ms = self.ttl_ms
        window_ms = self.window_ms
        rows = b.rows
        pending = b.pending
        existing = b.existing
        drifts = b.drift
        requests = b.requests
        prod_revs = b.prod_revisions
        duplicates = 0
        firsts: dict[tuple[str, str], int] = {}
        """(first key, candidate) of this batch's pair records: the time of the first."""
        more: set[tuple[str, str, int]] = set()  # (first key, candidate, time) of the others
        again = 0
        span_of: Pair | None = None  # the last record whose production span was looked up
        span: list[int] = []
        track = repeats or bool(existing)  # (key, candidate) pairs are looked up at all
        for idx, rec in enumerate(records):
            keys = rec.keys
            name = rec.route
            route = routes[name]
            ts = rec.ts
            if span_of is None or not _same_production(rec, span_of):
                span_of = rec
                ident = rec.prod_ident
                got = prod_revs[name].get(ident)
                if got is None:
                    got = prod_revs[name][ident] = [ts, ts]
                span = got
            if ts < span[0]:
                span[0] = ts
            elif ts > span[1]:
                span[1] = ts
            expires = ts + ttl_ms[name]
            first = keys[0]
            # the label under the first key, if any: new in this batch or stored (a key is
            # looked up in the store only when the batch has no label for it)
            new0: Label | None = None
            old0: LabelRow | None = None
            if has_labels:
                new0 = fresh.get(first)
                if new0 is None:
                    old0 = stored.get(first)
            monitored = first in prod_seen or (repeats and batch_owner[first] != ts)
            if not monitored:
                monitored = (new0 is not None and new0.prod_done) or (
                    old0 is not None and old0.prod_done
                )
                if not monitored:
                    # production's own monitoring, once per request (the first record seen)
                    prod_seen.update(keys)
                    drift = drifts.get(name)
                    if drift is None:
                        drift = self._drift(route, partition, b)
                    out = rec.prod_output
                    failed = rec.prod_error is not None and rec.prod_error != "abandoned"
                    requests[name].append((ts, failed, len(keys)))
                    drift.add(ts - ts % window_ms, rec.input, out, rec.id, ts)
                    n = len(out) if out else 0
                    # production's entry joins alone (no candidate entry of this record
                    # follows it, whose slot would carry the request's time): marked ``/ts``
                    alone = (
                        rec.candidate is None
                        or not out
                        or (not rec.cand_output and rec.cand_error == "not_mirrored")
                    )
                    for i, key in enumerate(keys):
                        p = out[i] if i < n else None  # type: ignore[index]
                        if has_labels:
                            if i == 0:
                                new, old = new0, old0
                            else:
                                new = fresh.get(key)
                                old = stored.get(key) if new is None else None
                            if self._join_new(route, PROD, key, ts, p, None, new, old, b, alone):
                                continue
                        if existing and (key, PROD) in existing:
                            continue
                        _pend(pending, key, PROD, PendingEntry(name, expires, ts, p, None, idx))
            cand = rec.candidate
            if cand is None:
                # a production-only record is a request's only one: seen before, it is the
                # same record again
                if monitored:
                    again += 1
                continue
            # The same pair record again (same id, candidate and time: a Kafka re-delivery)
            # — still pending, or joined to its label (the label remembers the entries that
            # joined it), or earlier in this batch — is skipped whole (counts, rates, joins)
            # and counted, so no pair is counted twice within the TTL. Another request under
            # the same id (another time) is not this: see ``duplicate_ids`` below.
            fc = (first, cand) if track else _NO_KEY
            prev = firsts.get(fc) if repeats else None
            if (
                (prev is not None and (prev == ts or (first, cand, ts) in more))
                or (existing and fc in existing and pending_at(first, cand, ts))
                or (new0 is not None and new0.slots and _joined_at(new0.slots, cand, ts))
                or (old0 is not None and old0.slots and _joined_at(old0.slots, cand, ts))
            ):
                again += 1
                continue
            if not repeats:
                pass
            elif prev is None:
                firsts[fc] = ts
            else:
                more.add((first, cand, ts))
            pout, cout = rec.prod_output, rec.cand_output
            rows[(name, cand)].append(rec)
            if not pout or (not cout and rec.cand_error == "not_mirrored"):
                continue
            # An instance the candidate gave no prediction for joins its label too: scored
            # as the candidate's miss (CandidateState.add_labelled).
            nc = len(cout) if cout else 0
            for i, key in enumerate(keys):
                c = cout[i] if i < nc else None  # type: ignore[index]
                # A second request under an id whose (key, candidate) is already pending or
                # joined: counted and kept out of the evidence (docs/comparator.md
                # "Duplicate request ids")...
                kc = fc if i == 0 or not track else (key, cand)
                if existing and kc in existing:
                    duplicates += 1
                    continue
                if has_labels:
                    if i == 0:
                        new, old = new0, old0
                    else:
                        new = fresh.get(key)
                        old = stored.get(key) if new is None else None
                    # ... or whose label an entry of another request joined (another
                    # time: the same record again was skipped above)
                    if (old is not None and old.slots and _other_request(old.slots, ts)) or (
                        new is not None and new.slots and _other_request(new.slots, ts)
                    ):
                        duplicates += 1
                        continue
                held_by = owners.get(key) if owners else None
                if (held_by is not None and ts not in held_by) or (
                    repeats and batch_owner[key] != ts
                ):
                    # ... or that another request holds: pending in the store, or earlier
                    # in this batch's time order (of two in one batch, the earlier stays, as
                    # a replay would keep it)
                    duplicates += 1
                    continue
                if has_labels and self._join_new(route, cand, key, ts, pout[i], c, new, old, b):
                    continue
                _pend(pending, key, cand, PendingEntry(name, expires, ts, pout[i], c, idx))
        if duplicates:
            b.counts["duplicate_ids"] += duplicates
        if again:
            b.counts["duplicate_pairs"] += again
        for route_name, cand in rows:
            b.touched.add(StateKey.cand(route_name, cand, partition))

    def _join_new(
        self, route: Route, kind: str, key: str, ts: int, p: Any, c: Any, new: Label | None,
        old: LabelRow | None, b: Batch, mark: bool = True,
    ) -> bool:  # fmt: skip
        """Join a new pair instance with the label under its key, if there is one it may join
        (``new``: the batch's label for the key, else ``old``: the stored one). The label
        remembers the entry (``<kind>/<ts>``) unless ``mark`` is false (production's entry
        when a candidate entry of the same record follows)."""
        if new is not None:
            if not _joinable(new.route, new.ts, route, ts):
                return False
            self.join_one(route, kind, ts, p, c, new.label, new.ts, b)
            new.joined = True
            if kind == PROD:
                new.prod_done = True
            if mark:
                new.slots.append(f"{kind}/{ts}")
            return True
        if old is None or not _joinable(old.route, old.ts, route, ts):
            return False
        if not old.joined:
            old.joined = True
            b.unwaited[_waiting(old.route)] += 1
        self.join_one(route, kind, ts, p, c, old.value, old.ts, b)
        if kind == PROD:
            b.marks[key] = 1
        else:
            b.marks.setdefault(key, 0)
        if mark:
            b.slot_marks[key].append(f"{kind}/{ts}")
        return True

    def _drift(self, route: Route, partition: int, b: Batch) -> DriftBatch:
        """The batch's drift values of a route (production's state touched: made by
        ``Engine._apply`` if new)."""
        name = route.name
        b.touched.add(StateKey.prod(name, partition))
        fields = self._fields[name]
        depth = self._depth[name]
        embed = self.embedding.get(name)
        drift = b.drift[name] = (
            DriftBatch(self._paths[name], fields, depth, embed)
            if fields
            else DriftBatch(None, (), depth, embed)
        )
        return drift


def _waiting(route: str | None) -> str:
    """The partition counter of labels waiting for their pair on a route (``waiting:`` for
    labels without one)."""
    return "waiting:" + (route or "")


def _label_bytes_of(lab: Label) -> bytes:
    return orjson.dumps(
        {"v": 1, "id": lab.id, "label": lab.label, "ts": lab.ts, "route": lab.route}
    )


def _pend(
    pending: dict[str, dict[str, PendingEntry]], key: str, kind: str, entry: PendingEntry
) -> None:
    """Queue a new pending entry. A second one for a (key, kind) in this batch: the one whose
    row sorts first stays."""
    kinds = pending.get(key)
    if kinds is None:
        pending[key] = {kind: entry}
    elif kind not in kinds or entry.order() < kinds[kind].order():
        kinds[kind] = entry


def _pending_rows(
    partition: int, pending: Mapping[str, dict[str, PendingEntry]]
) -> list[tuple[str, str, int, str, int, str, str | None]]:
    """The rows of new pending entries, by key. Production's entry and a candidate's entry
    from the same record share one row: production's, with ``cand`` set and the candidate's
    entry as its data."""
    rows: list[tuple[str, str, int, str, int, str, str | None]] = []
    for key in sorted(pending):
        kinds = pending[key]
        prod = kinds.get(PROD)
        for kind in sorted(kinds) if len(kinds) > 2 else kinds:
            if kind == PROD:
                continue
            e = kinds[kind]
            data = e.data()
            if prod is not None and prod.index == e.index:
                rows.append((key, PROD, partition, e.route, e.expires, data, kind))
                prod = None
            else:
                rows.append((key, kind, partition, e.route, e.expires, data, None))
        if prod is not None:
            rows.append((key, PROD, partition, prod.route, prod.expires, prod.data(), None))
    return rows


def _dumps(obj: Any) -> str:
    """JSON text of exactly its size, for a row of the store.

    Text, not bytes: Python's ``sqlite3`` binds a ``str`` directly but looks a ``bytes``
    value up in its adapter registry first (about 0.2 µs per value). SQLite stores the same
    UTF-8 bytes either way. (Nor does a copy of ``orjson.dumps``'s result keep the 4 KiB
    buffer behind it, which batches of pending entries would hold until the commit.)"""
    return orjson.dumps(obj).decode()


def _label_json(label: Any) -> str:
    """``_dumps(label)``; an int in orjson's range directly (the same text)."""
    if type(label) is int and -(1 << 63) <= label < 1 << 64:
        return str(label)
    return _dumps(label)


def _same_production(a: Pair, b: Pair) -> bool:
    """Same route and production revision identity."""
    return (
        a.route == b.route
        and same_text(a.prod_version, b.prod_version)
        and same_text(a.prod_url, b.prod_url)
        and same_text(a.prod_revision, b.prod_revision)
    )


def _same_revisions(a: Pair, b: Pair) -> bool:
    """Same route and revision identities of both sides (candidates compared by the caller)."""
    return (
        _same_production(a, b)
        and same_text(a.cand_version, b.cand_version)
        and same_text(a.cand_url, b.cand_url)
        and same_text(a.cand_revision, b.cand_revision)
    )


def _joined_at(slots: Collection[str], cand: str, ts: int) -> bool:
    """Whether ``slots`` (a label's ``<candidate slot>/<ts>`` joins) holds this entry."""
    return f"{cand}/{ts}" in slots


def _hold(held: dict[str, set[int]], key: str, ts: int) -> None:
    """Note that the request at ``ts`` holds ``key``."""
    times = held.get(key)
    if times is None:
        held[key] = {ts}
    else:
        times.add(ts)


def _other_request(slots: Collection[str], ts: int) -> bool:
    """Whether the entries that joined a label (``slots``: ``<slot>/<ts>``, production's as
    ``/<ts>``) came from a request at another time than ``ts``."""
    at = f"/{ts}"
    return not any(s.endswith(at) for s in slots)


def _joinable(label_route: str | None, label_ts: int, route: Route, pair_ts: int) -> bool:
    if label_route is not None and label_route != route.name:
        return False
    return abs(label_ts - pair_ts) <= route.label_ttl_s * 1000


def _label_bytes(lab: LabelRecord) -> bytes:
    return orjson.dumps(
        {"v": 1, "id": lab.id, "label": lab.label, "ts": lab.ts, "route": lab.route}
    )
