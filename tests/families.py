"""The Prometheus families the package declares (each collector's ``FAMILIES``), found through
the collectors themselves: every ``prometheus_client`` collector class defined in shadowroute."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from prometheus_client.registry import Collector

import shadowroute
from shadowroute.core.families import Family


@cache
def collector_classes() -> tuple[type[Collector], ...]:
    for mod in pkgutil.walk_packages(shadowroute.__path__, "shadowroute."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    found: list[type[Collector]] = []
    todo = list(Collector.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("shadowroute."):
            found.append(cls)
    return tuple(sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}"))


def declared_families() -> list[Family]:
    return [f for cls in collector_classes() for f in cls.FAMILIES]  # type: ignore[attr-defined]


def exported_metric_names() -> set[str]:
    """Every name a query can use: ``<counter>_total``, gauges and histograms as declared."""
    return {f.exposed for f in declared_families()}


def assert_collects_declared(collector: Collector) -> None:
    """What ``collect()`` yields is exactly the declared families: same names, types, help, and
    samples labelled with the declared label names."""
    declared = {f.name: f for f in collector.FAMILIES}  # type: ignore[attr-defined]
    seen = []
    for metric in collector.collect():
        f = declared.get(metric.name)
        assert f is not None, f"{metric.name} is collected but not declared"
        assert (metric.type, metric.documentation) == (f.kind, f.help), metric.name
        for sample in metric.samples:
            assert set(sample.labels) - {"le"} == set(f.labels), (metric.name, sample.labels)
        seen.append(metric.name)
    assert sorted(seen) == sorted(declared), "declared but not collected"
