"""Each Prometheus family is declared once, next to its collector (``FAMILIES``), and the
collector's ``describe()`` returns exactly those declarations."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client import generate_latest

from families import assert_collects_declared, collector_classes, declared_families
from shadowroute.api.admin_guard import AdminGuard, GuardCollector
from shadowroute.api.metrics import (
    DataPlaneCollector,
    KafkaSinkCollector,
    RecordFlow,
    new_registry,
)
from shadowroute.core.config import Admin
from shadowroute.core.families import Family
from shadowroute.dataplane.stats import DataPlaneStats


def test_every_collector_declares_and_describes_its_families() -> None:
    classes = collector_classes()
    names = {c.__qualname__ for c in classes}
    assert {
        "DataPlaneCollector",
        "KafkaSinkCollector",
        "ScoresCollector",
        "GuardCollector",
        "ConsumerLagCollector",
    } <= names
    for cls in classes:
        families = cls.FAMILIES  # type: ignore[attr-defined]
        assert families and all(isinstance(f, Family) for f in families), cls
        described = list(cls.__new__(cls).describe())
        assert [(m.name, m.type, m.documentation) for m in described] == [
            (f.name, f.kind, f.help) for f in families
        ], cls
        assert all(not m.samples for m in described)


def test_family_names_are_unique_and_well_formed() -> None:
    families = declared_families()
    dup = [n for n, c in Counter(f.name for f in families).items() if c > 1]
    assert dup == []
    for f in families:
        assert f.name.startswith("shadowroute_") and f.help, f
        assert f.exposed == (f"{f.name}_total" if f.kind == "counter" else f.name)


def test_a_counter_is_declared_without_total() -> None:
    with pytest.raises(ValueError, match="without _total"):
        Family("shadowroute_x_total", "x", "counter")


def test_the_data_plane_and_guard_collect_what_they_declare() -> None:
    stats = DataPlaneStats()
    stats.requests[("r", "2xx")] += 1
    dp = DataPlaneCollector(lambda: stats, RecordFlow, lambda: True, lambda: [("r", "c", True)])
    assert_collects_declared(dp)
    guard = AdminGuard.of(Admin(insecure=True))
    guard.refused["host"] += 1
    guard.labels_refused["bad_record"] += 2
    assert_collects_declared(GuardCollector(guard))
    assert_collects_declared(KafkaSinkCollector([]))


def test_the_registry_learns_the_names_from_describe() -> None:
    """A registry takes the names from ``describe()`` (no collect at registration), so a second
    collector exporting a declared name is refused."""
    calls = []
    stats = DataPlaneStats()

    def stats_fn() -> DataPlaneStats:
        calls.append(1)
        return stats

    registry = new_registry()
    registry.register(DataPlaneCollector(stats_fn, RecordFlow, lambda: True, list))
    assert calls == []
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(DataPlaneCollector(stats_fn, RecordFlow, lambda: True, list))
    assert "shadowroute_requests_total" in generate_latest(registry).decode()
