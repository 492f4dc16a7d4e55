"""Data-plane counters kept as plain numbers on the hot path.

Incrementing a Prometheus client metric takes a lock per call; the data plane instead bumps
integers and bucket arrays here, and the control plane turns them into Prometheus families at
scrape time (``shadowroute.api.metrics``). Snapshots are plain dicts, so worker processes can
ship them to the supervisor and they add up.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Upstream latency buckets in seconds (Prometheus histogram ``le`` bounds).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

MIRROR_OUTCOMES = (
    "sent",
    "ok",
    "sampled_out",
    "dropped_full",
    "timeout",
    "error",
    "circuit_open",
    "too_large",
    "method_skipped",
    "disabled",
    "early_answer",
)


UPSTREAM_EVENTS = (
    "resent",  # a request sent again after a reused connection closed before any answer byte
    "not_resent",  # the same close, the request not sent again (it may have been acted on)
    "idle_expired",  # an idle connection past its idle limit, closed instead of reused
    "idle_closed_by_server",  # an idle pooled connection the server closed
    "connection_close",  # the server said it closes (Connection: close, HTTP/1.0)
    "keep_alive_max",  # the server said it takes no more requests (Keep-Alive: max=0)
)


LIMITS = (
    "head_timeout",  # a client's request head did not arrive in time: 408
    "max_connections",  # a client connection over the per-process cap: 503
    "upstream_backpressure",  # a client paused while production's write buffer was full
    "response_too_large",  # production's answer not copied for the record
    "candidate_too_large",  # a candidate's answer cut at records.max_response_bytes
    "extract_too_large",  # an answer too large (bytes or JSON values) to parse for its prediction
    "predictions_too_large",  # an answer with more predictions than a record may carry
    "instances_too_large",  # a captured request with more instances than a record may carry
    "input_too_large",  # a captured request with more JSON values than is parsed on the loop
    "input_unencodable",  # a captured request kept out of its record (nested too deep)
)


@dataclass(slots=True)
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def add(self, counts: list[int], total: float) -> None:
        for i, c in enumerate(counts):
            self.counts[i] += c
        self.total += total


@dataclass(slots=True)
class DataPlaneStats:
    # (route, status class "2xx".."5xx" or "502_proxy"/"504_proxy") -> count
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (route, model, role) -> histogram
    latency: dict[tuple[str, str, str], LatencyHistogram] = field(default_factory=dict)
    # (route, candidate, outcome) -> count
    mirrors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # (route, candidate, reason) -> mirrors that ended without a prediction, by the record's
    # error reason (``http_4xx``, ``connect``, ...): the ``error`` outcome above, and
    # ``timeout`` / ``too_large``, by what went wrong
    mirror_errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # (route, candidate) -> in flight now (gauge)
    mirrors_in_flight: dict[tuple[str, str], int] = field(default_factory=dict)
    # reason -> count of malformed / refused client requests
    rejected: Counter[str] = field(default_factory=Counter)
    # reason -> upstream connections closed instead of reused because a direction did not end
    # on its framing (``early_answer``, ``extra_bytes``, ``client_aborted``)
    framing: Counter[str] = field(default_factory=Counter)
    # (route, model, role, event) -> what pooled upstream connections did (``UPSTREAM_EVENTS``)
    upstream: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    # bound -> times a bound on outsider-controlled input or work was hit (``LIMITS``)
    limits: Counter[str] = field(default_factory=Counter)
    records_built: int = 0
    extract_failed: int = 0
    open_connections: int = 0
    control_ignored: int = 0
    """Mirror control headers ignored: neither from ``mirror.control_from`` nor with the token."""

    def latency_of(self, route: str, model: str, role: str) -> LatencyHistogram:
        key = (route, model, role)
        h = self.latency.get(key)
        if h is None:
            h = self.latency[key] = LatencyHistogram()
        return h

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "latency": [[*k, list(h.counts), h.total] for k, h in self.latency.items()],
            "mirrors": [[*k, v] for k, v in self.mirrors.items()],
            "mirrors_in_flight": [[*k, v] for k, v in self.mirrors_in_flight.items()],
            "mirror_errors": [[*k, v] for k, v in self.mirror_errors.items()],
            "rejected": [[k, v] for k, v in self.rejected.items()],
            "framing": [[k, v] for k, v in self.framing.items()],
            "upstream": [[*k, v] for k, v in self.upstream.items()],
            "limits": [[k, v] for k, v in self.limits.items()],
            "records_built": self.records_built,
            "extract_failed": self.extract_failed,
            "open_connections": self.open_connections,
            "control_ignored": self.control_ignored,
        }

    def add_snapshot(self, snap: dict[str, Any]) -> None:
        for route, cls, v in snap["requests"]:
            self.requests[(route, cls)] += v
        for route, model, role, counts, total in snap["latency"]:
            self.latency_of(route, model, role).add(counts, total)
        for route, cand, outcome, v in snap["mirrors"]:
            self.mirrors[(route, cand, outcome)] += v
        for route, cand, v in snap["mirrors_in_flight"]:
            key = (route, cand)
            self.mirrors_in_flight[key] = self.mirrors_in_flight.get(key, 0) + v
        for route, cand, reason, v in snap.get("mirror_errors", ()):
            self.mirror_errors[(route, cand, reason)] += v
        for reason, v in snap["rejected"]:
            self.rejected[reason] += v
        for reason, v in snap.get("framing", ()):
            self.framing[reason] += v
        for route, model, role, event, v in snap.get("upstream", ()):
            self.upstream[(route, model, role, event)] += v
        for limit, v in snap.get("limits", ()):
            self.limits[limit] += v
        self.records_built += snap["records_built"]
        self.extract_failed += snap["extract_failed"]
        self.open_connections += snap["open_connections"]
        self.control_ignored += snap.get("control_ignored", 0)
