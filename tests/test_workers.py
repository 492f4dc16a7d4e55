"""``serve --workers 2``: two processes on one port, records and counters gathered by the
supervisor, graceful stop on SIGTERM. Runs the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from proxyutil import wait_ready
from upstreams import ModelServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


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
        kids = _children(proc.pid)
        assert len(kids) == 2
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(k) for k in kids):
            await asyncio.sleep(0.1)
        assert [k for k in kids if _alive(k)] == [], "workers outlived their supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
