"""Events: the pure parts (event documents, the detector, signatures, templates), config
errors at ``config check``, and delivery to real HTTP receivers on loopback that verify the
Standard Webhooks signature themselves (tests/eventrecv.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import generate_latest

from eventrecv import Receiver, verify
from proxyutil import free_port
from shadowroute.api.events import EventsCollector
from shadowroute.api.metrics import new_registry
from shadowroute.core.config import Config, EventType, config_problems, parse_config
from shadowroute.events.bus import EventBus
from shadowroute.events.cloudevents import (
    CIRCUIT_CLOSED,
    CIRCUIT_OPENED,
    DRIFT_EXCEEDED,
    DRIFT_RECOVERED,
    EVENT_TYPES,
    LABELS_RESUMED,
    LABELS_STALE,
    PRODUCTION_DEGRADED,
    PRODUCTION_RECOVERED,
    VERDICT_CHANGED,
    CloudEvent,
    make_event,
)
from shadowroute.events.delivery import RetryPolicy, backoff_delay
from shadowroute.events.detect import Detector, Snapshot
from shadowroute.events.signing import decode_secret, sign
from shadowroute.events.template import render
from shadowroute.events.webhook import WebhookDestination

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
ROUTE = {
    "name": "r",
    "protocol": "kserve-v1",
    "production": {"name": "p", "url": "http://127.0.0.1:9001"},
    "candidates": [{"name": "c", "url": "http://127.0.0.1:9002"}],
}


def config(hooks: list[dict[str, Any]], environ: dict[str, str] | None = None) -> Config:
    env = {"HOOK_SECRET": SECRET} if environ is None else environ
    return parse_config({"routes": [ROUTE], "events": {"webhooks": hooks}}, environ=env)


def event(kind: str = VERDICT_CHANGED, **data: Any) -> CloudEvent:
    payload = {"route": "r", "candidate": "c", "verdict": "promote", **data}
    return make_event(kind, instance="t", route="r", model="c", data=payload, at=time.time())


# --- the pure parts ---------------------------------------------------------------------------


def test_the_standard_webhooks_test_vector() -> None:
    """The specification's published vector, with shadowroute's signer and the test's own
    verifier (written from the specification)."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,bm9wZQ== " + sig,
    }
    assert verify(secret, headers, body, tolerance_s=float("inf"))
    assert not verify(secret, headers, body + b" ", tolerance_s=float("inf"))


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
        ("whsec_not base64!", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64"),
    ],
)
def test_a_bad_secret_says_what_is_wrong(secret: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        decode_secret(secret)


def test_the_event_document_is_cloudevents_structured_json() -> None:
    e = event()
    assert set(e) == {
        "specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data",
    }  # fmt: skip
    assert e["specversion"] == "1.0" and e["source"] == "/shadowroute/t"
    assert e["subject"] == "r/c" and e["datacontenttype"] == "application/json"
    assert e["time"].endswith("Z") and len(e["id"]) == 36
    assert e["id"] != event()["id"]
    with pytest.raises(ValueError, match="unknown event type"):
        make_event("io.shadowroute.nope", instance="t", route="r", model="c", data={}, at=0)


def test_the_config_knows_every_event_type() -> None:
    assert set(get_args(EventType)) == set(EVENT_TYPES)


def _decision(verdict: str, rev: str = "rev1") -> dict[str, Any]:
    return {"verdict": verdict, "revision": {"id": rev}, "reasons": ["because"], "pairs": 10}


def test_a_verdict_change_is_one_event_and_the_baseline_is_none() -> None:
    d = Detector(instance="t")
    assert d.observe(Snapshot(decisions={("r", "c"): _decision("hold")}), 0, 0) == []
    assert d.observe(Snapshot(decisions={("r", "c"): _decision("hold")}), 1, 1) == []
    doc = _decision("promote")
    [e] = d.observe(Snapshot(decisions={("r", "c"): doc}), 2, 2)
    assert e["type"] == VERDICT_CHANGED and e["subject"] == "r/c"
    assert e["data"] == {
        "route": "r", "candidate": "c", "revision": "rev1", "previous": "hold",
        "verdict": "promote", "decision": doc,
    }  # fmt: skip
    assert d.observe(Snapshot(decisions={("r", "c"): doc}), 3, 3) == []
    # a candidate seen for the first time later: its verdict is its baseline
    assert d.observe(Snapshot(decisions={("r", "c2"): _decision("reject")}), 4, 4) == []


def _prod(
    state: str = "stable", degradation: str = "ok", labelled: int = 0, requests: int = 0
) -> dict[str, Any]:
    return {
        "route": "r",
        "model": "p",
        "counts": {"labelled": labelled, "requests": requests},
        "degradation": {"state": degradation, "metric": "accuracy", "estimate": 0.1},
        "drift": {"$.x": {"state": state, "psi": 0.4 if state == "major" else 0.01}},
        "labels": {"waiting": 0},
    }


def _types(events: list[CloudEvent]) -> list[str]:
    return [e["type"] for e in events]


def test_drift_and_degradation_on_transitions_only() -> None:
    d = Detector(instance="t", psi_alert={"r": 0.25}, labels_stale_after_s=None)
    assert d.observe(Snapshot(production={"r": _prod()}), 0, 0) == []
    [e] = d.observe(Snapshot(production={"r": _prod("major")}), 1, 1)
    assert e["type"] == DRIFT_EXCEEDED and e["subject"] == "r/production"
    assert e["data"]["field"] == "$.x" and e["data"]["psi"] == 0.4
    assert e["data"]["threshold"] == 0.25
    assert d.observe(Snapshot(production={"r": _prod("major")}), 2, 2) == []
    assert d.observe(Snapshot(production={"r": _prod("insufficient")}), 3, 3) == []
    assert _types(d.observe(Snapshot(production={"r": _prod("minor")}), 4, 4)) == [DRIFT_RECOVERED]
    events = d.observe(Snapshot(production={"r": _prod(degradation="degraded")}), 5, 5)
    assert _types(events) == [PRODUCTION_DEGRADED]
    assert events[0]["data"]["metric"] == "accuracy" and events[0]["data"]["estimate"] == 0.1
    assert d.observe(Snapshot(production={"r": _prod(degradation="insufficient")}), 6, 6) == []
    assert _types(d.observe(Snapshot(production={"r": _prod()}), 7, 7)) == [PRODUCTION_RECOVERED]


def test_conditions_present_at_start_are_announced_once() -> None:
    d = Detector(instance="t", labels_stale_after_s=None)
    snap = Snapshot(production={"r": _prod("major", "degraded")}, circuits={("r", "c"): True})
    assert _types(d.observe(snap, 0, 0)) == [DRIFT_EXCEEDED, PRODUCTION_DEGRADED, CIRCUIT_OPENED]
    assert d.observe(snap, 1, 1) == []


def test_labels_stale_after_the_quiet_time_while_predictions_come() -> None:
    d = Detector(instance="t", labels_stale_after_s=60)
    assert d.observe(Snapshot(production={"r": _prod(labelled=5, requests=10)}), 0, 100) == []
    # quiet, but no predictions either: not stale
    assert d.observe(Snapshot(production={"r": _prod(labelled=5, requests=10)}), 120, 220) == []
    [e] = d.observe(Snapshot(production={"r": _prod(labelled=5, requests=50)}), 130, 230)
    assert e["type"] == LABELS_STALE and e["subject"] == "r/production"
    assert e["data"]["predictions_since_label"] == 40 and e["data"]["stale_after_s"] == 60
    assert e["data"]["seconds_without_labels"] == 130
    assert d.observe(Snapshot(production={"r": _prod(labelled=5, requests=90)}), 200, 300) == []
    [e] = d.observe(Snapshot(production={"r": _prod(labelled=6, requests=91)}), 210, 310)
    assert e["type"] == LABELS_RESUMED
    assert d.observe(Snapshot(production={"r": _prod(labelled=7, requests=92)}), 220, 320) == []


def test_circuits_open_and_close() -> None:
    d = Detector(instance="t")
    assert d.observe(Snapshot(circuits={("r", "c"): False}), 0, 0) == []
    [e] = d.observe(Snapshot(circuits={("r", "c"): True}), 1, 1)
    assert e["type"] == CIRCUIT_OPENED and e["data"] == {
        "route": "r",
        "candidate": "c",
        "open": True,
    }
    assert _types(d.observe(Snapshot(circuits={("r", "c"): False}), 2, 2)) == [CIRCUIT_CLOSED]


def test_a_template_makes_a_github_repository_dispatch() -> None:
    e = event(decision={"reasons": ["a", "b"]})
    template = {
        "event_type": "shadowroute-{{ data.verdict }}",
        "client_payload": {
            "route": "{{ data.route }}",
            "event_id": "{{id}}",
            "reasons": "{{ data.decision.reasons }}",
            "first": "{{ data.decision.reasons.0 }}",
            "missing": "{{ data.nothing.here }}",
            "text": "{{ subject }} is {{ data.verdict }} ({{ data.decision.reasons }})",
            "fixed": [1, True, None],
        },
    }
    assert render(template, e) == {
        "event_type": "shadowroute-promote",
        "client_payload": {
            "route": "r",
            "event_id": e["id"],
            "reasons": ["a", "b"],
            "first": "a",
            "missing": None,
            "text": 'r/c is promote (["a","b"])',
            "fixed": [1, True, None],
        },
    }
    # a placeholder's value is data, never read as a template again
    assert (
        render(
            "{{ data.route }}", event(route="{{ id }}")["data"] | {"data": {"route": "{{ id }}"}}
        )
        == "{{ id }}"
    )


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    delays = [backoff_delay(a, 0.5, 4.0) for a in range(1, 8)]
    for a, d in enumerate(delays, start=1):
        full = min(4.0, 0.5 * 2 ** (a - 1))
        assert full / 2 <= d <= full


# --- config check --------------------------------------------------------------------------------


def test_webhook_config_errors_name_their_key() -> None:
    raw = {
        "routes": [ROUTE],
        "events": {
            "webhooks": [
                {"url": "ftp://example.com/x", "secret": "env:HOOK_SECRET"},
                {"url": "http://127.0.0.1:9/x", "secret": "whsec_inline"},
                {"url": "http://127.0.0.1:9/x", "secret": "env:NOT_SET"},
                {"url": "http://127.0.0.1:9/x", "secret": "env:BAD", "template": "{{ 1+1 }}"},
                {"url": "http://127.0.0.1:9/x", "secret": "env:BAD", "types": ["io.x"]},
            ]
        },
    }
    cfg, problems = config_problems(raw, {"HOOK_SECRET": SECRET, "BAD": "whsec_YWJj"})
    assert cfg is None
    text = "\n".join(problems)
    assert "events.webhooks[0].url: must be an http:// or https:// URL" in text
    assert "events.webhooks[1].secret: " in text and "env:VARIABLE or file:PATH" in text
    assert "events.webhooks[3].template: " in text and "not a dotted path" in text
    assert "events.webhooks[4].types[0]" in text
    # the secrets are read once the rest is valid: a missing variable, a malformed value
    raw["events"]["webhooks"] = [
        {"url": "http://127.0.0.1:9/x", "secret": "env:NOT_SET"},
        {"url": "http://127.0.0.1:9/x", "secret": "env:BAD"},
        {"url": "http://127.0.0.1:9/x", "secret": "env:HOOK_SECRET", "name": "ok"},
    ]
    cfg, problems = config_problems(raw, {"HOOK_SECRET": SECRET, "BAD": "whsec_YWJj"})
    assert problems == [
        "events.webhooks[0].secret: environment variable NOT_SET is not set",
        "events.webhooks[1].secret: the secret's key is 3 bytes; it must be 24 to 64 bytes",
    ]


def test_config_check_reports_a_bad_webhook(tmp_path: Path) -> None:
    doc = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [ROUTE],
        "events": {
            "webhooks": [
                {"url": "http://", "secret": f"file:{tmp_path / 'nothing'}"},
                {"url": "https://ci.example/hook", "secret": f"file:{tmp_path / 'nothing'}"},
            ]
        },
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "shadowroute", "config", "check", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "events.webhooks[0].url: has no host" in out.stderr + out.stdout
    doc["events"]["webhooks"] = doc["events"]["webhooks"][1:]
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "events.webhooks[0].secret: cannot read" in out.stderr + out.stdout
    (tmp_path / "nothing").write_text(SECRET + "\n")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# --- delivery to real receivers -----------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _hook(cfg: Config, i: int = 0) -> tuple[str, Any]:
    return cfg.events.webhook_names()[i], cfg.events.webhooks[i]


async def _until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_delivery_is_signed_per_the_specification(session: aiohttp.ClientSession) -> None:
    recv = await Receiver(SECRET).start()
    try:
        cfg = config([{"url": recv.url, "secret": "env:HOOK_SECRET", "name": "ci",
                       "headers": {"X-Team": "ml"}}])  # fmt: skip
        bus = EventBus([WebhookDestination(*_hook(cfg), session)])
        await bus.start()
        e = event()
        bus.publish(e)
        await _until(lambda: bus.workers[0].stats.delivered == 1)
        await bus.close(1.0)
    finally:
        await recv.stop()
    [d] = recv.got
    assert d.valid
    assert d.headers["webhook-id"] == e["id"]
    assert d.headers["content-type"] == "application/cloudevents+json"
    assert d.headers["x-team"] == "ml"
    assert d.doc == e
    doc = bus.deliveries()["destinations"][0]
    assert doc["name"] == "ci" and doc["delivered"] == 1 and doc["failed"] == 0
    assert doc["last_event_id"] == e["id"]


async def test_retries_keep_the_webhook_id_and_deliver_once(
    session: aiohttp.ClientSession,
) -> None:
    """The receiver answers 503 twice, then 200: three attempts, one webhook-id, each attempt
    signed anew; delivered once as far as the idempotency key shows."""
    recv = await Receiver(SECRET, status=lambda n: 503 if n <= 2 else 200).start()
    try:
        cfg = config([{"url": recv.url, "secret": "env:HOOK_SECRET", "backoff_s": 0.05}])
        bus = EventBus([WebhookDestination(*_hook(cfg), session)])
        await bus.start()
        e = event()
        bus.publish(e)
        await _until(lambda: bus.workers[0].stats.delivered == 1)
        await bus.close(1.0)
    finally:
        await recv.stop()
    assert len(recv.got) == 3 and all(d.valid for d in recv.got)
    assert {d.headers["webhook-id"] for d in recv.got} == {e["id"]}
    assert list(recv.accepted) == [e["id"]]
    doc = bus.deliveries()["destinations"][0]
    assert doc["delivered"] == 1 and doc["attempts"] == 3
    assert doc["retries_by_reason"] == {"http_5xx": 2} and doc["failed"] == 0


async def test_a_refusal_is_not_retried_and_a_dead_receiver_is_given_up(
    session: aiohttp.ClientSession,
) -> None:
    recv = await Receiver(SECRET, status=lambda n: 400).start()
    dead = f"http://127.0.0.1:{free_port()}/hook"
    try:
        cfg = config(
            [
                {"url": recv.url, "secret": "env:HOOK_SECRET", "name": "refuses"},
                {"url": dead, "secret": "env:HOOK_SECRET", "name": "dead", "backoff_s": 0.01,
                 "max_attempts": 3},
            ]
        )  # fmt: skip
        bus = EventBus([WebhookDestination(*_hook(cfg, i), session) for i in (0, 1)])
        await bus.start()
        bus.publish(event())
        await _until(lambda: all(sum(w.stats.failed.values()) == 1 for w in bus.workers))
        await bus.close(1.0)
    finally:
        await recv.stop()
    refuses, gone = bus.deliveries()["destinations"]
    assert len(recv.got) == 1
    assert refuses["failed_by_reason"] == {"rejected": 1} and refuses["attempts"] == 1
    assert refuses["last_error"].startswith("http_4xx: HTTP 400")
    assert gone["failed_by_reason"] == {"attempts_exhausted": 1} and gone["attempts"] == 3
    assert gone["retries_by_reason"] == {"connect": 3}
    registry = new_registry()
    registry.register(EventsCollector(bus))
    text = generate_latest(registry).decode()
    for family in EventsCollector.FAMILIES:
        assert family.exposed in text, family.name
    assert (
        'shadowroute_event_delivery_failures_total{destination="dead",'
        'reason="attempts_exhausted"} 1.0'
    ) in text
    assert (
        'shadowroute_event_delivery_retries_total{destination="dead",reason="connect"} 3.0' in text
    )


async def test_the_type_filter_and_the_template(session: aiohttp.ClientSession) -> None:
    recv = await Receiver(SECRET).start()
    try:
        cfg = config(
            [
                {
                    "url": recv.url,
                    "secret": "env:HOOK_SECRET",
                    "types": [VERDICT_CHANGED],
                    "template": {
                        "event_type": "shadowroute.{{ data.verdict }}",
                        "client_payload": {"route": "{{ data.route }}", "event": "{{ event }}"},
                    },
                }
            ]
        )
        bus = EventBus([WebhookDestination(*_hook(cfg), session)])
        await bus.start()
        bus.publish(event(CIRCUIT_OPENED))
        e = event()
        bus.publish(e)
        await _until(lambda: bus.workers[0].stats.delivered == 1)
        await bus.close(1.0)
    finally:
        await recv.stop()
    [d] = recv.got
    assert d.valid and d.headers["content-type"] == "application/json"
    assert d.doc == {
        "event_type": "shadowroute.promote",
        "client_payload": {"route": "r", "event": e},
    }


async def test_a_full_queue_drops_and_counts_and_shutdown_is_bounded(
    session: aiohttp.ClientSession,
) -> None:
    """A receiver that never answers: the queue fills, later events are dropped and counted
    at once (publish never waits), and close gives up what is left within its grace."""
    hung = asyncio.Event()

    async def hang(request: Any) -> Any:
        await hung.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        cfg = config([{"url": url, "secret": "env:HOOK_SECRET", "timeout_s": 30}])
        bus = EventBus([WebhookDestination(*_hook(cfg), session)], queue_size=3)
        await bus.start()
        t0 = time.monotonic()
        for _ in range(10):
            bus.publish(event())
        assert time.monotonic() - t0 < 0.5
        await asyncio.sleep(0.1)  # the worker took the first one and waits on it
        s = bus.workers[0].stats
        assert s.failed["queue_full"] >= 6
        t0 = time.monotonic()
        await bus.close(0.3)
        assert time.monotonic() - t0 < 2.0
        assert s.delivered == 0 and sum(s.failed.values()) == 10
        assert s.failed["shutdown"] == 10 - s.failed["queue_full"]
    finally:
        hung.set()
        await runner.cleanup()


async def test_subscribers_get_every_event_and_a_failing_one_is_counted() -> None:
    got: list[Any] = []

    async def on_event(e: Any) -> None:
        got.append(e)

    async def broken(e: Any) -> None:
        raise RuntimeError("registry down")

    bus = EventBus(subscribers=[on_event])
    bus.subscribers.append(broken)
    await bus.start()
    e = event()
    bus.publish(e)
    await bus.close(1.0)
    assert got == [e] and bus.subscriber_failures == 1
    assert bus.deliveries()["emitted"] == {VERDICT_CHANGED: 1}


def test_retry_policy_defaults_are_bounded() -> None:
    p = RetryPolicy()
    assert p.max_attempts > 1 and p.give_up_after_s < float("inf")


def test_the_deliveries_endpoint_is_in_the_openapi_document() -> None:
    from shadowroute.api.events import event_routes
    from shadowroute.api.openapi import document

    paths = {r.path for r in event_routes(EventBus())}  # type: ignore[attr-defined]
    assert paths <= set(document()["paths"])
    assert "get" in document()["paths"]["/v1/events/deliveries"]


def test_a_template_nested_too_deep_is_refused() -> None:
    deep: Any = "{{ data.route }}"
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(Exception, match="nested deeper than 32 levels"):
        config([{"url": "http://127.0.0.1:9/x", "secret": "env:HOOK_SECRET", "template": deep}])
    ok = config([{"url": "http://127.0.0.1:9/x", "secret": "env:HOOK_SECRET",
                  "template": {"a": ["{{ id }}", 1, None, {"b": "{{event}}"}]}}])  # fmt: skip
    assert ok.events.webhooks[0].template is not None


async def test_the_watch_loop_publishes_changes_and_survives_a_failing_read() -> None:
    from shadowroute.events.bus import watch_loop

    got: list[Any] = []

    async def on_event(e: Any) -> None:
        got.append(e)

    snaps = iter(
        [
            Snapshot(circuits={("r", "c"): False}),
            RuntimeError("reader gone"),
            Snapshot(circuits={("r", "c"): True}),
        ]
    )

    def snapshot() -> Snapshot:
        s = next(snaps, Snapshot(circuits={("r", "c"): True}))
        if isinstance(s, Exception):
            raise s
        return s

    bus = EventBus(subscribers=[on_event])
    task = asyncio.create_task(watch_loop(snapshot, Detector(instance="t"), bus, interval_s=0.01))
    await _until(lambda: len(got) >= 1)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await bus.close(1.0)
    assert [e["type"] for e in got] == [CIRCUIT_OPENED]
