"""The verdict on non-stationary traffic, end to end through ``shadowroute serve``.

Real model servers answer a stream on which the candidate is better over the first third and
worse after (production 0.85 accurate; the candidate 0.99, then 0.70: −0.053 on average). The
client's request ids sort in sending order and every label is posted after the traffic, so the
comparator joins the pairs in id order, the case that once ended in promote with an interval
entirely above its own estimate. It must end in anything but promote, with the interval around
the estimate.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import yaml

from proxyutil import free_port, wait_ready
from upstreams import ModelServer, Reply, Seen

N = 6000
ROUTE, CAND = "credit", "credit-v2"


def _behaviour(correct: np.ndarray, name: bytes):  # type: ignore[no-untyped-def]
    def reply(seen: Seen) -> Reply:
        i = int(orjson.loads(seen.body)["instances"][0][0])
        pred = 1 if correct[i] else 0
        return Reply(
            body=orjson.dumps({"predictions": [pred]}),
            headers=[(b"content-type", b"application/json"), (b"x-model", name)],
        )

    return reply


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ModelServer, ModelServer, np.ndarray]]:
    rng = np.random.default_rng(2026)
    prod_ok = rng.random(N) < 0.85
    cand_ok = rng.random(N) < np.where(np.arange(N) < N // 3, 0.99, 0.70)
    prod = await ModelServer(_behaviour(prod_ok, b"prod")).start()
    cand = await ModelServer(_behaviour(cand_ok, b"cand")).start()
    yield prod, cand, cand_ok.astype(float) - prod_ok.astype(float)
    await prod.stop()
    await cand.stop()


async def test_better_then_worse_is_not_promoted(
    servers: tuple[ModelServer, ModelServer, np.ndarray], tmp_path: Path
) -> None:
    prod, cand, d = servers
    port, admin = free_port(), free_port()
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [
            {
                "name": ROUTE,
                "protocol": "kserve-v1",
                "task": "classification",
                "production": {"name": "credit-v1", "url": prod.url},
                "candidates": [{"name": CAND, "url": cand.url, "fraction": 1.0}],
            }
        ],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, stopped below
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:

            async def send(lo: int, hi: int) -> None:
                for i in range(lo, hi):
                    r = await c.post(
                        "/v1/models/credit:predict",
                        content=b'{"instances": [[%d]]}' % i,
                        headers={"x-request-id": f"req-{i:07d}"},
                    )
                    assert r.status_code == 200

            step = N // 4
            await asyncio.gather(*(send(k, min(k + step, N)) for k in range(0, N, step)))
        labels = b"\n".join(orjson.dumps({"id": f"req-{i:07d}", "label": 1}) for i in range(N))
        api = f"http://127.0.0.1:{admin}"
        async with httpx.AsyncClient(base_url=api, timeout=30) as c:
            r = await c.post(
                "/v1/labels", content=labels, headers={"content-type": "application/x-ndjson"}
            )
            assert r.status_code == 202, r.text
            decision: dict = {}
            for _ in range(300):
                decision = (await c.get(f"/v1/routes/{ROUTE}/candidates/{CAND}/decision")).json()
                if decision["labelled"] == N:
                    break
                await asyncio.sleep(0.1)
            history = (await c.get(f"/v1/routes/{ROUTE}/candidates/{CAND}/history")).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert decision["labelled"] == N, decision
    acc = decision["metrics"]["accuracy"]
    assert acc["estimate"] == pytest.approx(float(d.mean()), abs=1e-9)
    assert acc["estimate"] < -0.04
    assert acc["lower"] <= acc["estimate"] <= acc["upper"]
    assert decision["verdict"] != "promote", decision["reasons"]
    assert history["history"][-1]["verdict"] == decision["verdict"]
