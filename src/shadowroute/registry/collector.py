"""Prometheus families of the registry writer and of the lineage reader (``REGISTRY_METRICS``).

The writer's and the reader's families have distinct names, so both collectors can sit in one
process's registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowroute.registry.stats import EVENT_OUTCOMES, OUTCOMES, EventStats, RequestStats

__all__ = ["REGISTRY_METRICS", "LineageCollector", "RegistryCollector"]

REGISTRY_METRICS = (
    "shadowroute_registry_events_total",
    "shadowroute_registry_alias_moves_total",
    "shadowroute_registry_requests_total",
    "shadowroute_registry_retries_total",
    "shadowroute_registry_lineage_reads_total",
)


class RegistryCollector(Collector):
    """The verdict writer: events by outcome, aliases moved, calls to the registry by
    outcome and the retries made."""

    def __init__(self, events: EventStats, requests: RequestStats) -> None:
        self._events = events
        self._requests = requests

    def collect(self) -> Iterator[Metric]:
        ev = CounterMetricFamily(
            "shadowroute_registry_events_total",
            "Verdict events taken by the registry writer, by outcome (docs/registry.md).",
            labels=["outcome"],
        )
        for outcome in EVENT_OUTCOMES:
            ev.add_metric([outcome], self._events.events.get(outcome, 0))
        yield ev
        yield CounterMetricFamily(
            "shadowroute_registry_alias_moves_total",
            "Aliases pointed at a promoted candidate's version (promote_alias).",
            value=self._events.alias_moves,
        )
        req = CounterMetricFamily(
            "shadowroute_registry_requests_total",
            "Calls of the verdict writer to the registry by outcome: ok, refused (4xx), "
            "failed (no usable answer after the retries), oversize (answer over 1 MiB).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            req.add_metric([outcome], self._requests.calls.get(outcome, 0))
        yield req
        yield CounterMetricFamily(
            "shadowroute_registry_retries_total",
            "Calls of the verdict writer to the registry tried again (no answer, 429, 5xx).",
            value=self._requests.retries,
        )


class LineageCollector(Collector):
    """The lineage reader: reads of a bound model's version by outcome."""

    def __init__(self, reads: dict[str, int]) -> None:
        self._reads = reads

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "shadowroute_registry_lineage_reads_total",
            "Reads of a bound model's registry version for lineage, by outcome (ok, failed).",
            labels=["outcome"],
        )
        for outcome in ("ok", "failed"):
            fam.add_metric([outcome], self._reads.get(outcome, 0))
        yield fam
