"""Forged evidence (issue "Evidence nobody can forge"): a client or a label source that tries
to steer the verdict. Each test is one attack against the real stack (embedded transport,
real model servers on loopback); the honest verdict must stay what honest traffic gives, and
the attempt must be visible (a counter, an API field or a 4xx with the reason)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import relhelp
import yaml
from relhelp import report
from relkafka import consume_keys, kafka_transport, unique_prefix

from proxyutil import free_port, running_proxy, settle, wait_ready
from shadowroute.configfile import read_secret_file
from shadowroute.core.config import Config, ConfigError, parse_config
from shadowroute.runtime import Stack, embedded_stack
from shadowroute.stream.kafka import create_topics
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
            await send_under(client, admin, ids, HONEST_X, len(ids))  # pending their label
            await send_under(client, admin, ids, FORGED_X, 2 * len(ids))
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


async def test_an_id_replayed_after_its_label_joined_adds_no_evidence(tmp_path: Path) -> None:
    """Client-supplied ids: once a request's label has joined it, requests replayed under
    the same id (with an input on which the bad candidate is right) join nothing: counted as
    duplicate ids, the verdict stays. Before, each replay joined the stored label again."""
    async with forgery_stack(tmp_path) as (stack, client):
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}", timeout=10)
        async with admin:
            ids, before = await labelled_client_ids(client, admin, 30)
            for k in range(2, 5):  # each id replayed three times, after its label joined
                await send_under(client, admin, ids, FORGED_X, k * len(ids))
            d = await decision(admin, len(ids))
            metrics = (await admin.get("/metrics")).text
    report("forgery: ids replayed after their label", integrity=d.get("integrity"),
           verdict=d["verdict"], before=before["verdict"])  # fmt: skip
    assert d["labelled"] == len(ids)
    assert d["integrity"]["duplicate_ids"] == 3 * len(ids)
    assert f"shadowroute_duplicate_ids_total {float(3 * len(ids))}" in metrics
    assert d["verdict"] == before["verdict"] == "reject"


async def test_ids_replayed_to_a_new_candidate_revision_add_no_evidence(tmp_path: Path) -> None:
    """A new revision of the candidate starts fresh evidence. A client then replays, under
    ids whose labels it knows, requests on which the new revision is right. Each replay was
    the new revision's first entry under its id, and joined the stored label; now the id is
    the first request's, and a replay joins nothing, for any candidate revision."""
    async with forgery_stack(tmp_path) as (stack, client):
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}", timeout=10)
        async with admin:
            ids, _ = await labelled_client_ids(client, admin, 30)
            base = "/v1/routes/fraud/candidates/cand"
            r = await admin.put(f"{base}/revision", json={"revision": "b"})
            assert r.status_code == 200, r.text
            await send_under(client, admin, ids, FORGED_X, len(ids))  # revision b's pairs
            await asyncio.sleep(0.3)
            d = (await admin.get(f"{base}/decision")).json()
            metrics = (await admin.get("/metrics")).text
    report("forgery: ids replayed to a new revision", revision=d["revision"],
           labelled=d["labelled"], integrity=d.get("integrity"), verdict=d["verdict"])  # fmt: skip
    assert d["revision"]["candidate"]["revision"] == "b" and d["pairs"] == len(ids)
    assert d["labelled"] == 0
    assert d["integrity"]["duplicate_ids"] == len(ids)
    assert f"shadowroute_duplicate_ids_total {float(len(ids))}" in metrics
    assert d["verdict"] == "hold"


async def labelled_client_ids(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, n: int
) -> tuple[list[str], dict[str, Any]]:
    """``n`` honest requests under client-supplied ids, their labels posted and joined: the
    ids and the decision then."""
    ids = [f"order-{i}" for i in range(n)]
    await send_under(client, admin, ids, HONEST_X, n)
    r = await post_labels(admin, [{"id": i, "label": TRUE_LABEL} for i in ids])
    assert r.status_code == 202, r.text
    d = await decision(admin, n)
    assert d["labelled"] == n, d
    return ids, d


async def send_under(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, ids: list[str], x: float, pairs: int
) -> None:
    """One request under each client-supplied id; returns once the candidate's decision
    counts ``pairs`` pairs in all (committed, with their pending entries), and fails if it
    does not within 10 s."""
    for rid in ids:
        await predict(client, x, rid)
    deadline = time.monotonic() + 10.0
    while True:
        d = (await admin.get("/v1/routes/fraud/candidates/cand/decision")).json()
        if d["pairs"] >= pairs:
            assert d["pairs"] == pairs, d
            return
        assert time.monotonic() < deadline, d
        await asyncio.sleep(0.05)


async def honest_traffic(client: httpx.AsyncClient, admin: httpx.AsyncClient, n: int) -> list[str]:
    ids = [await predict(client, HONEST_X) for _ in range(n)]
    await asyncio.sleep(0.5)  # the pairs are committed (a label that comes first waits)
    r = await post_labels(admin, [{"id": i, "label": TRUE_LABEL} for i in ids])
    assert r.status_code == 202, r.text
    return ids


async def test_a_label_from_the_future_is_refused_and_moves_no_watermark(
    tmp_path: Path,
) -> None:
    """Attack 2: one label with ``ts`` = 9e15 used to raise the labels watermark so that every
    pending pair expired at once (60 pairs + 60 honest labels → labelled 0)."""
    async with forgery_stack(tmp_path) as (stack, client):
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}", timeout=10)
        async with admin:
            ids = [await predict(client, HONEST_X) for _ in range(60)]
            await asyncio.sleep(0.5)  # the pairs are committed, pending their labels
            far = [{"id": "nobody", "label": 0, "ts": 9 * 10**15},
                   {"id": "nobody-2", "label": 0, "ts": 1}]  # fmt: skip
            r_far = await post_labels(admin, far)
            r = await post_labels(admin, [{"id": i, "label": TRUE_LABEL} for i in ids])
            assert r.status_code == 202, r.text
            d = await decision(admin, 60)
        assert stack.comparator is not None
        wm = stack.comparator.positions().labels_wm
    report("forgery: label from the future", status=r_far.status_code, answer=r_far.json(),
           labelled=d["labelled"], labels_wm=wm)  # fmt: skip
    assert r_far.status_code == 400
    reasons = {x["id"]: x["reason"] for x in r_far.json()["labels"]}
    assert reasons == {"nobody": "ts_in_future", "nobody-2": "ts_too_old"}
    assert d["labelled"] == 60
    assert wm <= time.time() * 1000 + 1000


async def test_a_conflicting_label_is_reported_and_decides_nothing(tmp_path: Path) -> None:
    """Attack 3: a second label for an id with another value used to be answered 202
    ``accepted`` and silently dropped; whoever posted first decided. Policy: the first label
    stays; a later one with another value is a conflict, named in the answer and counted
    (``integrity.conflicting_labels``, ``shadowroute_conflicting_labels_total``); the same
    value again is an idempotent duplicate."""
    async with forgery_stack(tmp_path) as (stack, client):
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}", timeout=10)
        async with admin:
            ids = await honest_traffic(client, admin, 40)
            forged = await post_labels(admin, [{"id": i, "label": HONEST_X + 5} for i in ids])
            again = await post_labels(admin, [{"id": i, "label": TRUE_LABEL} for i in ids[:5]])
            d = await decision(admin, 40)
            metrics = (await admin.get("/metrics")).text
    body = forged.json()
    report("forgery: conflicting labels", status=forged.status_code, conflicts=body["conflicts"],
           integrity=d["integrity"], verdict=d["verdict"])  # fmt: skip
    assert forged.status_code == 202
    assert body["accepted"] == 0 and body["conflicts"] == 40
    assert {x["status"] for x in body["labels"]} == {"conflict"}
    assert again.status_code == 202 and again.json()["duplicates"] == 5
    assert d["integrity"]["conflicting_labels"] == 40
    assert d["integrity"]["duplicate_labels"] == 5
    assert "shadowroute_conflicting_labels_total 40.0" in metrics
    assert d["labelled"] == 40 and d["verdict"] == "reject"


async def test_label_values_and_the_waiting_backlog_are_bounded(tmp_path: Path) -> None:
    """Attack 5: labels for ids that never existed, or huge label values, were all answered
    202 and kept for the TTL. Now a value over ``labels.max_value_bytes`` is refused (400,
    ``label_too_large``), and once ``labels.max_waiting_per_route`` labels wait for their
    pair new ones are refused (429, ``backlog_full``, counted); honest labels whose pair is
    there still join."""
    top = {"labels": {"max_waiting_per_route": 100}}
    async with forgery_stack(tmp_path, **top) as (stack, client):
        admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}", timeout=10)
        async with admin:
            huge = await post_labels(admin, [{"id": "big", "label": "x" * (1 << 20)}])
            flood = [{"id": f"never-{i}", "label": 1} for i in range(150)]
            r_flood = await post_labels(admin, flood)
            ids = await honest_traffic(client, admin, 30)
            d = await decision(admin, 30)
            metrics = (await admin.get("/metrics")).text
    body = r_flood.json()
    report("forgery: label flood", huge=huge.status_code, flood=r_flood.status_code,
           accepted=body["accepted"], rejected=body["rejected"])  # fmt: skip
    assert huge.status_code == 400
    assert huge.json()["labels"] == [
        {"id": "big", "status": "refused", "reason": "label_too_large"}
    ]
    assert r_flood.status_code == 429
    assert body["accepted"] == 100 and body["rejected"] == 50
    assert {x["reason"] for x in body["labels"]} == {"backlog_full"}
    assert 'shadowroute_labels_waiting{route=""} 100.0' in metrics
    assert 'shadowroute_deadletter_records_total{reason="label:backlog_full"} 50.0' in metrics
    assert 'shadowroute_labels_refused_total{reason="backlog_full"} 50.0' in metrics
    assert 'shadowroute_labels_refused_total{reason="label_too_large"} 1.0' in metrics
    assert d["labelled"] == len(ids)


class LabelPosters:
    """Concurrent label posters against one admin port; remembers every id answered 202."""

    def __init__(self, admin_port: int, workers: int = 4) -> None:
        self.base = f"http://127.0.0.1:{admin_port}"
        self.workers = workers
        self.acked: list[str] = []
        self.sent = 0
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._post(w)) for w in range(self.workers)]

    async def join(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 30)

    async def _post(self, w: int) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=15) as c:
            for b in range(10_000):
                if self.stop.is_set():
                    return
                ids = [f"w{w}-b{b}-{i}" for i in range(20)]
                self.sent += len(ids)
                try:
                    r = await post_labels(c, [{"id": i, "label": 1} for i in ids])
                except httpx.HTTPError:
                    return
                if r.status_code == 202:
                    self.acked.extend(ids)


def serve_process(cfg: dict[str, Any], tmp: Path) -> subprocess.Popen[bytes]:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen(
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def serve_config(prod: ModelServer, admin_port: int, **top: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "routes": [{"name": "fraud", "protocol": "kserve-v1", "task": "regression",
                    "production": {"name": "p", "url": prod.url}}],
        **top,
    }  # fmt: skip


async def kill_9_under_label_load(cfg: dict[str, Any], tmp: Path) -> LabelPosters:
    """Start ``shadowroute serve``, post labels from 4 clients, ``kill -9`` it after 1.5 s."""
    proc = serve_process(cfg, tmp)
    posters = LabelPosters(cfg["admin"]["port"])
    try:
        await wait_ready(f"{posters.base}/readyz")
        posters.start()
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        await posters.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return posters


async def test_labels_answered_202_survive_kill_9(tmp_path: Path) -> None:
    """Attack 6: labels answered 202 in the last ~60 ms before a ``kill -9`` were lost,
    though producers are told not to resend accepted labels. Now the embedded router answers
    only after the commit: every acknowledged label is in the store after the kill."""
    prod = await ModelServer(kserve_reply).start()
    state = tmp_path / "state.sqlite"
    cfg = serve_config(prod, free_port(), comparator={"state_path": str(state)})
    try:
        posters = await kill_9_under_label_load(cfg, tmp_path)
    finally:
        await prod.stop()
    conn = sqlite3.connect(str(state))  # opening recovers the WAL, as a restart does
    try:
        stored = {row[0] for row in conn.execute("SELECT key FROM labels")}
    finally:
        conn.close()
    lost = [i for i in posters.acked if i not in stored]
    report("forgery: labels answered 202 across kill -9", sent=posters.sent,
           acknowledged=len(posters.acked), stored=len(stored), lost=len(lost))  # fmt: skip
    assert len(posters.acked) >= 200  # the kill came under load
    assert not lost


@pytest.mark.kafka
async def test_labels_answered_202_survive_kill_9_with_kafka(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Attack 6 with the Kafka transport: a label answered 202 was acknowledged by the broker
    or written to the spool first; after the kill a restarted router drains the spool, and
    every acknowledged label is in the labels topic."""
    transport = kafka_transport(kafka_bootstrap, unique_prefix(), tmp_path / "spool")
    await create_topics(transport)
    prod = await ModelServer(kserve_reply).start()
    kafka = {"kind": "kafka", "bootstrap": kafka_bootstrap, "topic_prefix": transport.topic_prefix,
             "spool": {"path": str(tmp_path / "spool")}}  # fmt: skip
    cfg = serve_config(prod, free_port(), transport=kafka)
    try:
        posters = await kill_9_under_label_load(cfg, tmp_path)
        again = serve_process(cfg, tmp_path)  # drains what the first one spooled
        try:
            await wait_ready(f"{posters.base}/readyz")
            topic = f"{transport.topic_prefix}.labels"
            keys, _ = await consume_keys(kafka_bootstrap, topic, len(posters.acked))
        finally:
            again.send_signal(signal.SIGTERM)
            await asyncio.to_thread(again.wait, 30)
    finally:
        await prod.stop()
    lost = [i for i in posters.acked if i.encode() not in keys]
    report("forgery: labels answered 202 across kill -9 (kafka)", sent=posters.sent,
           acknowledged=len(posters.acked), in_topic=len(keys), lost=len(lost))  # fmt: skip
    assert len(posters.acked) >= 200
    assert not lost


# --- attack 7: shadow controls belong to the operator ---------------------------------------

ADMIN_TOKEN = "Adm1n-t0ken-for-tests"


def shadow_config(
    prod: ModelServer, cands: list[dict[str, Any]], *, environ: dict[str, str] | None = None,
    **mirror: Any,
) -> Config:  # fmt: skip
    raw = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"token": ADMIN_TOKEN},
        "mirror": mirror,
        "routes": [{"name": "fraud", "protocol": "kserve-v1", "task": "regression",
                    "production": {"name": "p", "url": prod.url}, "candidates": cands}],
    }  # fmt: skip
    return parse_config(raw, environ or {}, read_secret_file)


def raw_post(extra: bytes = b"", rid: bytes | None = None) -> bytes:
    return relhelp.post(b'{"instances": [[1.5]]}', rid=rid, extra=extra)


async def send_all(port: int, requests: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for data in requests:
            writer.write(data)
            status, _, _ = await asyncio.wait_for(relhelp.read_response(reader), 10)
            assert status.startswith(b"HTTP/1.1 200"), status
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_clients_cannot_force_or_skip_mirroring(tmp_path: Path) -> None:
    """Attack 7a: any client could send ``X-Shadow-Mirror: force`` and so choose the requests
    the candidate is judged on (at fraction 0.05, 200 of 200 forced requests mirrored). Now
    the header counts only from ``mirror.control_from`` or with the admin token; otherwise it
    is ignored, counted and never forwarded."""
    prod = await ModelServer(kserve_reply).start()
    cand = await ModelServer(kserve_reply).start()
    cands = [{"name": "c", "url": cand.url, "fraction": 0.05}]
    try:
        cfg = shadow_config(prod, cands)
        async with running_proxy(cfg) as (dp, _):
            forced = [raw_post(b"X-Shadow-Mirror: force\r\n", b"f-%d" % i) for i in range(200)]
            await send_all(dp.port, forced)
            await settle(dp)
            by_client = len(cand.seen)
            skipped = [raw_post(b"x-shadow-mirror: skip\r\n", b"s-%d" % i) for i in range(200)]
            await send_all(dp.port, skipped)
            await settle(dp)
            skipped_mirrored = len(cand.seen) - by_client
            with_token = [
                raw_post(b"X-Shadow-Mirror: force; token=" + ADMIN_TOKEN.encode() + b"\r\n")
                for _ in range(20)
            ]
            await send_all(dp.port, with_token)
            await settle(dp)
            by_operator = len(cand.seen) - by_client - skipped_mirrored
            ignored = getattr(dp.stats, "control_ignored", 0)  # absent before the fix
        trusted = shadow_config(prod, cands, control_from=["127.0.0.0/8"])
        async with running_proxy(trusted) as (dp, _):
            before = len(cand.seen)
            await send_all(dp.port, [raw_post(b"X-Shadow-Mirror: force\r\n") for _ in range(20)])
            await settle(dp)
            from_allowed = len(cand.seen) - before
    finally:
        await prod.stop()
        await cand.stop()
    report("forgery: client mirror control", forced_mirrored=by_client,
           skipped_mirrored=skipped_mirrored, token_mirrored=by_operator,
           allow_listed_mirrored=from_allowed, ignored=ignored)  # fmt: skip
    assert by_client <= 30  # sampled at 0.05 as any request: ~10 of 200, not 200
    assert skipped_mirrored >= 1  # skip was not honoured either: sampled as usual
    assert ignored == 400
    assert by_operator == 20 and from_allowed == 20
    assert all(b"x-shadow-mirror" not in s.headers for s in prod.seen + cand.seen)


async def test_client_marker_and_credentials_stay_where_they_belong(tmp_path: Path) -> None:
    """Attack 7b: a client-sent ``X-Shadow-Request: 1`` reached production (which may skip side
    effects for shadow copies), and the client's ``Authorization`` and ``Cookie`` went to every
    candidate. Now the marker is removed before production and candidates, credentials go to
    production only unless a candidate forwards them, and a candidate can carry its own
    secret header (from an environment variable or a file)."""
    prod = await ModelServer(kserve_reply).start()
    plain = await ModelServer(kserve_reply).start()
    trusted = await ModelServer(kserve_reply).start()
    key_file = tmp_path / "key"
    key_file.write_text("file-secret-9\n")
    cands = [
        {"name": "plain", "url": plain.url, "secret_headers": {"X-Api-Key": "env:CAND_KEY"}},
        {"name": "trusted", "url": trusted.url, "forward_private_headers": True,
         "secret_headers": {"X-Api-Key": f"file:{key_file}"}},
    ]  # fmt: skip
    creds = b"Authorization: Bearer client-secret\r\nCookie: session=client-cookie\r\n"
    try:
        cfg = shadow_config(prod, cands, environ={"CAND_KEY": "env-secret-7"})
        async with running_proxy(cfg) as (dp, _):
            await send_all(dp.port, [raw_post(b"X-Shadow-Request: 1\r\n" + creds)])
            await settle(dp)
    finally:
        for s in (prod, plain, trusted):
            await s.stop()
    [p], [c1], [c2] = prod.seen, plain.seen, trusted.seen
    report("forgery: marker and credentials", production=sorted(k.decode() for k in p.headers),
           plain=sorted(k.decode() for k in c1.headers))  # fmt: skip
    assert b"x-shadow-request" not in p.headers
    assert p.headers[b"authorization"] == b"Bearer client-secret"
    assert p.headers[b"cookie"] == b"session=client-cookie"
    assert b"x-api-key" not in p.headers
    assert c1.headers[b"x-shadow-request"] == b"1"  # the router's own marker, once
    assert b"authorization" not in c1.headers and b"cookie" not in c1.headers
    assert c1.headers[b"x-api-key"] == b"env-secret-7"
    assert c2.headers[b"authorization"] == b"Bearer client-secret"
    assert c2.headers[b"cookie"] == b"session=client-cookie"
    assert c2.headers[b"x-api-key"] == b"file-secret-9"
    assert c1.body == c2.body == p.body


# --- attack 4: the admin port, safe by default ------------------------------------------------


def test_the_admin_port_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    """Attack 4a: no token by default, even with the admin port on every interface. Now a
    config that puts the admin plane beyond loopback without a token is refused (``serve``
    does not start), unless ``admin.insecure`` says so on purpose."""
    route = {"name": "r", "protocol": "kserve-v1",
             "production": {"name": "p", "url": "http://127.0.0.1:1"}}  # fmt: skip
    refused = []
    for host in ("0.0.0.0", "::", "10.1.2.3", "shadowroute.example.com"):
        try:
            parse_config({"admin": {"host": host}, "routes": [route]}, environ={})
        except ConfigError as exc:
            refused.append(host)
            assert "admin: host" in str(exc) and "token" in str(exc)
    assert refused == ["0.0.0.0", "::", "10.1.2.3", "shadowroute.example.com"]
    for ok in (
        {"admin": {"host": "127.0.0.1"}},
        {"admin": {"host": "::1"}},
        {"admin": {"host": "0.0.0.0", "insecure": True}},
        {"admin": {"host": "0.0.0.0", "token": "t"}},
    ):
        parse_config({**ok, "routes": [route]}, environ={})
    parse_config({"admin": {"host": "0.0.0.0"}, "routes": [route]},
                 environ={"SHADOWROUTE_API_TOKEN": "from-env"})  # fmt: skip
    path = tmp_path / "open.yaml"
    open_cfg = {"admin": {"host": "0.0.0.0", "port": free_port()},
                "listen": {"port": free_port()}, "routes": [route]}  # fmt: skip
    path.write_text(yaml.safe_dump(open_cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWROUTE_")}
    out = subprocess.run(
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    report("forgery: admin beyond loopback without a token", refused=refused,
           serve_exit=out.returncode)  # fmt: skip
    assert out.returncode != 0 and "insecure" in out.stderr


async def test_browsers_and_rebinding_pages_cannot_write(tmp_path: Path) -> None:
    """Attack 4b: labels were accepted as ``text/plain`` or form bodies from a foreign
    ``Origin`` (no CORS preflight needed), and the Host header was not checked, so a
    DNS-rebinding page reached ``PUT /v1/mirroring``. Now: 415 for other content types, 403
    for a foreign Origin on a write, 421 for an unknown Host, each counted; reads can need a
    token too."""
    admin_cfg = {"token": ADMIN_TOKEN, "read_token": "r3ad", "allowed_hosts": ["*.svc"]}
    async with forgery_stack(tmp_path, admin=admin_cfg) as (stack, _):
        base = f"http://127.0.0.1:{stack.admin_port}"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        label = b'{"id": "a", "label": 1}'
        got: dict[str, int] = {}
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            form = "application/x-www-form-urlencoded"
            for name, ctype in (("text/plain", "text/plain"), ("form", form), ("none", None)):
                h = dict(auth) if ctype is None else {**auth, "Content-Type": ctype}
                got[f"labels {name}"] = (
                    await c.post("/v1/labels", content=label, headers=h)
                ).status_code
            cross = {**auth, "Origin": "https://evil.example", "Content-Type": "application/json"}
            got["labels cross-origin"] = (
                await c.post("/v1/labels", content=label, headers=cross)
            ).status_code
            put = await c.put("/v1/mirroring", content=b'{"enabled": false}', headers=cross)
            got["mirroring cross-origin"] = put.status_code
            rebind = {**auth, "Host": f"rebind.evil.example:{stack.admin_port}"}
            got["mirroring rebinding"] = (
                await c.put("/v1/mirroring", content=b'{"enabled": false}', headers=rebind)
            ).status_code
            got["routes rebinding"] = (await c.get("/v1/routes", headers=rebind)).status_code
            got["routes no read token"] = (await c.get("/v1/routes")).status_code
            got["routes read token"] = (
                await c.get("/v1/routes", headers={"Authorization": "Bearer r3ad"})
            ).status_code
            got["healthz"] = (await c.get("/healthz")).status_code
            same = {**auth, "Origin": base, "Content-Type": "application/json"}
            got["labels same-origin"] = (
                await c.post("/v1/labels", content=label, headers=same)
            ).status_code
            svc = {**auth, "Host": "shadowroute.ml.svc:9090", "Content-Type": "application/json"}
            got["labels allowed host"] = (
                await c.post("/v1/labels", content=b'{"id": "b", "label": 1}', headers=svc)
            ).status_code
            mirroring = (await c.get("/v1/mirroring", headers=auth)).json()["enabled"]
            metrics = (await c.get("/metrics")).text
    report("forgery: browser and rebinding writes", statuses=got)
    assert got == {
        "labels text/plain": 415, "labels form": 415, "labels none": 415,
        "labels cross-origin": 403, "mirroring cross-origin": 403, "mirroring rebinding": 421,
        "routes rebinding": 421, "routes no read token": 401, "routes read token": 200,
        "healthz": 200, "labels same-origin": 202, "labels allowed host": 202,
    }  # fmt: skip
    assert mirroring is True  # nothing switched it off
    assert 'shadowroute_admin_refused_total{reason="origin"} 2.0' in metrics
    assert 'shadowroute_admin_refused_total{reason="host"} 2.0' in metrics
    assert 'shadowroute_admin_refused_total{reason="read_token"} 1.0' in metrics
    assert 'shadowroute_labels_refused_total{reason="content_type"} 3.0' in metrics
