"""Kafka as users run it: a 3-node KRaft cluster (combined broker+controller nodes, static
voters) from the same jars, topics with replication 3 and ``min.insync.replicas`` 2.

One cluster serves the module; every test leaves all its nodes running."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from relhelp import report

from kafka_harness import KafkaCluster, started_cluster
from proxyutil import free_port, wait_ready
from shadowroute.core.config import Topics, Transport
from shadowroute.stream.kafka import (
    TopicSettingsError,
    create_topics,
    describe_text,
    describe_topics,
)
from upstreams import ModelServer

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    with started_cluster(3) as c:
        yield c


def _transport(cluster: KafkaCluster, prefix: str, **topics: object) -> Transport:
    return Transport(
        kind="kafka",
        bootstrap=cluster.bootstrap,
        topic_prefix=prefix,
        acks="all",
        topics=Topics(partitions=3, replication=3, **topics),  # type: ignore[arg-type]
    )


async def test_topics_are_made_for_failover_and_described(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    prefix = "f" + uuid.uuid4().hex[:8]
    transport = _transport(cluster, prefix)
    created = await create_topics(transport)
    assert len(created) == 6  # pairs, labels, scores, deadletter, events, assessments
    doc = await describe_topics(transport)
    assert doc["brokers"] == [1, 2, 3]
    for name, t in doc["topics"].items():
        assert t["exists"], name
        assert t["configs"]["min.insync.replicas"] == "2"
        assert len(t["partitions"]) == 3
        for p in t["partitions"]:
            assert sorted(p["replicas"]) == [1, 2, 3]
            assert p["leader"] in (1, 2, 3)
    text = describe_text(doc)
    assert f"{prefix}.pairs: 3 partitions" in text and "min.insync.replicas=2" in text
    assert "UNDER-REPLICATED" not in text

    # Through the CLI, as an operator would.
    cfg = {"transport": transport.model_dump(mode="json"), "routes": [
        {"name": "r", "protocol": "kserve-v1",
         "production": {"name": "p", "url": "http://127.0.0.1:9"}}]}  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shadowroute", "topics", "describe", "-c", str(path), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["topics"][f"{prefix}.labels"]["exists"] is True


async def test_replication_beyond_the_cluster_is_refused_with_the_reason(
    cluster: KafkaCluster,
) -> None:
    transport = Transport(
        kind="kafka",
        bootstrap=cluster.bootstrap,
        topic_prefix="g" + uuid.uuid4().hex[:8],
        topics=Topics(partitions=1, replication=4),
    )
    with pytest.raises(TopicSettingsError, match="replication is 4 but the cluster has 3"):
        await create_topics(transport)
    with pytest.raises(ValueError, match="cannot exceed replication"):
        Topics(replication=2, min_insync_replicas=3)


async def test_a_dead_broker_shows_in_describe_and_comes_back(cluster: KafkaCluster) -> None:
    prefix = "h" + uuid.uuid4().hex[:8]
    transport = _transport(cluster, prefix)
    await create_topics(transport)
    cluster.kill(3)
    try:
        text = ""
        for _ in range(60):  # the controller fences the dead broker within its session
            text = describe_text(await describe_topics(transport))
            if "UNDER-REPLICATED" in text:
                break
            await asyncio.sleep(0.5)
        assert "UNDER-REPLICATED" in text
        assert "BELOW MIN ISR" not in text  # 2 of 3 in sync: writes go on
    finally:
        cluster.start(3)


# --- failover under load -------------------------------------------------------------------

N_REQUESTS = 2400
RATE = 120.0  # requests per second, one client
LABEL_BATCH = 50


def _configs(
    cluster: KafkaCluster, tmp_path: Path, prefix: str, prod: str, cand: str
) -> tuple[Path, Path, int, int, int]:
    port, serve_admin, compare_admin = free_port(), free_port(), free_port()
    transport = _transport(cluster, prefix).model_dump(mode="json")
    transport["spool"] = {"path": str(tmp_path / "spool")}
    routes = [{"name": "r", "protocol": "kserve-v1", "task": "regression",
               "production": {"name": "p", "url": prod},
               "candidates": [{"name": "c", "url": cand, "fraction": 1.0}]}]  # fmt: skip
    serve = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": serve_admin},
        "transport": transport,
        "routes": routes,
    }
    compare = {
        "admin": {"host": "127.0.0.1", "port": compare_admin},
        "transport": transport,
        "comparator": {"state_path": str(tmp_path / "compare.sqlite")},
        "routes": routes,
    }
    sp, cp = tmp_path / "serve.yaml", tmp_path / "compare.yaml"
    sp.write_text(yaml.safe_dump(serve))
    cp.write_text(yaml.safe_dump(compare))
    return sp, cp, port, serve_admin, compare_admin


async def _load(port: int, admin: int, told: dict[str, int]) -> None:
    """N_REQUESTS at RATE, each answered request's label posted in batches; counts what the
    clients were told (200 answers, labels accepted)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    batch: list[bytes] = []
    async with httpx.AsyncClient(timeout=10) as c:
        for i in range(N_REQUESTS):
            delay = started + i / RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = f"f-{i:06d}"
            r = await c.post(
                f"http://127.0.0.1:{port}/p",
                content=b'{"instances": [[%d]]}' % (i % 7),
                headers={"x-request-id": rid},
            )
            if r.status_code == 200:
                told["answered"] += 1
                batch.append(orjson.dumps({"id": rid, "label": float(i % 7) + 1.0}))
            if len(batch) >= LABEL_BATCH or (i == N_REQUESTS - 1 and batch):
                sent_at = loop.time()
                r = await c.post(
                    f"http://127.0.0.1:{admin}/v1/labels",
                    content=b"\n".join(batch),
                    headers={"content-type": "application/x-ndjson"},
                )
                told["label_answer_ms"] = max(
                    told["label_answer_ms"], round((loop.time() - sent_at) * 1000)
                )
                if r.status_code == 202:
                    told["labels"] += len(batch)
                batch = []


async def _topic_ids(bootstrap: str, topic: str, want: int) -> list[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    ids: list[str] = []
    try:
        async with asyncio.timeout(120):
            while len(set(ids)) < want:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    ids += [orjson.loads(m.value)["id"] for m in msgs if m.value]
            for msgs in (await consumer.getmany(timeout_ms=2000)).values():  # any duplicates
                ids += [orjson.loads(m.value)["id"] for m in msgs if m.value]
    finally:
        await consumer.stop()
    return ids


async def _leader_of(cluster: KafkaCluster, prefix: str) -> int:
    doc = await describe_topics(_transport(cluster, prefix))
    return int(doc["topics"][f"{prefix}.pairs"]["partitions"][0]["leader"])


async def _controller(cluster: KafkaCluster, prefix: str) -> int:
    return int((await describe_topics(_transport(cluster, prefix)))["controller"])


async def _run_with_fault(
    cluster: KafkaCluster, tmp_path: Path, fault: Callable[[str], Awaitable[None]]
) -> dict[str, object]:
    prefix = "l" + uuid.uuid4().hex[:8]
    await create_topics(_transport(cluster, prefix))
    prod, cand = await ModelServer().start(), await ModelServer().start()
    sp, cp, port, serve_admin, compare_admin = _configs(
        cluster, tmp_path, prefix, prod.url, cand.url
    )
    logs = [(tmp_path / f"{cmd}.log").open("wb") for cmd in ("serve", "compare")]
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - long-lived children, stopped below
            [sys.executable, "-m", "shadowroute", cmd, "-c", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for (cmd, path), log in zip((("serve", sp), ("compare", cp)), logs, strict=True)
    ]
    told = {"answered": 0, "labels": 0, "label_answer_ms": 0}
    try:
        await wait_ready(f"http://127.0.0.1:{serve_admin}/readyz", timeout=60)
        await wait_ready(f"http://127.0.0.1:{compare_admin}/readyz", timeout=60)

        async def delayed_fault() -> None:
            await asyncio.sleep(4.0)
            await fault(prefix)

        await asyncio.gather(_load(port, serve_admin, told), delayed_fault())
        for node in range(1, cluster.n + 1):
            assert cluster.running(node), f"the fault left node {node} down"
        decision: dict = {}
        url = f"http://127.0.0.1:{compare_admin}/v1/routes/r/candidates/c/decision"
        async with httpx.AsyncClient(timeout=10) as c:
            for _ in range(900):  # the spool drains, the comparator catches up
                decision = (await c.get(url)).json()
                if decision["labelled"] >= told["labels"] and decision["pairs"] >= told["answered"]:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(3.0)  # anything counted twice would show now
            decision = (await c.get(url)).json()
        ids = await _topic_ids(cluster.bootstrap, f"{prefix}.pairs", told["answered"])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in logs:
            log.close()
        await prod.stop()
        await cand.stop()
    serve_log = (tmp_path / "serve.log").read_text(errors="replace")
    return {"told": told, "decision": decision, "ids": ids, "serve_log": serve_log}


_EPISODE = re.compile(
    r"kafka delivery to \S+\.(pairs|labels) recovered after ([0-9.]+) s \((\d+) bytes"
)


def _check_exactly_once(result: dict[str, object], check: str) -> None:
    log = str(result["serve_log"])
    stalls: dict[str, float] = {}
    spool_kb: dict[str, float] = {}
    for topic, seconds, waiting in _EPISODE.findall(log):
        stalls[topic] = max(stalls.get(topic, 0.0), float(seconds))
        spool_kb[topic] = max(spool_kb.get(topic, 0.0), int(waiting) / 1024)
    report(
        check,
        rate_per_s=RATE,
        requests=N_REQUESTS,
        longest_delivery_stall_s=stalls,
        spool_kib_at_recovery=spool_kb,
        producer_replacements=log.count("replaced after"),
        slowest_label_answer_ms=result["told"]["label_answer_ms"],  # type: ignore[index]
        comparator=result["decision"]
        and {
            k: result["decision"][k]
            for k in ("pairs", "labelled")  # type: ignore[index]
        },
    )
    told = result["told"]
    decision = result["decision"]
    ids = result["ids"]
    assert isinstance(told, dict) and isinstance(decision, dict) and isinstance(ids, list)
    assert told["answered"] == N_REQUESTS and told["labels"] == N_REQUESTS
    assert set(ids) == {f"f-{i:06d}" for i in range(N_REQUESTS)}, "every answered id in the topic"
    assert decision["pairs"] == N_REQUESTS, decision
    assert decision["labelled"] == N_REQUESTS, decision


async def test_partition_leader_kill_loses_and_doubles_nothing(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    async def fault(prefix: str) -> None:
        leader = await _leader_of(cluster, prefix)
        cluster.kill(leader)
        await asyncio.sleep(8.0)
        await asyncio.to_thread(cluster.start, leader)

    _check_exactly_once(await _run_with_fault(cluster, tmp_path, fault), "kafka: leader kill")


async def test_controller_leader_kill_loses_and_doubles_nothing(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    async def fault(prefix: str) -> None:
        controller = await _controller(cluster, prefix)
        cluster.kill(controller)
        await asyncio.sleep(8.0)
        await asyncio.to_thread(cluster.start, controller)

    _check_exactly_once(
        await _run_with_fault(cluster, tmp_path, fault), "kafka: controller-leader kill"
    )


@pytest.mark.parametrize("last_leader", ["last", "first"])
async def test_full_outage_heals_by_itself(
    cluster: KafkaCluster, tmp_path: Path, last_leader: str
) -> None:
    """All nodes killed at once and brought back: the last known leader of the pairs topic's
    partition 0 last, after the others have formed a quorum and the batches in flight at the
    crash have expired (past the producer's 30 s request timeout: the case that once jammed
    the sink for good), or first."""

    async def fault(prefix: str) -> None:
        leader = await _leader_of(cluster, prefix)
        for node in range(1, cluster.n + 1):
            cluster.kill(node)
        await asyncio.sleep(3.0)
        others = [n for n in range(1, cluster.n + 1) if n != leader]
        first, second = (others, [leader]) if last_leader == "last" else ([leader], others)
        cluster.start(*first, wait=False)  # a lone node cannot be ready before the others
        await asyncio.sleep(35.0 if last_leader == "last" else 8.0)
        cluster.start(*second, wait=False)
        await asyncio.to_thread(cluster.wait_ready)

    result = await _run_with_fault(cluster, tmp_path, fault)
    _check_exactly_once(result, f"kafka: full outage, last leader back {last_leader}")
