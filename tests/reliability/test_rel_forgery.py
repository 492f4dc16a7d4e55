"""Forged evidence (issue "Evidence nobody can forge"): a client or a label source that tries
to steer the verdict. Each test is one attack against the real stack (embedded transport,
real model servers on loopback); the honest verdict must stay what honest traffic gives, and
the attempt must be visible (a counter, an API field or a 4xx with the reason)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from relhelp import report

from shadowroute.core.config import Config, parse_config
from shadowroute.runtime import Stack, embedded_stack
from upstreams import ModelServer, Reply, Seen, kserve_reply

HONEST_X = 1.5
"""Honest requests carry this input; production answers x + 1 = the true label."""
TRUE_LABEL = HONEST_X + 1.0
FORGED_X = TRUE_LABEL - 5.0
"""The attacker's input: the candidate (x + 5) answers exactly the honest label on it."""


def off_by_four(seen: Seen) -> Reply:
    """A candidate that is worse than production on every input: x + 5 (production: x + 1)."""
    doc = orjson.loads(seen.body)
    preds = [float(row[0]) + 5.0 for row in doc["instances"]]
    return Reply(body=orjson.dumps({"predictions": preds}),
                 headers=[(b"content-type", b"application/json")])  # fmt: skip


def forgery_config(prod: ModelServer, cand: ModelServer, tmp: Path, **top: Any) -> Config:
    route = {
        "name": "fraud", "path_prefix": "/", "protocol": "kserve-v1", "task": "regression",
        "production": {"name": "prod-v1", "url": prod.url, "timeout_s": 2},
        "candidates": [{"name": "cand", "url": cand.url, "fraction": 1.0, "timeout_s": 2}],
        "policy": {"min_pairs": 20, "min_labelled": 20},
        **top.pop("route", {}),
    }  # fmt: skip
    raw: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0, **top.pop("admin", {})},
        "comparator": {"state_path": str(tmp / "state.sqlite"), "windows": ["hour"]},
        "routes": [route],
        **top,
    }
    return parse_config(raw, environ={})


@contextlib.asynccontextmanager
async def forgery_stack(tmp: Path, **top: Any) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    prod = await ModelServer(kserve_reply).start()
    cand = await ModelServer(off_by_four).start()
    try:
        async with embedded_stack(forgery_config(prod, cand, tmp, **top)) as stack:
            base = f"http://127.0.0.1:{stack.proxy_port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                yield stack, client
    finally:
        await prod.stop()
        await cand.stop()


def body(x: float) -> bytes:
    return orjson.dumps({"instances": [[x]]})


async def predict(client: httpx.AsyncClient, x: float, rid: str | None = None) -> str:
    headers = {"content-type": "application/json"}
    if rid is not None:
        headers["x-request-id"] = rid
    r = await client.post("/v1/models/m:predict", content=body(x), headers=headers)
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def predicted_next_ids(seen: str, n: int) -> list[str]:
    """What an attacker guesses the router gives next, from one id it saw: the counter form
    ``<prefix>-<hex n>`` incremented; any other form, the id's own hex value plus one."""
    m = re.fullmatch(r"(.*)-([0-9a-f]+)", seen)
    if m is not None:
        prefix, k = m.group(1), int(m.group(2), 16)
        return [f"{prefix}-{k + i:x}" for i in range(1, n + 1)]
    k = int(seen, 16) if re.fullmatch(r"[0-9a-f]+", seen) else 0
    return [f"{k + i:0{len(seen)}x}" for i in range(1, n + 1)]


async def post_labels(admin: httpx.AsyncClient, labels: list[dict[str, Any]]) -> httpx.Response:
    data = b"\n".join(orjson.dumps(lab) for lab in labels)
    return await admin.post(
        "/v1/labels", content=data, headers={"content-type": "application/x-ndjson"}
    )


async def decision(admin: httpx.AsyncClient, until: int, max_s: float = 10.0) -> dict[str, Any]:
    """The candidate's decision once ``until`` pairs are labelled (or after ``max_s``)."""
    deadline = time.monotonic() + max_s
    while True:
        d: dict[str, Any] = (await admin.get("/v1/routes/fraud/candidates/cand/decision")).json()
        if d["labelled"] >= until or time.monotonic() > deadline:
            return d
        await asyncio.sleep(0.1)


async def test_requests_under_the_next_generated_ids_do_not_steal_honest_labels(
    tmp_path: Path,
) -> None:
    """Attack 1: a client learns one generated id, sends 150 requests under the ids it
    guesses the router gives next, with an input on which the bad candidate is right; then
    honest traffic comes and honest labels are posted for the ids honest clients got."""
    n_forged, n_honest = 150, 60
    async with forgery_stack(tmp_path) as (stack, client):
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}", timeout=10)
        async with admin:
            seen = await predict(client, HONEST_X)
            guesses = predicted_next_ids(seen, n_forged)
            for rid in guesses:
                await predict(client, FORGED_X, rid)
            honest = [await predict(client, HONEST_X) for _ in range(n_honest)]
            r = await post_labels(admin, [{"id": i, "label": TRUE_LABEL} for i in honest])
            assert r.status_code == 202, r.text
            d = await decision(admin, n_honest)
    stolen = set(honest) & set(guesses)
    report(
        "forgery: requests under guessed ids",
        seen_id=seen, honest_ids_guessed=len(stolen), verdict=d["verdict"],
        labelled=d["labelled"],
    )  # fmt: skip
    assert not stolen
    assert len(set(honest)) == n_honest
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in [seen, *honest])  # 128 random bits
    assert d["labelled"] == n_honest  # every honest label joined its honest pair
    assert d["verdict"] == "reject"


async def test_a_client_id_already_pending_is_counted_not_merged(tmp_path: Path) -> None:
    """Client-supplied ids: a second request under an id whose pair is still waiting for its
    label is kept out of the evidence and counted (``duplicate_ids``: decision field
    ``integrity`` and metric ``shadowroute_duplicate_ids_total``)."""
    async with forgery_stack(tmp_path) as (stack, client):
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}", timeout=10)
        async with admin:
            ids = [f"order-{i}" for i in range(30)]
            for rid in ids:
                await predict(client, HONEST_X, rid)
            await asyncio.sleep(0.5)  # the first ones are committed, pending their label
            for rid in ids:
                await predict(client, FORGED_X, rid)
            r = await post_labels(admin, [{"id": i, "label": TRUE_LABEL} for i in ids])
            assert r.status_code == 202, r.text
            d = await decision(admin, len(ids))
            await asyncio.sleep(0.3)
            d = await decision(admin, len(ids))
            metrics = (await admin.get("/metrics")).text
    report("forgery: duplicate client ids", integrity=d.get("integrity"), verdict=d["verdict"])
    assert d["labelled"] == len(ids)  # the first of each id, once
    assert d["integrity"]["duplicate_ids"] == len(ids)
    assert f"shadowroute_duplicate_ids_total {float(len(ids))}" in metrics
    assert d["verdict"] == "reject"
