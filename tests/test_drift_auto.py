"""Automatic drift: every scalar input field of the request body, without listing paths, up to
``drift.max_fields`` fields and ``drift.max_depth`` levels; what is beyond is counted and
reported, not tracked. Merges across partitions and survives a restart like the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shadowroute.api.openapi import document
from shadowroute.api.scores import ScoresCollector
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.production import ProductionState
from shadowroute.comparator.reader import Reader, StateView, Verdicts
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config, parse_config
from shadowroute.core.drift_fields import compile_path, flatten_scalars
from shadowroute.core.records import Side, encode_pair
from shadowroute.dataplane.planner import RoutePlan
from test_comparator_gen import T0


def _config(state: Path, drift: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "comparator": {"state_path": str(state), "windows": ["hour"]},
        "routes": [
            {
                "name": "fraud",
                "protocol": "kserve-v1",
                "task": "classification",
                "production": {"name": "fraud-v7", "url": "http://127.0.0.1:9001"},
                "candidates": [{"name": "fraud-v8", "url": "http://127.0.0.1:9002"}],
                "drift": drift,
            }
        ],
    }
    return parse_config(raw, environ={})


def _pair(i: int, body: Any) -> tuple[bytes, bytes]:
    rid = f"r{i}"
    p = Side("fraud-v7", "7", 200, 4.0, [1], None)
    c = Side("fraud-v8", "8", 200, 5.0, [1], None)
    rec = encode_pair(
        request_id=rid, route="fraud", ts_ms=T0 + i, production=p, candidate=c, input=body
    )
    return rid.encode(), rec


def _body(rng: np.random.Generator, shift: float = 0.0) -> dict[str, Any]:
    return {
        "instances": [
            {"amount": float(rng.normal(shift, 1.0)), "country": str(rng.choice(["DE", "FR"]))}
        ],
        "meta": {"client": {"tier": int(rng.integers(0, 3))}, "flag": bool(rng.random() < 0.5)},
        "note": None,
    }


def test_flatten_gives_paths_that_select_the_same_values() -> None:
    doc = {
        "a": 1,
        "odd key": {"x": "y"},
        "it's": [True, False],
        "rows": [{"v": 1.5}, {"v": 2.5, "w": "k"}],
        "deep": {"l1": {"l2": {"l3": {"l4": 7, "l5": [8, 9]}}}},
        "none": None,
    }
    out: dict[str, list[Any]] = {}
    too_deep = flatten_scalars(doc, 4, out)
    assert too_deep == 3  # l4, and the two values of l5: five steps down
    assert out == {
        "$.a": [1],
        "$['odd key'].x": ["y"],
        "$['it\\'s'][*]": [True, False],
        "$.rows[*].v": [1.5, 2.5],
        "$.rows[*].w": ["k"],
    }
    for path, values in out.items():
        assert compile_path(path).values(doc) == values
    assert flatten_scalars(42, 4, {}) == 0  # a bare scalar has no field
    assert flatten_scalars({"a": {"b": 1}}, 1, {}) == 1


def test_every_field_is_watched_up_to_the_cap_and_the_rest_is_counted(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "s.sqlite", {"auto": True, "max_fields": 3})
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    rng = np.random.default_rng(0)
    bodies = [_body(rng) for _ in range(1500)]
    engine.process(0, [_pair(i, b) for i, b in enumerate(bodies)], [])
    prod = engine.production("fraud", 0)
    assert isinstance(prod, ProductionState)
    want = ["$.instances[*].amount", "$.instances[*].country", "$.meta.client.tier"]
    assert prod.auto_fields == want
    assert prod.counts["drift_untracked_values"] == 1500  # $.meta.flag, one per body
    view = StateView()
    view.update(engine.snapshot())
    reader = Reader(cfg, view, Verdicts(cfg, view, engine.store), engine.store)
    out = reader.production("fraud")
    auto = out["drift_auto"]
    assert auto["enabled"] is True and auto["max_fields"] == 3 and auto["fields"] == want
    assert auto["untracked_values"] == 1500 and auto["untracked_examples"] == ["$.meta.flag"]
    assert set(out["drift"]) == {*want, "output"}
    components = document()["components"]
    schema = {"$ref": "#/components/schemas/Production", "components": components}
    jsonschema.validate(out, schema)
    registry = CollectorRegistry()
    registry.register(ScoresCollector(reader))
    text = generate_latest(registry).decode()
    assert 'shadowroute_drift_untracked_values_total{route="fraud"} 1500.0' in text
    # a numeric field gets quantile bins, a string one categories (frozen after 1,000 values)
    amount = prod.drift["$.instances[*].amount"]
    assert amount.bins is not None and amount.bins.kind == "numeric"
    country = prod.drift["$.instances[*].country"]
    assert country.bins is not None and sorted(country.bins.categories) == ["DE", "FR"]


def test_deeper_values_are_counted_and_listed_fields_not_doubled(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path / "s.sqlite",
        {"auto": True, "max_depth": 3, "fields": ["$.instances[*].amount"]},
    )
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    rng = np.random.default_rng(1)
    deep = {"x": {"y": {"z": {"w": 1}}}}
    engine.process(0, [_pair(i, _body(rng) | deep) for i in range(100)], [])
    prod = engine.production("fraud", 0)
    assert isinstance(prod, ProductionState)
    assert "$.instances[*].amount" not in prod.auto_fields  # listed: watched once
    assert prod.drift["$.instances[*].amount"].pending.__len__() == 100
    assert prod.auto_fields == ["$.instances[*].country", "$.meta.client.tier", "$.meta.flag"]
    assert prod.counts["drift_too_deep_values"] == 100  # $.x.y.z.w is four deep


def test_drift_found_automatically_is_detected(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "s.sqlite", {"auto": True})
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    rng = np.random.default_rng(2)
    hour = 3_600_000
    ref = [_pair(i, _body(rng)) for i in range(1000)]
    later = []
    for i in range(1000):
        k, v = _pair(10_000 + i, _body(rng, shift=2.0))
        later.append((k, v.replace(str(T0 + 10_000 + i).encode(), str(T0 + hour + i).encode())))
    engine.process(0, ref + later, [])
    view = StateView()
    view.update(engine.snapshot())
    reader = Reader(cfg, view, Verdicts(cfg, view, engine.store), engine.store)
    drift = reader.production("fraud")["drift"]
    assert drift["$.instances[*].amount"]["state"] == "major"
    assert drift["$.meta.client.tier"]["state"] == "stable"


def test_partitions_merge_and_a_restart_keeps_the_fields(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "s.sqlite", {"auto": True, "max_fields": 2})
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    engine.process(0, [_pair(i, {"a": i, "b": "x"}) for i in range(10)], [])
    engine.process(1, [_pair(100 + i, {"c": i, "a": i}) for i in range(10)], [])
    before = engine.snapshot()
    view = StateView()
    view.update(before)
    merged = view.production("fraud")
    assert merged is not None
    assert merged.auto_fields == ["$.a", "$.b"]  # partition 0 first; $.c left out
    assert merged.counts["drift_fields_left_out"] == 1
    assert len(merged.drift["$.a"].pending) == 20
    engine.store.close()
    again = Engine(cfg, Store(tmp_path / "s.sqlite"))
    for p in (0, 1):
        state = again.production("fraud", p)
        assert isinstance(state, ProductionState)
        assert state.to_dict() == before[("prod", "fraud", "", p)]
    assert again.production("fraud", 1).auto_fields == ["$.c", "$.a"]


@pytest.mark.parametrize(
    ("drift", "needs"),
    [({}, False), ({"auto": True}, True), ({"fields": ["$.x"]}, True)],
)
def test_the_data_plane_captures_the_body_when_auto_drift_is_on(
    tmp_path: Path, drift: dict[str, Any], needs: bool
) -> None:
    route = _config(tmp_path / "s.sqlite", drift).routes[0]
    assert RoutePlan(route, b"", b"", []).needs_input is needs
