"""Start the real data plane in front of real model servers, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from shadowroute.core.config import Config, parse_config
from shadowroute.dataplane.server import DataPlane, listen_socket
from shadowroute.stream.sink import KeyValue, Sink


class CollectingSink:
    """Keeps every record written, in order (a real Sink; the channel in miniature)."""

    def __init__(self) -> None:
        self.records: list[KeyValue] = []
        self.closed = False

    async def start(self) -> None:
        return None

    async def write(self, batch: Sequence[KeyValue]) -> None:
        self.records.extend(batch)

    async def close(self) -> None:
        self.closed = True

    def all_decoded(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for _, v in self.records]

    def decoded(self) -> list[dict[str, Any]]:
        """Pair records only (production-only monitoring records left out)."""
        return [r for r in self.all_decoded() if r["candidate"] is not None]

    def monitored(self) -> list[dict[str, Any]]:
        return [r for r in self.all_decoded() if r["candidate"] is None]


def free_port() -> int:
    """A loopback TCP port free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(prod_url: str, candidates: Sequence[dict[str, Any]] = (), **route: Any) -> Config:
    r: dict[str, Any] = {
        "name": "fraud",
        "path_prefix": "/",
        "protocol": "kserve-v1",
        "task": "regression",
        "production": {"name": "prod-v1", "url": prod_url, "timeout_s": 2, "version": "1"},
        "candidates": list(candidates),
    }
    extra_top = route.pop("top", {})
    r.update(route)
    return parse_config({"routes": [r], "listen": {"port": 0}, **extra_top}, environ={})


@contextlib.asynccontextmanager
async def running_proxy(config: Config) -> AsyncIterator[tuple[DataPlane, CollectingSink]]:
    sink = CollectingSink()
    async with running_dataplane(config, sink) as dp:
        yield dp, sink


@contextlib.asynccontextmanager
async def running_dataplane(config: Config, sink: Sink) -> AsyncIterator[DataPlane]:
    """The real data plane on a free loopback port, writing to ``sink``; stopped after."""
    dp = DataPlane(config, sink, sock=listen_socket("127.0.0.1", 0, reuse_port=False))
    await dp.start()
    try:
        yield dp
    finally:
        await dp.stop()


async def settle(dp: DataPlane, timeout: float = 3.0) -> None:
    """Wait until no mirror is in flight, every pair is built and the record queue is empty."""
    proxy = dp.proxy
    assert proxy is not None

    def busy() -> bool:
        return (
            any(t.in_flight for t in proxy.targets())
            or proxy.recorder.pending > 0
            or len(dp.queue) > 0
        )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not busy():
            await asyncio.sleep(0.02)
            if not busy():
                return
        await asyncio.sleep(0.01)


async def wait_ready(url: str, timeout: float = 20.0) -> None:
    """Poll ``url`` (a /readyz) until it answers 200."""
    import httpx

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as c:
        while loop.time() < deadline:
            try:
                if (await c.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``), in pid order."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
