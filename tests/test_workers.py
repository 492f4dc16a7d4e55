"""``serve --workers 2``: two processes on one port, records and counters gathered by the
supervisor, graceful stop on SIGTERM. Runs the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from proxyutil import alive, child_pids, free_port, wait_ready
from shadowroute.dataplane.stats import DataPlaneStats
from upstreams import ModelServer


@pytest.fixture
async def prod() -> AsyncIterator[ModelServer]:
    s = await ModelServer().start()
    yield s
    await s.stop()


async def test_two_workers_share_the_port_and_stop_gracefully(
    prod: ModelServer, tmp_path: Path
) -> None:
    cand = await ModelServer().start()
    cand_url = cand.url
    port, admin = free_port(), free_port()
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "records": {"jsonl_path": str(tmp_path / "records")},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [
            {
                "name": "r",
                "protocol": "kserve-v1",
                "task": "regression",
                "production": {"name": "p", "url": prod.url},
                "candidates": [{"name": "c", "url": cand.url}],
            }
        ],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, stopped below
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        n = 200
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for i in range(n):
                if i == n // 2:  # deploy tooling sets the candidate's revision: every worker
                    # A pair is stamped when it is built, once the candidate answered: the
                    # first half's are all built before the revision changes.
                    await until_built(admin, n // 2)
                    r = await c.put(
                        f"http://127.0.0.1:{admin}/v1/routes/r/candidates/c/revision",
                        json={"revision": "sha256:b"},
                    )
                    assert r.status_code == 200 and r.json()["source"] == "api"
                    await asyncio.sleep(1.0)  # the workers read the control frame
                # a new connection each time, so the kernel spreads them over both workers
                r = await c.post(
                    "/p", content=b'{"instances": [[1]]}', headers={"Connection": "close"}
                )
                assert r.json() == {"predictions": [2.0]}
        await asyncio.sleep(1.2)  # counters are shipped twice a second
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{admin}/metrics")).text
        assert f'shadowroute_requests_total{{class="2xx",route="r"}} {float(n)}' in text
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        await cand.stop()
    lines = (tmp_path / "records" / "pairs.jsonl").read_bytes().splitlines()
    recs = [orjson.loads(line) for line in lines]
    pairs = [r for r in recs if r["candidate"] is not None]
    assert len(pairs) == n and len({r["id"] for r in pairs}) == n
    revisions = [r["candidate"].get("revision") for r in pairs]
    assert revisions == [None] * (n // 2) + ["sha256:b"] * (n - n // 2)
    assert {r["candidate"]["url"] for r in pairs} == {cand_url}
    assert len(cand.seen) == n
    workers = {pid for pid in _worker_pids(out.decode())}
    assert len(workers) <= 2


async def until_built(admin: int, n: int) -> None:
    """Until the workers have reported ``n`` pair records built (their counters reach the
    supervisor's /metrics twice a second)."""
    async with httpx.AsyncClient() as c, asyncio.timeout(10):
        while True:
            text = (await c.get(f"http://127.0.0.1:{admin}/metrics")).text
            built = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("shadowroute_records_built_total")
            )
            if built >= n:
                return
            await asyncio.sleep(0.05)


def _worker_pids(log: str) -> list[str]:
    return [line.split()[-1] for line in log.splitlines() if "worker" in line and "stopped" in line]


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    cfg = {"listen": {"port": 0}, "routes": [{"name": "r", "protocol": "kserve-v1",
           "production": {"name": "p", "url": "http://127.0.0.1:1"}}]}  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
        check=False,
    )
    assert out.returncode == 2
    assert "--workers needs a fixed listen.port" in out.stderr


async def test_workers_exit_when_the_supervisor_dies(prod: ModelServer, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [
            {"name": "r", "protocol": "kserve-v1", "production": {"name": "p", "url": prod.url}}
        ],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        kids = child_pids(proc.pid)
        assert len(kids) == 2
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(k) for k in kids):
            await asyncio.sleep(0.1)
        assert [k for k in kids if alive(k)] == [], "workers outlived their supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_kernel_stops_a_worker_whose_supervisor_died() -> None:
    """The second line behind the channel's end-of-file: a process that called ``_die_with``
    gets SIGTERM from the kernel when its parent is killed with -9, even with nothing else
    to notice it (a worker once kept serving, its channel never read, after its supervisor
    was killed under load)."""
    script = textwrap.dedent(
        """
        import os, time
        from shadowroute.runtime.workers import _die_with
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _die_with(parent)
            time.sleep(60)  # no channel, no loop: only the kernel can end this
            os._exit(3)
        print(pid, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        time.sleep(0.5)  # the child has asked for the signal by now
        assert alive(child)
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the child outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


class _FailingSink:
    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> None:
        return None

    async def write(self, batch: object) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")

    async def close(self) -> None:
        return None


async def test_supervisor_pump_counts_a_failed_sink_write_and_goes_on() -> None:
    """The supervisor's side of a worker channel: a sink write that raises is counted as
    ``sink_failed`` (and the next frames are still read); the workers' record losses and
    circuits are merged from their snapshots (a circuit is open where any worker has it
    open)."""
    from shadowroute.runtime.workers import WorkerSet, encode_frame, encode_records

    def snapshot(flow: dict[str, object], circuits: list[list[object]]) -> bytes:
        doc = {"ready": True, "stats": DataPlaneStats().snapshot(), "records": flow}
        return encode_frame(b"S", orjson.dumps({**doc, "circuits": circuits}))

    ws = WorkerSet(2, mirroring=False)
    assert ws.mirroring is False
    sink = _FailingSink()
    readers = [asyncio.StreamReader(), asyncio.StreamReader()]
    readers[0].feed_data(encode_frame(b"R", encode_records([(b"a", b"1"), (b"b", b"2")])))
    readers[0].feed_data(encode_frame(b"R", encode_records([(b"c", b"3")])))
    readers[0].feed_data(
        snapshot({"queue_depth": 3, "dropped": {"queue_full": 2}}, [["r", "c", True]])
    )
    readers[1].feed_data(
        snapshot({"queue_depth": 1, "dropped": {"queue_full": 1}}, [["r", "c", False]])
    )
    for r in readers:
        r.feed_eof()
    await asyncio.gather(*(ws.pump(i, r, sink) for i, r in enumerate(readers)))
    assert sink.calls == 2  # the pump went on after the failure
    flow = ws.records()
    assert flow.queue_depth == 4
    assert flow.dropped == {"queue_full": 3, "sink_failed": 2}
    assert ws.circuits() == [("r", "c", True)]
    assert ws.ready()
