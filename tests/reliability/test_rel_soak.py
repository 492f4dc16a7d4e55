"""Soak: a steady rate with 100 % mirroring into real Kafka; memory and file descriptors of
the process stay flat, errors do not grow, every record is delivered once.

Criterion: after a warm-up (the first third of the run), VmRSS grows by less than
``RSS_GROWTH`` (relative to the first post-warm-up sample) and the open file descriptors by at
most ``FD_GROWTH`` — or, when a latency spike made the upstream pools open more connections
once, they stop growing: none more in the last third than the middle third reached (a leak
grows on). The pools close connections idle past ``proxy.upstream_keepalive_s`` and open new
ones on the next spike, so the upstream connections they hold are counted apart and left out
of the descriptors compared. The model servers run in processes of their own, so what is measured is
the proxy (and the load generator driving it).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from relhelp import LONG, open_fds, percentile, post, report, rss_kib, run_load
from relkafka import consume_keys, kafka_proxy, kafka_transport, unique_prefix, wait_delivered
from upstream_proc import UpstreamProcess

from proxyutil import make_config
from shadowroute.stream.kafka import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RATE = 500.0
DURATION_S = 300.0 if LONG else 30.0
RSS_GROWTH = 0.10
FD_GROWTH = 8


async def test_soak_steady_rate_into_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    transport = kafka_transport(kafka_bootstrap, unique_prefix(), tmp_path / "spool")
    await create_topics(transport)
    prefix = transport.topic_prefix
    # (t, rss KiB, fds less the pools' upstream connections, client errors so far)
    samples: list[tuple[float, int, int, int]] = []
    async with UpstreamProcess("prod") as p, UpstreamProcess("healthy") as c:
        cfg = make_config(p.urls["prod"], [{"name": "cand", "url": c.urls["healthy"]}])
        async with kafka_proxy(cfg, transport) as (dp, sink):
            stop = asyncio.Event()
            errors = [0]
            t0 = time.monotonic()

            async def sampler() -> None:
                while not stop.is_set():
                    assert dp.proxy is not None
                    pooled = sum(len(p._all) for r in dp.proxy.routes for p in r.pools())
                    fds = open_fds() - pooled
                    samples.append((time.monotonic() - t0, rss_kib(), fds, errors[0]))
                    await asyncio.sleep(1.0)

            sampling = asyncio.get_running_loop().create_task(sampler())
            result = await run_load(
                dp.port,
                lambda i: post(rid=f"{prefix}-{i}".encode()),
                total=int(RATE * DURATION_S),
                concurrency=16,
                rate=RATE,
                max_s=DURATION_S + 30,
                keep_bodies=False,
            )
            errors[0] = result.errors
            stop.set()
            await sampling
            await wait_delivered(sink)
            mirrors = {k[2]: v for k, v in dp.stats.mirrors.items()}
        # dp.stop() built the last pairs' records (they wait up to a few ms to be built in a
        # batch) and delivered them.
        built = dp.stats.records_built
        queue_dropped = dp.queue.dropped_total
        dropped = sink.records_dropped
    n = len(result.latencies_ms)
    keys, _ = await consume_keys(kafka_bootstrap, f"{prefix}.pairs", built, timeout_s=120)
    warm = max(1, len(samples) // 3)
    rss0, fd0 = samples[warm][1], samples[warm][2]
    rss_growth = (max(s[1] for s in samples[warm:]) - rss0) / rss0
    fd_growth = max(s[2] for s in samples[warm:]) - fd0
    late = max(warm + 1, 2 * len(samples) // 3)
    fd_late_growth = max(s[2] for s in samples[late:]) - max(s[2] for s in samples[warm:late])
    report(
        "soak: steady rate, 100% mirroring into Kafka",
        rate=RATE,
        duration_s=round(result.elapsed_s, 1),
        requests=n,
        achieved_rate=round(n / result.elapsed_s, 1),
        p50_ms=round(percentile(result.latencies_ms, 50), 2),
        p99_ms=round(percentile(result.latencies_ms, 99), 2),
        client_errors=result.errors,
        rss_mib_start=round(samples[0][1] / 1024, 1),
        rss_mib_after_warmup=round(rss0 / 1024, 1),
        rss_mib_max=round(max(s[1] for s in samples) / 1024, 1),
        rss_growth_pct=round(rss_growth * 100, 2),
        fds_after_warmup=fd0,
        fd_growth=fd_growth,
        fd_growth_last_third=fd_late_growth,
        records_built=built,
        in_topic=sum(keys.values()),
        mirrors=mirrors,
    )
    assert result.errors == 0 and set(result.statuses) == {200}
    assert n >= RATE * DURATION_S * 0.95  # the rate was held
    assert rss_growth < RSS_GROWTH, samples
    assert fd_growth <= FD_GROWTH or fd_late_growth <= 0, samples
    assert mirrors["sent"] == mirrors["ok"] == n
    assert built == n  # one pair record per request (it carries production's side too)
    assert dropped == 0 and queue_dropped == 0
    assert len(keys) == n and set(keys.values()) == {1}  # all delivered, none twice
