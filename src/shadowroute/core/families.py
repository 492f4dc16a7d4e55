"""Prometheus metric families declared once: name, help, type and label names.

Each collector keeps a ``FAMILIES`` tuple of ``Family`` next to its ``collect()``, builds its
samples from those declarations (``Family.new``) and returns them from ``describe()``. The
registry learns the names from ``describe()``; the Grafana dashboard, the alert rules and the
docs are checked against the same declarations (``Family.exposed``). Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["Family", "describe"]

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family. ``name`` is without the ``_total`` suffix a counter is exposed
    with (prometheus_client adds it)."""

    name: str
    help: str
    kind: Kind
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "counter" and self.name.endswith("_total"):
            raise ValueError(f"{self.name}: declare a counter without _total")

    @property
    def exposed(self) -> str:
        """The name a query uses: ``<name>_total`` for a counter."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def counter(self, value: float | None = None) -> CounterMetricFamily:
        """An empty counter family (``add_metric`` to it), or one sample ``value`` when the
        family has no labels."""
        assert self.kind == "counter", self.name
        return CounterMetricFamily(self.name, self.help, value=value, labels=self._labels(value))

    def gauge(self, value: float | None = None) -> GaugeMetricFamily:
        assert self.kind == "gauge", self.name
        return GaugeMetricFamily(self.name, self.help, value=value, labels=self._labels(value))

    def histogram(self) -> HistogramMetricFamily:
        assert self.kind == "histogram", self.name
        return HistogramMetricFamily(self.name, self.help, labels=list(self.labels))

    def new(self) -> Metric:
        """An empty family of the declared type (what ``describe()`` returns)."""
        if self.kind == "counter":
            return self.counter()
        if self.kind == "gauge":
            return self.gauge()
        return self.histogram()

    def _labels(self, value: float | None) -> list[str] | None:
        if value is not None:
            assert not self.labels, f"{self.name}: a single value has no labels"
            return None
        return list(self.labels)


def describe(families: Iterable[Family]) -> Iterator[Metric]:
    """``Collector.describe()`` of a collector exporting ``families``."""
    for f in families:
        yield f.new()
