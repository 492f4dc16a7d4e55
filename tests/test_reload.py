"""Config reload on SIGHUP, on a real ``serve`` process (one process, and two workers) in front
of real model servers: a client's keep-alive connection stays open across reloads, a new
candidate gets traffic and a removed one none, a new route serves; a bad file, or one that
changes what cannot change live, is refused in one log line and the old config keeps serving."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from documented import assert_documented
from proxyutil import free_port, wait_ready
from shadowroute.comparator.statefile import check_state_file
from shadowroute.core.config import parse_config
from upstreams import ModelServer

BODY = b'{"instances": [[1]]}'


@pytest.fixture
async def models() -> AsyncIterator[dict[str, ModelServer]]:
    servers = {name: await ModelServer().start() for name in ("prod", "a", "b")}
    yield servers
    for s in servers.values():
        await s.stop()


def _config(port: int, admin: int, tmp: Path, m: dict[str, ModelServer], version: int) -> Any:
    cands = {1: [("a", m["a"].url)], 2: [("b", m["b"].url)]}[version]
    routes: list[dict[str, Any]] = [
        {
            "name": "r",
            "path_prefix": "/p",
            "protocol": "kserve-v1",
            "task": "regression",
            "production": {"name": "prod", "url": m["prod"].url},
            "candidates": [{"name": n, "url": u, "fraction": 1.0} for n, u in cands],
        }
    ]
    if version == 2:
        routes.append(
            {
                "name": "r2",
                "path_prefix": "/q",
                "protocol": "kserve-v1",
                "production": {"name": "prod", "url": m["prod"].url},
            }
        )
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "comparator": {"state_path": str(tmp / "state.sqlite")},
        "routes": routes,
    }


class KeepAlive:
    """One client connection, kept open: a request on it, its answer's status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> KeepAlive:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str) -> int:
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), len(BODY), BODY)
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        length = next(
            int(v)
            for n, _, v in (h.partition(": ") for h in lines[1:])
            if n.lower() == "content-length"
        )
        await self.reader.readexactly(length)
        return int(lines[0].split()[1])


async def _status(port: int, path: str) -> int:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        return (await c.post(path, content=BODY)).status_code


async def _mirrored(port: int, m: dict[str, ModelServer], n: int) -> dict[str, int]:
    """``n`` requests on new connections; the mirrors each candidate got."""
    before = {k: len(s.seen) for k, s in m.items()}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        for _ in range(n):
            r = await c.post("/p", content=BODY, headers={"Connection": "close"})
            assert r.status_code == 200
    await asyncio.sleep(0.3)
    return {k: len(m[k].seen) - before[k] for k in ("a", "b")}


async def _scored(api: httpx.AsyncClient, cand: str, want: int) -> int:
    """The pairs the comparator scored for ``cand`` on route r, once ``want`` (or 5 s)."""
    pairs = 0
    for _ in range(50):
        got = await api.get(f"/v1/routes/r/candidates/{cand}/decision")
        assert got.status_code == 200, got.text
        pairs = got.json()["pairs"]
        if pairs >= want:
            break
        await asyncio.sleep(0.1)
    return int(pairs)


def _lines(log: Path, marker: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if marker in line]


def _start(path: Path, log: Path, workers: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", workers],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _hup_and_wait(proc: subprocess.Popen[bytes], log: Path, marker: str) -> str:
    """SIGHUP, then the log's new line with ``marker``."""
    seen = len(_lines(log, marker))
    proc.send_signal(signal.SIGHUP)
    for _ in range(100):
        await asyncio.sleep(0.05)
        lines = _lines(log, marker)
        if len(lines) > seen:
            await asyncio.sleep(0.3)  # the workers read their frame
            return lines[-1]
    raise AssertionError(f"no {marker!r} in the log")


@pytest.mark.parametrize("workers", ["0", "2"])
async def test_sighup_reloads_routes_without_dropping_connections(
    models: dict[str, ModelServer], tmp_path: Path, workers: str
) -> None:
    port, admin = free_port(), free_port()
    path, log = tmp_path / "cfg.yaml", tmp_path / "serve.log"
    path.write_text(yaml.safe_dump(_config(port, admin, tmp_path, models, 1)))
    proc = _start(path, log, workers)
    conn: KeepAlive | None = None
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        conn = await KeepAlive.open(port)
        assert await conn.post("/p") == 200
        assert await _status(port, "/q/x") == 404  # no such route yet (a refusal closes)
        assert await _mirrored(port, models, 20) == {"a": 20, "b": 0}

        # v2: candidate a removed, b added, route r2 added.
        path.write_text(yaml.safe_dump(_config(port, admin, tmp_path, models, 2)))
        line = await _hup_and_wait(proc, log, "config reloaded:")
        assert "added ['r2'], changed ['r'], removed []" in line
        assert await conn.post("/p") == 200  # the same connection, still open
        assert await conn.post("/q/x") == 200  # the new route, on it too
        assert await _mirrored(port, models, 20) == {"a": 0, "b": 20}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}") as api:
            assert (await api.get("/v1/routes/r/candidates/b/mirror")).status_code == 200
            assert (await api.get("/v1/routes/r/candidates/a/mirror")).status_code == 404
            listed = (await api.get("/v1/routes")).json()
            assert_documented(listed, "ConfiguredRoutes")
            routes = listed["routes"]
            assert [r["name"] for r in routes] == ["r", "r2"]
            assert routes[0]["candidates"] == [
                {"name": "b", "version": None, "revision": None, "fraction": 1.0,
                 "effective_fraction": 1.0}
            ]  # fmt: skip
            # The comparator scores the added candidate: every one of its pairs (the 20, and the
            # keep-alive connection's request), none refused.
            assert await _scored(api, "b", 21) == 21
            assert (await api.get("/v1/routes/r/candidates/a/decision")).status_code == 404
            metrics = (await api.get("/metrics")).text
            assert "unknown_candidate" not in metrics and "unknown_route" not in metrics
            changes = (await api.get("/v1/mirroring/changes")).json()["changes"]
            assert [(c["candidate"], c["source"], c["after"]) for c in changes] == [
                ("a", "reload", None),
                ("b", "reload", {"enabled": True, "fraction": 1.0}),
            ]

        # A bad file: refused in one line naming every problem; v2 keeps serving.
        bad = _config(port, admin, tmp_path, models, 2)
        bad["routes"][0]["candidates"][0]["fraction"] = 2
        bad["routes"][1]["path_prefix"] = "q"
        path.write_text(yaml.safe_dump(bad))
        line = await _hup_and_wait(proc, log, "config reload refused")
        assert "fraction" in line and "path_prefix must start with '/'" in line
        assert await _mirrored(port, models, 10) == {"a": 0, "b": 10}
        # Changes that cannot be applied live: refused, saying so.
        moved = _config(port, admin, tmp_path, models, 1)
        moved["listen"]["port"] = free_port()
        moved["routes"][0]["task"] = "classification"
        path.write_text(yaml.safe_dump(moved))
        line = await _hup_and_wait(proc, log, "config reload refused")
        assert "listen.port changed" in line and "restart to apply it" in line
        assert "routes[0].task changed ('regression' -> 'classification')" in line
        assert await _mirrored(port, models, 10) == {"a": 0, "b": 10}
        assert await conn.post("/q/x") == 200
        assert await conn.post("/p") == 200
        async with httpx.AsyncClient() as api:
            text = (await api.get(f"http://127.0.0.1:{admin}/metrics")).text
        assert 'shadowroute_config_reloads_total{outcome="applied"} 1.0' in text
        assert 'shadowroute_config_reloads_total{outcome="refused"} 2.0' in text
        assert 'shadowroute_mirror_fraction{candidate="b",route="r"} 1.0' in text
        assert 'shadowroute_mirror_fraction{candidate="a"' not in text
    finally:
        if conn is not None:
            conn.writer.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == 0
    # The state file now belongs to the reloaded config: a restart with it passes the check.
    check_state_file(parse_config(_config(port, admin, tmp_path, models, 2), environ={}))


async def test_requests_in_flight_finish_on_the_plan_they_were_made_with(
    models: dict[str, ModelServer], tmp_path: Path
) -> None:
    """In process: a request whose answer production still owes when the routes change is
    answered, and mirrored to the candidate it was planned with; the next one uses the new
    routes; the replaced route's pools close after the drain time."""
    from proxyutil import running_proxy
    from upstreams import Reply, kserve_reply

    def slow(seen: Any) -> Any:
        async def later() -> Reply:
            await asyncio.sleep(0.6)
            return kserve_reply(seen)

        return later() if b"slow" in seen.url else kserve_reply(seen)

    models["prod"].behave = slow

    def config(version: int) -> Any:
        doc = _config(0, 0, tmp_path, models, version)
        doc["proxy"] = {"shutdown_timeout_s": 1.5, "mirror_drain_s": 0.5}
        return parse_config(doc, environ={})

    async with running_proxy(config(1)) as (dp, _sink):
        assert dp.proxy is not None
        base = f"http://127.0.0.1:{dp.port}"
        async with httpx.AsyncClient(base_url=base) as c:
            in_flight = asyncio.create_task(c.post("/p/slow", content=BODY))
            await asyncio.sleep(0.2)
            old_route = dp.proxy.routes[0]
            dp.reload(config(2), {("r", "b"): 1.0})
            assert (await c.post("/p", content=BODY)).status_code == 200
            assert (await in_flight).status_code == 200
            await asyncio.sleep(0.3)
            assert [s.url for s in models["a"].seen] == [b"/p/slow"]  # the old plan's mirror
            assert [s.url for s in models["b"].seen] == [b"/p"]
            assert old_route in dp.proxy.retired
            await asyncio.sleep(1.5)  # shutdown_timeout_s + mirror_drain_s after the reload
            assert dp.proxy.retired == [] and old_route.prod_pool.closed
