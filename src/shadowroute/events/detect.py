"""Turns successive read-side snapshots into events, on transitions only (pure: no clock, no
I/O; the caller hands in the times).

A ``Snapshot`` holds what the read side shows at one tick: each candidate's decision
document (``/v1/routes/{route}/candidates/{candidate}/decision``), each route's production
document (``/v1/routes/{route}/production``) and each candidate's circuit breaker. The
``Detector`` remembers the previous state of each condition and returns the events of the
changes:

- a candidate's verdict differs from the last one seen: ``verdict.changed``. The verdicts of
  the first snapshot (and of a candidate seen for the first time) are the baseline: no event,
  so a restart does not repeat every verdict;
- a drift field's PSI state becomes ``major`` (above ``drift.psi_alert``; for an embedding
  drift field, its p-value below ``drift.embedding.alert_alpha``):
  ``drift.exceeded``; back to ``stable`` or ``minor``: ``drift.recovered``;
- production's degradation state becomes ``degraded``: ``production.degraded``; ``ok``
  again: ``production.recovered``;
- no new labelled prediction on a route for ``labels_stale_after_s`` while predictions kept
  coming: ``labels.stale``; the next label: ``labels.resumed``;
- a candidate's circuit breaker opens: ``circuit.opened``; closes: ``circuit.closed``.

Conditions already present in the first snapshot (drift, degradation, an open circuit) are
announced once at start: a consumer that missed them while this process was down hears of
them again (at least once). ``insufficient`` states change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shadowroute.comparator.documents import Decision, Production
from shadowroute.events.cloudevents import (
    CIRCUIT_CLOSED,
    CIRCUIT_OPENED,
    DRIFT_EXCEEDED,
    DRIFT_RECOVERED,
    LABELS_RESUMED,
    LABELS_STALE,
    PRODUCTION_DEGRADED,
    PRODUCTION_RECOVERED,
    VERDICT_CHANGED,
    CloudEvent,
    make_event,
    rfc3339,
)

__all__ = ["Detector", "Snapshot"]

PRODUCTION = "production"
"""The subject's model part for events about a route's production model."""


@dataclass
class Snapshot:
    """What the read side shows at one tick."""

    decisions: dict[tuple[str, str], Decision] = field(default_factory=dict)
    """(route, candidate) -> the decision document."""
    production: dict[str, Production] = field(default_factory=dict)
    """route -> the production document."""
    circuits: dict[tuple[str, str], bool] = field(default_factory=dict)
    """(route, candidate) -> the breaker is open."""
    psi_alert: dict[str, float] = field(default_factory=dict)
    """route -> its ``drift.psi_alert`` in the config of the moment (after a reload, the
    reloaded one's); takes over from the detector's."""


@dataclass
class _Labels:
    labelled: int
    requests: int
    since: float
    """When (monotonic) the labelled count last grew, or it was first seen."""
    since_wall: float
    stale: bool = False


def _revision_id(decision: Mapping[str, Any]) -> str | None:
    rev = decision.get("revision")
    if isinstance(rev, Mapping):
        ident = rev.get("id")
        return str(ident) if ident is not None else None
    return None


def _int(x: Any) -> int:
    return int(x) if isinstance(x, int | float) and not isinstance(x, bool) else 0


class Detector:
    """Successive ``Snapshot``s in, the events of their changes out."""

    def __init__(
        self,
        *,
        instance: str,
        labels_stale_after_s: float | None = 3600.0,
        psi_alert: Mapping[str, float] | None = None,
    ) -> None:
        self.instance = instance
        self.labels_stale_after_s = labels_stale_after_s
        self.psi_alert = dict(psi_alert or {})
        """route -> its ``drift.psi_alert`` (said in the event's data)."""
        self._verdicts: dict[tuple[str, str], str] = {}
        self._drift: dict[tuple[str, str], bool] = {}
        self._degraded: dict[str, bool] = {}
        self._labels: dict[str, _Labels] = {}
        self._circuits: dict[tuple[str, str], bool] = {}

    def observe(self, snap: Snapshot, now: float, wall: float) -> list[CloudEvent]:
        """The events of what changed since the last snapshot. ``now`` is a monotonic clock
        (seconds), ``wall`` the time since the epoch the events carry."""
        out: list[CloudEvent] = []
        self.psi_alert.update(snap.psi_alert)
        out += self._verdict_events(snap, wall)
        for route, doc in sorted(snap.production.items()):
            out += self._drift_events(route, doc, wall)
            out += self._degradation_events(route, doc, wall)
            out += self._label_events(route, doc, now, wall)
        out += self._circuit_events(snap, wall)
        return out

    def _event(
        self, kind: str, route: str, model: str, data: dict[str, Any], wall: float
    ) -> CloudEvent:
        return make_event(
            kind, instance=self.instance, route=route, model=model, data=data, at=wall
        )

    def _verdict_events(self, snap: Snapshot, wall: float) -> list[CloudEvent]:
        out = []
        for (route, cand), doc in sorted(snap.decisions.items()):
            verdict = doc.get("verdict")
            if not isinstance(verdict, str):
                continue
            before = self._verdicts.get((route, cand))
            self._verdicts[(route, cand)] = verdict
            if before is None or before == verdict:
                continue
            data = {
                "route": route,
                "candidate": cand,
                "revision": _revision_id(doc),
                "previous": before,
                "verdict": verdict,
                "decision": doc,
            }
            out.append(self._event(VERDICT_CHANGED, route, cand, data, wall))
        return out

    def _drift_events(self, route: str, doc: Mapping[str, Any], wall: float) -> list[CloudEvent]:
        out: list[CloudEvent] = []
        drift = doc.get("drift")
        if not isinstance(drift, Mapping):
            return out
        for name, summary in sorted(drift.items()):
            if not isinstance(summary, Mapping):
                continue
            state = summary.get("state")
            if state == "major":
                over = True
            elif state in ("stable", "minor"):
                over = False
            else:  # insufficient, collecting_reference: no news
                continue
            key = (route, str(name))
            was = self._drift.get(key, False)
            self._drift[key] = over
            if over == was:
                continue
            data = {
                "route": route,
                "model": doc.get("model"),
                "field": name,
                "state": state,
                "psi": summary.get("psi"),
                "threshold": (
                    summary.get("threshold_major")
                    if summary.get("kind") == "embedding"
                    else self.psi_alert.get(route)
                ),
                "window": summary.get("window"),
                "drift": dict(summary),
            }
            kind = DRIFT_EXCEEDED if over else DRIFT_RECOVERED
            out.append(self._event(kind, route, PRODUCTION, data, wall))
        return out

    def _degradation_events(
        self, route: str, doc: Mapping[str, Any], wall: float
    ) -> list[CloudEvent]:
        deg = doc.get("degradation")
        if not isinstance(deg, Mapping):
            return []
        state = deg.get("state")
        if state not in ("degraded", "ok"):
            return []
        now_degraded = state == "degraded"
        was = self._degraded.get(route, False)
        self._degraded[route] = now_degraded
        if now_degraded == was:
            return []
        data = {
            "route": route,
            "model": doc.get("model"),
            "metric": deg.get("metric", doc.get("metric")),
            "estimate": deg.get("estimate"),
            "lower": deg.get("lower"),
            "upper": deg.get("upper"),
            "margin": deg.get("margin"),
            "degradation": dict(deg),
        }
        kind = PRODUCTION_DEGRADED if now_degraded else PRODUCTION_RECOVERED
        return [self._event(kind, route, PRODUCTION, data, wall)]

    def _label_events(
        self, route: str, doc: Mapping[str, Any], now: float, wall: float
    ) -> list[CloudEvent]:
        after = self.labels_stale_after_s
        if after is None:
            return []
        counts = doc.get("counts")
        counts = counts if isinstance(counts, Mapping) else {}
        labelled, requests = _int(counts.get("labelled")), _int(counts.get("requests"))
        st = self._labels.get(route)
        if st is None:
            self._labels[route] = _Labels(labelled, requests, now, wall)
            return []
        data: dict[str, Any] = {
            "route": route,
            "model": doc.get("model"),
            "stale_after_s": after,
            "labelled": labelled,
            "predictions_since_label": requests - st.requests,
            "no_labels_since": rfc3339(st.since_wall),
            "labels": doc.get("labels"),
        }
        if labelled > st.labelled:
            was_stale = st.stale
            data["seconds_without_labels"] = round(now - st.since, 3)
            self._labels[route] = _Labels(labelled, requests, now, wall)
            if was_stale:
                return [self._event(LABELS_RESUMED, route, PRODUCTION, data, wall)]
            return []
        if st.stale or now - st.since < after or requests <= st.requests:
            return []
        st.stale = True
        data["seconds_without_labels"] = round(now - st.since, 3)
        return [self._event(LABELS_STALE, route, PRODUCTION, data, wall)]

    def _circuit_events(self, snap: Snapshot, wall: float) -> list[CloudEvent]:
        out = []
        for (route, cand), is_open in sorted(snap.circuits.items()):
            was = self._circuits.get((route, cand), False)
            self._circuits[(route, cand)] = is_open
            if is_open == was:
                continue
            kind = CIRCUIT_OPENED if is_open else CIRCUIT_CLOSED
            data = {"route": route, "candidate": cand, "open": is_open}
            out.append(self._event(kind, route, cand, data, wall))
        return out
