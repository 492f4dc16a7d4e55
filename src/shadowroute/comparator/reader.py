"""The read side: merged per-partition states, verdicts with their history, JSON for the API.

``StateView`` keeps the latest serialised state of every (kind, route, candidate, partition),
from the local engine (embedded) or from the ``<prefix>.scores`` topic (Kafka mode), and merges
partitions on demand. ``Verdicts`` decides per (route, candidate) and appends each change of
verdict, with its evidence, to the decision history. ``Reader`` answers the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, date, datetime
from typing import Any, Literal, Protocol, cast

import orjson

from shadowroute.comparator import documents as doc
from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.assessor import Assessor
from shadowroute.comparator.production import ProductionState, json_safe
from shadowroute.comparator.state import StateKey, state_from_dict
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config, Price, Route
from shadowroute.core.revision import matches, split_slot
from shadowroute.core.stats.needed import NeededMemo
from shadowroute.core.stats.policy import decide

ops_log = logging.getLogger("shadowroute.ops")
"""The operator's log (``shadowroute.oplog``): one line per verdict change."""

__all__ = ["NotFound", "Reader", "ScoresReader", "StateView", "Verdicts"]


class NotFound(KeyError):
    """An unknown route, candidate or model (the API answers 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class ScoresReader(Protocol):
    """The read side's documents (``comparator.documents``), as the API serves them."""

    def routes(self) -> doc.Routes: ...
    def decision(self, route: str, candidate: str, revision: str | None = None) -> doc.Decision: ...
    def scores(self, route: str, candidate: str) -> doc.Scores: ...
    def history(self, route: str, candidate: str) -> doc.History: ...
    def production(self, route: str) -> doc.Production: ...
    def lineage(self, model: str) -> doc.Lineage: ...
    def overview(self) -> doc.Overview: ...


class StateView:
    """Latest serialised states by key; merged objects cached until their parts change.

    A group is the states of one (kind, route, candidate slot) over partitions. An update
    that brings a new state object for a group (or removes one) drops only that group's merged
    object and stamps its route with the view's version: readers of groups nothing touched
    get the same object back, and ``route_stamp`` tells ``Verdicts`` that a route's evidence
    did not move."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[StateKey, dict[str, Any]] = {}
        self._version = 0
        self._cache: dict[tuple[str, str, str], Any] = {}
        self._route_stamps: dict[str, int] = {}

    def update(self, states: Mapping[StateKey, dict[str, Any]], replace: bool = False) -> None:
        with self._lock:
            self._version += 1
            if replace:
                changed = set(self._states) | set(states)
                self._states = dict(states)
            else:
                changed = {k for k, d in states.items() if self._states.get(k) is not d}
                self._states.update(states)
            self._stamp(changed)

    def remove(self, keys: list[StateKey]) -> None:
        with self._lock:
            self._version += 1
            for k in keys:
                self._states.pop(k, None)
            self._stamp(keys)

    def _stamp(self, keys: Collection[StateKey]) -> None:
        """Drop the merged objects of the groups of ``keys`` and stamp their routes with the
        current version (under the lock)."""
        for k in keys:
            self._cache.pop((k[0], k[1], k[2]), None)
            self._route_stamps[k[1]] = self._version

    def route_stamp(self, route: str) -> int:
        """The view's version when a state of ``route`` last changed (0: never)."""
        with self._lock:
            return self._route_stamps.get(route, 0)

    def _merged(self, kind: str, route: str, cand: str) -> Any:
        key = (kind, route, cand)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            stamp = self._route_stamps.get(route, 0)
            parts = [(k[3], d) for k, d in self._states.items() if k[:3] == key]
        merged: Any = None
        for _, d in sorted(parts, key=lambda x: x[0]):
            obj = state_from_dict(kind, d)
            merged = obj if merged is None else merged.merge(obj)
        with self._lock:
            if self._route_stamps.get(route, 0) == stamp:  # not changed while merging
                self._cache[key] = merged
        return merged

    def candidate(self, route: str, cand: str) -> CandidateState | None:
        """The candidate's current evidence: of the revision with the newest pair."""
        best: CandidateState | None = None
        for state in self.candidate_revisions(route, cand).values():
            if best is None or state.last_ts > best.last_ts:
                best = state
        return best

    def candidate_revisions(self, route: str, cand: str) -> dict[str, CandidateState]:
        """The candidate's evidence per revision slot (``name@id``, or the bare name for
        state written before revisions)."""
        with self._lock:
            slots = sorted(
                {
                    k[2]
                    for k in self._states
                    if k[0] == "cand" and k[1] == route and split_slot(k[2])[0] == cand
                }
            )
        out: dict[str, CandidateState] = {}
        for slot in slots:
            merged = self._merged("cand", route, slot)
            if isinstance(merged, CandidateState):
                out[slot] = merged
        return out

    def production(self, route: str) -> ProductionState | None:
        out = self._merged("prod", route, "")
        return out if isinstance(out, ProductionState) else None

    def partition_counts(self) -> dict[str, int]:
        out = self._merged("part", "", "")
        return dict(out) if isinstance(out, dict) else {}

    def partitions(self) -> list[int]:
        with self._lock:
            return sorted({k[3] for k in self._states})


def _revision_id(decision: Mapping[str, object]) -> str | None:
    rev = decision.get("revision")
    return rev.get("id") if isinstance(rev, dict) else None


def stale_revision(out: doc.Decision, asked: str) -> doc.Decision | None:
    """The decision to give when ``?revision=asked`` does not name the revision the evidence
    is about: hold, saying so (never a verdict on another revision's evidence); None when it
    does."""
    rev = out.get("revision")
    if rev is not None:
        cand = rev.get("candidate")
        url, version, revision = (
            (None, None, None)
            if not cand
            else (cand.get("url"), cand.get("version"), cand.get("revision"))
        )
        if matches(asked, rev.get("id"), (url, version, revision)):
            return None
        about = f"revision {rev.get('id')}"
        if revision is not None:
            about += f" (candidate revision {revision!r})"
        elif version is not None:
            about += f" (candidate version {version!r})"
    elif out.get("pairs"):
        about = "a revision recorded before revisions were tracked"
    else:
        about = "no revision yet (no pairs)"
    reason = (
        f"asked about revision {asked!r}, but the evidence is for {about}: hold until pairs "
        "of that revision arrive"
    )
    return {**out, "verdict": "hold", "reasons": [reason], "asked_revision": asked}


def _candidate_errors(state: CandidateState) -> dict[str, int]:
    """The candidate's error counts by reason (``error:candidate:<reason>`` counters)."""
    head = "error:candidate:"
    return {k[len(head) :]: int(v) for k, v in state.counts.items() if k.startswith(head)}


def _as_of(state: CandidateState | None) -> int | None:
    return state.last_ts if state is not None and state.last_ts else None


Role = Literal["production", "candidate"]
SIGN = (
    "paired differences are candidate minus production, signed so that positive means the "
    "candidate is better (for losses: production loss minus candidate loss)"
)
"""The scores document's ``sign``."""

INTEGRITY_COUNTS = ("duplicate_pairs", "duplicate_ids", "duplicate_labels", "conflicting_labels")
"""Comparator counters shown as a decision's ``integrity``: a pair record for an (id,
candidate) already counted within the TTL, skipped whole (``duplicate_pairs``: a Kafka
re-delivery or a reused id), a second instance under a key still pending (``duplicate_ids``),
an identical label re-sent (``duplicate_labels``), a second label for a key with a different
value (``conflicting_labels``)."""


def verdict_line(change: Mapping[str, object], before: str | None) -> str:
    """One line for a verdict change (a history entry of the comparator's ``Verdicts``)."""
    route, cand, verdict = change.get("route"), change.get("candidate"), change.get("verdict")
    reasons = change.get("reasons")
    reason = reasons[0] if isinstance(reasons, list) and reasons else "no reason given"
    pairs, labelled = change.get("pairs"), change.get("labelled")
    was = f"{before} -> " if before is not None else ""
    if change.get("event") == "revision_change":
        what = "new revision, evidence starts again"
        return f"verdict {route}/{cand}: {was}{verdict} ({what}; {reason})"
    return f"verdict {route}/{cand}: {was}{verdict} ({reason}; {pairs} pairs, {labelled} labelled)"


class Verdicts:
    """The current verdict per (route, candidate); changes go to the history table."""

    def __init__(
        self, config: Config, view: StateView, store: Store, now_ms: Callable[[], int] | None = None
    ) -> None:
        self.config = config
        self.view = view
        self.store = store
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._lock = threading.Lock()
        self._needed = NeededMemo()
        """The ``needed`` estimates of the metrics whose sums did not move since the last
        decision of a candidate whose route did."""
        self._current: dict[tuple[str, str], doc.Decision] = {}
        self._decided: dict[tuple[str, str], tuple[Route, int, doc.Decision]] = {}
        """Per (route, candidate): the route's config and ``StateView.route_stamp`` the
        decision was made on, and the decision before the waiting-labels hint. A candidate
        is decided again only when either changed: refreshing after every batch costs
        nothing for the routes the batch did not reach."""
        self._last: dict[tuple[str, str], tuple[str, str | None, bool]] = {}
        """(verdict, revision id, had pairs) of the newest history entry per (route,
        candidate)."""
        for route, cand, _, verdict, _, _, evidence in store.decisions():
            ev = orjson.loads(evidence)
            self._last[(route, cand)] = (verdict, _revision_id(ev), bool(ev.get("pairs")))

    def refresh(self) -> list[doc.Decision]:
        """Decide every candidate now; returns the history entries appended: a change of
        verdict, or of the revision the evidence is about (``event`` says which)."""
        changes = []
        for route in self.config.routes:
            for cand in route.candidates:
                key = (route.name, cand.name)
                with self._lock:
                    before = self._current.get(key)
                out = self._decide(route, cand.name)
                rid = _revision_id(out)
                last = self._last.get(key)
                if last is not None and last[1] != rid and (last[1] is not None or last[2]):
                    out = {**out, "event": "revision_change"}
                    if before is not None and _revision_id(before) == last[1]:
                        old = before
                        out["previous"] = {
                            "revision": old.get("revision"),
                            "verdict": old.get("verdict"),
                            "pairs": old.get("pairs"),
                            "labelled": old.get("labelled"),
                        }
                    else:
                        out["previous"] = {"revision": {"id": last[1]}, "verdict": last[0]}
                elif last is None or last[0] != out["verdict"]:
                    out = {**out, "event": "verdict"}
                else:  # the same verdict (and the first revision's evidence is no change)
                    self._last[key] = (last[0], rid, last[2] or bool(out.get("pairs")))
                    continue
                self._last[key] = (out["verdict"], rid, bool(out.get("pairs")))
                ops_log.info("%s", verdict_line(out, last[0] if last is not None else None))
                self.store.add_decision(
                    route.name, cand.name, cand.name, out["verdict"], out["as_of"],
                    self.now_ms(), orjson.dumps(out),
                )  # fmt: skip
                changes.append(out)
        return changes

    def _decide(self, route: Route, cand: str) -> doc.Decision:
        key = (route.name, cand)
        stamp = self.view.route_stamp(route.name)  # before reading: a later change decides again
        with self._lock:
            got = self._decided.get(key)
        if got is not None and got[0] is route and got[1] == stamp:
            base = got[2]
        else:
            base = self._decide_on(route, cand)
            with self._lock:
                self._decided[key] = (route, stamp, base)
        out: doc.Decision = {**base, "reasons": self._waiting_hint(route, base["reasons"])}
        with self._lock:
            self._current[key] = out
        return out

    def _decide_on(self, route: Route, cand: str) -> doc.Decision:
        """The decision on the route's evidence as the view has it now (no hint added)."""
        state = self.view.candidate(route.name, cand)
        rev = None if state is None else state.revision
        if state is None:
            decision = decide(route.policy, route.task, {}, None, 0, 0)
            pairs = labelled = 0
        else:
            decision = decide(
                route.policy,
                route.task,
                state.metrics(),
                (state.latency_prod, state.latency_cand),
                state.pairs,
                state.labelled,
                _candidate_errors(state),
                ttft=(state.ttft_prod, state.ttft_cand),
                costs=state.mean_costs(_prices(route, cand)),
                needed=self._needed,
            )
            pairs, labelled = state.pairs, state.labelled
        out: doc.Decision = {
            "route": route.name,
            "candidate": cand,
            "verdict": decision.verdict,
            "reasons": list(decision.reasons),
            # the evidence of core's policy, NaN and infinities as null
            "metrics": cast(dict[str, doc.MetricEvidence], json_safe(decision.metrics)),
            "pairs": pairs,
            "labelled": labelled,
            "as_of": _as_of(state),
            # as the state keeps it (engine: id, candidate and production identities)
            "revision": cast(doc.EvidenceRevision | None, rev),
        }
        if _is_noise(route, cand):
            out["noise"] = True
            out["verdict"] = "hold"
            out["reasons"] = [NOISE_REASON, *_noise_alerts(state), *out["reasons"]]
        elif any(c.noise for c in route.candidates):
            out["noise_floor"] = noise_floor(self.view, route, list(decision.metrics))
        return out

    def _waiting_hint(self, route: Route, reasons: list[str]) -> list[str]:
        """After a shortfall of labelled pairs, the labels that wait for their pair on the
        route (and without one), if any: labels that matched no request seen so far, most
        often sent under ids other than the proxy's request ids."""
        head = f"needs {route.policy.min_labelled} labelled pairs,"
        at = next((i for i, r in enumerate(reasons) if r.startswith(head)), None)
        if at is None:
            return reasons
        counts = self.view.partition_counts()
        waiting = counts.get("waiting:" + route.name, 0) + counts.get("waiting:", 0)
        if waiting <= 0:
            return reasons
        hint = (
            f"{waiting} label(s) wait for their pair: they matched no request seen so far; "
            "label by the x-request-id the proxy returned, not your own row ids"
        )
        return [*reasons[: at + 1], hint, *reasons[at + 1 :]]

    def current(self, route: str, cand: str) -> doc.Decision:
        with self._lock:
            got = self._current.get((route, cand))
        if got is not None:
            return got
        r = self.config.route(route)
        assert r is not None
        return self._decide(r, cand)


class Reader:
    """``ScoresReader`` over a ``StateView``, ``Verdicts`` and the history in a ``Store``.

    The store is read from the calling thread through its own connection."""

    def __init__(self, config: Config, view: StateView, verdicts: Verdicts, history: Store) -> None:
        self.config = config
        self.view = view
        self.verdicts = verdicts
        self._history = history
        self._hlock = threading.Lock()
        self.assessor: Assessor | None = None
        """The judge's and the similarity's calls in this process (set by who runs one):
        their counters go into the scores documents."""

    def _route(self, name: str) -> Route:
        route = self.config.route(name)
        if route is None:
            raise NotFound(f"unknown route {name!r}")
        return route

    def _check(self, route: str, cand: str) -> Route:
        r = self._route(route)
        if all(c.name != cand for c in r.candidates):
            raise NotFound(f"route {route!r} has no candidate {cand!r}")
        return r

    def routes(self) -> doc.Routes:
        return {
            "routes": [
                {
                    "name": r.name,
                    "task": r.task,
                    "production": r.production.name,
                    "candidates": [c.name for c in r.candidates],
                }
                for r in self.config.routes
            ]
        }

    def decision(self, route: str, candidate: str, revision: str | None = None) -> doc.Decision:
        """The current decision; with ``revision``, hold unless the evidence is about it."""
        self._check(route, candidate)
        out: doc.Decision = {
            **self.verdicts.current(route, candidate),
            "integrity": self.integrity(),
        }
        out["labels_waiting"] = self.labels_waiting(route)["waiting"]
        if revision is not None:
            return stale_revision(out, revision) or out
        return out

    def integrity(self) -> doc.Integrity:
        """Counts of evidence the comparator refused to take at face value, over every route
        (``INTEGRITY_COUNTS``; docs/api.md "Evidence integrity")."""
        counts = self.view.partition_counts()
        return {
            "duplicate_pairs": counts.get("duplicate_pairs", 0),
            "duplicate_ids": counts.get("duplicate_ids", 0),
            "duplicate_labels": counts.get("duplicate_labels", 0),
            "conflicting_labels": counts.get("conflicting_labels", 0),
        }

    def labels_waiting(self, route: str) -> doc.LabelsWaiting:
        """Labels kept waiting for their pair: on ``route``, and without a route (they may
        join any route's pair), with the cap per route (``labels.max_waiting_per_route``).
        A label that waits matched no request seen so far."""
        counts = self.view.partition_counts()
        return {
            "waiting": counts.get("waiting:" + route, 0),
            "waiting_without_route": counts.get("waiting:", 0),
            "max_waiting_per_route": self.config.labels.max_waiting_per_route,
        }

    def scores(self, route: str, candidate: str) -> doc.Scores:
        r = self._check(route, candidate)
        state = self.view.candidate(route, candidate)
        name = r.production.name
        if state is None:
            empty: doc.Scores = {
                "route": route,
                "candidate": candidate,
                "task": r.task,
                "production": name,
                "sign": SIGN,
                "pairs": 0,
                "labelled": 0,
            }
            self._add_assessor(empty)
            return empty
        # the same document with NaN and infinities as null
        cleaned = cast(doc.CandidateScores, json_safe(state.scores(_prices(r, candidate))))
        out: doc.Scores = {
            "route": route,
            "candidate": candidate,
            "task": r.task,
            "production": name,
            "sign": SIGN,
            "pairs": cleaned["pairs"],
            "labelled": cleaned["labelled"],
        }
        # every field of CandidateScores is one of Scores (NotRequired there: none before a pair)
        out.update(cast(doc.Scores, cleaned))
        self._add_assessor(out)
        if _is_noise(r, candidate):
            out["noise"] = True
        elif any(c.noise for c in r.candidates):
            out["noise_floor"] = noise_floor(self.view, r, None)
        return out

    def _add_assessor(self, out: doc.Scores) -> None:
        if self.assessor is not None and out["route"] in (stats := self.assessor.stats()):
            out["assessor"] = cast(dict[str, doc.AssessorFigures], stats[out["route"]])

    def history(self, route: str, candidate: str) -> doc.History:
        self._check(route, candidate)
        return {
            "route": route,
            "candidate": candidate,
            "history": self._decisions(route, candidate),
        }

    def _decisions(
        self, route: str | None, cand: str | None, model: str | None = None
    ) -> list[doc.HistoryEntry]:
        with self._hlock:
            rows = self._history.decisions(route, cand, model)
        out = []
        for r, c, _, verdict, as_of, at_ms, evidence in rows:
            ev = orjson.loads(evidence)
            entry: doc.HistoryEntry = {
                "route": r,
                "candidate": c,
                "verdict": verdict,
                "at": at_ms,
                "as_of": as_of,
                "reasons": ev.get("reasons", []),
                "metrics": ev.get("metrics", {}),
                "pairs": ev.get("pairs"),
                "labelled": ev.get("labelled"),
                "event": ev.get("event", "verdict"),
                "revision": ev.get("revision"),
            }
            if "previous" in ev:
                entry["previous"] = ev["previous"]
            out.append(entry)
        return out

    def production(self, route: str) -> doc.Production:
        r = self._route(route)
        state = self.view.production(route)
        model, labels = r.production.name, self.labels_waiting(route)
        if state is None:
            return {
                "route": route,
                "model": model,
                "task": r.task,
                "labels": labels,
                "counts": {},
                "quality": [],
                "drift": {},
            }
        summary = state.summary(
            r.policy.alpha, r.drift.psi_warn, r.drift.psi_alert, r.monitor, r.drift.embedding
        )
        out: doc.Production = {
            "route": route,
            "model": model,
            "task": r.task,
            "labels": labels,
            **summary,
        }
        if r.task == "text":
            out["metric"] = "exact_match"  # (kept as the monitor's accuracy of exact matches)
        return out

    def lineage(self, model: str) -> doc.Lineage:
        for r in self.config.routes:
            for m in (r.production, *r.candidates):
                if m.name != model:
                    continue
                role: Role = "production" if m is r.production else "candidate"
                lin = m.lineage
                declared = None if lin is None else lin.model_dump()
                age = _age_days(lin.trained_through if lin else None, self._today())
                verdicts = self._decisions(r.name, model if role == "candidate" else None, model)
                if role == "production":
                    prod = self.production(r.name)
                    return {
                        "model": model,
                        "route": r.name,
                        "role": role,
                        "version": m.version,
                        "declared": declared,
                        "age_days": age,
                        "live_quality": {
                            "metric": prod.get("metric"),
                            "series": prod.get("quality", []),
                            "degradation": prod.get("degradation"),
                        },
                        "drift": prod.get("drift", {}),
                        "verdicts": verdicts,
                    }
                return {
                    "model": model,
                    "route": r.name,
                    "role": role,
                    "version": m.version,
                    "declared": declared,
                    "age_days": age,
                    "live_quality": self.scores(r.name, model).get("quality", {}),
                    "decision": self.decision(r.name, model),
                    "verdicts": verdicts,
                }
        raise NotFound(f"unknown model {model!r}")

    def _today(self) -> date:
        return datetime.now(UTC).date()

    def overview(self) -> doc.Overview:
        """Everything the metrics collector exports, in one read."""
        cands: list[doc.OverviewCandidate] = []
        for r in self.config.routes:
            for c in r.candidates:
                state = self.view.candidate(r.name, c.name)
                one: doc.OverviewCandidate = {
                    "route": r.name,
                    "candidate": c.name,
                    "decision": self.verdicts.current(r.name, c.name),
                    "orphan_pairs": 0 if state is None else state.count("orphan_pairs"),
                    "classes_untracked": (
                        0
                        if state is None or state.class_counts is None
                        else state.class_counts.untracked
                    ),
                }
                if state is not None and (
                    state.count("llm:n:production") or state.count("llm:n:candidate")
                ):
                    one["llm"] = cast(
                        doc.LlmScores, json_safe(state.llm_scores(_prices(r, c.name)))
                    )
                if state is not None:
                    judge, embedding = state.judge_figures(), state.embedding_figures()
                    if judge is not None:
                        one["judge"] = judge
                    if embedding is not None:
                        one["embedding_similarity"] = embedding
                cands.append(one)
        prods = {r.name: self.production(r.name) for r in self.config.routes}
        return {
            "candidates": cands,
            "production": prods,
            "partition": self.view.partition_counts(),
            "models": self._model_ages(),
        }

    def _model_ages(self) -> list[doc.ModelAge]:
        """(route, model, role, age_days) of every model whose lineage declares
        ``trained_through``: production and candidates alike."""
        today = self._today()
        out: list[doc.ModelAge] = []
        for r in self.config.routes:
            for m in (r.production, *r.candidates):
                age = _age_days(m.lineage.trained_through if m.lineage else None, today)
                if age is not None:
                    role: Role = "production" if m is r.production else "candidate"
                    out.append({"route": r.name, "model": m.name, "role": role, "age_days": age})
        return out


def _prices(route: Route, cand: str) -> tuple[Price | None, Price | None]:
    """Production's and the candidate's token prices (``Model.price``)."""
    model = next((c for c in route.candidates if c.name == cand), None)
    return route.production.price, None if model is None else model.price


NOISE_REASON = (
    "noise candidate: production compared with itself, shown beside every candidate as the "
    "noise floor; never promoted"
)


def _is_noise(route: Route, cand: str) -> bool:
    return any(c.noise and c.name == cand for c in route.candidates)


def _noise_alerts(state: CandidateState | None) -> list[str]:
    """Production disagreeing with itself is worth a look (STATISTICS.md §6, item 4)."""
    if state is None or state.agreement.n == 0:
        return []
    lower, _ = state.agreement.interval()
    if lower <= 0.0:
        return []
    return [
        f"production disagrees with itself on at least {lower:.3%} of instances: "
        "a model that should be deterministic is not (batching, hardware, float jitter)"
    ]


def noise_floor(view: StateView, route: Route, metrics: list[str] | None) -> doc.NoiseFloor | None:
    """The route's noise candidate's figures (the first, when there are several), to read a
    candidate's against: disagreement and the paired differences of ``metrics`` (default:
    every CS-backed metric), each with its interval. ``None`` when the route has none."""
    name = next((c.name for c in route.candidates if c.noise), None)
    if name is None:
        return None
    state = view.candidate(route.name, name)
    out: doc.NoiseFloor = {"candidate": name, "pairs": 0, "disagreement": None, "metrics": {}}
    if state is None:
        return out
    every = state.metrics()
    agreement = state.agreement.summary()["estimate"]
    out["pairs"] = state.pairs
    out["labelled"] = state.labelled
    out["disagreement"] = None if state.agreement.n == 0 else 1.0 - float(agreement or 0.0)
    for m in every if metrics is None else metrics:
        pm = every.get(m)
        if pm is None:
            continue
        s = pm.summary()
        out["metrics"][m] = {
            "estimate": s["estimate"],
            "lower": s["lower"],
            "upper": s["upper"],
            "n": pm.n,
        }
    out["note"] = (
        "production against itself: a candidate's disagreement or paired difference within "
        "these is indistinguishable from production's own noise"
    )
    result: doc.NoiseFloor = json_safe(out)
    return result


def _age_days(trained_through: str | None, today: date) -> float | None:
    if trained_through is None:
        return None
    try:
        d = date.fromisoformat(trained_through[:10])
    except ValueError:
        return None
    return float((today - d).days)
