"""``serve`` either serves or exits non-zero, with one line in words and no traceback: a port
another process holds (the listen port, the admin port), a file the config names that is not
there, a worker that cannot start or stops on its own. Real ``shadowroute serve`` processes
with ``--workers 0``, 1 and N."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyutil import alive, child_pids, free_port, wait_ready
from shadowroute.core.config import parse_config
from upstreams import ModelServer


@pytest.fixture
async def prod() -> AsyncIterator[ModelServer]:
    s = await ModelServer().start()
    yield s
    await s.stop()


def config(tmp_path: Path, prod_url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [
            {"name": "r", "protocol": "kserve-v1", "production": {"name": "p", "url": prod_url}}
        ],
    }


def serve(tmp_path: Path, cfg: dict[str, Any], workers: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", workers],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def holder() -> socket.socket:
    """A plain listening socket, as any other server holds its port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("workers", ["0", "1", "3"])
@pytest.mark.parametrize("plane", ["listen", "admin"])
def test_serve_on_a_port_in_use_exits_1_in_one_line(
    tmp_path: Path, workers: str, plane: str
) -> None:
    cfg = config(tmp_path)
    with holder() as taken:
        port = taken.getsockname()[1]
        cfg[plane]["port"] = port
        out = serve(tmp_path, cfg, workers)
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"error: {plane}.port: 127.0.0.1:{port} is already in use" in out.stderr
    assert "Traceback" not in out.stderr
    assert "workers serving" not in out.stderr and "listening" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("workers", ["0", "2"])
def test_serve_with_a_missing_reference_file_exits_1_before_binding(
    tmp_path: Path, workers: str
) -> None:
    cfg = config(tmp_path)
    cfg["routes"][0]["drift"] = {"fields": ["$.x"], "reference_file": str(tmp_path / "ref.csv")}
    out = serve(tmp_path, cfg, workers)
    assert out.returncode == 1
    assert "routes[0].drift.reference_file: file not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_with_listen_and_admin_on_one_port_exits_1(tmp_path: Path) -> None:
    """The case that used to leave a worker dead behind a supervisor saying it served."""
    cfg = config(tmp_path)
    cfg["admin"]["port"] = cfg["listen"]["port"]
    out = serve(tmp_path, cfg, "1")
    assert out.returncode == 1
    assert "admin.port: the same port as listen.port" in out.stderr
    assert "Traceback" not in out.stderr


async def test_serve_stops_with_exit_1_when_a_worker_dies(
    prod: ModelServer, tmp_path: Path
) -> None:
    """A worker gone (here killed) takes its share of the port with it: the supervisor does not
    run on looking healthy; it stops the others and exits 1, saying which worker."""
    cfg = config(tmp_path, prod.url)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - stopped below
            [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_ready(f"http://127.0.0.1:{cfg['admin']['port']}/readyz", timeout=40)
        kids = child_pids(proc.pid)
        assert len(kids) == 2
        os.kill(kids[0], signal.SIGKILL)
        rc = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert rc == 1, text[-3000:]
    assert "stopped on its own (exit code -9); stopping serve" in text
    assert "Traceback" not in text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        await asyncio.sleep(0.1)
    assert not [k for k in kids if alive(k)], "a worker outlived serve"


def test_a_worker_that_cannot_bind_says_so_and_exits_3(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The worker's side of a start that fails after the supervisor's checks (the port taken
    in between): one line on stderr, exit code 3, and its channel closed, which the supervisor
    reads as 'could not start'."""
    from shadowroute.runtime.workers import EXIT_WORKER_FAILED, _worker_main

    cfg = parse_config(config(tmp_path), environ={})
    with holder() as taken:
        port = taken.getsockname()[1]
        cfg = cfg.model_copy(update={"listen": cfg.listen.model_copy(update={"port": port})})
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = multiprocessing.get_context("fork").Process(
            target=_worker_main, args=(cfg, child, 0, [parent])
        )
        proc.start()
        child.close()
        proc.join(30)
        parent.settimeout(5)
        assert parent.recv(1) == b""  # end of file: the worker is gone
        parent.close()
    stderr = capfd.readouterr().err
    assert proc.exitcode == EXIT_WORKER_FAILED
    assert stderr.strip() == (
        f"error: worker 0: 127.0.0.1:{port} is already in use by another process (is another "
        "shadowroute serving it?); refusing to start"
    )


async def test_the_supervisor_waits_for_every_worker_before_it_serves() -> None:
    """``wait_started``: None once every worker reported ready; a worker whose channel closed
    first could not start; a worker never ready is a timeout."""
    from shadowroute.runtime.workers import WorkerSet

    ws = WorkerSet(2)
    loop = asyncio.get_running_loop()
    pumps: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]
    ws.ready_flags[0] = True
    pumps[1].set_result(None)  # worker 1's channel closed before it was ready
    assert await ws.wait_started(pumps, timeout_s=5) == "worker 1 could not start"
    pumps[1] = loop.create_future()
    assert await ws.wait_started(pumps, timeout_s=0.1) == "worker(s) [1] not ready after 0.1 s"
    ws.ready_flags[1] = True
    assert await ws.wait_started(pumps, timeout_s=5) is None
