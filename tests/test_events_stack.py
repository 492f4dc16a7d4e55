"""Events from a real running stack: the embedded stack with real model servers on loopback
(tests/upstreams.py) and real webhook receivers that verify signatures themselves
(tests/eventrecv.py); and, with the Kafka transport, events read back from the real broker."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from eventrecv import Receiver
from proxyutil import free_port, settle, wait_ready
from shadowroute.core.config import Config, Transport, parse_config
from shadowroute.core.records import LabelRecord, encode_label
from shadowroute.events.cloudevents import CIRCUIT_OPENED, VERDICT_CHANGED
from shadowroute.runtime import Stack, embedded_stack, run_compare
from shadowroute.stream.kafka import create_topics
from test_comparator_gen import T0, pair
from test_comparator_kafka import _produce
from upstreams import ModelServer, parity_reply, parity_servers

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ModelServer, ModelServer, ModelServer]]:
    async with parity_servers() as started:
        yield started


@pytest.fixture
async def hung_receiver() -> AsyncIterator[str]:
    """A receiver that accepts connections and never answers."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    release.set()
    await runner.cleanup()


def _route(prod: str, cands: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "r",
        "protocol": "kserve-v1",
        "task": "classification",
        "production": {"name": "prod", "url": prod, "timeout_s": 2},
        "candidates": cands,
        "policy": {"min_pairs": 10, "min_labelled": 10},
    }


def _config(tmp_path: Path, route: dict[str, Any], **top: Any) -> Config:
    return parse_config(
        {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "comparator": {"state_path": str(tmp_path / "state.sqlite")},
            "routes": [route],
            **top,
        },
        environ={"HOOK_SECRET": SECRET},
    )


async def _traffic(stack: Stack, n: int) -> tuple[list[str], float]:
    """``n`` requests through the proxy: their request ids and the slowest answer (s)."""
    ids, slowest = [], 0.0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.proxy_port}") as client:
        for k in range(n):
            t0 = time.monotonic()
            r = await client.post("/p", content=orjson.dumps({"instances": [[k]]}))
            slowest = max(slowest, time.monotonic() - t0)
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
    await settle(stack.dataplane)
    return ids, slowest


async def _until(cond: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _events_on_kafka(bootstrap: str, topic: str) -> list[Any]:
    """The records on ``topic``: waits (30 s at most) for the first, then a second more."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while not got:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    got += msgs
        for msgs in (await consumer.getmany(timeout_ms=1000)).values():
            got += msgs
    finally:
        await consumer.stop()
    return got


async def test_a_verdict_change_is_one_signed_event_and_dead_receivers_slow_nothing(
    tmp_path: Path,
    servers: tuple[ModelServer, ModelServer, ModelServer],
    hung_receiver: str,
) -> None:
    """Traffic and labels turn the 404 candidate's verdict from hold to reject: exactly one
    ``verdict.changed`` reaches the receiver, signed; the identical candidate stays on hold
    (no event). A receiver that never answers and one that is not there are counted as
    failed, and every client request is still answered at once."""
    prod, good, missing = servers
    recv = await Receiver(SECRET).start()
    gone = f"http://127.0.0.1:{free_port()}/hook"
    retry = {"backoff_s": 0.05, "max_backoff_s": 0.1, "max_attempts": 2}
    route = _route(
        prod.url,
        [
            {"name": "good", "url": good.url, "fraction": 1.0},
            {"name": "missing", "url": missing.url, "fraction": 1.0},
        ],
    )
    cfg = _config(
        tmp_path,
        route,
        mirror={"breaker": {"failures": 10_000}},
        events={
            "interval_s": 0.1,
            "instance": "test",
            "webhooks": [
                {"name": "ci", "url": recv.url, "secret": "env:HOOK_SECRET"},
                {"name": "hung", "url": hung_receiver, "secret": "env:HOOK_SECRET",
                 "timeout_s": 0.3, **retry},
                {"name": "gone", "url": gone, "secret": "env:HOOK_SECRET", **retry},
            ],
        },
    )  # fmt: skip
    try:
        async with embedded_stack(cfg) as stack:
            api = f"http://127.0.0.1:{stack.admin_port}"
            async with httpx.AsyncClient(base_url=api) as admin:
                await asyncio.sleep(0.3)  # the baseline: hold, no pairs
                ids, slowest = await _traffic(stack, 40)
                labels = [{"id": i, "label": k % 2, "route": "r"} for k, i in enumerate(ids)]
                assert (await admin.post("/v1/labels", json=labels)).status_code == 202
                await _until(lambda: len(recv.of_type(VERDICT_CHANGED)) >= 1)
                more, slowest_more = await _traffic(stack, 20)  # while deliveries fail
                await asyncio.sleep(0.5)  # a few more ticks: no second event
                decision = (await admin.get("/v1/routes/r/candidates/missing/decision")).json()

                bus = stack.events
                assert bus is not None

                def hung_and_gone_failed() -> bool:
                    return all(w.stats.failed["attempts_exhausted"] >= 1 for w in bus.workers[1:])

                await _until(hung_and_gone_failed)
                deliveries = (await admin.get("/v1/events/deliveries")).json()
                metrics = (await admin.get("/metrics")).text
    finally:
        await recv.stop()
    assert slowest < 1.0 and slowest_more < 1.0
    [d] = recv.of_type(VERDICT_CHANGED)
    assert all(x.valid for x in recv.got)
    e = d.doc
    assert d.headers["webhook-id"] == e["id"]
    assert e["specversion"] == "1.0" and e["source"] == "/shadowroute/test"
    assert e["subject"] == "r/missing"
    data = e["data"]
    assert data["route"] == "r" and data["candidate"] == "missing"
    assert data["previous"] == "hold" and data["verdict"] == "reject"
    assert data["revision"] == decision["revision"]["id"]
    assert data["decision"]["verdict"] == "reject" and decision["verdict"] == "reject"
    assert data["decision"]["route"] == "r" and "integrity" in data["decision"]
    ci, hung, gone_doc = deliveries["destinations"]
    assert deliveries["emitted"][VERDICT_CHANGED] == 1
    assert ci["name"] == "ci" and ci["failed"] == 0 and ci["delivered"] >= 1
    assert hung["retries_by_reason"].get("timeout", 0) >= 1
    assert hung["failed_by_reason"]["attempts_exhausted"] >= 1
    assert gone_doc["retries_by_reason"]["connect"] >= 1
    assert "connect: Cannot connect" in gone_doc["last_error"]
    assert (
        'shadowroute_event_delivery_failures_total{destination="gone",reason="attempts_exhausted"}'
        in metrics
    )
    assert 'shadowroute_events_total{type="io.shadowroute.verdict.changed"} 1.0' in metrics


@pytest.mark.kafka
async def test_kafka_mode_produces_the_event_to_the_events_topic(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``serve`` with the Kafka transport: a candidate that cannot be reached opens its
    circuit, and one ``circuit.opened`` event is on ``<prefix>.events``, keyed by its
    subject, read back from the real broker."""
    prod = await ModelServer(parity_reply).start()
    prefix = "e" + uuid.uuid4().hex[:8]
    transport = Transport(kind="kafka", bootstrap=kafka_bootstrap, topic_prefix=prefix)
    created = await create_topics(transport)
    assert f"{prefix}.events" in created
    route = _route(prod.url, [{"name": "c", "url": f"http://127.0.0.1:{free_port()}"}])
    cfg = _config(
        tmp_path,
        route,
        transport={"kind": "kafka", "bootstrap": kafka_bootstrap, "topic_prefix": prefix,
                   "spool": {"path": str(tmp_path / "spool")}},
        mirror={"breaker": {"failures": 3, "open_s": 60}},
        events={"interval_s": 0.1, "instance": "k"},
    )  # fmt: skip
    try:
        async with embedded_stack(cfg) as stack:
            await _traffic(stack, 10)
            bus = stack.events
            assert bus is not None
            await _until(lambda: bus.workers[0].stats.delivered >= 1, 30)
            async with httpx.AsyncClient() as c:
                r = await c.get(f"http://127.0.0.1:{stack.admin_port}/v1/events/deliveries")
                deliveries = r.json()
    finally:
        await prod.stop()
    [kafka] = deliveries["destinations"]
    assert kafka["name"] == "kafka" and kafka["target"] == f"{prefix}.events"
    got = await _events_on_kafka(kafka_bootstrap, f"{prefix}.events")
    [m] = got
    e = orjson.loads(m.value or b"")
    assert m.key == b"r/c"
    assert dict(m.headers)["content-type"] == b"application/cloudevents+json"
    assert e["type"] == CIRCUIT_OPENED and e["subject"] == "r/c"
    assert e["source"] == "/shadowroute/k" and e["data"] == {
        "route": "r", "candidate": "c", "open": True,
    }  # fmt: skip


@pytest.mark.kafka
async def test_compare_emits_one_verdict_change_to_kafka_and_the_webhook(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``shadowroute compare`` (run in this process): pair records of a candidate that fails
    every mirror turn its verdict from hold to reject; one ``verdict.changed`` reaches the
    webhook, signed, and one is on ``<prefix>.events``, with the same id."""

    prefix = "v" + uuid.uuid4().hex[:8]
    recv = await Receiver(SECRET).start()
    raw = {
        "admin": {"host": "127.0.0.1", "port": 0},
        "transport": {"kind": "kafka", "bootstrap": kafka_bootstrap, "topic_prefix": prefix,
                      "topics": {"partitions": 2}},
        "comparator": {"state_path": str(tmp_path / "compare.sqlite"), "windows": ["hour"]},
        "routes": [{
            "name": "fraud", "protocol": "kserve-v1", "task": "classification",
            "production": {"name": "fraud-v7", "url": "http://127.0.0.1:9001"},
            "candidates": [{"name": "fraud-v8", "url": "http://127.0.0.1:9002"}],
            "policy": {"min_pairs": 20, "min_labelled": 20},
        }],
        "events": {"interval_s": 0.1, "instance": "cmp", "webhooks": [
            {"name": "ci", "url": recv.url, "secret": "env:HOOK_SECRET",
             "types": [VERDICT_CHANGED]},
        ]},
    }  # fmt: skip
    cfg = parse_config(raw, environ={"HOOK_SECRET": SECRET})
    await create_topics(cfg.transport)
    stop = asyncio.Event()
    task = asyncio.create_task(run_compare(cfg, stop=stop))
    try:
        await asyncio.sleep(2.0)  # joined the group; the baseline verdict is hold
        items: list[tuple[str, bytes, bytes]] = []
        for i in range(60):
            rid = f"k{i}"
            ts = T0 + 50 * i
            items.append(("pairs", rid.encode(), pair(rid, ts, [1], None, cand_error="http_4xx")))
            items.append(("labels", rid.encode(), encode_label(LabelRecord(rid, 1, ts + 10))))
        await _produce(kafka_bootstrap, prefix, items)
        await _until(lambda: len(recv.of_type(VERDICT_CHANGED)) >= 1, 60)
        await asyncio.sleep(0.5)  # a few more ticks: no second event
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await recv.stop()
    [d] = recv.of_type(VERDICT_CHANGED)
    e = d.doc
    assert d.headers["webhook-id"] == e["id"] and e["subject"] == "fraud/fraud-v8"
    assert e["data"]["previous"] == "hold" and e["data"]["verdict"] == "reject"
    got = await _events_on_kafka(kafka_bootstrap, f"{prefix}.events")
    changes = [orjson.loads(m.value or b"") for m in got]
    changes = [c for c in changes if c["type"] == VERDICT_CHANGED]
    assert [c["id"] for c in changes] == [e["id"]]
    assert [m.key for m in got] == [b"fraud/fraud-v8"] * len(got)


async def test_serve_workers_emit_from_the_supervisor(tmp_path: Path) -> None:
    """``serve --workers 2`` (the real CLI): a candidate that cannot be reached opens its
    circuit in the workers; the supervisor emits one ``circuit.opened`` to the webhook and
    shows the delivery on its API; SIGTERM stops it cleanly."""
    prod = await ModelServer(parity_reply).start()
    recv = await Receiver(SECRET).start()
    port, admin = free_port(), free_port()
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "mirror": {"breaker": {"failures": 2, "open_s": 60}},
        "events": {"interval_s": 0.2, "instance": "w", "webhooks": [
            {"name": "ops", "url": recv.url, "secret": "env:HOOK_SECRET"}]},
        "routes": [_route(prod.url, [{"name": "c", "url": f"http://127.0.0.1:{free_port()}"}])],
    }  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, stopped below
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HOOK_SECRET": SECRET},
    )
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for k in range(20):
                r = await c.post(
                    "/p",
                    content=orjson.dumps({"instances": [[k]]}),
                    headers={"Connection": "close"},
                )
                assert r.status_code == 200
        await _until(lambda: len(recv.of_type(CIRCUIT_OPENED)) >= 1, 20)
        await asyncio.sleep(0.6)
        async with httpx.AsyncClient() as c:
            body = (await c.get(f"http://127.0.0.1:{admin}/v1/events/deliveries")).json()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        await recv.stop()
        await prod.stop()
    [d] = recv.of_type(CIRCUIT_OPENED)
    assert d.valid and d.doc["subject"] == "r/c" and d.doc["source"] == "/shadowroute/w"
    [ops] = body["destinations"]
    assert ops["name"] == "ops" and ops["delivered"] >= 1 and ops["failed"] == 0
