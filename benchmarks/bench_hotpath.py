"""The data plane's own CPU per request, without sockets: pure Python vs the compiled build.

One client request goes through the real ``ClientConnection``, ``Request``, pooled
``UpstreamConnection``s, mirror and recorder code, on a running uvloop loop, with in-memory
transports (writes are collected, never sent): production's and the candidate's responses are
fed back as bytes, and the pair record is built and queued (with the revision stamps and record
caps the data plane's recorder has). What is left out is exactly the kernel's socket work, so
the figure isolates the part of the proxy's CPU that the code decides.

Each build runs in its own process (``SHADOWROUTE_PURE=1`` for the sources); the cases are
interleaved over repetitions and the median is reported, with the ratio.

    .venv/bin/python benchmarks/bench_hotpath.py            # both builds, both cases
    .venv/bin/python benchmarks/bench_hotpath.py --requests 20000 --reps 3

Instructions per request, deterministic on a shared machine: one build, one case, under
callgrind at two request counts; the difference of the totals over the difference of the
counts leaves start-up and the warm-up out.

    OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind \\
        .venv/bin/python benchmarks/bench_hotpath.py --one mirror -n 1000   # and -n 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class MemoryTransport:
    """Stands in for a socket transport: collects writes."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass


def http_messages() -> tuple[bytes, bytes]:
    from bench_proxy import REQUEST_BODY, RESPONSE_BODY

    req_body, resp_body = REQUEST_BODY.encode(), RESPONSE_BODY.encode()
    request = (
        b"POST /v1/models/fraud:predict HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(req_body)
    ) + req_body
    response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 03:50:00 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
        % len(resp_body)
    ) + resp_body
    return request, response


def measure(mirror: bool, n: int) -> dict[str, object]:
    """In this process: µs per request over ``n`` requests (after a warm-up)."""
    import uvloop

    from bench_proxy import shadowroute_config
    from shadowroute import build_info

    try:
        from shadowroute.configfile import load_config
    except ImportError:  # a build from before configfile (side-by-side runs)
        from shadowroute.core.config import load_config  # type: ignore[attr-defined,no-redef]
    from shadowroute.core.revision import LiveRevisions
    from shadowroute.dataplane.proxy import ClientConnection, Proxy
    from shadowroute.dataplane.recorder import Recorder
    from shadowroute.dataplane.stats import DataPlaneStats
    from shadowroute.dataplane.upstream import UpstreamConnection, UpstreamPool
    from shadowroute.stream.queue import RecordQueue

    request, response = http_messages()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = shadowroute_config(Path(tmp), "hot", 1, 2, 3, 4 if mirror else None)
        config = load_config(str(cfg_path))
    queue = RecordQueue(1 << 30)
    stats = DataPlaneStats()
    rcfg = config.records
    # As ``DataPlane.start`` makes it: the record caps, and the revision stamps every side
    # carries.
    recorder = Recorder(
        loop,
        queue,
        stats,
        max_body=rcfg.max_response_bytes,
        max_predictions=rcfg.max_predictions,
        max_instances=rcfg.max_instances,
        max_values=rcfg.max_json_values,
    )
    recorder.stamps = LiveRevisions(config).stamps()
    proxy = Proxy(config, loop, recorder)
    route = proxy.routes[0]

    def pooled(pool: UpstreamPool) -> tuple[UpstreamConnection, MemoryTransport]:
        conn, transport = UpstreamConnection(pool), MemoryTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        pool._all.add(conn)
        pool.release(conn)
        return conn, transport

    prod, prod_t = pooled(route.prod_pool)
    cand = pooled(route.candidates[0].target.pool)[0] if mirror else None
    client, client_t = ClientConnection(proxy), MemoryTransport()
    client.connection_made(client_t)  # type: ignore[arg-type]

    def one() -> None:
        client.data_received(request)
        prod.data_received(response)
        if cand is not None:
            cand.data_received(response)
        recorder.flush()
        queue._items.clear()
        client_t.out.clear()
        prod_t.out.clear()

    async def run(k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            one()
            if i % 64 == 63:
                await asyncio.sleep(0)  # timers and callbacks run as in a server
        return time.perf_counter() - t0

    loop.run_until_complete(run(2000))
    built = stats.records_built
    elapsed = loop.run_until_complete(run(n))
    assert stats.records_built - built == n, "one record per request"
    loop.close()
    return {"us_per_request": elapsed / n * 1e6, "build": build_info.describe()}


def in_subprocess(pure: bool, mirror: bool, n: int) -> dict[str, object]:
    env = {**os.environ, "SHADOWROUTE_PURE": "1" if pure else "0"}
    argv = [sys.executable, __file__, "--one", "mirror" if mirror else "nomirror", "-n", str(n)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", "-n", type=int, default=30000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--one", choices=["mirror", "nomirror"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one == "mirror", args.requests)))
        return 0
    cases = [(pure, mirror) for mirror in (False, True) for pure in (True, False)]
    runs: dict[tuple[bool, bool], list[float]] = {c: [] for c in cases}
    builds: dict[tuple[bool, bool], str] = {}
    for rep in range(args.reps):
        for pure, mirror in cases:
            res = in_subprocess(pure, mirror, args.requests)
            runs[(pure, mirror)].append(float(res["us_per_request"]))  # type: ignore[arg-type]
            builds[(pure, mirror)] = str(res["build"])
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    print(f"{args.requests} requests per run, median of {args.reps} runs (µs of CPU per request)")
    print("| case | pure Python | compiled | compiled / pure |")
    print("|---|---|---|---|")
    for mirror in (False, True):
        pure_us = statistics.median(runs[(True, mirror)])
        comp_us = statistics.median(runs[(False, mirror)])
        name = "100% mirrored, pair record built" if mirror else "no candidate, production record"
        print(f"| {name} | {pure_us:.1f} | {comp_us:.1f} | {comp_us / pure_us:.2f} |")
    if builds[(False, True)] != "hot path compiled":
        print(f"note: the default build here is '{builds[(False, True)]}', not compiled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
