"""Prometheus families of the registry writer and of the lineage reader, declared once.

The writer's and the reader's families have distinct names, so both collectors can sit in one
process's registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from shadowroute.core.families import Family, describe
from shadowroute.registry.stats import EVENT_OUTCOMES, OUTCOMES, EventStats, RequestStats

__all__ = ["LineageCollector", "RegistryCollector"]

_EVENTS = Family(
    "shadowroute_registry_events",
    "Verdict events taken by the registry writer, by outcome (docs/registry.md).",
    "counter",
    ("outcome",),
)
_ALIAS_MOVES = Family(
    "shadowroute_registry_alias_moves",
    "Aliases pointed at a promoted candidate's version (promote_alias).",
    "counter",
)
_REQUESTS = Family(
    "shadowroute_registry_requests",
    "Calls of the verdict writer to the registry by outcome: ok, refused (4xx), "
    "failed (no usable answer after the retries), oversize (answer over 1 MiB).",
    "counter",
    ("outcome",),
)
_RETRIES = Family(
    "shadowroute_registry_retries",
    "Calls of the verdict writer to the registry tried again (no answer, 429, 5xx).",
    "counter",
)
_LINEAGE_READS = Family(
    "shadowroute_registry_lineage_reads",
    "Reads of a bound model's registry version for lineage, by outcome (ok, failed).",
    "counter",
    ("outcome",),
)


class RegistryCollector(Collector):
    """The verdict writer: events by outcome, aliases moved, calls to the registry by
    outcome and the retries made."""

    FAMILIES = (_EVENTS, _ALIAS_MOVES, _REQUESTS, _RETRIES)

    def __init__(self, events: EventStats, requests: RequestStats) -> None:
        self._events = events
        self._requests = requests

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        ev = _EVENTS.counter()
        for outcome in EVENT_OUTCOMES:
            ev.add_metric([outcome], self._events.events.get(outcome, 0))
        yield ev
        yield _ALIAS_MOVES.counter(self._events.alias_moves)
        req = _REQUESTS.counter()
        for outcome in OUTCOMES:
            req.add_metric([outcome], self._requests.calls.get(outcome, 0))
        yield req
        yield _RETRIES.counter(self._requests.retries)


class LineageCollector(Collector):
    """The lineage reader: reads of a bound model's version by outcome."""

    FAMILIES = (_LINEAGE_READS,)

    def __init__(self, reads: dict[str, int]) -> None:
        self._reads = reads

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        fam = _LINEAGE_READS.counter()
        for outcome in ("ok", "failed"):
            fam.add_metric([outcome], self._reads.get(outcome, 0))
        yield fam
