"""API route and Prometheus metrics of event delivery.

``GET /v1/events/deliveries``: per destination (the Kafka events topic, each webhook) the
events queued, delivered, failed by reason, failed attempts by reason and the last error.
It is a read: with ``admin.read_token`` set it needs that token (the admin guard).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from shadowroute.api.app import json_response
from shadowroute.core.families import Family, describe
from shadowroute.events.bus import EventBus
from shadowroute.events.delivery import FAILURE_REASONS

__all__ = ["EventsCollector", "event_routes"]

_EMITTED = Family(
    "shadowroute_events", "Events emitted, by CloudEvents type.", "counter", ("type",)
)
_DELIVERED = Family(
    "shadowroute_event_deliveries",
    "Events delivered, by destination (kafka or a webhook's name).",
    "counter",
    ("destination",),
)
_FAILED = Family(
    "shadowroute_event_delivery_failures",
    "Events given up for a destination, by reason (queue_full, rejected, "
    "attempts_exhausted, expired, shutdown).",
    "counter",
    ("destination", "reason"),
)
_RETRIES = Family(
    "shadowroute_event_delivery_retries",
    "Failed delivery attempts, by destination and reason (http_5xx, http_429, "
    "http_4xx, http_3xx, timeout, connect, kafka, error).",
    "counter",
    ("destination", "reason"),
)
_DEPTH = Family(
    "shadowroute_event_queue_depth",
    "Events waiting for delivery, by destination.",
    "gauge",
    ("destination",),
)
_SUBSCRIBER_FAILURES = Family(
    "shadowroute_event_subscriber_failures",
    "In-process event subscriber calls that raised or did not finish at shutdown.",
    "counter",
)


def event_routes(bus: EventBus) -> list[web.RouteDef]:
    async def deliveries(request: web.Request) -> web.Response:
        return json_response(bus.deliveries())

    return [web.get("/v1/events/deliveries", deliveries)]


class EventsCollector(Collector):
    """The bus's counters at scrape time."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    FAMILIES = (_EMITTED, _DELIVERED, _FAILED, _RETRIES, _DEPTH, _SUBSCRIBER_FAILURES)

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        emitted = _EMITTED.counter()
        for kind, n in sorted(self.bus.emitted.items()):
            emitted.add_metric([kind], n)
        yield emitted
        delivered = _DELIVERED.counter()
        failed = _FAILED.counter()
        retries = _RETRIES.counter()
        depth = _DEPTH.gauge()
        for w in self.bus.workers:
            s = w.stats
            delivered.add_metric([s.name], s.delivered)
            for reason in FAILURE_REASONS:
                failed.add_metric([s.name, reason], s.failed[reason])
            for reason, n in sorted(s.retries.items()):
                retries.add_metric([s.name, reason], n)
            depth.add_metric([s.name], w.queue.qsize())
        yield delivered
        yield failed
        yield retries
        yield depth
        yield _SUBSCRIBER_FAILURES.counter(self.bus.subscriber_failures)
