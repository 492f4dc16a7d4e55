"""Candidate faults under a bounded concurrent load: the client never notices.

For each fault, two proxies run side by side in front of the same production server: one
mirrors to a healthy candidate, the other to the faulty one. Blocks of requests, paced at a
steady rate below saturation, alternate between them (so machine noise hits both alike) and
the client-side p99 of the faulty case must stay within ``P99_RATIO`` x healthy +
``P99_SLACK_MS`` (see ``relhelp.compare_p99``). The circuit breaker is
effectively off here so that every mirror really meets the fault (bounded only by the
in-flight limit).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from relhelp import (
    LONG,
    compare_p99,
    direct_response,
    post,
    report,
    run_load,
)
from upstream_proc import UpstreamProcess

from proxyutil import free_port, make_config, running_proxy, settle
from shadowroute.dataplane.server import DataPlane

MAX_IN_FLIGHT = 32
PER_SIDE = 5000 if LONG else 2000  # measured requests per proxy
WARMUP = 300
CONCURRENCY = 8
RATE = 800.0  # requests/s: a steady load well below the proxy's saturation point

# fault -> (candidate timeout_s, stats outcome that must be counted, candidate.error in records)
FAULTS: dict[str, tuple[float, str, str | None]] = {
    "refused": (2.0, "error", "connect"),
    "reset_mid": (2.0, "error", "reset"),
    "hang_1s": (2.0, "ok", None),
    "hang_30s": (0.5, "timeout", "timeout"),
    "http_5xx": (2.0, "error", "http_5xx"),
    "invalid_json": (2.0, "ok", "extract_failed"),
    "huge": (5.0, "too_large", "too_large"),
    "trickle": (0.5, "timeout", "timeout"),
}

# With the breaker off, a candidate that resets every connection costs the proxy a new
# upstream connection per mirror (connect, accept, RST): measured p99 +30..70 % at 800 req/s
# on a shared 2-core machine. Bounded here by a looser factor; with the default breaker the
# strict bound holds (test_reset_mid_with_default_breaker_meets_the_bound).
RELAXED: dict[str, float] = {"reset_mid": 2.0}


def _config(prod_url: str, cand_url: str, timeout_s: float, *, breaker: bool = False) -> Any:
    return make_config(
        prod_url,
        [{"name": "cand", "url": cand_url, "timeout_s": timeout_s, "max_in_flight": MAX_IN_FLIGHT}],
        monitor_fraction=0.0,
        top={
            "mirror": {} if breaker else {"breaker": {"failures": 10**9, "open_s": 1}},
            "proxy": {"mirror_drain_s": 0.2},
        },
    )


@contextlib.asynccontextmanager
async def _sample_in_flight(dp: DataPlane) -> AsyncIterator[list[int]]:
    """Max mirrors in flight seen, sampled every 5 ms."""
    seen = [0]
    assert dp.proxy is not None
    target = dp.proxy.targets()[0]

    async def sample() -> None:
        while True:
            seen[0] = max(seen[0], target.in_flight, dp.stats.mirrors_in_flight[("fraud", "cand")])
            await asyncio.sleep(0.005)

    task = asyncio.get_running_loop().create_task(sample())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_candidate_fault_is_invisible_to_the_client(fault: str) -> None:
    timeout_s, outcome, record_error = FAULTS[fault]
    # Production, the healthy and the faulty candidate each in a process of their own.
    async with (
        UpstreamProcess("prod") as prod_proc,
        UpstreamProcess("healthy") as good_proc,
        UpstreamProcess(*([] if fault == "refused" else [fault])) as bad_proc,
    ):
        prod = prod_proc.urls["prod"]
        healthy_url = good_proc.urls["healthy"]
        bad_url = f"http://127.0.0.1:{free_port()}" if fault == "refused" else bad_proc.urls[fault]
        request = post()
        expected = await direct_response(int(prod.rsplit(":", 1)[1]), request)
        async with (
            running_proxy(_config(prod, healthy_url, 2.0)) as (good_dp, _),
            running_proxy(_config(prod, bad_url, timeout_s)) as (bad_dp, bad_sink),
            _sample_in_flight(bad_dp) as max_in_flight,
        ):
            for dp in (good_dp, bad_dp):
                await run_load(
                    dp.port, lambda i: request, total=WARMUP, concurrency=CONCURRENCY, rate=RATE
                )
            # Up to 5 measurements: a real regression fails every one. The ``huge`` case once
            # failed all five in CI while the proxy read the first MiB of each 17 MiB answer on
            # the clients' core; it now gives the answer up at its head (its Content-Length is
            # over the cap), and the candidate's process pushing the bytes is what remains.
            cmp = await compare_p99(
                good_dp.port,
                bad_dp.port,
                request,
                per_side=PER_SIDE,
                rate=RATE,
                concurrency=CONCURRENCY,
                attempts=5,
            )
            await settle(bad_dp, timeout=timeout_s + 3)
            mirrors = {k[2]: v for k, v in bad_dp.stats.mirrors.items() if k[1] == "cand"}
            extract_failed = bad_dp.stats.extract_failed
            in_flight_after = bad_dp.proxy.targets()[0].in_flight  # type: ignore[union-attr]
            records = bad_sink.decoded()

    total = WARMUP + cmp.faulty_requests
    healthy, faulty, bound = cmp.healthy, cmp.faulty, cmp.bound_ms
    report(
        f"candidate fault: {fault}",
        requests_per_case=len(faulty.latencies_ms),
        healthy_p50_ms=round(healthy.p(50), 3),
        healthy_p99_ms=round(healthy.p(99), 3),
        faulty_p50_ms=round(faulty.p(50), 3),
        faulty_p99_ms=round(faulty.p(99), 3),
        p99_bound_ms=round(bound, 3),
        attempts=cmp.attempts,
        max_in_flight=max_in_flight[0],
        mirrors=mirrors,
        record_errors=sorted({str(r["candidate"]["error"]) for r in records}),
    )
    # Byte-identical answers, no client error.
    assert healthy.errors == faulty.errors == 0
    assert set(healthy.responses) == {expected}
    assert set(faulty.responses) == {expected}
    assert sum(faulty.responses.values()) == PER_SIDE
    # Latency within tolerance of the healthy case.
    if fault in RELAXED:
        assert faulty.p(99) <= healthy.p(99) * RELAXED[fault] + 1.0, (
            faulty.summary(),
            healthy.summary(),
        )
    else:
        assert faulty.p(99) <= bound, (faulty.summary(), healthy.summary())
    # In-flight bounded, and nothing left behind.
    assert max_in_flight[0] <= MAX_IN_FLIGHT
    assert in_flight_after == 0
    # Every request is accounted for: sent or dropped because the bound was reached.
    assert mirrors.get("sent", 0) + mirrors.get("dropped_full", 0) == total
    finished = sum(mirrors.get(k, 0) for k in ("ok", "timeout", "too_large", "error"))
    assert finished == mirrors["sent"]
    assert mirrors.get(outcome, 0) > 0
    # One pair record per sampled request: each mirror sent names the fault, each dropped at
    # the bound is recorded as ``dropped``.
    assert len(records) == total
    dropped = [r for r in records if r["candidate"]["error"] == "dropped"]
    assert len(dropped) == mirrors.get("dropped_full", 0)
    assert all(r["candidate"]["output"] is None for r in dropped)
    assert {r["candidate"]["error"] for r in records} - {"dropped"} == {record_error}
    assert all(r["production"]["error"] is None for r in records)
    if fault == "invalid_json":
        assert extract_failed == mirrors["sent"]


async def test_reset_mid_with_default_breaker_meets_the_bound() -> None:
    async with (
        UpstreamProcess("prod") as prod_proc,
        UpstreamProcess("healthy") as good_proc,
        UpstreamProcess("reset_mid") as bad_proc,
    ):
        prod = prod_proc.urls["prod"]
        request = post()
        expected = await direct_response(int(prod.rsplit(":", 1)[1]), request)
        async with (
            running_proxy(_config(prod, good_proc.urls["healthy"], 2.0)) as (good_dp, _),
            running_proxy(_config(prod, bad_proc.urls["reset_mid"], 2.0, breaker=True)) as (
                bad_dp,
                bad_sink,
            ),
        ):
            for dp in (good_dp, bad_dp):
                await run_load(
                    dp.port, lambda i: request, total=WARMUP, concurrency=CONCURRENCY, rate=RATE
                )
            cmp = await compare_p99(
                good_dp.port, bad_dp.port, request, per_side=PER_SIDE, rate=RATE
            )
            await settle(bad_dp)
            mirrors = {k[2]: v for k, v in bad_dp.stats.mirrors.items() if k[1] == "cand"}
            errors = {r["candidate"]["error"] for r in bad_sink.decoded()}
    report(
        "candidate fault: reset_mid, default breaker",
        healthy_p99_ms=round(cmp.healthy.p(99), 3),
        faulty_p99_ms=round(cmp.faulty.p(99), 3),
        p99_bound_ms=round(cmp.bound_ms, 3),
        attempts=cmp.attempts,
        mirrors=mirrors,
    )
    assert set(cmp.faulty.responses) == {expected}
    assert cmp.within, (cmp.faulty.summary(), cmp.healthy.summary())
    assert mirrors["circuit_open"] > 0 and mirrors["error"] > 0
    assert errors - {"dropped"} == {"reset", "circuit_open"}
