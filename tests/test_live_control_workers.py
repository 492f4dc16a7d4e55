"""``serve --workers 2``: a candidate's fraction changed through the API shows in its traffic
within a second on every worker, and a restarted serve starts its workers with it.

Runs the real CLI in a subprocess in front of real model servers. Which worker sent a request
is read from /proc: the model servers note the peer port of each request, and each worker's
sockets (``/proc/<pid>/fd`` → ``/proc/<pid>/net/tcp``) say whose port it is."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxyutil import child_pids, free_port, wait_ready
from upstreams import ModelServer, _Conn

pytestmark = pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs /proc")

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _PeerConn(_Conn):
    def on_message_complete(self) -> None:
        super().on_message_complete()
        assert self.transport is not None
        server = self.server
        assert isinstance(server, PeerServer)
        server.peers.append(int(self.transport.get_extra_info("peername")[1]))


class PeerServer(ModelServer):
    """A model server that notes the peer port of every request."""

    peers: list[int]

    async def start(self) -> PeerServer:
        self.peers = []
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _PeerConn(self), "127.0.0.1", 0)
        return self


def _local_ports(pid: int) -> set[int]:
    """The local TCP ports of process ``pid``'s sockets."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
async def servers() -> AsyncIterator[tuple[PeerServer, PeerServer]]:
    prod, cand = await PeerServer().start(), await PeerServer().start()
    yield prod, cand
    await prod.stop()
    await cand.stop()


class Serve:
    def __init__(self, path: Path, log: Path) -> None:
        self.path, self.log = path, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shadowroute",
                    "serve",
                    "-c",
                    str(self.path),
                    "--workers",
                    "2",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 30)

    def workers(self) -> list[int]:
        assert self.proc is not None
        pids = child_pids(self.proc.pid)
        assert len(pids) == 2, pids
        return pids


async def _phase(
    serve: Serve, port: int, prod: PeerServer, cand: PeerServer, n: int
) -> dict[int, tuple[int, int]]:
    """``n`` requests, each on a new connection (the kernel spreads them over the workers);
    per worker: (requests production got, mirrors the candidate got)."""
    p0, c0 = len(prod.peers), len(cand.peers)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        for _ in range(n):
            r = await c.post("/p", content=b'{"instances": [[1]]}', headers={"Connection": "close"})
            assert r.status_code == 200
    await asyncio.sleep(0.3)  # the last mirrors are written
    owners = {p: pid for pid in serve.workers() for p in _local_ports(pid)}
    counts = {pid: [0, 0] for pid in serve.workers()}
    for p in prod.peers[p0:]:
        counts[owners[p]][0] += 1
    for p in cand.peers[c0:]:
        counts[owners[p]][1] += 1
    return {pid: (a, b) for pid, (a, b) in counts.items()}


def _shares(counts: dict[int, tuple[int, int]]) -> list[float]:
    assert all(sent >= 40 for sent, _ in counts.values()), counts  # both workers served
    return [round(mirrored / sent, 3) for sent, mirrored in counts.values()]


async def test_a_fraction_set_through_the_api_reaches_every_worker_within_a_second(
    servers: tuple[PeerServer, PeerServer], tmp_path: Path
) -> None:
    prod, cand = servers
    port, admin = free_port(), free_port()
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin, "token": TOKEN},
        "proxy": {"upstream_keepalive_s": 60},  # the pools' sockets say which worker sent
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [
            {
                "name": "r",
                "protocol": "kserve-v1",
                "task": "regression",
                "production": {"name": "p", "url": prod.url},
                "candidates": [{"name": "c", "url": cand.url, "fraction": 1.0}],
            }
        ],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    serve = Serve(path, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{admin}/v1/routes/r/candidates/c/mirror"
    measured: dict[str, list[float]] = {}
    serve.start()
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        async with httpx.AsyncClient() as api:
            measured["1.0 (config)"] = _shares(await _phase(serve, port, prod, cand, 200))
            assert measured["1.0 (config)"] == [1.0, 1.0]

            r = await api.put(url, json={"fraction": 0.0}, headers=AUTH)
            assert r.status_code == 200, r.text
            await asyncio.sleep(1.0)  # the bound: applied on every worker within a second
            measured["0.0"] = _shares(await _phase(serve, port, prod, cand, 200))
            assert measured["0.0"] == [0.0, 0.0]

            r = await api.put(url, json={"fraction": 0.5}, headers=AUTH)
            assert r.status_code == 200, r.text
            await asyncio.sleep(1.0)
            measured["0.5"] = _shares(await _phase(serve, port, prod, cand, 400))
            assert all(0.3 <= s <= 0.7 for s in measured["0.5"]), measured

            r = await api.put(url, json={"enabled": False}, headers=AUTH)
            await asyncio.sleep(1.0)
            measured["off"] = _shares(await _phase(serve, port, prod, cand, 200))
            assert measured["off"] == [0.0, 0.0]
            r = await api.put(url, json={"enabled": True}, headers=AUTH)
            assert r.json()["effective_fraction"] == 0.5
        # A restart: the workers start with the kept settings.
        await serve.stop()
        serve.start()
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        async with httpx.AsyncClient() as api:
            doc = (await api.get(url)).json()
            assert (doc["fraction"], doc["enabled"], doc["source"]) == (0.5, True, "api")
            assert [c["after"]["fraction"] for c in doc["changes"]] == [0.0, 0.5, 0.5, 0.5]
            measured["0.5 after a restart"] = _shares(await _phase(serve, port, prod, cand, 300))
            assert all(0.25 <= s <= 0.75 for s in measured["0.5 after a restart"]), measured
    finally:
        await serve.stop()
    print("candidate share per worker:", measured)
    assert serve.proc is not None and serve.proc.returncode == 0
