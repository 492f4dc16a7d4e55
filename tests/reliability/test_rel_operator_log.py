"""The router says what it is doing (issue #22): ``shadowroute serve`` as a subprocess, in one
process and with a worker, logs where it serves and what it mirrors, then one line when a
candidate's mirrors fail (with the reason) and no line per request; the CLI prints no HTTP
client chatter."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from servehelp import Served, route, running, send_requests

from upstreams import ModelServer, Reply, Seen


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    s = await ModelServer().start()
    yield s
    await s.stop()


@pytest.fixture
async def missing() -> AsyncIterator[ModelServer]:
    """A candidate served under another name: 404 to everything, as model servers answer."""

    def not_found(seen: Seen) -> Reply:
        return Reply(status=404, body=b'{"error": "Model m not found"}')

    s = await ModelServer(not_found).start()
    yield s
    await s.stop()


async def log_until(served: Served, words: str, timeout_s: float = 15.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = served.log.read_text(errors="replace")
        if words in text or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("workers", [0, 1])
async def test_serve_tells_the_story_of_a_run(
    tmp_path: Path, model: ModelServer, missing: ModelServer, workers: int
) -> None:
    cfg = {
        "routes": [route(model.url, [{"name": "v2", "url": missing.url}])],
        "ops_log": {"interval_s": 0.5, "min_mirrors": 5},
    }
    async with running(tmp_path, cfg, ["serve", "--workers", str(workers)]) as served:
        statuses = await send_requests(served.proxy, 40)
        assert statuses == [200] * 40  # the client gets production's answer
        text = await log_until(served, "mirrors failed")
        verdict = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shadowroute", "decision", "r", "v2", "--api", served.api],
            capture_output=True,
            text=True,
            timeout=60,
        )
    start = text.splitlines()
    assert any(f"clients: http://127.0.0.1:{served.port}" in x for x in start), text
    assert any(f"admin: http://127.0.0.1:{served.admin} (scorecard /" in x for x in start)
    assert any(f"route r: / -> production p at {model.url}" in x for x in start)
    assert any(f"candidate v2 at {missing.url}: 100% of requests mirrored" in x for x in start)
    failing = [x for x in start if "mirrors failed" in x]
    assert failing and "WARNING shadowroute.ops: candidate r/v2:" in failing[0], text
    assert "http_4xx" in failing[0]
    assert len(failing) == 1  # one line for the condition, not one per window or request
    assert any("verdict r/v2: hold" in x for x in start), text
    assert len(start) < 40, text  # nothing per request
    assert "Traceback" not in text
    # The CLI's answer, without a line per HTTP request.
    # hold, or reject once enough mirrors failed
    assert verdict.returncode in (3, 4), verdict.stderr
    assert '"verdict"' in verdict.stdout
    assert "HTTP Request" not in verdict.stderr and "httpx" not in verdict.stderr
