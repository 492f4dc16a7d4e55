"""Live control of mirroring: the pure settings (validation, overrides, change log, reload),
the state file, and the API on a real one-process stack with real model servers: a fraction
or on/off changed through the API shows in the candidate's traffic at once and outlasts a
restart."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from documented import assert_documented
from shadowroute.core.config import Config, parse_config
from shadowroute.core.mirror_control import (
    MAX_CHANGES,
    CandidateMirror,
    ControlError,
    MirrorSettings,
    parse_state,
)
from shadowroute.core.reload import refusals, route_changes
from shadowroute.runtime import embedded_stack
from shadowroute.runtime.control import open_settings, read_state, state_path, write_state
from shadowroute.runtime.lifecycle import StartError
from upstreams import ModelServer

TOKEN = "s3cret"


def _config(
    tmp: Path, prod: str, cands: dict[str, float | tuple[str, float]], **top: Any
) -> Config:
    """One route ``r``; each candidate a fraction (at a dead URL) or (its URL, fraction)."""
    candidates = []
    for name, spec in cands.items():
        url, fraction = spec if isinstance(spec, tuple) else ("http://127.0.0.1:9", spec)
        candidates.append({"name": name, "url": url, "fraction": fraction})
    route = {
        "name": "r",
        "path_prefix": "/",
        "protocol": "kserve-v1",
        "task": "regression",
        "production": {"name": "p", "url": prod},
        "candidates": candidates,
    }
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0, "token": TOKEN},
        "comparator": {"state_path": str(tmp / "state.sqlite")},
        "routes": [route],
        **top,
    }
    return parse_config(doc, environ={})


# --- the pure settings ---------------------------------------------------------------------


def test_settings_refuse_bad_values_and_unknown_names(tmp_path: Path) -> None:
    s = MirrorSettings(_config(tmp_path, "http://p:1", {"c": 0.2}))
    bad: list[Any] = [
        {"fraction": 1.5},
        {"fraction": -0.1},
        {"fraction": math.nan},
        {"fraction": True},
        {"fraction": "0.5"},
        {"enabled": "yes"},
        {"enabled": True, "weight": 2},
        {},
        [],
    ]
    for body in bad:
        with pytest.raises(ControlError) as err:
            s.update("r", "c", body)
        assert err.value.status == 400, body
    with pytest.raises(ControlError, match="unknown route 'x'") as err:
        s.get("x", "c")
    assert err.value.status == 404
    with pytest.raises(ControlError, match="route 'r' has no candidate 'x'"):
        s.update("r", "x", {"fraction": 0.1})
    assert s.update("r", "c", {"fraction": 1}) == CandidateMirror(True, 1.0)
    assert s.get("r", "c") == CandidateMirror(True, 0.2)  # update only says what would be set


def test_overrides_outlast_a_restart_and_a_reload_while_their_candidate_stays(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path, "http://p:1", {"a": 0.2, "b": 0.3})
    s = MirrorSettings(cfg)
    s.set("r", "a", CandidateMirror(False, 0.9), at_ms=1)
    s.set("r", "b", CandidateMirror(True, 0.7), at_ms=2)
    s.set_mirroring(False, at_ms=3)
    again = MirrorSettings(cfg, parse_state(orjson.loads(orjson.dumps(s.to_state()))))
    assert again.get("r", "a") == CandidateMirror(False, 0.9) and not again.mirroring
    assert again.effective() == {("r", "a"): 0.0, ("r", "b"): 0.7}
    assert [c.at_ms for c in again.changes] == [1, 2, 3]
    # Reloaded: b gone, c new, a's config fraction changed (its override stays).
    new = _config(tmp_path, "http://p:1", {"a": 0.5, "c": 0.4})
    changes = again.rebase(new, at_ms=4)
    assert [(c.candidate, c.after) for c in changes] == [
        ("b", None),
        ("c", {"enabled": True, "fraction": 0.4}),
    ]
    assert all(c.source == "reload" for c in changes)
    assert again.effective() == {("r", "a"): 0.0, ("r", "c"): 0.4}
    assert again.source("r", "a") == "api" and again.configured("r", "a").fraction == 0.5
    # Back to the config's: the override goes.
    again.set("r", "a", None, at_ms=5)
    assert again.get("r", "a") == CandidateMirror(True, 0.5) and again.source("r", "a") == "config"
    # A stored override of a candidate the config lost is dropped, and said.
    stored = parse_state(s.to_state())
    assert MirrorSettings(new, stored).ignored == ["route 'r' candidate 'b'"]


def test_the_change_log_is_bounded(tmp_path: Path) -> None:
    s = MirrorSettings(_config(tmp_path, "http://p:1", {"c": 0.2}))
    for i in range(MAX_CHANGES + 10):
        s.set("r", "c", CandidateMirror(True, (i % 10) / 10), at_ms=i)
    assert len(s.changes) == MAX_CHANGES and s.changes[0].at_ms == 10
    assert len(parse_state(s.to_state()).changes) == MAX_CHANGES


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ([], "not a JSON object"),
        ({"version": 2}, "version 2"),
        ({"version": 1, "mirroring": "on"}, "mirroring must be"),
        ({"version": 1, "candidates": [{"route": "r", "candidate": "c"}]}, "enabled"),
        (
            {"version": 1, "candidates": [{"route": "r", "candidate": "c", "enabled": True}]},
            "fraction must be a number",
        ),
        ({"version": 1, "changes": [{"at_ms": "x"}]}, "lacks at_ms"),
    ],
)
def test_a_bad_state_document_says_what_is_wrong(doc: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_state(doc)


def test_state_file_is_written_whole_and_a_corrupt_one_stops_the_start(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "http://p:1", {"c": 0.2})
    path = state_path(cfg)
    assert path == str(tmp_path / "state-control.json")  # next to the comparator's state
    assert read_state(path) is None and open_settings(cfg).get("r", "c").fraction == 0.2
    s = MirrorSettings(cfg)
    s.set("r", "c", CandidateMirror(True, 0.6), at_ms=1)
    write_state(path, s.to_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-control.json"]  # no .tmp left
    assert open_settings(cfg).get("r", "c").fraction == 0.6
    Path(path).write_bytes(b'{"version": 1, "candidates": [')
    with pytest.raises(StartError, match=r"state-control.json is not a valid control state file"):
        open_settings(cfg)


def test_a_reload_may_change_routes_only(tmp_path: Path) -> None:
    old = _config(tmp_path, "http://p:1", {"a": 0.2})
    same = _config(tmp_path, "http://p:1", {"a": 0.2})
    assert refusals(old, same) == [] and route_changes(old, same)["changed"] == []
    new = _config(
        tmp_path,
        "http://p:1",
        {"b": 0.2},
        transport={"kind": "kafka", "bootstrap": "k:9092"},
        admin={"host": "127.0.0.1", "port": 0, "token": "other"},
    )
    lines = refusals(old, new)
    assert any(line.startswith("transport.kind changed ('embedded' -> 'kafka')") for line in lines)
    assert any(line.startswith("admin.token changed") for line in lines)
    assert all(TOKEN not in line and "other" not in line for line in lines)  # secrets masked
    assert route_changes(old, new) == {"added": [], "changed": ["r"], "removed": []}


# --- the API on a real stack ---------------------------------------------------------------


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ModelServer, ModelServer]]:
    prod, cand = await ModelServer().start(), await ModelServer().start()
    yield prod, cand
    await prod.stop()
    await cand.stop()


async def _share(proxy_port: int, cand: ModelServer, n: int) -> int:
    """Requests out of ``n`` the candidate received (mirrors are sent within the loop turn)."""
    before = len(cand.seen)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy_port}") as c:
        for _ in range(n):
            r = await c.post("/p", content=b'{"instances": [[1]]}')
            assert r.status_code == 200
    await asyncio.sleep(0.2)
    return len(cand.seen) - before


async def test_api_changes_a_candidates_traffic_at_once_and_keeps_it_across_restarts(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    prod, cand = servers
    cfg = _config(tmp_path, prod.url, {"c": (cand.url, 1.0)})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = "/v1/routes/r/candidates/c/mirror"
    n = 200
    async with embedded_stack(cfg) as stack:
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}")
        async with admin:
            doc = (await admin.get(url)).json()
            assert doc["enabled"] and doc["fraction"] == 1.0 and doc["source"] == "config"
            assert await _share(stack.proxy_port, cand, n) == n
            # Writes need the token; bad bodies and unknown names are refused, nothing changes.
            assert (await admin.put(url, json={"fraction": 0.0})).status_code == 401
            r = await admin.put(url, json={"fraction": 3}, headers=auth)
            assert r.status_code == 400 and "from 0 to 1" in r.json()["error"]
            r = await admin.put(url, content=b"{", headers=auth)
            assert r.status_code == 400
            r = await admin.put("/v1/routes/r/candidates/x/mirror", json={}, headers=auth)
            assert r.status_code == 404 and "no candidate 'x'" in r.json()["error"]
            r = await admin.get("/v1/routes/nope/candidates/c/mirror")
            assert r.status_code == 404
            # 1.0 -> 0.0: no mirror from the next request on.
            r = await admin.put(url, json={"fraction": 0.0}, headers=auth)
            assert r.status_code == 200 and r.json()["source"] == "api"
            assert await _share(stack.proxy_port, cand, n) == 0
            # 0.5: about half (sampling by request id; 200 requests, 5 sd either side).
            r = await admin.put(url, json={"fraction": 0.5}, headers=auth)
            assert r.json()["effective_fraction"] == 0.5
            half = await _share(stack.proxy_port, cand, n)
            assert 65 <= half <= 135, half
            # Off keeps the fraction; the global switch goes through the same settings.
            r = await admin.put(url, json={"enabled": False}, headers=auth)
            assert r.json()["fraction"] == 0.5 and r.json()["effective_fraction"] == 0.0
            assert await _share(stack.proxy_port, cand, n) == 0
            r = await admin.put("/v1/mirroring", json={"enabled": False}, headers=auth)
            assert r.status_code == 200
            changes = (await admin.get("/v1/mirroring/changes")).json()["changes"]
            assert [c["after"] for c in changes] == [
                {"enabled": True, "fraction": 0.0},
                {"enabled": True, "fraction": 0.5},
                {"enabled": False, "fraction": 0.5},
                {"enabled": False},
            ]
            assert all(c["source"] == "api" and c["at_ms"] > 0 for c in changes)
            for c in changes:
                assert_documented(c, "MirrorChange")
            assert_documented((await admin.get(url)).json(), "CandidateMirror")
    # A restart: the settings and their history are kept.
    async with embedded_stack(cfg) as stack:
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}")
        async with admin:
            doc = (await admin.get(url)).json()
            assert (doc["enabled"], doc["fraction"], doc["source"]) == (False, 0.5, "api")
            assert len(doc["changes"]) == 3 and doc["mirroring"] is False
            assert (await admin.get("/v1/mirroring")).json() == {"enabled": False}
            await admin.put("/v1/mirroring", json={"enabled": True}, headers=auth)
            assert await _share(stack.proxy_port, cand, 50) == 0  # the candidate is still off
            # DELETE: back to the config's settings (1.0, on).
            r = await admin.delete(url, headers=auth)
            assert r.status_code == 200 and r.json()["source"] == "config"
            assert await _share(stack.proxy_port, cand, 50) == 50


async def test_a_state_file_that_cannot_be_written_refuses_the_change(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    prod, cand = servers
    cfg = _config(
        tmp_path,
        prod.url,
        {"c": (cand.url, 1.0)},
        control={"state_path": str(tmp_path / "missing-dir" / "control.json")},
    )
    async with embedded_stack(cfg) as stack:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}") as admin:
            r = await admin.put(
                "/v1/routes/r/candidates/c/mirror",
                json={"fraction": 0.0},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert r.status_code == 503 and "nothing changed" in r.json()["error"]
            doc = (await admin.get("/v1/routes/r/candidates/c/mirror")).json()
            assert doc["fraction"] == 1.0 and doc["changes"] == []
            text = (await admin.get("/metrics")).text
            assert "shadowroute_control_state_write_failures_total 1.0" in text
            assert 'shadowroute_mirror_fraction{candidate="c",route="r"} 1.0' in text
        assert await _share(stack.proxy_port, cand, 20) == 20


def test_openapi_describes_the_control_routes() -> None:
    from shadowroute.api.openapi import document
    from shadowroute.runtime.control import LiveControl

    paths = document()["paths"]
    cfg = _config(Path("/nonexistent"), "http://p:1", {"c": 0.2})
    control = LiveControl(cfg, MirrorSettings(cfg), lambda r, c, f: None, lambda e: None)
    from shadowroute.api.control import control_routes

    for route in control_routes(control):
        assert route.method.lower() in paths[route.path], route  # type: ignore[attr-defined]


def test_the_control_collector_exports_its_declared_families(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from shadowroute.api.metrics import new_registry
    from shadowroute.runtime.control import ControlCollector, LiveControl

    cfg = _config(tmp_path, "http://p:1", {"c": 0.2})
    control = LiveControl(cfg, MirrorSettings(cfg), lambda r, c, f: None, lambda e: None)
    registry = new_registry()
    registry.register(ControlCollector(control))
    text = generate_latest(registry).decode()
    for family in ControlCollector.FAMILIES:
        assert f"\n{family.exposed}" in text, family.name
    assert 'shadowroute_mirror_fraction{candidate="c",route="r"} 0.2' in text


def test_effective_under_another_config_changes_nothing(tmp_path: Path) -> None:
    s = MirrorSettings(_config(tmp_path, "http://p:1", {"a": 0.2, "b": 0.3}))
    s.set("r", "a", CandidateMirror(True, 0.9), at_ms=1)
    new = _config(tmp_path, "http://p:1", {"a": 0.5, "c": 0.4})
    assert s.effective(new) == {("r", "a"): 0.9, ("r", "c"): 0.4}
    assert s.effective() == {("r", "a"): 0.9, ("r", "b"): 0.3} and len(s.changes) == 1
