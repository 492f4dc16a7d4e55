"""API route and Prometheus metrics of event delivery.

``GET /v1/events/deliveries``: per destination (the Kafka events topic, each webhook) the
events queued, delivered, failed by reason, failed attempts by reason and the last error.
It is a read: with ``admin.read_token`` set it needs that token (the admin guard).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowroute.api.app import json_response
from shadowroute.events.bus import EventBus
from shadowroute.events.delivery import FAILURE_REASONS

__all__ = ["EVENT_METRICS", "EventsCollector", "event_routes"]

EVENT_METRICS = (
    "shadowroute_events_total",
    "shadowroute_event_deliveries_total",
    "shadowroute_event_delivery_failures_total",
    "shadowroute_event_delivery_retries_total",
    "shadowroute_event_queue_depth",
    "shadowroute_event_subscriber_failures_total",
)


def event_routes(bus: EventBus) -> list[web.RouteDef]:
    async def deliveries(request: web.Request) -> web.Response:
        return json_response(bus.deliveries())

    return [web.get("/v1/events/deliveries", deliveries)]


class EventsCollector(Collector):
    """The bus's counters at scrape time."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[Metric]:
        emitted = CounterMetricFamily(
            "shadowroute_events", "Events emitted, by CloudEvents type.", labels=["type"]
        )
        for kind, n in sorted(self.bus.emitted.items()):
            emitted.add_metric([kind], n)
        yield emitted
        delivered = CounterMetricFamily(
            "shadowroute_event_deliveries",
            "Events delivered, by destination (kafka or a webhook's name).",
            labels=["destination"],
        )
        failed = CounterMetricFamily(
            "shadowroute_event_delivery_failures",
            "Events given up for a destination, by reason (queue_full, rejected, "
            "attempts_exhausted, expired, shutdown).",
            labels=["destination", "reason"],
        )
        retries = CounterMetricFamily(
            "shadowroute_event_delivery_retries",
            "Failed delivery attempts, by destination and reason (http_5xx, http_429, "
            "http_4xx, http_3xx, timeout, connect, kafka, error).",
            labels=["destination", "reason"],
        )
        depth = GaugeMetricFamily(
            "shadowroute_event_queue_depth",
            "Events waiting for delivery, by destination.",
            labels=["destination"],
        )
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
        subs = CounterMetricFamily(
            "shadowroute_event_subscriber_failures",
            "In-process event subscriber calls that raised or did not finish at shutdown.",
        )
        subs.add_metric([], self.bus.subscriber_failures)
        yield subs
