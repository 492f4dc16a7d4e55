"""Metrics, health and operations that tell the truth in every process layout (issue #17).

Each case runs ``shadowroute serve`` as a subprocess with ``--workers 0`` (one process),
``1`` (the default, and what the Helm chart runs) and ``2``, makes the condition happen with
real model servers, and reads it back through ``/metrics`` or the API:

- records lost (record queue full, a sink whose disk is full, the Kafka spool full): every
  record built is either delivered or counted in ``shadowroute_records_dropped_total``;
- a candidate's open circuit breaker: ``shadowroute_circuit_open`` has its series;
- ``mirror.enabled: false``: ``GET /v1/mirroring`` and the metric say so;
- orphans expire on the embedded comparator's clock when the stream goes quiet, and on the
  Kafka comparator's with ``comparator.idle_expiry_s``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from servehelp import Samples, route, running, send_requests, series, value

from proxyutil import free_port
from shadowroute.core.config import Transport
from shadowroute.stream.kafka import create_topics
from upstreams import ModelServer, Reply, Seen

LAYOUTS = [0, 1, 2]


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    s = await ModelServer().start()
    yield s
    await s.stop()


def dropped(samples: Samples, reason: str | None = None) -> float:
    if reason is None:
        return value(samples, "shadowroute_records_dropped_total")
    return value(samples, "shadowroute_records_dropped_total", reason=reason)


def built(samples: Samples) -> float:
    return value(samples, "shadowroute_records_built_total")


def jsonl_lines(directory: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in directory.glob("pairs*.jsonl"))


# --- records lost are counted -----------------------------------------------------------------


@pytest.mark.parametrize("workers", LAYOUTS)
async def test_queue_full_drops_are_counted(
    workers: int, model: ModelServer, tmp_path: Path
) -> None:
    """20 candidates give 20 records per request into a record queue of 16: records are
    dropped at the queue. Built = written to the JSON-lines file + dropped."""
    n = 40
    cands = [{"name": f"c{i}", "url": model.url} for i in range(20)]
    cfg = {
        "records": {"jsonl_path": str(tmp_path / "records"), "queue_size": 16},
        "routes": [route(model.url, cands)],
    }
    async with running(tmp_path, cfg, ["serve", "--workers", str(workers)]) as served:
        statuses = await send_requests(served.proxy, n, concurrency=8)
        assert statuses == [200] * n

        def settled(s: Samples) -> bool:
            return built(s) == n * 20 and built(s) == jsonl_lines(tmp_path / "records") + dropped(s)

        s = await served.until(settled)
    lines = jsonl_lines(tmp_path / "records")
    print(f"workers={workers}: built {built(s)}, written {lines}, dropped {dropped(s)}")
    assert built(s) == n * 20
    assert dropped(s, "queue_full") > 0, served.output()
    assert built(s) == lines + dropped(s), "every record built is delivered or counted"
    assert dropped(s) == dropped(s, "queue_full")
    assert {lab["reason"] for lab in series(s, "shadowroute_records_dropped_total")} >= {
        "queue_full",
        "sink_failed",
        "spool_full",
        "build_failed",
    }


@pytest.mark.parametrize("workers", LAYOUTS)
async def test_sink_write_failures_are_counted(
    workers: int, model: ModelServer, tmp_path: Path
) -> None:
    """The JSON-lines sink's disk is full (its file is /dev/full): every record is lost and
    counted as ``sink_failed``; with workers, the supervisor goes on taking their records."""
    records = tmp_path / "records"
    records.mkdir()
    (records / "pairs.jsonl").symlink_to("/dev/full")
    n = 30
    cfg = {
        "records": {"jsonl_path": str(records)},
        "routes": [route(model.url, [{"name": "c", "url": model.url}])],
    }
    async with running(tmp_path, cfg, ["serve", "--workers", str(workers)]) as served:
        assert await send_requests(served.proxy, n // 2) == [200] * (n // 2)
        s = await served.until(lambda s: built(s) == n // 2 and dropped(s) == n // 2)
        assert dropped(s, "sink_failed") == n // 2, served.output()
        # still serving, still recording and still counting
        assert await send_requests(served.proxy, n // 2) == [200] * (n // 2)
        s = await served.until(lambda s: built(s) == n and dropped(s) == n)
    assert built(s) == n
    assert dropped(s, "sink_failed") == n
    assert "sink write failed" in served.output()


@pytest.mark.parametrize("workers", LAYOUTS)
async def test_kafka_spool_full_drops_are_counted(
    workers: int, model: ModelServer, tmp_path: Path
) -> None:
    """Kafka transport with the broker away (nothing listens on its port) and a 1 MiB spool:
    records with a ~100 KB captured input fill it. Built = spooled + dropped."""
    n = 30
    body = orjson.dumps({"instances": [[1.0]], "pad": "x" * 100_000})
    cfg = {
        "transport": {
            "kind": "kafka",
            "bootstrap": f"127.0.0.1:{free_port()}",
            "spool": {"path": str(tmp_path / "spool"), "max_bytes": 1 << 20},
        },
        "routes": [route(model.url, [{"name": "c", "url": model.url}], capture={"input": True})],
    }
    async with running(
        tmp_path, cfg, ["serve", "--workers", str(workers)], ready_timeout_s=60
    ) as served:
        statuses = await send_requests(served.proxy, n, concurrency=4, body=body)
        assert statuses == [200] * n

        def spooled(s: Samples) -> float:
            return value(
                s, "shadowroute_spool_records_total", topic="shadowroute.pairs", outcome="spooled"
            )

        s = await served.until(lambda s: built(s) == n and built(s) == spooled(s) + dropped(s))
    print(f"workers={workers}: built {built(s)}, spooled {spooled(s)}, dropped {dropped(s)}")
    assert built(s) == n
    assert dropped(s, "spool_full") > 0, served.output()
    assert built(s) == spooled(s) + dropped(s)
    spool_dropped = value(
        s, "shadowroute_spool_records_total", topic="shadowroute.pairs", outcome="dropped"
    )
    assert dropped(s, "spool_full") == spool_dropped


# --- circuit breakers -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", LAYOUTS)
async def test_circuit_open_has_its_series_in_every_layout(
    workers: int, model: ModelServer, tmp_path: Path
) -> None:
    def failing(seen: Seen) -> Reply:
        return Reply(status=500, body=b"broken")

    bad = await ModelServer(failing).start()
    try:
        cfg = {
            "mirror": {"breaker": {"failures": 2, "open_s": 60}},
            "routes": [
                route(
                    model.url,
                    [{"name": "good", "url": model.url}, {"name": "bad", "url": bad.url}],
                )
            ],
        }
        async with running(tmp_path, cfg, ["serve", "--workers", str(workers)]) as served:
            s = await served.until(
                lambda s: len(series(s, "shadowroute_circuit_open")) == 2, timeout_s=5
            )
            assert value(s, "shadowroute_circuit_open", candidate="bad") == 0
            assert await send_requests(served.proxy, 30, concurrency=2) == [200] * 30
            s = await served.until(
                lambda s: value(s, "shadowroute_circuit_open", candidate="bad") == 1
            )
    finally:
        await bad.stop()
    assert value(s, "shadowroute_circuit_open", route="r", candidate="bad") == 1
    assert value(s, "shadowroute_circuit_open", route="r", candidate="good") == 0
    assert len(series(s, "shadowroute_circuit_open")) == 2  # one series per candidate
    refused = value(s, "shadowroute_mirror_requests_total", candidate="bad", outcome="circuit_open")
    assert refused > 0


# --- the mirroring switch ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", LAYOUTS)
async def test_mirroring_disabled_in_config_says_false(
    workers: int, model: ModelServer, tmp_path: Path
) -> None:
    cand = await ModelServer().start()
    try:
        cfg = {
            "mirror": {"enabled": False},
            "routes": [route(model.url, [{"name": "c", "url": cand.url}])],
        }
        async with running(tmp_path, cfg, ["serve", "--workers", str(workers)]) as served:
            async with httpx.AsyncClient(base_url=served.api) as c:
                assert (await c.get("/v1/mirroring")).json() == {"enabled": False}
                s = await served.metrics()
                assert value(s, "shadowroute_mirroring_enabled") == 0
                assert await send_requests(served.proxy, 10) == [200] * 10
                assert cand.seen == []
                r = await c.put("/v1/mirroring", json={"enabled": True})
                assert r.json() == {"enabled": True}
                assert (await c.get("/v1/mirroring")).json() == {"enabled": True}
                await served.until(lambda s: value(s, "shadowroute_mirroring_enabled") == 1)
                await asyncio.sleep(0.3)  # the workers read the control frame
                assert await send_requests(served.proxy, 10) == [200] * 10
                s = await served.until(
                    lambda s: value(s, "shadowroute_mirror_requests_total", outcome="ok") == 10
                )
                assert value(s, "shadowroute_mirror_requests_total", outcome="disabled") == 10
                assert len(cand.seen) == 10  # mirrors go out after the client's answer
    finally:
        await cand.stop()


# --- orphans expire on a quiet stream ---------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
async def test_orphans_expire_when_the_stream_goes_quiet(
    workers: int, model: ModelServer, tmp_path: Path
) -> None:
    """Embedded: pairs without labels and a label without its pair expire after the TTL
    (1 s) by the comparator's clock, with no record arriving after them."""
    cfg = {"routes": [route(model.url, [{"name": "c", "url": model.url}], label_ttl_s=1.0)]}
    async with running(tmp_path, cfg, ["serve", "--workers", str(workers)]) as served:
        assert await send_requests(served.proxy, 5) == [200] * 5
        async with httpx.AsyncClient(base_url=served.api) as c:
            label = {"v": 1, "id": "never-requested", "label": 1.0, "ts": int(time.time() * 1000)}
            r = await c.post("/v1/labels", json=[label])
            assert r.status_code == 202, r.text
        t0 = time.monotonic()
        s = await served.until(
            lambda s: (
                value(s, "shadowroute_orphan_pairs_total", candidate="c") == 5
                and value(s, "shadowroute_orphan_labels_total") == 1
            ),
            timeout_s=10,
        )
        waited = time.monotonic() - t0
    assert value(s, "shadowroute_candidate_pairs_total", candidate="c") == 5
    assert value(s, "shadowroute_orphan_pairs_total", route="r", candidate="c") == 5
    assert value(s, "shadowroute_orphan_labels_total") == 1
    print(f"workers={workers}: orphans counted {waited:.1f} s after the last record (TTL 1 s)")


@pytest.mark.kafka
async def test_kafka_comparator_expires_idle_partitions_with_idle_expiry(
    kafka_bootstrap: str, model: ModelServer, tmp_path: Path
) -> None:
    """``serve`` and ``compare`` over the real broker, ``comparator.idle_expiry_s`` 1 s and a
    TTL of 1 s: 5 pairs without labels and a label without its pair, then nothing. The
    comparator, read to the end of its partitions, expires them on its clock."""
    prefix = "ox" + uuid.uuid4().hex[:8]
    await create_topics(Transport(kind="kafka", bootstrap=kafka_bootstrap, topic_prefix=prefix))
    cfg = {
        "transport": {
            "kind": "kafka",
            "bootstrap": kafka_bootstrap,
            "topic_prefix": prefix,
            "linger_ms": 5,
            "spool": {"path": str(tmp_path / "spool")},
        },
        "comparator": {"idle_expiry_s": 1.0},
        "routes": [route(model.url, [{"name": "c", "url": model.url}], label_ttl_s=1.0)],
    }
    (tmp_path / "serve").mkdir()
    (tmp_path / "compare").mkdir()
    async with (
        running(tmp_path / "serve", cfg, ["serve"], ready_timeout_s=60) as served,
        running(tmp_path / "compare", cfg, ["compare"], ready_timeout_s=60) as compare,
    ):
        assert await send_requests(served.proxy, 5) == [200] * 5
        async with httpx.AsyncClient(base_url=compare.api, timeout=20) as c:
            label = {"v": 1, "id": "never-requested", "label": 1.0, "ts": int(time.time() * 1000)}
            r = await c.post("/v1/labels", json=[label])
            assert r.status_code == 202, r.text
        t0 = time.monotonic()
        s = await compare.until(
            lambda s: (
                value(s, "shadowroute_orphan_pairs_total", candidate="c") == 5
                and value(s, "shadowroute_orphan_labels_total") == 1
            ),
            timeout_s=30,
        )
        waited = time.monotonic() - t0
    assert value(s, "shadowroute_candidate_pairs_total", candidate="c") == 5, compare.output()
    assert value(s, "shadowroute_orphan_pairs_total", route="r", candidate="c") == 5
    assert value(s, "shadowroute_orphan_labels_total") == 1
    print(f"kafka: orphans counted {waited:.1f} s after the last record (TTL 1 s, idle 1 s)")
