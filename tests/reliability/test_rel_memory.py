"""A closed connection is freed when it closes, by reference counting, not some time later by
the cyclic collector.

A parser's callbacks are bound to its connection, a request points back at its connection, a
refusal raised in a parser callback keeps a traceback of the frame that raised it: each is a
reference cycle. Left to the cyclic collector, the closed connections of an idle flood piled up
between full collections (thousands at a time in the hostile soak, worker RSS +10 MiB that
never came back). Here the collector is off while clients come and go in every way a
connection ends (answered, refused in its head, refused at the head deadline, an upstream
connection closed by production or by the proxy): none of them may be left behind.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator

import pytest
from relhelp import post, report

from proxyutil import make_config, running_proxy, settle
from upstreams import ModelServer, Reply, Seen, kserve_reply

KINDS = ("ClientConnection", "UpstreamConnection", "Request", "Refusal", "MirrorExchange")


def cyclic_garbage() -> dict[str, int]:
    """The proxy's objects that only the cyclic collector could free, by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what it finds, to look at
    try:
        gc.collect()
        found = Counter(type(o).__name__ for o in gc.garbage)
        return {k: found[k] for k in KINDS}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def closing_reply(seen: Seen) -> Reply:
    reply = kserve_reply(seen)
    reply.close = True
    return reply


@pytest.fixture
def no_cyclic_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return await reader.read()  # every request here ends with the proxy closing
    finally:
        writer.close()


@pytest.mark.usefixtures("no_cyclic_collector")
async def test_closed_connections_are_freed_without_the_cyclic_collector() -> None:
    prod = await ModelServer().start()
    cand = await ModelServer().start()
    try:
        cfg = make_config(
            prod.url,
            [{"name": "cand", "url": cand.url, "fraction": 1.0, "timeout_s": 2}],
            top={"proxy": {"head_timeout_s": 0.5}},
        )
        async with running_proxy(cfg) as (dp, _sink):
            assert dp.proxy is not None
            n = 12
            close = post(extra=b"Connection: close\r\n")
            many = post(extra=b"".join(b"x-h%d: v\r\n" % i for i in range(150)))
            answered = [await _exchange(dp.port, close) for _ in range(n)]
            refused = [await _exchange(dp.port, many) for _ in range(n)]
            late = [await _exchange(dp.port, b"POST / HTTP/1.1\r\nHost: h\r\n") for _ in range(n)]
            # production closes its side of each upstream connection: the proxy's ones end
            prod.behave = closing_reply
            gone = [await _exchange(dp.port, close) for _ in range(n)]
            await settle(dp)
            async with asyncio.timeout(5):
                while dp.proxy.stats.open_connections:
                    await asyncio.sleep(0.01)
            during = cyclic_garbage()
        after = cyclic_garbage()
        report(
            "memory: cyclic garbage after 4 x 12 clients closed, while serving and after stop",
            during=during,
            after_stop=after,
        )
        assert {a[:12] for a in answered + gone} == {b"HTTP/1.1 200"}
        assert {r[:12] for r in refused} == {b"HTTP/1.1 431"}
        assert {r[:12] for r in late} == {b"HTTP/1.1 408"}
        assert during == dict.fromkeys(KINDS, 0), during
        assert after == dict.fromkeys(KINDS, 0), after
    finally:
        await cand.stop()
        await prod.stop()
