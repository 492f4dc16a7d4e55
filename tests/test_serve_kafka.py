"""``shadowroute serve`` with the Kafka transport, against the real broker: pair records and
posted labels reach their topics, co-partitioned; mismatched topics stop it with a clear error."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from proxyutil import free_port, wait_ready
from shadowroute.cli_client import cmd_labels_send
from shadowroute.core.config import Transport
from shadowroute.stream.kafka import create_topics
from upstreams import ModelServer

pytestmark = pytest.mark.kafka


@pytest.fixture
async def models() -> AsyncIterator[tuple[ModelServer, ModelServer]]:
    prod, cand = await ModelServer().start(), await ModelServer().start()
    yield prod, cand
    await prod.stop()
    await cand.stop()


def write_config(
    tmp_path: Path, bootstrap: str, prefix: str, prod: str, cand: str
) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "transport": {"kind": "kafka", "bootstrap": bootstrap, "topic_prefix": prefix,
                      "spool": {"path": str(tmp_path / "spool")}},
        "routes": [{"name": "r", "protocol": "kserve-v1", "task": "regression",
                    "production": {"name": "p", "url": prod},
                    "candidates": [{"name": "c", "url": cand}]}],
    }  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, port, admin


async def consume(bootstrap: str, topic: str, want: int) -> list[tuple[int, bytes, bytes]]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await c.start()
    out: list[tuple[int, bytes, bytes]] = []
    try:
        async with asyncio.timeout(30):
            while len(out) < want:
                for tp, msgs in (await c.getmany(timeout_ms=500)).items():
                    out += [(tp.partition, m.key or b"", m.value or b"") for m in msgs]
    finally:
        await c.stop()
    return out


async def test_serve_produces_pairs_and_labels_to_kafka(
    kafka_bootstrap: str,
    models: tuple[ModelServer, ModelServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = "s" + uuid.uuid4().hex[:8]
    await create_topics(Transport(kind="kafka", bootstrap=kafka_bootstrap, topic_prefix=prefix))
    path, port, admin = write_config(
        tmp_path, kafka_bootstrap, prefix, models[0].url, models[1].url
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - stopped below
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        n = 50
        async with httpx.AsyncClient() as c:
            for i in range(n):
                r = await c.post(f"http://127.0.0.1:{port}/p", content=b'{"instances": [[1]]}',
                                 headers={"x-request-id": f"k-{i}"})  # fmt: skip
                assert r.status_code == 200
            labels = b"\n".join(b'{"id": "k-%d", "label": 2.0}' % i for i in range(n))
            ndjson = {"Content-Type": "application/x-ndjson"}
            r = await c.post(f"http://127.0.0.1:{admin}/v1/labels", content=labels, headers=ndjson)
            assert r.status_code == 202
            # written to the topic: what matched is the comparator's to say, later
            answer = r.json()
            assert answer["accepted"] == n and answer["committed"] is False
            assert answer["matched"] is None and answer["waiting"] is None
            assert "shadowroute_labels_waiting" in answer["note"]
        pairs = await consume(kafka_bootstrap, f"{prefix}.pairs", n)
        got_labels = await consume(kafka_bootstrap, f"{prefix}.labels", n)
        # the CLI says what a Kafka router can: written, matched later by the comparator
        again = tmp_path / "again.jsonl"
        again.write_bytes(b'{"id": "k-0", "label": 2.0}\n{"id": "k-1", "label": 2.0}\n')
        args = argparse.Namespace(
            api=f"http://127.0.0.1:{admin}", token=None, file=str(again), format="auto"
        )
        assert await asyncio.to_thread(cmd_labels_send, args) == 0
        out = capsys.readouterr().out
        assert "2 label(s) accepted" in out
        assert "the comparator matches them later" in out and "matched a request" not in out
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    recs = [orjson.loads(v) for _, _, v in pairs]
    assert sorted(r["id"] for r in recs if r["candidate"]) == sorted(f"k-{i}" for i in range(n))
    assert all(r["candidate"] is not None for r in recs)  # mirrored: no production-only record
    pair_part = {k: p for p, k, _ in pairs}
    assert {k: p for p, k, _ in got_labels} == {k: pair_part[k] for _, k, _ in got_labels}


async def test_mismatched_partitions_stop_serve_with_a_clear_error(
    kafka_bootstrap: str, models: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    prefix = "m" + uuid.uuid4().hex[:8]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(f"{prefix}.pairs", 3, 1), NewTopic(f"{prefix}.labels", 2, 1)]
        )
    finally:
        await admin.close()
    path, _, _ = write_config(tmp_path, kafka_bootstrap, prefix, models[0].url, models[1].url)
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shadowroute", "serve", "-c", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"{prefix}.pairs has 3 partitions but {prefix}.labels has 2" in out.stderr
