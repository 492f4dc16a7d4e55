"""Prometheus exposition: data-plane counters turned into metric families at scrape time.

All names carry units (``_seconds``, ``_total``) and labels come from closed sets (route,
model, candidate, role, outcome, class) — never a request id. Each collector declares its
families once (``FAMILIES``, ``shadowroute.core.families.Family``) and returns them from
``describe()``; the Grafana dashboard and alert rules are checked against those declarations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from shadowroute.core.families import Family, describe
from shadowroute.dataplane.stats import LATENCY_BUCKETS, DataPlaneStats, LatencyHistogram
from shadowroute.stream.kafka import KafkaSink

_DP = (
    Family(
        "shadowroute_requests",
        "Client requests by route and response class (502_proxy/504_proxy: the proxy's own).",
        "counter",
        ("route", "class"),
    ),
    Family(
        "shadowroute_upstream_latency_seconds",
        "Upstream response time by route, model and role (production or candidate).",
        "histogram",
        ("route", "model", "role"),
    ),
    Family(
        "shadowroute_mirror_requests",
        "Mirror decisions and outcomes per candidate.",
        "counter",
        ("route", "candidate", "outcome"),
    ),
    Family(
        "shadowroute_mirror_errors",
        "Mirrors that ended without a prediction, by the record's error reason "
        "(http_4xx, http_5xx, connect, timeout, reset, bad_json, extract_failed, ...).",
        "counter",
        ("route", "candidate", "reason"),
    ),
    Family(
        "shadowroute_mirror_in_flight",
        "Mirrors awaiting a response.",
        "gauge",
        ("route", "candidate"),
    ),
    Family(
        "shadowroute_requests_rejected",
        "Client requests refused by the proxy itself, by HTTP status.",
        "counter",
        ("status",),
    ),
    Family(
        "shadowroute_upstream_framing_closed",
        "Upstream connections closed instead of reused because a direction did not end on "
        "its framing (early_answer: answered before the request was written whole; "
        "extra_bytes: bytes after the response; client_aborted: the client's body was "
        "malformed).",
        "counter",
        ("reason",),
    ),
    Family(
        "shadowroute_upstream_keepalive",
        "Pooled upstream connections, by event (resent: a request sent again on a new "
        "connection after a reused one closed before any byte of the answer; not_resent: "
        "the same close, the request not sent again as it may have been acted on; "
        "idle_expired: an idle connection closed at its idle limit instead of reused; "
        "idle_closed_by_server: an idle connection the server closed; connection_close: "
        "the server said it closes (Connection: close, HTTP/1.0 or Keep-Alive max=0); "
        "keep_alive_max: of those, the ones that said Keep-Alive max=0).",
        "counter",
        ("route", "model", "role", "event"),
    ),
    Family(
        "shadowroute_limits_hit",
        "Times a bound on client or upstream input was hit (head_timeout: 408; "
        "max_connections: 503; upstream_backpressure: a client paused while production "
        "read slower; response_too_large, candidate_too_large, extract_too_large, "
        "predictions_too_large, "
        "instances_too_large: an answer or a request too large for its record; "
        "input_unencodable: a captured input nested too deep to encode; stream_pieces: an "
        "openai route's answer with more body pieces than records.max_stream_pieces (the "
        "rest not timed); prompt_too_large: an openai route's prompt too large to count its "
        "tokens; linger_timeout, "
        "linger_bytes: a client still sending after a refusal, cut off).",
        "counter",
        ("limit",),
    ),
    Family("shadowroute_records_built", "Pair records built.", "counter"),
    Family(
        "shadowroute_extract_failed",
        "Responses whose prediction could not be extracted.",
        "counter",
    ),
    Family("shadowroute_client_connections", "Open client connections.", "gauge"),
    Family(
        "shadowroute_mirror_control_ignored",
        "Mirror control headers (force/skip) ignored: the client was neither in "
        "mirror.control_from nor sent the admin token.",
        "counter",
    ),
    Family("shadowroute_record_queue_depth", "Records waiting for the sink.", "gauge"),
    Family(
        "shadowroute_records_dropped",
        "Pair records built and lost, by reason: queue_full (the record queue was full), "
        "sink_failed (a sink write failed), spool_full (the Kafka spool could not keep "
        "them), build_failed (the record could not be built).",
        "counter",
        ("reason",),
    ),
    Family("shadowroute_mirroring_enabled", "1 when mirroring is switched on.", "gauge"),
    Family(
        "shadowroute_circuit_open",
        "1 when a candidate's circuit breaker is open (with workers: in any of them).",
        "gauge",
        ("route", "candidate"),
    ),
)
(
    _REQUESTS,
    _LATENCY,
    _MIRRORS,
    _MIRROR_ERRORS,
    _IN_FLIGHT,
    _REJECTED,
    _FRAMING,
    _KEEPALIVE,
    _LIMITS,
    _BUILT,
    _EXTRACT_FAILED,
    _CONNECTIONS,
    _CONTROL_IGNORED,
    _QUEUE_DEPTH,
    _DROPPED,
    _MIRRORING,
    _CIRCUIT,
) = _DP


DROP_REASONS = ("queue_full", "sink_failed", "spool_full", "build_failed")
"""Why a built pair record was lost (``shadowroute_records_dropped_total{reason}``):
``queue_full`` the record queue was full (or closed at shutdown); ``sink_failed`` a sink's
write raised (a JSON-lines file on a full disk, the channel to the supervisor gone);
``spool_full`` the Kafka sink's spool could not keep it (full, a record over a quarter of its
size, or a write error); ``build_failed`` the record could not be built."""


@dataclass
class RecordFlow:
    """Records waiting for the sink and records lost by reason (``DROP_REASONS``), of one
    process or added up over the workers. Plain data, so a worker can ship it."""

    queue_depth: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def add(self, other: RecordFlow) -> None:
        self.queue_depth += other.queue_depth
        self.dropped.update(other.dropped)

    def to_json(self) -> dict[str, Any]:
        return {"queue_depth": self.queue_depth, "dropped": dict(self.dropped)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RecordFlow:
        return cls(int(doc.get("queue_depth", 0)), Counter(doc.get("dropped", {})))


def max_circuits(
    per_process: Iterable[Iterable[tuple[str, str, bool]]],
) -> list[tuple[str, str, bool]]:
    """Circuit states of several processes as one: open where any process has it open."""
    merged: dict[tuple[str, str], bool] = {}
    for circuits in per_process:
        for route, cand, is_open in circuits:
            merged[(route, cand)] = merged.get((route, cand), False) or bool(is_open)
    return [(route, cand, is_open) for (route, cand), is_open in sorted(merged.items())]


class DataPlaneCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], DataPlaneStats],
        records: Callable[[], RecordFlow],
        mirroring: Callable[[], bool],
        open_circuits: Callable[[], Iterable[tuple[str, str, bool]]],
    ) -> None:
        self._stats = stats
        self._records = records
        self._mirroring = mirroring
        self._circuits = open_circuits

    FAMILIES = _DP

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        req = _REQUESTS.counter()
        for (route, cls), v in sorted(s.requests.items()):
            req.add_metric([route, cls], v)
        yield req

        lat = _LATENCY.histogram()
        for (route, model, role), h in sorted(s.latency.items()):
            lat.add_metric([route, model, role], _buckets(h), h.total)
        yield lat

        mir = _MIRRORS.counter()
        for (route, cand, outcome), v in sorted(s.mirrors.items()):
            mir.add_metric([route, cand, outcome], v)
        yield mir

        errs = _MIRROR_ERRORS.counter()
        for (route, cand, reason), v in sorted(s.mirror_errors.items()):
            errs.add_metric([route, cand, reason], v)
        yield errs

        inflight = _IN_FLIGHT.gauge()
        for (route, cand), v in sorted(s.mirrors_in_flight.items()):
            inflight.add_metric([route, cand], v)
        yield inflight

        rej = _REJECTED.counter()
        for status, v in sorted(s.rejected.items()):
            rej.add_metric([status], v)
        yield rej

        framing = _FRAMING.counter()
        for reason, v in sorted(s.framing.items()):
            framing.add_metric([reason], v)
        yield framing

        keep = _KEEPALIVE.counter()
        for key, v in sorted(s.upstream.items()):
            keep.add_metric(list(key), v)
        yield keep

        limits = _LIMITS.counter()
        for limit, v in sorted(s.limits.items()):
            limits.add_metric([limit], v)
        yield limits

        yield _BUILT.counter(s.records_built)
        yield _EXTRACT_FAILED.counter(s.extract_failed)
        yield _CONNECTIONS.gauge(s.open_connections)
        yield _CONTROL_IGNORED.counter(s.control_ignored)
        flow = self._records()
        yield _QUEUE_DEPTH.gauge(flow.queue_depth)
        dropped = _DROPPED.counter()
        for reason in (*DROP_REASONS, *sorted(set(flow.dropped) - set(DROP_REASONS))):
            dropped.add_metric([reason], flow.dropped.get(reason, 0))
        yield dropped
        yield _MIRRORING.gauge(1 if self._mirroring() else 0)
        circ = _CIRCUIT.gauge()
        for route, cand, is_open in self._circuits():
            circ.add_metric([route, cand], 1 if is_open else 0)
        yield circ


def new_registry() -> CollectorRegistry:
    """A registry of our own (never the global default one)."""
    return CollectorRegistry(auto_describe=True)


_KAFKA = (
    Family(
        "shadowroute_kafka_records_sent", "Records acknowledged by Kafka.", "counter", ("topic",)
    ),
    Family("shadowroute_spool_bytes", "Bytes waiting in the on-disk spool.", "gauge", ("topic",)),
    Family(
        "shadowroute_spool_records",
        "Spool activity: records spooled, drained to Kafka, dropped (spool full).",
        "counter",
        ("topic", "outcome"),
    ),
    Family(
        "shadowroute_kafka_producer_errors",
        "Failed connects, enqueues and deliveries.",
        "counter",
        ("topic",),
    ),
    Family(
        "shadowroute_kafka_connected",
        "1 while records are being accepted (0 from a failed delivery to the next ack).",
        "gauge",
        ("topic",),
    ),
    Family(
        "shadowroute_kafka_delivery_failing_seconds",
        "How long deliveries have been failing (0 while records are accepted).",
        "gauge",
        ("topic",),
    ),
    Family(
        "shadowroute_kafka_producer_replacements",
        "Producers retired after a fatal state (e.g. out-of-order sequence numbers).",
        "counter",
        ("topic",),
    ),
    Family(
        "shadowroute_kafka_send_latency_seconds",
        "Time from write to broker acknowledgement of direct sends.",
        "histogram",
        ("topic",),
    ),
)
_SENT, _SPOOL_BYTES, _SPOOLED, _PRODUCER_ERRORS, _CONNECTED, _FAILING, _REPLACED, _SEND_LAT = _KAFKA


class KafkaSinkCollector(Collector):
    """Counters of the Kafka sinks (one per topic) and their spools."""

    def __init__(self, sinks: Sequence[KafkaSink]) -> None:
        self._sinks = list(sinks)
        self.latency: dict[str, LatencyHistogram] = {s.topic: LatencyHistogram() for s in sinks}

    FAMILIES = _KAFKA

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def hook(self, topic: str) -> Callable[[float], None]:
        return self.latency.setdefault(topic, LatencyHistogram()).observe

    def collect(self) -> Iterator[Metric]:
        sent = _SENT.counter()
        spool_bytes = _SPOOL_BYTES.gauge()
        spooled = _SPOOLED.counter()
        errors = _PRODUCER_ERRORS.counter()
        connected = _CONNECTED.gauge()
        failing = _FAILING.gauge()
        replaced = _REPLACED.counter()
        lat = _SEND_LAT.histogram()
        for s in self._sinks:
            t = s.topic
            sent.add_metric([t], s.records_sent)
            spool_bytes.add_metric([t], s.spool.pending_bytes)
            spooled.add_metric([t, "spooled"], s.records_spooled)
            spooled.add_metric([t, "drained"], s.records_drained)
            spooled.add_metric([t, "dropped"], s.records_dropped)
            errors.add_metric([t], s.producer_errors)
            connected.add_metric([t], 1 if s.connected else 0)
            failing.add_metric([t], s.failing_seconds)
            replaced.add_metric([t], s.producer_replacements)
            h = self.latency.get(t)
            if h is not None:
                lat.add_metric([t], _buckets(h), h.total)
        yield from (sent, spool_bytes, spooled, errors, connected, failing, replaced, lat)


def _buckets(h: LatencyHistogram) -> list[tuple[str, float]]:
    cum = 0
    out: list[tuple[str, float]] = []
    for bound, c in zip((*LATENCY_BUCKETS, float("inf")), h.counts, strict=True):
        cum += c
        out.append(("+Inf" if bound == float("inf") else repr(bound), cum))
    return out
