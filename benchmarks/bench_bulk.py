#!/usr/bin/env python3
"""Bulk throughput: one big upload and one big answer through the data plane, beside the same
transfers straight to the server.

    .venv/bin/python benchmarks/bench_bulk.py                  # 64 MiB each way, 5 repetitions
    .venv/bin/python benchmarks/bench_bulk.py --mib 16 --reps 3

Models that take or give big payloads (images, audio, tensors) send megabytes a request. The
data plane streams such bodies through, and after each long read lets the loop serve the other
connections before the stream reads again (``dataplane/turns.py``), so that other clients'
requests do not wait behind it. This measures what a big transfer gets when nothing else
wants the loop: a change to how bodies are read or written shows here.

The server is a small uvloop + httptools server in a process of its own, on the load core:
``POST`` reads the body and answers 2 bytes; ``GET`` answers ``--mib`` MiB written at once.
The proxy is ``python -m shadowroute serve`` (one worker, on the proxy core, the supervisor
on the load core, as in ``bench_proxy.py``), one route to that server, no candidate (a body
this big is not mirrored anyway: over ``proxy.max_body_buffer_bytes``). The client runs in
this process on the load core, one keep-alive connection per target; each repetition times
one upload (written in 1 MiB pieces, until the answer) and one download (until its last byte)
straight to the server and through the proxy, in turn. Reported: the median MiB/s of each and
the proxy's as a share of direct. Only 127.0.0.1; every transfer is bounded in bytes and time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_proxy import (  # noqa: E402
    LOAD_CPU,
    Procs,
    free_port,
    serve_until_signal,
    shadowroute_proxy,
    wait_port,
)

PIECE = 1 << 20
TIMEOUT_S = 120.0


class BulkServer(asyncio.Protocol):
    """``POST``: the body is read and dropped, the answer is ``ok``. ``GET``: ``big``."""

    def __init__(self, big: bytes) -> None:
        import httptools

        self.big = big
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.method = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        body = self.big if self.parser.get_method() == b"GET" else b"ok"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            self.transport.write(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def run_server(port: int, mib: int) -> None:
    big = b"b" * (mib << 20)
    serve_until_signal(lambda: BulkServer(big), port)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, length


async def upload(port: int, conn: list[Any], mib: int) -> float:
    reader, writer = conn
    piece = b"u" * PIECE
    t0 = time.perf_counter()
    writer.write(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (mib << 20))
    for _ in range(mib):
        writer.write(piece)
        await writer.drain()
    status, length = await read_head(reader)
    await reader.readexactly(length)
    took = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"upload to port {port}: status {status}")
    return mib / took


async def download(port: int, conn: list[Any], mib: int) -> float:
    reader, writer = conn
    t0 = time.perf_counter()
    writer.write(b"GET /down HTTP/1.1\r\nHost: h\r\n\r\n")
    status, length = await read_head(reader)
    left = length
    while left:
        chunk = await reader.read(min(left, 4 * PIECE))
        if not chunk:
            raise RuntimeError(f"download from port {port}: closed with {left} bytes to come")
        left -= len(chunk)
    took = time.perf_counter() - t0
    if status != 200 or length != mib << 20:
        raise RuntimeError(f"download from port {port}: status {status}, {length} bytes")
    return mib / took


Speeds = dict[str, dict[str, list[float]]]


async def measure(targets: dict[str, int], mib: int, reps: int) -> Speeds:
    conns = {n: list(await asyncio.open_connection("127.0.0.1", p)) for n, p in targets.items()}
    out: Speeds = {n: {"up": [], "down": []} for n in targets}
    try:
        for rep in range(reps):
            for name, port in targets.items():
                async with asyncio.timeout(TIMEOUT_S):
                    up = await upload(port, conns[name], mib)
                    down = await download(port, conns[name], mib)
                out[name]["up"].append(up)
                out[name]["down"].append(down)
                print(f"  rep {rep} {name:8s} upload {up:7.0f} MiB/s  download {down:7.0f} MiB/s",
                      flush=True)  # fmt: skip
    finally:
        for _, writer in conns.values():
            writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mib", type=int, default=64, help="size of each transfer, MiB")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--server", metavar="PORT", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.server:
        run_server(a.server, a.mib)
        return 0
    import os

    os.sched_setaffinity(0, {int(LOAD_CPU)})
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        procs = Procs(Path(tmp))
        try:
            port = free_port()
            argv_server = [sys.executable, str(Path(__file__).resolve())]
            server = procs.start("server", [*argv_server, "--server", str(port), "--mib",
                                            str(a.mib)], LOAD_CPU)  # fmt: skip
            wait_port(port, server)
            with shadowroute_proxy(procs, "bulk", port, None, optimize=False) as (proxy, _, _):
                targets = {"direct": port, "proxy": proxy}
                got = asyncio.run(measure(targets, a.mib, a.reps))
        finally:
            procs.stop_all()
    print(f"\n{a.mib} MiB each way, {a.reps} repetitions, median MiB/s:")
    print("| way | direct | through the proxy | × direct |\n|---|---|---|---|")
    for way in ("up", "down"):
        d = statistics.median(got["direct"][way])
        x = statistics.median(got["proxy"][way])
        print(f"| {'upload' if way == 'up' else 'download'} | {d:.0f} | {x:.0f} | {x / d:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
